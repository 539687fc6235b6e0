//! The segment encoder: turns a planned segment into its records and
//! compresses them, in layout 1 as one raw LZMA2 stream or one magicless zstd
//! frame (or stored as they are, for budgets below any decoder), in layout 2
//! as three split streams (`split_encoder`); windows fit the
//! applier's budget. Segments are encoded in parallel.

use crate::error::DiffError;
use crate::segmenter::SegmentPlan;
use crate::split_encoder;
use crate::stream_encoder::StreamEncoder;
use fwdelta_format::header::{MAX_WINDOW_LOG, MIN_WINDOW_LOG};
use fwdelta_format::record::Record;
use fwdelta_format::reference_rewriter::Arch;
use fwdelta_format::segment::MAX_PAYLOAD_LEN;
use fwdelta_format::{literal_filter, Codec, Layout, MemoryModel};
use rayon::prelude::*;
use std::io::Write;
use std::ops::Deref;

/// Difference bytes are computed through a scratch buffer of this size.
pub(crate) const SCRATCH: usize = 64 * 1024;

/// One encoded segment.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    /// The compressed payload (one raw LZMA2 stream, one magicless zstd
    /// frame, or the stream itself when stored).
    pub payload: Vec<u8>,
    /// log2 of the window the frame was made with: the budget's window, or less
    /// when the segment's whole stream is smaller.
    pub window_log: u8,
}

/// The new image, and how its literal runs are stored (see
/// [`fwdelta_format::literal_filter`]). Dereferences to the image's bytes.
#[derive(Debug, Clone, Copy)]
pub struct NewImage<'a> {
    /// The image.
    pub bytes: &'a [u8],
    /// Instruction set whose literal filter literal runs go through.
    pub literal_filter: Option<Arch>,
}

impl Deref for NewImage<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl NewImage<'_> {
    /// Write the literal run `self[at..at + len]` in its stored form.
    /// Cost: with a filter, one copy of the run into `scratch`.
    pub(crate) fn write_literals(
        &self,
        out: &mut impl Write,
        at: usize,
        len: usize,
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let run = &self.bytes[at..at + len];
        match self.literal_filter {
            None => out.write_all(run),
            Some(arch) => {
                scratch.clear();
                scratch.extend_from_slice(run);
                literal_filter::filter_run(arch, scratch, at as u64);
                out.write_all(scratch)
            }
        }
    }
}

/// Encode every segment (in parallel on the ambient rayon pool). Cost per
/// worker: one compression context for `level`/`max_window_log` (LZMA2 at
/// preset 9: about 10x the window) and a 64 KiB scratch buffer; the payloads
/// are held in memory.
pub fn encode_all(
    segments: &[SegmentPlan],
    old: &[u8],
    new: &NewImage,
    codec: Codec,
    layout: Layout,
    level: i32,
    max_window_log: u8,
) -> Result<Vec<EncodedSegment>, DiffError> {
    segments
        .par_iter()
        .enumerate()
        .map(|(index, seg)| {
            let encoded = encode(seg, old, new, codec, layout, level, max_window_log)?;
            if encoded.payload.len() > MAX_PAYLOAD_LEN as usize {
                return Err(DiffError::PayloadTooLarge {
                    index,
                    len: encoded.payload.len(),
                });
            }
            Ok(encoded)
        })
        .collect()
}

/// A record and where its bytes come from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Planned {
    pub(crate) record: Record,
    /// New-image offset of the record's first diff byte.
    pub(crate) diff_new: usize,
    /// Old-image offset of the record's first diff byte.
    pub(crate) diff_old: usize,
}

