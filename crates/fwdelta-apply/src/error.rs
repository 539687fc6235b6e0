//! Errors of the applier, each one line, each naming the problem.

#[allow(unused_imports)]
use crate::prelude::*;
use crate::IoError;
use fwdelta_format::{FormatError, KeyId};
use thiserror::Error;

/// The first 8 bytes of a BLAKE3 hash, in hex (for error messages).
struct HashStart<'a>(&'a [u8; 32]);

impl core::fmt::Display for HashStart<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Why applying a patch failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The patch's structure is invalid (magic, version, header, segment header).
    #[error("invalid patch: {0}")]
    Format(FormatError),
    /// The patch needs more memory than this applier was allowed.
    #[error("patch needs {needed} bytes of applier memory but the limit is {limit}")]
    MemoryBudget {
        /// Bytes the patch header claims.
        needed: u64,
        /// Bytes this applier may use.
        limit: u64,
    },
    /// The patch produces a larger image than this applier accepts.
    #[error("patch produces a {len}-byte image but the limit is {limit} bytes")]
    NewTooLarge {
        /// Declared new length.
        len: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The old image has the wrong length.
    #[error("wrong old image: it is {actual} bytes, the patch was made for {expected} bytes")]
    OldLength {
        /// Length the patch expects.
        expected: u64,
        /// Length of the image given.
        actual: u64,
    },
    /// The old image has the right length but the wrong content.
    #[error(
        "wrong old image: its BLAKE3 starts {actual}, the patch was made for one starting {expected}"
    )]
    OldHash {
        /// Expected BLAKE3 prefix (the header's 8-byte old-image check, hex).
        expected: String,
        /// Actual BLAKE3 prefix (hex, same length).
        actual: String,
    },
    /// The patch ended early.
    #[error("patch is truncated: it ends {stage} after {offset} bytes")]
    Truncated {
        /// Where it ended ("inside the header", "inside segment 3", ...).
        stage: PatchPart,
        /// Patch bytes received.
        offset: u64,
    },
    /// A segment failed to decode or failed its check.
    #[error("patch is corrupt: segment {index}: {detail}")]
    CorruptSegment {
        /// Segment index.
        index: u32,
        /// What went wrong.
        detail: String,
    },
    /// Every check passed but the output's hash differs from the header's.
    /// With the old image verified first (and, on a resume, the kept partial
    /// output against its checkpoint), the patch is damaged: in an ordinary
    /// patch, most likely in its last segment, which has no check of its own.
    #[error("patch is corrupt: the image produced does not match the header's BLAKE3")]
    NewHashMismatch,
    /// The patch makes another new image than the caller expects
    /// ([`crate::ApplyOptions::expected_new_hash`], e.g. a release
    /// manifest's): a swapped or foreign file. Refused on its header,
    /// before the old image is read.
    #[error(
        "patch makes another image than expected: its new image's BLAKE3 starts {}, the expected one {}",
        HashStart(actual),
        HashStart(expected)
    )]
    UnexpectedNewImage {
        /// The new image's BLAKE3 the caller expects.
        expected: [u8; 32],
        /// The one the patch's header names.
        actual: [u8; 32],
    },
    /// On a resume, the partial output kept from before does not hash to
    /// what its checkpoint recorded: the local copy was damaged, not the
    /// patch. Start over.
    #[error(
        "partial output damaged: its first {len} bytes do not match their checkpoint's BLAKE3"
    )]
    PartialOutputDamaged {
        /// Bytes the checkpoint covers.
        len: u64,
    },
    /// Bytes follow the last segment.
    #[error("patch is corrupt: unexpected data after its end")]
    TrailingData,
    /// An earlier call failed; this applier is unusable.
    #[error("applier was already stopped by an earlier error")]
    Poisoned,
    /// Reading the old image failed.
    #[error("reading the old image failed: {0}")]
    OldRead(IoError),
    /// Reading the patch failed (pull mode, `std` only).
    #[cfg(feature = "std")]
    #[error("reading the patch failed: {0}")]
    PatchRead(std::io::Error),
    /// Writing the new image failed.
    #[error("writing the new image failed: {0}")]
    Sink(IoError),
    /// The image holds an interrupted in-place update by another patch.
    #[error("{0}")]
    InterruptedUpdate(&'static str),
    /// The patch is for the other apply mode (in-place vs. to a new file).
    #[error("{0}")]
    WrongMode(&'static str),
    /// The patch's payload codec was left out of this build (its cargo
    /// feature, `lzma` or `zstd`, is off).
    #[error("patch uses the {0} codec, which this applier was built without")]
    UnsupportedCodec(&'static str),
    /// The decoder could not be created or configured (typically out of memory).
    #[error("cannot set up the decoder: {0}")]
    Decoder(String),
    /// The policy trusts keys, and the patch is not signed.
    #[error(
        "patch is not signed, and this device installs only patches signed by a key it trusts"
    )]
    Unsigned,
    /// Fewer trusted keys than the policy's threshold signed the patch.
    #[error(
        "patch is not authentic: {verified} of the {threshold} required signature(s) by trusted keys verify \
         (it names signer(s) {}; damaged, forged, or signed by a key this device does not trust)",
        key_list(signers)
    )]
    NotAuthentic {
        /// Distinct trusted keys whose signatures verified.
        verified: usize,
        /// How many the policy requires.
        threshold: usize,
        /// Key ids the patch's signatures name.
        signers: Vec<KeyId>,
    },
    /// The patch is for another product.
    #[error("patch is for product '{patch}', but this device is '{device}'")]
    WrongProduct {
        /// The patch's product id.
        patch: String,
        /// The device's product id.
        device: String,
    },
    /// The patch's security counter is below the device's.
    #[error(
        "downgrade refused: the patch installs version {version} with security counter {patch}, \
         below this device's {device}"
    )]
    Downgrade {
        /// The patch's security counter.
        patch: u64,
        /// The device's stored counter.
        device: u64,
        /// The version the patch installs.
        version: String,
    },
    /// The patch's expiry time has passed.
    #[error("patch expired at Unix time {expires}; it is now {now}")]
    Expired {
        /// When it expired.
        expires: u64,
        /// The time the policy was given.
        now: u64,
    },
    /// The patch was already installed.
    #[error("replay refused: this patch (version {version}) was already installed on this device")]
    Replay {
        /// The version it installs.
        version: String,
    },
    /// An in-place update was under way and cannot be finished: the journal
    /// lost both copies of what it needed while the image was half written.
    #[error("{0}")]
    UpdateLost(UpdateLost),
}

