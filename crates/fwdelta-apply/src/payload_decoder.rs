//! The payload decoder: turns one segment's compressed payload into its record
//! stream, for each compressed codec the format knows (raw LZMA2, magicless
//! zstd), never with a larger window than the header declares.
//!
//! Memory: one decoder, as [`fwdelta_format::MemoryModel::required_for`]
//! counts it (the window plus a fixed part). Stored payloads need no decoder.
//!
//! Each codec is a cargo feature (`lzma`, `zstd`); a patch whose codec was
//! left out is refused with [`ApplyError::UnsupportedCodec`] when its header
//! is accepted, before the old image is read.

use crate::error::ApplyError;
#[allow(unused_imports)]
use crate::prelude::*;
#[cfg(feature = "lzma")]
use alloc::alloc::{alloc, dealloc, Layout};
#[cfg(any(feature = "lzma", feature = "zstd"))]
use alloc::boxed::Box;
#[cfg(any(feature = "lzma", feature = "zstd"))]
use alloc::format;
use alloc::string::String;
#[cfg(feature = "lzma")]
use core::ffi::c_void;
use fwdelta_format::header::Header;
use fwdelta_format::Codec;
#[cfg(any(feature = "lzma", feature = "zstd"))]
use fwdelta_format::MemoryModel;
#[cfg(feature = "lzma")]
use liblzma_sys as lzma;
#[cfg(feature = "zstd")]
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};
#[cfg(feature = "zstd")]
use zstd::zstd_safe::FrameFormat;

/// What one [`PayloadDecoder::run`] call did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Input bytes consumed.
    pub read: usize,
    /// Output bytes written.
    pub written: usize,
    /// The payload's stream ended (zstd frame end, LZMA2 end marker).
    pub done: bool,
}

/// A decoder for one patch's payloads, reset between segments.
pub(crate) enum PayloadDecoder {
    /// Magicless zstd frames with a bounded window.
    #[cfg(feature = "zstd")]
    Zstd(Box<Decoder<'static>>),
    /// Raw LZMA2 streams with the header's dictionary.
    #[cfg(feature = "lzma")]
    Lzma2(Box<LzmaDecoder>),
}

/// Refuse `codec` if this build cannot decode it (its feature is off).
pub(crate) fn check_codec_built(codec: Codec) -> Result<(), ApplyError> {
    let built = match codec {
        Codec::Stored => true,
        Codec::Zstd => cfg!(feature = "zstd"),
        Codec::Lzma2 => cfg!(feature = "lzma"),
    };
    match built {
        true => Ok(()),
        false => Err(ApplyError::UnsupportedCodec(codec.name())),
    }
}

impl PayloadDecoder {
    /// The decoder for `header`'s payloads, or `None` for stored payloads.
    /// Allocates the decoder's window (LZMA2 allocates its dictionary here).
    pub(crate) fn for_header(header: &Header) -> Result<Option<Self>, ApplyError> {
        Self::new(header.codec, header.window_log)
    }

    /// A decoder for `codec` payloads with a window of `2^window_log` (at
    /// most the format's largest), or `None` for stored payloads.
    pub(crate) fn new(codec: Codec, window_log: u8) -> Result<Option<Self>, ApplyError> {
        check_codec_built(codec)?;
        let _ = window_log;
        match codec {
            Codec::Stored => Ok(None),
            #[cfg(feature = "zstd")]
            Codec::Zstd => {
                let mut dec = Decoder::new().map_err(|e| ApplyError::Decoder(e.to_string()))?;
                dec.set_parameter(DParameter::Format(FrameFormat::Magicless))
                    .and_then(|_| {
                        dec.set_parameter(DParameter::WindowLogMax(u32::from(window_log)))
                    })
                    .map_err(|e| ApplyError::Decoder(e.to_string()))?;
                Ok(Some(PayloadDecoder::Zstd(Box::new(dec))))
            }
            #[cfg(feature = "lzma")]
            Codec::Lzma2 => {
                // The header parser bounds window_log to the format's range,
                // so the dictionary fits a u32.
                let dict = u32::try_from(MemoryModel::lzma_dict(window_log))
                    .map_err(|_| ApplyError::Decoder("LZMA2 dictionary over 4 GiB".into()))?;
                Ok(Some(PayloadDecoder::Lzma2(Box::new(LzmaDecoder::new(
                    dict,
                )?))))
            }
            #[allow(unreachable_patterns)]
            _ => Err(ApplyError::UnsupportedCodec(codec.name())),
        }
    }

