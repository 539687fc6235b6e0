//! The segment encoder: turns a planned segment into its record stream and
//! compresses it as one magicless zstd frame whose window fits the applier's
//! budget. Segments are encoded in parallel.

use crate::error::DiffError;
use crate::segmenter::SegmentPlan;
use fwdelta_format::record::Record;
use fwdelta_format::segment::MAX_PAYLOAD_LEN;
use rayon::prelude::*;
use std::io::Write;
use zstd::stream::raw::CParameter;
use zstd::zstd_safe::FrameFormat;

/// Difference bytes are computed through a scratch buffer of this size.
const SCRATCH: usize = 64 * 1024;

/// Encode every segment (in parallel on the ambient rayon pool). Cost per
/// worker: one zstd context for `level`/`window_log` and a 64 KiB scratch
/// buffer; the payloads are held in memory.
pub fn encode_all(
    segments: &[SegmentPlan],
    old: &[u8],
    new: &[u8],
    level: i32,
    window_log: u8,
) -> Result<Vec<Vec<u8>>, DiffError> {
    segments
        .par_iter()
        .enumerate()
        .map(|(index, seg)| {
            let payload = encode(seg, old, new, level, window_log)?;
            if payload.len() > MAX_PAYLOAD_LEN as usize {
                return Err(DiffError::PayloadTooLarge {
                    index,
                    len: payload.len(),
                });
            }
            Ok(payload)
        })
        .collect()
}

/// Encode one segment. Record `k`'s seek moves the old cursor from the end of
/// op `k`'s diff range to the start of op `k + 1`'s; the last seek is 0.
pub fn encode(
    seg: &SegmentPlan,
    old: &[u8],
    new: &[u8],
    level: i32,
    window_log: u8,
) -> Result<Vec<u8>, DiffError> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    enc.set_parameter(CParameter::WindowLog(u32::from(window_log)))?;
    enc.set_parameter(CParameter::Format(FrameFormat::Magicless))?;
    enc.include_checksum(false)?;
    enc.include_contentsize(false)?;
    enc.include_dictid(false)?;

    let mut head = Vec::with_capacity(fwdelta_format::record::MAX_HEAD_LEN);
    let mut scratch = vec![0u8; SCRATCH];
    let mut at = seg.new_offset as usize;
    for (k, op) in seg.ops.iter().enumerate() {
        let seek = match seg.ops.get(k + 1) {
            Some(next) => next.old_start as i64 - op.old_end() as i64,
            None => 0,
        };
        let (o, d) = (op.old_start as usize, op.diff_len as usize);
        let pieces = copy_diff_pieces(&old[o..o + d], &new[at..at + d]);
        let last = pieces.len() - 1;
        let mut piece_at = 0;
        for (i, &(copy, diff)) in pieces.iter().enumerate() {
            let (literal_len, seek) = if i == last {
                (op.literal_len, seek)
            } else {
                (0, 0)
            };
            head.clear();
            Record {
                copy_len: copy as u64,
                diff_len: diff as u64,
                literal_len,
                seek,
            }
            .encode_head(&mut head);
            enc.write_all(&head)?;
            let start = piece_at + copy;
            write_diff(
                &mut enc,
                &old[o + start..o + start + diff],
                &new[at + start..at + start + diff],
                &mut scratch,
            )?;
            piece_at = start + diff;
        }
        at += d;
        enc.write_all(&new[at..at + op.literal_len as usize])?;
        at += op.literal_len as usize;
    }
    Ok(enc.finish()?)
}

/// Shortest run of equal bytes inside a diff range worth its own record: below
/// it, the zeros stay in the stream (cheaper than a record head); above it, the
/// run becomes a verbatim copy, which costs no stream bytes at all.
const MIN_COPY_RUN: usize = 24;

/// Cut a diff range into (copy, diff) pieces: each piece copies a run of equal
/// bytes verbatim and then carries differences. A run of equal bytes at the start
/// of a piece is always a copy; inside, only runs of [`MIN_COPY_RUN`] or more
/// start a new piece. Always returns at least one piece; pieces tile the range.
pub fn copy_diff_pieces(old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
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
            } else if eq >= MIN_COPY_RUN {
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

fn write_diff(
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

    #[test]
    fn pieces_tile_and_split_long_equal_runs() {
        let old = vec![0u8; 200];
        let mut new = old.clone();
        new[50] = 1;
        new[60] = 1; // short equal gap: stays in the diff
        new[150] = 1; // long equal gap before it: new piece
        let p = copy_diff_pieces(&old, &new);
        assert_eq!(p, vec![(50, 11), (89, 1), (49, 0)]);
        assert_eq!(p.iter().map(|(c, d)| c + d).sum::<usize>(), 200);
        assert_eq!(copy_diff_pieces(&old, &old), vec![(200, 0)]);
        assert_eq!(copy_diff_pieces(&[], &[]), vec![(0, 0)]);
    }
}
