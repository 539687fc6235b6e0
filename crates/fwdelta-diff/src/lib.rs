//! Server-side fwdelta patch generator.
//!
//! Pipeline, one module per step:
//! 1. [`matcher`]: find an edit script (bsdiff-style matches via `bidiff`'s
//!    suffix array) as a list of [`Op`]s covering the new image.
//! 2. [`segmenter`]: cut the ops into segments of roughly equal compressed cost,
//!    so each segment is independently decodable at ~1% size cost.
//! 3. [`segment_encoder`]: turn each segment into a record stream and compress it
//!    (one zstd frame, window bounded by the applier's memory budget), segments
//!    in parallel.
//! 4. [`container_writer`]: header, segments with checks, trailer.
//!
//! Work runs on the ambient rayon pool: wrap calls in
//! `rayon::ThreadPool::install` to choose the thread count.
//!
//! Cost: the suffix array of the old image (5 bytes per old byte, the main
//! memory cost), the op list (32 bytes per match), the patch itself, and one
//! zstd compression context per worker thread.

pub mod container_writer;
mod error;
pub mod in_place_planner;
pub mod matcher;
pub mod segment_encoder;
pub mod segmenter;

pub use error::DiffError;
pub use matcher::Op;

use fwdelta_format::header::{MAX_CELLS, MAX_CELL_LOG, MIN_CELL_LOG, MIN_WINDOW_LOG};
use fwdelta_format::{Codec, MemoryModel, MAX_IMAGE_LEN};
use std::time::{Duration, Instant};

/// Generator options.
#[derive(Debug, Clone)]
pub struct Options {
    /// zstd level for segment payloads, 1..=22. Default 19.
    pub level: i32,
    /// Memory the applier may use (bytes); picks the decoder window and is
    /// written into the header. Default 2 MiB (a 1 MiB window: on the public
    /// corpus a 256 KiB window made some patches 60% larger, and larger windows
    /// gained nothing).
    pub apply_memory: u64,
    /// Target compressed-cost of one segment, in estimated bytes (see
    /// [`segmenter`]). Smaller segments resume and parallelise at a finer grain
    /// but cost more patch bytes. Default 1 MiB: on the public corpus it cost
    /// +0.34% and +0.42% on the two literal-heavy pairs against one segment,
    /// where 256 KiB cost up to +1.81%. Capped at
    /// [`segmenter::MAX_SEGMENT_COST`] (256 MiB), so `u64::MAX` means "as few
    /// segments as the format allows".
    pub segment_cost: u64,
    /// Make an in-place patch with cells of `2^cell_log` bytes (the applier's
    /// scratch size), instead of one for a separate output. Default `None`.
    pub in_place: Option<u8>,
    /// Put every segment boundary on a multiple of this many new bytes (the
    /// target's flash page), so an applier writing whole pages can checkpoint
    /// after any segment. Default 1 (no constraint). In-place cells are
    /// always aligned to their size.
    pub align: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            level: 19,
            apply_memory: 2 << 20,
            segment_cost: 1 << 20,
            in_place: None,
            align: 1,
        }
    }
}

impl Options {
    /// Check the options and derive the codec and largest decoder window
    /// (log2) the budget allows: zstd when its smallest decoder fits, stored
    /// payloads below that. Segments whose streams are smaller use smaller
    /// windows.
    pub fn codec(&self) -> Result<(Codec, u8), DiffError> {
        if !(1..=22).contains(&self.level) {
            return Err(DiffError::InvalidOption(format!(
                "compression level {} is outside 1..=22",
                self.level
            )));
        }
        if self.segment_cost == 0 {
            return Err(DiffError::InvalidOption(
                "segment cost must be at least 1".into(),
            ));
        }
        if let Some(cl) = self.in_place {
            if !(MIN_CELL_LOG..=MAX_CELL_LOG).contains(&cl) {
                return Err(DiffError::InvalidOption(format!(
                    "in-place scratch 2^{cl} is outside 4 KiB..=16 MiB"
                )));
            }
        }
        MemoryModel::codec_for_budget(self.apply_memory).ok_or(DiffError::BudgetTooSmall {
            budget: self.apply_memory,
            minimum: MemoryModel::min_budget(),
        })
    }
}

/// A generated patch and what it took to make it.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The container bytes.
    pub bytes: Vec<u8>,
    /// Statistics.
    pub report: DiffReport,
}