/// The records of one segment. Record `k`'s seek moves the old cursor from the
/// end of op `k`'s diff range to the start of op `k + 1`'s; the last seek is 0.
/// Each op's diff range is cut into copy/diff pieces by [`copy_diff_pieces`];
/// a record that only copies is merged into the next. A last record that only
/// copies is left out (the applier copies what the records leave of the
/// segment), unless it is the only one: a payload is never empty.
fn plan_records(seg: &SegmentPlan, old: &[u8], new: &[u8], min_copy_run: usize) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::with_capacity(seg.ops.len());
    let mut at = seg.new_offset as usize;
    for (k, op) in seg.ops.iter().enumerate() {
        let seek = match seg.ops.get(k + 1) {
            Some(next) => next.old_start as i64 - op.old_end() as i64,
            None => 0,
        };
        let (o, d) = (op.old_start as usize, op.diff_len as usize);
        let pieces = copy_diff_pieces(&old[o..o + d], &new[at..at + d], min_copy_run);
        let last = pieces.len() - 1;
        let mut piece_at = 0;
        for (i, &(copy, diff)) in pieces.iter().enumerate() {
            let (literal_len, seek) = if i == last {
                (op.literal_len, seek)
            } else {
                (0, 0)
            };
            let mut record = Record {
                copy_len: copy as u64,
                diff_len: diff as u64,
                literal_len,
                seek,
            };
            // A record that only copies (the matcher split a run at an op
            // boundary) folds into the next one's copy: one head fewer.
            if let Some(prev) = out.last().filter(|p| copy_only(&p.record)) {
                record.copy_len += prev.record.copy_len;
                out.pop();
            }
            out.push(Planned {
                record,
                diff_new: at + piece_at + copy,
                diff_old: o + piece_at + copy,
            });
            piece_at += copy + diff;
        }
        at += d + op.literal_len as usize;
    }
    // (The last record's seek is always 0.)
    if out.len() > 1 && out.last().is_some_and(|p| copy_only(&p.record)) {
        out.pop();
    }
    out
}

/// Whether `r` only copies old bytes (no diff, literal or seek).
fn copy_only(r: &Record) -> bool {
    r.diff_len == 0 && r.literal_len == 0 && r.seek == 0
}

/// The LZMA2 preset for a zstd-scale `level` (1..=22): `min(level / 2, 9)`,
/// with liblzma's "extreme" flag from level 12 (preset 6) up. On the public
/// corpus "extreme" cost 7% more encoding time for 3.1% (P6), 0.8% (P2) and
/// 0.1% (P4) smaller payloads.
pub fn lzma_preset(level: i32) -> u32 {
    let preset = (level.max(0) / 2).min(9) as u32;
    if level >= 12 {
        preset | liblzma::stream::PRESET_EXTREME
    } else {
        preset
    }
}

/// Smallest window (log2, within the format's range and at most `max`) that
/// holds a whole stream of `len` bytes.
fn window_for(len: u64, max: u8) -> u8 {
    let need = (64 - len.saturating_sub(1).leading_zeros()) as u8;
    need.clamp(MIN_WINDOW_LOG, max.max(MIN_WINDOW_LOG))
}

/// Smallest header window (log2, at most `max`) whose split-layout stream
/// windows ([`MemoryModel::split_window_logs`]) each hold their whole stream
/// of `lens` (heads, diffs, literals) bytes.
fn split_window_for(lens: [u64; 3], max: u8) -> u8 {
    let max = max.max(MIN_WINDOW_LOG);
    let need = lens.map(|len| window_for(len, MAX_WINDOW_LOG));
    (MIN_WINDOW_LOG..=max)
        .find(|&w| {
            let have = MemoryModel::split_window_logs(w);
            have.iter().zip(&need).all(|(h, n)| h >= n)
        })
        .unwrap_or(max)
}

