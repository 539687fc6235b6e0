//! The applier's memory model: how many bytes a given decoder window costs, and
//! which window fits a budget. The generator uses it to pick the window for
//! `--apply-memory`; the header records the result; the applier refuses a patch
//! whose claim exceeds its own limit before it reads anything else.
//!
//! Calibration (zstd 1.5.7, measured with `ZSTD_sizeof_DCtx` after decoding a
//! frame of window `W`): `95_976 + W + 3 * min(W, 128 KiB) + 64` bytes. The
//! constants below round that up; `tests::model_covers_the_real_decoder` in
//! `fwdelta-apply` re-measures it so a zstd upgrade cannot silently break it.

use crate::header::{Codec, MAX_WINDOW_LOG, MIN_WINDOW_LOG};

/// The memory model (a namespace; all functions are pure).
#[derive(Debug, Clone, Copy)]
pub struct MemoryModel;

impl MemoryModel {
    /// Fixed part of a zstd decoding context, rounded up from 95,976 bytes.
    pub const DCTX_FIXED: u64 = 100 * 1024;
    /// The applier's own working buffers: decoded-stream buffer, old-image read
    /// buffer, patch input buffer and output buffer, 16 KiB each.
    pub const APPLIER_BUFFERS: u64 = 64 * 1024;
    /// Largest zstd block.
    pub const MAX_BLOCK: u64 = 128 * 1024;

    /// Bytes a zstd decoder with window `2^window_log` holds.
    pub fn decoder(window_log: u8) -> u64 {
        let w = 1u64 << window_log.min(MAX_WINDOW_LOG);
        Self::DCTX_FIXED + w + 3 * w.min(Self::MAX_BLOCK) + 64
    }

    /// Bytes the applier needs in all for a zstd window of `2^window_log`.
    pub fn required(window_log: u8) -> u64 {
        Self::decoder(window_log) + Self::APPLIER_BUFFERS
    }

    /// Bytes the applier needs in all for `codec` (the window matters only
    /// for zstd; stored payloads need no decoder).
    pub fn required_for(codec: Codec, window_log: u8) -> u64 {
        match codec {
            Codec::Stored => Self::APPLIER_BUFFERS,
            Codec::Zstd => Self::required(window_log),
        }
    }

    /// Extra bytes an in-place applier needs: the cell buffer and an 8-byte
    /// patch offset per cell (its segment index, for the verification pass).
    pub fn in_place_extra(cell_log: u8, cells: u64) -> u64 {
        (1u64 << cell_log) + 8 * cells
    }

    /// Extra bytes an executable-aware applier needs: the header it keeps
    /// (`header_len`, which holds the map's wire form), the decoded map (16
    /// bytes per run), and the rewriter's window and scratch (a 16 KiB read
    /// with its context, and one byte per position of it).
    pub fn code_refs_extra(header_len: u64, runs: u64) -> u64 {
        header_len + 16 * runs + 2 * (16 * 1024 + 64)
    }

    /// The largest zstd window whose [`Self::required`] fits `budget`, or
    /// `None` if even the smallest window does not.
    pub fn window_log_for_budget(budget: u64) -> Option<u8> {
        (MIN_WINDOW_LOG..=MAX_WINDOW_LOG)
            .rev()
            .find(|&wl| Self::required(wl) <= budget)
    }

    /// The codec and largest window a budget allows: zstd when its smallest
    /// decoder fits, otherwise stored payloads, otherwise `None`.
    pub fn codec_for_budget(budget: u64) -> Option<(Codec, u8)> {
        match Self::window_log_for_budget(budget) {
            Some(wl) => Some((Codec::Zstd, wl)),
            None if budget >= Self::APPLIER_BUFFERS => Some((Codec::Stored, MIN_WINDOW_LOG)),
            None => None,
        }
    }

    /// The smallest budget any patch can be made for (stored payloads).
    pub fn min_budget() -> u64 {
        Self::APPLIER_BUFFERS
    }

    /// The smallest budget a zstd-compressed patch can be made for.
    pub fn min_zstd_budget() -> u64 {
        Self::required(MIN_WINDOW_LOG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_map_to_windows() {
        assert_eq!(MemoryModel::window_log_for_budget(1 << 20), Some(18));
        assert_eq!(MemoryModel::window_log_for_budget(8 << 20), Some(22));
        assert_eq!(MemoryModel::window_log_for_budget(64 << 10), None);
        assert_eq!(
            MemoryModel::codec_for_budget(64 << 10),
            Some((Codec::Stored, MIN_WINDOW_LOG))
        );
        assert_eq!(MemoryModel::codec_for_budget(63 << 10), None);
        assert_eq!(
            MemoryModel::codec_for_budget(256 << 10),
            Some((Codec::Zstd, 14))
        );
        let min = MemoryModel::min_zstd_budget();
        assert_eq!(
            MemoryModel::window_log_for_budget(min),
            Some(MIN_WINDOW_LOG)
        );
        assert_eq!(MemoryModel::window_log_for_budget(min - 1), None);
        for wl in MIN_WINDOW_LOG..=MAX_WINDOW_LOG {
            let need = MemoryModel::required(wl);
            assert_eq!(MemoryModel::window_log_for_budget(need), Some(wl));
        }
    }
}