/// Statistics of one diff.
#[derive(Debug, Clone)]
pub struct DiffReport {
    /// Ops in the edit script.
    pub ops: usize,
    /// New bytes produced from old bytes plus a difference.
    pub diff_bytes: u64,
    /// New bytes carried as literals.
    pub literal_bytes: u64,
    /// Segments in the patch.
    pub segments: usize,
    /// In-place patches: new bytes carried as literals because their old bytes
    /// are overwritten before they are needed.
    pub forced_literal_bytes: u64,
    /// Payload codec (zstd, or stored when the budget cannot hold a decoder).
    pub codec: Codec,
    /// Decoder window (log2) declared in the header: the largest any segment
    /// needs, at most the budget's.
    pub window_log: u8,
    /// Time spent hashing and matching.
    pub match_time: Duration,
    /// Time spent segmenting, compressing and writing.
    pub encode_time: Duration,
}

/// The edit script of one old/new pair, before encoding. Lets a caller encode
/// the same matches with different options (as the benchmark does to measure
/// what segmentation costs).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Ops covering the new image in order.
    pub ops: Vec<Op>,
    old_hash: [u8; 32],
    new_hash: [u8; 32],
    match_time: Duration,
}

impl Plan {
    /// Hash both images and find matches. Cost: the suffix array (5 bytes per
    /// old byte) and one pass over each image to hash it.
    pub fn build(old: &[u8], new: &[u8]) -> Result<Plan, DiffError> {
        for (which, len) in [("old", old.len()), ("new", new.len())] {
            if len as u64 > MAX_IMAGE_LEN {
                return Err(DiffError::TooLarge {
                    which,
                    len: len as u64,
                });
            }
        }
        let start = Instant::now();
        let ((old_hash, new_hash), ops) = rayon::join(
            || rayon::join(|| hash(old), || hash(new)),
            || matcher::find_ops(old, new),
        );
        Ok(Plan {
            ops,
            old_hash,
            new_hash,
            match_time: start.elapsed(),
        })
    }

    /// Encode this plan into a patch container.
    pub fn encode(&self, old: &[u8], new: &[u8], opts: &Options) -> Result<Patch, DiffError> {
        let (codec, max_window_log) = opts.codec()?;
        let start = Instant::now();
        let (segments, forced_literal_bytes) = match opts.in_place {
            Some(cl) => {
                let cells = (new.len() as u64).div_ceil(1 << cl);
                if cells > MAX_CELLS {
                    return Err(DiffError::InvalidOption(format!(
                        "{cells} in-place cells of 2^{cl} bytes: at most {MAX_CELLS}; use a larger scratch"
                    )));
                }
                let p = in_place_planner::plan(&self.ops, new.len() as u64, cl);
                (p.segments, p.forced_literal_bytes)
            }
            None => {
                let segments = segmenter::split(&self.ops, old, new, opts.segment_cost);
                (segmenter::align_boundaries(segments, opts.align), 0)
            }
        };
        let encoded =
            segment_encoder::encode_all(&segments, old, new, codec, opts.level, max_window_log)?;
        let window_log = encoded
            .iter()
            .map(|e| e.window_log)
            .max()
            .unwrap_or(MIN_WINDOW_LOG);
        let bytes = container_writer::write(
            &container_writer::Images {
                old_len: old.len() as u64,
                old_hash: self.old_hash,
                new_len: new.len() as u64,
                new_hash: self.new_hash,
            },
            codec,
            opts.in_place,
            &segments,
            &encoded,
        )?;
        let (diff_bytes, literal_bytes) = self
            .ops
            .iter()
            .fold((0, 0), |(d, l), op| (d + op.diff_len, l + op.literal_len));
        Ok(Patch {
            bytes,
            report: DiffReport {
                ops: self.ops.len(),
                diff_bytes,
                literal_bytes,
                segments: segments.len(),
                forced_literal_bytes,
                codec,
                window_log,
                match_time: self.match_time,
                encode_time: start.elapsed(),
            },
        })
    }
}

/// Make a patch turning `old` into `new`. One-shot form of
/// [`Plan::build`] followed by [`Plan::encode`].
pub fn diff(old: &[u8], new: &[u8], opts: &Options) -> Result<Patch, DiffError> {
    opts.codec()?;
    Plan::build(old, new)?.encode(old, new, opts)
}

fn hash(data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    if data.len() >= 1 << 20 {
        h.update_rayon(data);
    } else {
        h.update(data);
    }
    *h.finalize().as_bytes()
}