pub use fwdelta_format::PatchPart;

/// An in-place update that cannot go on: both copies of the journal record
/// it needed are damaged and the image is neither the old nor the new
/// version. Nothing can repair it from here; the device must be reflashed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
#[error(
    "the in-place update cannot go on: {reason}; {image}; the image is neither version: reflash it"
)]
pub struct UpdateLost {
    /// What was lost (which journal record or cell).
    pub reason: String,
    /// What the image now holds, e.g. "cells 0-11 are new, 12 may be torn,
    /// 13-40 are old", or that this is unknown.
    pub image: String,
}

/// `a, b` for a list of key ids (`none` for an empty one).
fn key_list(ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// Causes are folded into each message (not exposed as `source`) so that a
// chain printed with `{:#}` stays one line without repeating itself.
// The framing reader's refusals that are the applier's own errors (its
// limits, a cut patch) keep their ApplyError variants.
impl From<FormatError> for ApplyError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::MemoryBudget { needed, limit } => {
                ApplyError::MemoryBudget { needed, limit }
            }
            FormatError::NewTooLarge { len, limit } => ApplyError::NewTooLarge { len, limit },
            FormatError::WrongMode(why) => ApplyError::WrongMode(why),
            FormatError::Truncated { stage, offset } => ApplyError::Truncated { stage, offset },
            FormatError::ReaderMisuse => ApplyError::Poisoned,
            e => ApplyError::Format(e),
        }
    }
}

/// Coarse classes of [`ApplyError`], for exit codes and retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The patch is malformed, corrupt or truncated: get it again.
    BadPatch,
    /// The patch is intact but needs features this applier lacks (a newer
    /// format version, flags, codec, layout or critical extension): fetching it
    /// again will not help; the applier must be updated.
    Unsupported,
    /// The patch is fine but is for another old image.
    WrongOldImage,
    /// The patch needs more than this device allows.
    Limits,
    /// Reading or writing failed.
    Io,
    /// The patch is not signed by enough keys the device trusts (unsigned,
    /// damaged or forged signature, unknown signer).
    NotAuthentic,
    /// The patch is for another product.
    WrongProduct,
    /// The patch would lower the device's security counter.
    Downgrade,
    /// The patch has expired.
    Expired,
    /// The patch was already installed.
    Replay,
    /// An in-place update cannot be finished: the image is neither version.
    UpdateLost,
}

impl ApplyError {
    /// Class of this error.
    pub fn class(&self) -> ErrorClass {
        use ApplyError::*;
        match self {
            Format(
                FormatError::UnsupportedVersion { .. }
                | FormatError::LegacyVersion { .. }
                | FormatError::UnsupportedFlags(_)
                | FormatError::UnknownCodec(_)
                | FormatError::UnknownLayout(_)
                | FormatError::UnknownCriticalExtension(_),
            ) => ErrorClass::Unsupported,
            WrongMode(_) | UnsupportedCodec(_) => ErrorClass::Unsupported,
            Format(_)
            | Truncated { .. }
            | CorruptSegment { .. }
            | NewHashMismatch
            | UnexpectedNewImage { .. }
            | TrailingData
            | Poisoned => ErrorClass::BadPatch,
            OldLength { .. } | OldHash { .. } | InterruptedUpdate(_) => ErrorClass::WrongOldImage,
            MemoryBudget { .. } | NewTooLarge { .. } => ErrorClass::Limits,
            OldRead(_) | Sink(_) | Decoder(_) | PartialOutputDamaged { .. } => ErrorClass::Io,
            #[cfg(feature = "std")]
            PatchRead(_) => ErrorClass::Io,
            Unsigned | NotAuthentic { .. } => ErrorClass::NotAuthentic,
            WrongProduct { .. } => ErrorClass::WrongProduct,
            Downgrade { .. } => ErrorClass::Downgrade,
            Expired { .. } => ErrorClass::Expired,
            Replay { .. } => ErrorClass::Replay,
            UpdateLost(_) => ErrorClass::UpdateLost,
        }
    }
}

/// Compare an old image's BLAKE3 with the header's 8-byte old-image check.
pub(crate) fn check_old_hash(
    actual: &blake3::Hash,
    header: &fwdelta_format::Header,
) -> Result<(), ApplyError> {
    if fwdelta_format::truncate_check(actual) != header.old_check {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        return Err(ApplyError::OldHash {
            expected: hex(&header.old_check),
            actual: hex(&actual.as_bytes()[..fwdelta_format::CHECK_LEN]),
        });
    }
    Ok(())
}
