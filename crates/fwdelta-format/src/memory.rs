//! The applier's memory model: how many bytes a given decoder window costs, and
//! which window fits a budget. The generator uses it to pick the window for
//! `--apply-memory`; the header records the result; the applier refuses a patch
//! whose claim exceeds its own limit before it reads anything else.
//!
//! Calibration (zstd 1.5.7, measured with `ZSTD_sizeof_DCtx` after decoding a
//! frame of window `W`): `95_976 + W + 3 * min(W, 128 KiB) + 64` bytes. An
//! LZMA2 decoder (liblzma 5.8, `lzma_raw_decoder_memusage`) holds its
//! dictionary plus a fixed part of about 60 KiB (32 KiB of which is liblzma's
//! own per-stream allowance). The constants below round these up;
//! `memory_model_covers_the_real_decoder` in `fwdelta-apply` re-measures both
//! so an upgrade cannot silently break them.

use crate::diff_model::DiffModel;
use crate::head_model::HeadModel;
use crate::header::{Codec, Layout, MAX_WINDOW_LOG, MIN_WINDOW_LOG};
#[allow(unused_imports)]
use crate::prelude::*;
use crate::split_block::MAX_BLOCK_BUFFER;

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
    /// Fixed part of an LZMA2 decoder (probability tables, range decoder,
    /// liblzma's bookkeeping), rounded up.
    pub const LZMA_FIXED: u64 = 80 * 1024;
    /// Smallest LZMA2 dictionary (log2): smaller windows decode with this one.
    pub const LZMA_MIN_DICT_LOG: u8 = 12;

    /// Bytes a zstd decoder with window `2^window_log` holds.
    pub fn decoder(window_log: u8) -> u64 {
        let w = 1u64 << window_log.min(MAX_WINDOW_LOG);
        Self::DCTX_FIXED + w + 3 * w.min(Self::MAX_BLOCK) + 64
    }

    /// Bytes the applier needs in all for a zstd window of `2^window_log`.
    pub fn required(window_log: u8) -> u64 {
        Self::decoder(window_log) + Self::APPLIER_BUFFERS
    }

    /// Dictionary bytes of an LZMA2 decoder for window `2^window_log` (at
    /// least LZMA2's 4 KiB minimum).
    pub fn lzma_dict(window_log: u8) -> u64 {
        1u64 << window_log.clamp(Self::LZMA_MIN_DICT_LOG, MAX_WINDOW_LOG)
    }

    /// Bytes an LZMA2 decoder with window `2^window_log` holds.
    pub fn lzma_decoder(window_log: u8) -> u64 {
        Self::LZMA_FIXED + Self::lzma_dict(window_log)
    }

    /// Extra buffers of the split-streams layout: one block's compressed
    /// heads and diffs, and a 16 KiB decoded buffer for each of those two
    /// streams (the literals use the applier's decoded-stream buffer).
    pub const SPLIT_BUFFERS: u64 = MAX_BLOCK_BUFFER as u64 + 32 * 1024;

    /// Extra buffer of the modelled layout: the old bytes around each
    /// 16 KiB run of difference bytes, read for the diff model's context.
    pub const MODELLED_CONTEXT: u64 = 16 * 1024 + 64;

    /// Bytes one decoder of `codec` with window `2^window_log` holds (none
    /// for stored payloads).
    pub fn decoder_for(codec: Codec, window_log: u8) -> u64 {
        match codec {
            Codec::Stored => 0,
            Codec::Zstd => Self::decoder(window_log),
            Codec::Lzma2 => Self::lzma_decoder(window_log),
        }
    }

    /// Bytes the applier needs in all for `codec` with a window of
    /// `2^window_log`, in the interleaved layout (stored payloads need no
    /// decoder).
    pub fn required_for(codec: Codec, window_log: u8) -> u64 {
        Self::decoder_for(codec, window_log) + Self::APPLIER_BUFFERS
    }

    /// The windows (log2) of the split layout's streams — heads, diffs,
    /// literals — for a header window of `2^window_log`: the diff stream gets
    /// the header's window, the literals half of it, the heads a sixteenth
    /// (never below the format's smallest window). Diff bytes repeat from
    /// far back (the same change in every moved function); literals and
    /// heads gain little from more (P2: a 1 MiB diff window made the patch
    /// 4% smaller than 512 KiB; P7: 1 MiB for literals instead of 512 KiB
    /// saved 0.2%).
    pub fn split_window_logs(window_log: u8) -> [u8; 3] {
        [
            window_log.saturating_sub(4).max(MIN_WINDOW_LOG),
            window_log,
            window_log.saturating_sub(1).max(MIN_WINDOW_LOG),
        ]
    }

    /// [`Self::required_for`] in `layout`: the split layout runs three
    /// decoders with the windows of [`Self::split_window_logs`] and holds a
    /// block.
    pub fn required_for_layout(codec: Codec, window_log: u8, layout: Layout) -> u64 {
        match layout {
            Layout::Interleaved => Self::required_for(codec, window_log),
            Layout::Split => {
                Self::split_window_logs(window_log)
                    .into_iter()
                    .map(|wl| Self::decoder_for(codec, wl))
                    .sum::<u64>()
                    + Self::APPLIER_BUFFERS
                    + Self::SPLIT_BUFFERS
            }
            Layout::Modelled => {
                let [_, d, l] = Self::split_window_logs(window_log);
                HeadModel::MEMORY
                    + DiffModel::memory(d)
                    + Self::decoder_for(codec, l)
                    + Self::APPLIER_BUFFERS
                    + Self::SPLIT_BUFFERS
                    + Self::MODELLED_CONTEXT
            }
        }
    }

    /// Extra bytes an in-place applier needs: the cell buffer and an 8-byte
    /// patch offset per cell (its segment index, for the verification pass).
    pub fn in_place_extra(cell_log: u8, cells: u64) -> u64 {
        (1u64 << cell_log) + 8 * cells
    }

    /// Extra bytes the applier holds for a signed patch of `segments`
    /// segments: its check table (8 bytes a segment), the signature count and
    /// room for the most signatures a patch may carry.
    pub fn signed_extra(segments: u64) -> u64 {
        segments * crate::CHECK_LEN as u64
            + 1
            + (crate::signature::MAX_SIGNATURES * crate::signature::ENTRY_LEN) as u64
    }

    /// Extra bytes an executable-aware applier needs: the header it keeps
    /// (`header_len`, which holds the map's wire form), the decoded map (16
    /// bytes per run), and the rewriter's window and scratch (a 16 KiB read
    /// with its context, and one byte per position of it).
    pub fn code_refs_extra(header_len: u64, runs: u64) -> u64 {
        header_len + 16 * runs + 2 * (16 * 1024 + 64)
    }

    /// The largest window of `codec` whose [`Self::required_for`] fits
    /// `budget`, or `None` if even the smallest window does not.
    pub fn window_log_for_budget(codec: Codec, budget: u64) -> Option<u8> {
        Self::window_log_for_budget_in(codec, budget, Layout::Interleaved)
    }

    /// [`Self::window_log_for_budget`] in `layout`.
    pub fn window_log_for_budget_in(codec: Codec, budget: u64, layout: Layout) -> Option<u8> {
        (MIN_WINDOW_LOG..=MAX_WINDOW_LOG)
            .rev()
            .find(|&wl| Self::required_for_layout(codec, wl, layout) <= budget)
    }

    /// The codec and largest window a budget allows: `preferred` when its
    /// smallest decoder fits, otherwise stored payloads, otherwise `None`.
    pub fn codec_for_budget(preferred: Codec, budget: u64) -> Option<(Codec, u8)> {
        match Self::window_log_for_budget(preferred, budget) {
            Some(wl) if preferred != Codec::Stored => Some((preferred, wl)),
            _ if budget >= Self::APPLIER_BUFFERS => Some((Codec::Stored, MIN_WINDOW_LOG)),
            _ => None,
        }
    }

    /// The smallest budget any patch can be made for (stored payloads).
    pub fn min_budget() -> u64 {
        Self::APPLIER_BUFFERS
    }

    /// The smallest budget a patch compressed with `codec` can be made for.
    pub fn min_budget_for(codec: Codec) -> u64 {
        Self::required_for(codec, MIN_WINDOW_LOG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_map_to_windows() {
        let zstd = |b| MemoryModel::window_log_for_budget(Codec::Zstd, b);
        assert_eq!(zstd(1 << 20), Some(18));
        assert_eq!(zstd(8 << 20), Some(22));
        assert_eq!(zstd(64 << 10), None);
        for preferred in [Codec::Zstd, Codec::Lzma2, Codec::Stored] {
            assert_eq!(
                MemoryModel::codec_for_budget(preferred, 64 << 10),
                Some((Codec::Stored, MIN_WINDOW_LOG))
            );
            assert_eq!(MemoryModel::codec_for_budget(preferred, 63 << 10), None);
        }
        assert_eq!(
            MemoryModel::codec_for_budget(Codec::Zstd, 256 << 10),
            Some((Codec::Zstd, 14))
        );
        // LZMA2's fixed part is smaller: the default 2 MiB budget gets the
        // same 1 MiB window, 256 KiB gets a larger one than zstd's.
        assert_eq!(
            MemoryModel::codec_for_budget(Codec::Lzma2, 2 << 20),
            Some((Codec::Lzma2, 20))
        );
        assert_eq!(
            MemoryModel::codec_for_budget(Codec::Lzma2, 256 << 10),
            Some((Codec::Lzma2, 16))
        );
        assert_eq!(
            MemoryModel::codec_for_budget(Codec::Stored, 2 << 20),
            Some((Codec::Stored, MIN_WINDOW_LOG))
        );
        let smallest = [
            (Codec::Zstd, MIN_WINDOW_LOG),
            (Codec::Lzma2, MemoryModel::LZMA_MIN_DICT_LOG),
        ];
        for (codec, wl) in smallest {
            let min = MemoryModel::min_budget_for(codec);
            assert_eq!(MemoryModel::window_log_for_budget(codec, min), Some(wl));
            assert_eq!(MemoryModel::window_log_for_budget(codec, min - 1), None);
        }
        // Windows below LZMA2's minimum dictionary cost the minimum.
        assert_eq!(
            MemoryModel::required_for(Codec::Lzma2, MIN_WINDOW_LOG),
            MemoryModel::required_for(Codec::Lzma2, MemoryModel::LZMA_MIN_DICT_LOG)
        );
        for wl in MIN_WINDOW_LOG..=MAX_WINDOW_LOG {
            let need = MemoryModel::required(wl);
            assert_eq!(zstd(need), Some(wl));
        }
        // Split streams: three decoders and a block; the default 2 MiB
        // budget keeps LZMA2's 1 MiB window for the diff stream (512 KiB
        // literals, 64 KiB heads); 256 KiB is too small.
        let split = |codec, b| MemoryModel::window_log_for_budget_in(codec, b, Layout::Split);
        assert_eq!(MemoryModel::split_window_logs(20), [16, 20, 19]);
        assert_eq!(MemoryModel::split_window_logs(12), [10, 12, 11]);
        assert_eq!(split(Codec::Lzma2, 2 << 20), Some(20));
        assert_eq!(split(Codec::Lzma2, 256 << 10), None);
        assert_eq!(split(Codec::Zstd, 2 << 20), Some(18));
        assert_eq!(
            MemoryModel::required_for_layout(Codec::Lzma2, 20, Layout::Split),
            (3 * 80 + 1024 + 512 + 64) * 1024 + 64 * 1024 + 96 * 1024
        );
        // Modelled: the diff model (1 MiB of tables, 256 KiB of match
        // positions, a 1 MiB history) instead of the diff decoder and the
        // head model (450 KiB) instead of the heads decoder; the default
        // 4 MiB budget gives it window 2^20, 1 MiB does not hold it.
        let modelled = |b| MemoryModel::window_log_for_budget_in(Codec::Lzma2, b, Layout::Modelled);
        assert_eq!(
            MemoryModel::required_for_layout(Codec::Lzma2, 20, Layout::Modelled),
            3_608_832
        );
        assert_eq!(modelled(4 << 20), Some(20));
        assert_eq!(modelled(1 << 20), None);
        assert_eq!(
            MemoryModel::required_for_layout(Codec::Lzma2, 10, Layout::Modelled),
            2_041_088
        );
    }
}
