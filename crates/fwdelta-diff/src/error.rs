//! Errors of the generator.

use thiserror::Error;

/// Why a patch could not be made.
#[derive(Debug, Error)]
pub enum DiffError {
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The applier memory budget cannot hold even the smallest decoder.
    #[error("apply memory budget of {budget} bytes is below the minimum of {minimum} bytes")]
    BudgetTooSmall {
        /// Requested budget.
        budget: u64,
        /// Smallest workable budget.
        minimum: u64,
    },
    /// An image exceeds the format limit.
    #[error("{which} image of {len} bytes exceeds the 1 TiB format limit")]
    TooLarge {
        /// "old" or "new".
        which: &'static str,
        /// Its length.
        len: u64,
    },
    /// A segment's compressed payload would exceed the format's limit.
    #[error("segment {index} compresses to {len} bytes, over the format's payload limit")]
    PayloadTooLarge {
        /// Segment index.
        index: usize,
        /// Compressed length.
        len: usize,
    },
    /// A block of the modelled layout did not fit the applier's block
    /// buffer even grouped by raw size (the head and diff models, unlike
    /// LZMA2 and zstd, can code bytes they predict badly larger than they
    /// are). The generator then makes the patch in the split layout.
    #[error("a block of modelled heads and diffs does not fit the block buffer")]
    ModelledBlockTooLarge,
    /// The compressor failed.
    #[error("compression failed: {0}")]
    Compress(#[from] std::io::Error),
    /// The LZMA2 encoder could not be set up.
    #[error("cannot set up the LZMA2 encoder: {0}")]
    Lzma(#[from] liblzma::stream::Error),
}