/// Encode one segment in `layout`: plan its records, pick the window,
/// compress. From [`SEARCH_LEVEL`], LZMA2 segments are planned with each
/// threshold of [`MIN_COPY_RUN_LZMA2_SEARCH`] and the smallest kept.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    seg: &SegmentPlan,
    old: &[u8],
    new: &NewImage,
    codec: Codec,
    layout: Layout,
    level: i32,
    max_window_log: u8,
) -> Result<EncodedSegment, DiffError> {
    let modelled = layout == Layout::Modelled;
    let runs: &[usize] = match codec {
        Codec::Stored => &[MIN_COPY_RUN_STORED],
        _ if modelled && level >= SEARCH_LEVEL => &MIN_COPY_RUN_MODELLED_SEARCH,
        _ if modelled => &[MIN_COPY_RUN_MODELLED],
        Codec::Zstd => &[MIN_COPY_RUN_ZSTD],
        Codec::Lzma2 if level >= SEARCH_LEVEL => &MIN_COPY_RUN_LZMA2_SEARCH,
        Codec::Lzma2 => &[MIN_COPY_RUN_LZMA2],
    };
    let encode_with = |run: usize| -> Result<EncodedSegment, DiffError> {
        let records = plan_records(seg, old, new, run);
        Ok(match layout {
            Layout::Interleaved => {
                encode_interleaved(&records, old, new, codec, level, max_window_log)?
            }
            Layout::Split | Layout::Modelled => {
                let lens = records.iter().fold([0u64; 3], |[h, d, l], p| {
                    let r = &p.record;
                    [h + r.head_len() as u64, d + r.diff_len, l + r.literal_len]
                });
                let window_log = split_window_for(lens, max_window_log);
                EncodedSegment {
                    payload: split_encoder::encode(
                        &records, old, new, codec, level, window_log, modelled,
                    )?,
                    window_log,
                }
            }
        })
    };
    // Every list above starts with the default threshold.
    let mut best = encode_with(runs[0])?;
    for &run in &runs[1..] {
        let e = encode_with(run)?;
        if e.payload.len() < best.payload.len() {
            best = e;
        }
    }
    Ok(best)
}

/// Encode planned records as one interleaved stream: one magicless zstd
/// frame, one raw LZMA2 stream, or the stream itself.
fn encode_interleaved(
    records: &[Planned],
    old: &[u8],
    new: &NewImage,
    codec: Codec,
    level: i32,
    max_window_log: u8,
) -> Result<EncodedSegment, DiffError> {
    let stream_len: u64 = records.iter().map(|p| p.record.stream_len()).sum();
    let window_log = window_for(stream_len, max_window_log);
    let payload = match codec {
        Codec::Zstd | Codec::Lzma2 => {
            let mut enc = StreamEncoder::new(codec, level, window_log)?;
            write_stream(&mut enc, records, old, new)?;
            enc.finish()?
        }
        Codec::Stored => {
            let mut payload = Vec::new();
            write_stream(&mut payload, records, old, new)?;
            return Ok(EncodedSegment {
                payload,
                window_log: MIN_WINDOW_LOG,
            });
        }
    };
    Ok(EncodedSegment {
        payload,
        window_log,
    })
}

/// Write a segment's record stream: each head, its diff bytes, its literals.
fn write_stream(
    enc: &mut impl Write,
    records: &[Planned],
    old: &[u8],
    new: &NewImage,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(fwdelta_format::record::MAX_HEAD_LEN);
    let mut scratch = vec![0u8; SCRATCH];
    let mut lits = Vec::new();
    for p in records {
        let r = &p.record;
        head.clear();
        r.encode_head(&mut head);
        enc.write_all(&head)?;
        let d = r.diff_len as usize;
        write_diff(
            enc,
            &old[p.diff_old..p.diff_old + d],
            &new[p.diff_new..p.diff_new + d],
            &mut scratch,
        )?;
        new.write_literals(enc, p.diff_new + d, r.literal_len as usize, &mut lits)?;
    }
    Ok(())
}

/// Shortest run of equal bytes inside a diff range worth its own record when
/// the stream is compressed: below it, the zeros stay in the stream (cheaper
/// than a record head once compressed); above it, the run becomes a verbatim
/// copy, which costs no stream bytes at all.
/// On the public corpus 48 beat 24 by 0.2-5% (fewer, longer records; P6 -5%)
/// and 64 or 128 lost again on the pairs with scattered changes.
const MIN_COPY_RUN_ZSTD: usize = 48;