    /// Make the decoder ready for the next segment's payload.
    pub(crate) fn reset(&mut self) -> Result<(), ApplyError> {
        match self {
            #[cfg(feature = "zstd")]
            PayloadDecoder::Zstd(dec) => dec
                .reinit()
                .map_err(|e| ApplyError::Decoder(format!("reset failed: {e}"))),
            #[cfg(feature = "lzma")]
            PayloadDecoder::Lzma2(dec) => dec.reset(),
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }

    /// Decode from `input` into `output` until one of them is used up or the
    /// payload's stream ends. An error is a one-line reason the payload is
    /// corrupt.
    pub(crate) fn run(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, String> {
        let _ = (&input, &output);
        match self {
            #[cfg(feature = "zstd")]
            PayloadDecoder::Zstd(dec) => {
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(output);
                let hint = dec
                    .run(&mut inb, &mut outb)
                    .map_err(|e| format!("decompression failed: {e}"))?;
                Ok(Progress {
                    read: inb.pos(),
                    written: outb.pos(),
                    done: hint == 0,
                })
            }
            #[cfg(feature = "lzma")]
            PayloadDecoder::Lzma2(dec) => dec.run(input, output),
            #[allow(unreachable_patterns)]
            _ => Err(String::from("no decoder")),
        }
    }
}

#[cfg(feature = "lzma")]
/// A raw LZMA2 decoder (liblzma) whose every allocation goes through Rust's
/// global allocator, so the applier's heap accounting sees the dictionary
/// like any other buffer.
pub(crate) struct LzmaDecoder {
    strm: lzma::lzma_stream,
    /// Dictionary size, from the header's window.
    dict: u32,
}

#[cfg(feature = "lzma")]
impl LzmaDecoder {
    /// A decoder with a `dict`-byte dictionary (allocated here). The stream's
    /// own property bytes choose lc/lp/pb; liblzma refuses values LZMA2
    /// forbids.
    fn new(dict: u32) -> Result<Self, ApplyError> {
        // SAFETY: an all-zero lzma_stream is LZMA_STREAM_INIT. The options
        // struct is filled by lzma_lzma_preset before use, the filter array
        // is terminated as liblzma requires, and both outlive the init call
        // (liblzma copies what it keeps). The allocator is a static.
        unsafe {
            let mut strm: lzma::lzma_stream = core::mem::zeroed();
            strm.allocator = &RUST_ALLOCATOR.0;
            let mut opts: lzma::lzma_options_lzma = core::mem::zeroed();
            if lzma::lzma_lzma_preset(&mut opts, 6) != 0 {
                return Err(ApplyError::Decoder("LZMA2: no default options".into()));
            }
            opts.dict_size = dict;
            let filters = [
                lzma::lzma_filter {
                    id: lzma::LZMA_FILTER_LZMA2,
                    options: (&mut opts as *mut lzma::lzma_options_lzma).cast(),
                },
                lzma::lzma_filter {
                    id: lzma::LZMA_VLI_UNKNOWN,
                    options: core::ptr::null_mut(),
                },
            ];
            let mut dec = LzmaDecoder { strm, dict };
            match lzma::lzma_raw_decoder(&mut dec.strm, filters.as_ptr()) {
                lzma::LZMA_OK => Ok(dec),
                lzma::LZMA_MEM_ERROR => Err(ApplyError::Decoder("LZMA2: out of memory".into())),
                rc => Err(ApplyError::Decoder(format!("LZMA2: init failed ({rc})"))),
            }
        }
    }

    /// Ready for a new stream: a raw LZMA2 decoder cannot be rewound, so it is
    /// rebuilt (unless it has not read anything yet). A minimal one is swapped
    /// in first, so two full dictionaries are never held at once.
    fn reset(&mut self) -> Result<(), ApplyError> {
        if self.strm.total_in == 0 {
            return Ok(());
        }
        let dict = self.dict;
        *self = LzmaDecoder::new(1 << MemoryModel::LZMA_MIN_DICT_LOG)?;
        *self = LzmaDecoder::new(dict)?;
        Ok(())
    }

    fn run(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, String> {
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = input.len();
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = output.len();
        // SAFETY: the stream was initialised by lzma_raw_decoder, and its
        // buffer pointers and lengths describe live slices for this call.
        let rc = unsafe { lzma::lzma_code(&mut self.strm, lzma::LZMA_RUN) };
        let read = input.len() - self.strm.avail_in;
        let written = output.len() - self.strm.avail_out;
        // Do not keep pointers into the caller's buffers.
        self.strm.next_in = core::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = core::ptr::null_mut();
        self.strm.avail_out = 0;
        let done = match rc {
            lzma::LZMA_OK | lzma::LZMA_BUF_ERROR => false,
            lzma::LZMA_STREAM_END => true,
            lzma::LZMA_DATA_ERROR => return Err("LZMA2 decompression failed: corrupt data".into()),
            lzma::LZMA_OPTIONS_ERROR => {
                return Err("LZMA2 decompression failed: invalid properties".into())
            }
            lzma::LZMA_MEM_ERROR => return Err("LZMA2 decompression failed: out of memory".into()),
            rc => return Err(format!("LZMA2 decompression failed: error {rc}")),
        };
        Ok(Progress {
            read,
            written,
            done,
        })
    }
}

#[cfg(feature = "lzma")]
impl Drop for LzmaDecoder {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised; lzma_end frees through the
        // same allocator and leaves the stream inert.
        unsafe { lzma::lzma_end(&mut self.strm) }
    }
}

#[cfg(feature = "lzma")]
/// liblzma's allocator hooks, backed by Rust's global allocator. Each block
/// carries its size in a 16-byte prefix, as `dealloc` needs the layout.
struct SyncAllocator(lzma::lzma_allocator);
#[cfg(feature = "lzma")]
// SAFETY: the allocator holds two function pointers and a null opaque
// pointer that is never dereferenced; sharing it between threads is sound.
unsafe impl Sync for SyncAllocator {}

#[cfg(feature = "lzma")]
static RUST_ALLOCATOR: SyncAllocator = SyncAllocator(lzma::lzma_allocator {
    alloc: Some(lzma_alloc),
    free: Some(lzma_free),
    opaque: core::ptr::null_mut(),
});

#[cfg(feature = "lzma")]
/// Bytes in front of every block liblzma gets (its size; keeps 16-byte
/// alignment).
const PREFIX: usize = 16;

#[cfg(feature = "lzma")]
extern "C" fn lzma_alloc(_opaque: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
    let Some(total) = nmemb.checked_mul(size).and_then(|n| n.checked_add(PREFIX)) else {
        return core::ptr::null_mut();
    };
    let Ok(layout) = Layout::from_size_align(total, PREFIX) else {
        return core::ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size (at least PREFIX).
    unsafe {
        let base = alloc(layout);
        if base.is_null() {
            return core::ptr::null_mut();
        }
        base.cast::<usize>().write(total);
        base.add(PREFIX).cast()
    }
}

#[cfg(feature = "lzma")]
extern "C" fn lzma_free(_opaque: *mut c_void, ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` came from lzma_alloc, so the block starts PREFIX bytes
    // earlier with its total size, which was a valid layout with this
    // alignment when it was allocated.
    unsafe {
        let base = ptr.cast::<u8>().sub(PREFIX);
        let total = base.cast::<usize>().read();
        dealloc(base, Layout::from_size_align_unchecked(total, PREFIX));
    }
}
