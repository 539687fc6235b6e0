//! The split-streams payload writer (layouts 2 and 3): cuts a segment's
//! records into blocks and writes their heads, diff bytes and literal bytes
//! as three compressed streams, one chunk of each per block (see
//! `fwdelta_format::split_block`). In layout 3 the heads are coded by the
//! head model (`fwdelta_format::head_model`) and the diff bytes by the diff
//! model (`fwdelta_format::diff_model`) instead of the codec.
//!
//! A block's heads and diffs chunks must fit the applier's block buffer
//! together. The writer first groups records by an estimate of their
//! compressed cost (non-zero diff bytes count fully, zero ones a little);
//! should a block still compress larger than the buffer, it regroups by raw
//! size, which LZMA2 and zstd can only shrink, and encodes again.
//!
//! Cost: three compression contexts at a time (in layout 3, the literal
//! codec's and the two models), one pass over the diff bytes to group, one
//! or (rarely) two encoding passes; the payload is held in memory.

use crate::error::DiffError;
use crate::segment_encoder::{write_diff, NewImage, Planned, SCRATCH};
use crate::stream_encoder::StreamEncoder;
use fwdelta_format::bit_coder::BitEncoder;
use fwdelta_format::diff_model::{DiffModel, OldContext};
use fwdelta_format::head_model::HeadModel;
use fwdelta_format::record::{Record, MAX_HEAD_LEN};
use fwdelta_format::split_block::{BlockHeader, MAX_BLOCK_BUFFER};
use fwdelta_format::{Codec, MemoryModel};
use std::io::Write;

/// Cost units per byte of a block's heads and diffs that is likely to cost
/// a full byte compressed; a zero difference byte costs one unit.
const UNIT: u64 = 32;

/// How records are weighed when grouped into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouping {
    /// Estimated compressed size, aiming at three quarters of the buffer:
    /// few blocks (each costs a few bytes of flushing), rarely too large.
    Estimate,
    /// Raw size, bounded below the buffer: always fits.
    Raw,
}

impl Grouping {
    fn target(self) -> u64 {
        match self {
            Grouping::Estimate => (MAX_BLOCK_BUFFER as u64 * 3 / 4) * UNIT,
            Grouping::Raw => (MAX_BLOCK_BUFFER as u64 - 2048) * UNIT,
        }
    }

    fn diff_byte(self, old: u8, new: u8) -> u64 {
        if self == Grouping::Estimate && old == new {
            1
        } else {
            UNIT
        }
    }
}

/// Encode `records` (in order, as the interleaved layout would) as a split
/// payload of `codec` with streams of window `2^window_log`, the heads and
/// diff bytes through the head and diff models if `modelled` (layout 3).
pub(crate) fn encode(
    records: &[Planned],
    old: &[u8],
    new: &NewImage,
    codec: Codec,
    level: i32,
    window_log: u8,
    modelled: bool,
) -> Result<Vec<u8>, DiffError> {
    let streams = Streams {
        codec,
        level,
        window_log,
        modelled,
    };
    for grouping in [Grouping::Estimate, Grouping::Raw] {
        let blocks = group(records, old, new, grouping);
        if let Some(payload) = write_blocks(&blocks, old, new, &streams)? {
            return Ok(payload);
        }
    }
    if modelled {
        return Err(DiffError::ModelledBlockTooLarge);
    }
    Err(DiffError::Compress(std::io::Error::other(
        "a block of raw heads and diffs compressed past the block buffer",
    )))
}

/// How the three streams are coded.
struct Streams {
    codec: Codec,
    level: i32,
    window_log: u8,
    modelled: bool,
}

/// The diff stream's writer: the codec's, or the diff model's.
enum DiffWriter {
    Codec(StreamEncoder),
    Model(Box<DiffModel>, BitEncoder),
}

impl DiffWriter {
    /// Write the differences of `new` against the old bytes at
    /// `old[at..at + new.len()]`.
    fn write(
        &mut self,
        old: &[u8],
        at: usize,
        new: &[u8],
        scratch: &mut [u8],
    ) -> std::io::Result<()> {
        match self {
            DiffWriter::Codec(enc) => write_diff(enc, &old[at..at + new.len()], new, scratch),
            DiffWriter::Model(model, bits) => {
                for (j, &n) in new.iter().enumerate() {
                    let p = at + j;
                    let ctx = OldContext::at(old, p, p as u64);
                    model.code(bits, ctx, n.wrapping_sub(old[p]));
                }
                Ok(())
            }
        }
    }

    /// The block's chunk (`last`: the stream's final one).
    fn chunk(&mut self, last: bool) -> std::io::Result<Vec<u8>> {
        match self {
            DiffWriter::Codec(enc) => enc.chunk(last),
            DiffWriter::Model(_, bits) => Ok(bits.finish()),
        }
    }
}

/// The heads stream's writer: the codec's, or the head model's.
enum HeadsWriter {
    Codec(StreamEncoder),
    Model(Box<HeadModel>, BitEncoder),
}