/// The same threshold for LZMA2, whose repeat matches make long zero runs in
/// the diff bytes cheaper than in zstd, so runs stay in the stream longer.
/// Against 48, 96 made patches smaller on five of six corpus pairs it moved
/// (P6 -5.9%, P4 -0.4%, P7 -0.1%, both bundled firmware pairs -0.4%/-1.1%)
/// and 1.8% larger on P2; 64 gained less; 128 was within 1.2% of 96 either
/// way on the small pairs (not measured on P4/P7).
const MIN_COPY_RUN_LZMA2: usize = 96;

/// From this level (`--level max` is 22), LZMA2 segments are encoded once per
/// threshold in [`MIN_COPY_RUN_LZMA2_SEARCH`] and the smallest is kept: the
/// best threshold differs between images (P2 prefers 48, P6 96 or more), and
/// the choice is free in the format, since records are records.
pub const SEARCH_LEVEL: i32 = 20;

/// The thresholds `--level max` tries, the default first.
const MIN_COPY_RUN_LZMA2_SEARCH: [usize; 3] = [MIN_COPY_RUN_LZMA2, 48, 192];

/// The same threshold when the diff model codes the diff bytes (layout 3,
/// with either codec): it codes zero runs amid changes for a fraction of a
/// bit per byte, cheaper than a record head. Against 96, 192 made every
/// pair it was measured on smaller (P6 -2.1%, A2 -2.0%, P4 -0.5%, A1 -0.4%,
/// P2 -0.2%, P7 -0.2%); 384 lost 2.7% on P2 for another 0.7% on P6.
const MIN_COPY_RUN_MODELLED: usize = 192;

/// The thresholds `--level max` tries in layout 3, the default first.
const MIN_COPY_RUN_MODELLED_SEARCH: [usize; 3] = [MIN_COPY_RUN_MODELLED, 96, 384];

/// The same threshold for stored streams, where every zero byte costs a byte
/// and a record head costs about four.
const MIN_COPY_RUN_STORED: usize = 6;

/// Cut a diff range into (copy, diff) pieces: each piece copies a run of equal
/// bytes verbatim and then carries differences. A run of equal bytes at the start
/// of a piece is always a copy; inside, only runs of `min_copy_run` or more
/// start a new piece. Always returns at least one piece; pieces tile the range.
pub fn copy_diff_pieces(old: &[u8], new: &[u8], min_copy_run: usize) -> Vec<(usize, usize)> {
    let len = old.len().min(new.len());
    let mut pieces = Vec::new();
    let (mut copy, mut diff) = (0usize, 0usize);
    let mut j = 0;
    while j < len {
        let eq = old[j..len]
            .iter()
            .zip(&new[j..len])
            .take_while(|(a, b)| a == b)
            .count();
        if eq > 0 {
            if diff == 0 {
                copy += eq;
            } else if eq >= min_copy_run {
                pieces.push((copy, diff));
                copy = eq;
                diff = 0;
            } else {
                diff += eq;
            }
            j += eq;
        } else {
            let ne = old[j..len]
                .iter()
                .zip(&new[j..len])
                .take_while(|(a, b)| a != b)
                .count();
            diff += ne;
            j += ne;
        }
    }
    pieces.push((copy, diff));
    pieces
}

