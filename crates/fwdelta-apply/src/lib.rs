//! Terminal-side fwdelta applier.
//!
//! Small and generator-free: it depends on the container crate, the `liblzma`
//! and `zstd` decoders and `blake3` only.
//!
//! Features: `std` (default) adds the file and OS adapters ([`FileImage`],
//! [`AtomicFile`], [`ResumableFile`], side files and locks, in-place files
//! and journals, [`inspect()`], pull-mode [`apply`]); without it the crate is
//! `#![no_std]` + `alloc` (push-mode [`Applier`], [`OldImage`], [`Sink`],
//! [`IoError`]). `lzma` and `zstd` (default) are the payload codecs; a patch
//! whose codec is left out is refused with [`ApplyError::UnsupportedCodec`]. Memory is bounded by the patch's declared decoder window
//! plus fixed 16 KiB buffers, whatever the image sizes (see
//! [`fwdelta_format::MemoryModel`]).
//!
//! * [`Applier`] is the push-mode core: feed patch bytes as they arrive, then
//!   [`Applier::finish`]. Nothing of the patch is stored.
//! * [`apply`] is the pull-mode adapter: patch from any [`std::io::Read`].
//! * [`OldImage`] is the random-read source for the old image (a slice, a file
//!   read by offset, a flash partition); [`Sink`] receives the new image.
//! * [`apply_in_place`] rewrites a [`Region`] holding the old image into the
//!   new one (single-slot flash), proving the result before overwriting.
//! * [`apply_parallel`] decodes several segments of a patch file at once
//!   (more cores, more memory), checkpointing in order as the streaming
//!   applier does.
//! * [`AtomicFile`] is a sink that writes beside the target and renames into
//!   place only after everything verified; [`ResumableFile`] does the same and
//!   also persists a [`fwdelta_format::Checkpoint`] after every segment, so
//!   [`Applier::resume`] can continue after a power loss. It works under a
//!   [`TargetLock`] (one update of a target at a time) and creates its side
//!   files exclusively, never through a link ([`side_file`]).
//!
//! The old image is hashed and checked against the header before a single
//! output byte is produced; every segment but the last is checked (bound to
//! the header and its position); the segment count and the new image's hash,
//! which covers the last segment, are checked at the end. Any failure is a typed
//! [`ApplyError`]; output already handed to the sink must then be discarded
//! (the [`AtomicFile`] sink does that by itself).

#![cfg_attr(not(any(feature = "std", test)), no_std)]

extern crate alloc;

/// What std's prelude would give every module (the core is `no_std`).
mod prelude {
    #[allow(unused_imports)]
    pub(crate) use alloc::{
        borrow::ToOwned,
        boxed::Box,
        format,
        string::{String, ToString},
        vec,
        vec::Vec,
    };
}

#[cfg(feature = "std")]
pub mod aligned_sink;
mod applier;
#[cfg(feature = "std")]
pub mod atomic_file;
mod error;
#[cfg(feature = "std")]
pub mod in_place;
#[cfg(feature = "std")]
pub mod inspect;
mod io_error;
#[cfg(feature = "std")]
pub mod parallel_apply;
mod patch_reader;
mod payload_decoder;
mod predicted_old;
mod record_interpreter;
#[cfg(feature = "std")]
pub mod resumable_file;
#[cfg(feature = "std")]
pub mod side_file;
pub mod sink;
pub mod source;
mod split_source;
mod stream_source;
pub mod trust_policy;

#[cfg(feature = "std")]
pub use aligned_sink::{AlignedSink, BlockWriter};
#[cfg(feature = "std")]
pub use applier::apply;
pub use applier::{Applier, ApplyOptions, ApplyReport};
#[cfg(feature = "std")]
pub use atomic_file::AtomicFile;
pub use error::{ApplyError, ErrorClass, PatchPart, UpdateLost};
#[cfg(feature = "std")]
pub use in_place::{
    apply_in_place, apply_in_place_with, FileJournal, FileRegion, Journal, MemRegion, NoJournal,
    Region, MAX_JOURNAL_SLOT_LEN,
};
#[cfg(feature = "std")]
pub use inspect::{inspect, inspect_each, PatchInfo, PatchSummary};
pub use io_error::IoError;
#[cfg(feature = "std")]
pub use parallel_apply::{apply_parallel, parallel_threads};
#[cfg(feature = "std")]
pub use resumable_file::ResumableFile;
#[cfg(feature = "std")]
pub use side_file::{SideFileError, TargetLock};
pub use sink::Sink;
#[cfg(feature = "std")]
pub use sink::WriteSink;
#[cfg(feature = "std")]
pub use source::FileImage;
pub use source::OldImage;
pub use trust_policy::{TrustPolicy, Verdict};

/// Size of each of the applier's fixed working buffers.
pub const BUFFER_LEN: usize = 16 * 1024;