impl HeadsWriter {
    /// Write one record head; `first`: the block's first.
    fn write(&mut self, head: &[u8], first: bool) -> std::io::Result<()> {
        match self {
            HeadsWriter::Codec(enc) => enc.write_all(head),
            HeadsWriter::Model(model, bits) => {
                model.code_more(bits, first, true);
                model.code_head(bits, head);
                Ok(())
            }
        }
    }

    /// The block's chunk (`last`: the stream's final one); the model ends
    /// the block's records with its flag.
    fn chunk(&mut self, last: bool) -> std::io::Result<Vec<u8>> {
        match self {
            HeadsWriter::Codec(enc) => enc.chunk(last),
            HeadsWriter::Model(model, bits) => {
                model.code_more(bits, false, false);
                Ok(bits.finish())
            }
        }
    }
}

/// Group records into blocks whose weight stays under the grouping's target,
/// splitting a record whose diff bytes alone would exceed it (the first part
/// keeps the copy, the last the literals and the seek).
fn group(records: &[Planned], old: &[u8], new: &[u8], grouping: Grouping) -> Vec<Vec<Planned>> {
    let target = grouping.target();
    let head_cost = |r: &Record| {
        UNIT * match grouping {
            Grouping::Estimate => r.head_len() as u64,
            Grouping::Raw => MAX_HEAD_LEN as u64,
        }
    };
    let mut blocks = Vec::new();
    let mut cur: Vec<Planned> = Vec::new();
    let mut cur_cost = 0u64;
    for mut p in records.iter().copied() {
        loop {
            let d = p.record.diff_len as usize;
            let mut cost = head_cost(&p.record);
            // Where the diff must be cut for the record to fit an empty block
            // (the part after the cut is weighed again on the next turn).
            let mut cut = None;
            for j in 0..d {
                cost += grouping.diff_byte(old[p.diff_old + j], new[p.diff_new + j]);
                if cost > target {
                    cut = Some(j.max(1));
                    break;
                }
            }
            if !cur.is_empty() && cur_cost + cost > target {
                blocks.push(std::mem::take(&mut cur));
                cur_cost = 0;
            }
            match cut {
                Some(k) if k < d => {
                    let first = Planned {
                        record: Record {
                            copy_len: p.record.copy_len,
                            diff_len: k as u64,
                            literal_len: 0,
                            seek: 0,
                        },
                        ..p
                    };
                    cur.push(first);
                    blocks.push(std::mem::take(&mut cur));
                    cur_cost = 0;
                    p = Planned {
                        record: Record {
                            copy_len: 0,
                            diff_len: (d - k) as u64,
                            ..p.record
                        },
                        diff_new: p.diff_new + k,
                        diff_old: p.diff_old + k,
                    };
                }
                _ => {
                    cur.push(p);
                    cur_cost += cost;
                    break;
                }
            }
        }
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    blocks
}

/// Write the blocks; `None` if one's heads and diffs compressed past the
/// block buffer.
fn write_blocks(
    blocks: &[Vec<Planned>],
    old: &[u8],
    new: &NewImage,
    s: &Streams,
) -> Result<Option<Vec<u8>>, DiffError> {
    let [h, d, l] = MemoryModel::split_window_logs(s.window_log);
    let (mut heads, mut diffs) = if s.modelled {
        (
            HeadsWriter::Model(Box::new(HeadModel::new()), BitEncoder::new()),
            DiffWriter::Model(Box::new(DiffModel::new(d)), BitEncoder::new()),
        )
    } else {
        (
            HeadsWriter::Codec(StreamEncoder::new(s.codec, s.level, h)?),
            DiffWriter::Codec(StreamEncoder::new(s.codec, s.level, d)?),
        )
    };
    let mut lits = StreamEncoder::new(s.codec, s.level, l)?;
    let mut scratch = vec![0u8; SCRATCH];
    let mut lit_run = Vec::new();
    let mut head = Vec::with_capacity(MAX_HEAD_LEN);
    let mut payload = Vec::new();
    for (b, block) in blocks.iter().enumerate() {
        for (i, p) in block.iter().enumerate() {
            let r = &p.record;
            head.clear();
            r.encode_head(&mut head);
            heads.write(&head, i == 0)?;
            let d = r.diff_len as usize;
            diffs.write(
                old,
                p.diff_old,
                &new[p.diff_new..p.diff_new + d],
                &mut scratch,
            )?;
            new.write_literals(
                &mut lits,
                p.diff_new + d,
                r.literal_len as usize,
                &mut lit_run,
            )?;
        }
        let last = b + 1 == blocks.len();
        let chunks = [heads.chunk(last)?, diffs.chunk(last)?, lits.chunk(last)?];
        if chunks[0].len() + chunks[1].len() > MAX_BLOCK_BUFFER {
            return Ok(None);
        }
        BlockHeader {
            heads_len: chunks[0].len() as u32,
            diffs_len: chunks[1].len() as u32,
            lits_len: chunks[2].len() as u64,
        }
        .encode(&mut payload);
        for c in &chunks {
            payload.extend_from_slice(c);
        }
    }
    Ok(Some(payload))
}