pub(crate) fn write_diff(
    enc: &mut impl Write,
    old: &[u8],
    new: &[u8],
    scratch: &mut [u8],
) -> std::io::Result<()> {
    for (chunk_new, chunk_old) in new.chunks(scratch.len()).zip(old.chunks(scratch.len())) {
        let out = &mut scratch[..chunk_new.len()];
        for ((s, n), o) in out.iter_mut().zip(chunk_new).zip(chunk_old) {
            *s = n.wrapping_sub(*o);
        }
        enc.write_all(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::Op;

    /// Records of one segment made of `ops` over `old`/`new`.
    fn records_of(ops: Vec<Op>, old: &[u8], new: &[u8]) -> Vec<Record> {
        let seg = SegmentPlan {
            new_offset: 0,
            new_len: new.len() as u64,
            old_start: ops[0].old_start,
            ops,
        };
        plan_records(&seg, old, new, MIN_COPY_RUN_STORED)
            .iter()
            .map(|p| p.record)
            .collect()
    }

    #[test]
    fn a_trailing_copy_record_is_left_to_the_implied_tail_copy() {
        let old = vec![7u8; 1000];
        let mut new = old.clone();
        new[100] = 9;
        let whole = Op {
            old_start: 0,
            diff_len: 1000,
            literal_len: 0,
        };
        let recs = records_of(vec![whole], &old, &new);
        // copy 100, one diff byte; the 899 unchanged bytes after it are implied
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert_eq!((recs[0].copy_len, recs[0].diff_len), (100, 1));
        // a copy that is the segment's only record stays (no empty payload)
        let recs = records_of(vec![whole], &old, &old);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].copy_len, 1000);
        // a trailing record with literal bytes stays
        let ops = vec![Op {
            old_start: 0,
            diff_len: 990,
            literal_len: 10,
        }];
        let recs = records_of(ops, &old, &new);
        assert_eq!(recs.last().map(|r| r.literal_len), Some(10), "{recs:?}");
    }

    #[test]
    fn pieces_tile_and_split_long_equal_runs() {
        let old = vec![0u8; 200];
        let mut new = old.clone();
        new[50] = 1;
        new[60] = 1; // short equal gap: stays in the diff
        new[150] = 1; // long equal gap before it: new piece
        let p = copy_diff_pieces(&old, &new, 24);
        assert_eq!(p, vec![(50, 11), (89, 1), (49, 0)]);
        assert_eq!(p.iter().map(|(c, d)| c + d).sum::<usize>(), 200);
        assert_eq!(copy_diff_pieces(&old, &old, 24), vec![(200, 0)]);
        assert_eq!(copy_diff_pieces(&[], &[], 24), vec![(0, 0)]);
        // a shorter threshold splits the 10-byte gap too
        assert_eq!(
            copy_diff_pieces(&old, &new, 6),
            vec![(50, 1), (9, 1), (89, 1), (49, 0)]
        );
    }

    #[test]
    fn lzma_presets_follow_the_level() {
        use liblzma::stream::PRESET_EXTREME;
        assert_eq!(lzma_preset(1), 0);
        assert_eq!(lzma_preset(3), 1);
        assert_eq!(lzma_preset(11), 5);
        assert_eq!(lzma_preset(12), 6 | PRESET_EXTREME);
        assert_eq!(lzma_preset(19), 9 | PRESET_EXTREME);
        assert_eq!(lzma_preset(22), 9 | PRESET_EXTREME);
    }

    #[test]
    fn window_fits_the_stream() {
        assert_eq!(window_for(0, 20), 10);
        assert_eq!(window_for(1024, 20), 10);
        assert_eq!(window_for(1025, 20), 11);
        assert_eq!(window_for(300_000, 20), 19);
        assert_eq!(window_for(50_000_000, 20), 20);
    }

    #[test]
    fn split_window_fits_each_stream() {
        // Small streams: the smallest window.
        assert_eq!(split_window_for([900, 1000, 1000], 20), 10);
        // Literals get half the header's window, heads a sixteenth.
        assert_eq!(split_window_for([10, 10, 3000], 20), 13);
        assert_eq!(split_window_for([5000, 10, 10], 20), 17);
        assert_eq!(split_window_for([10, 300_000, 10], 20), 19);
        // Capped by the budget's window.
        assert_eq!(split_window_for([1 << 30, 1 << 30, 1 << 30], 20), 20);
    }
}
