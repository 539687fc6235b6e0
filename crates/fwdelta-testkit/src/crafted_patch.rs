//! Hand-made payloads: LZMA2 chunks, head- and diff-model chunks and
//! split-layout payloads (format layouts 2 and 3), so tests and fuzz targets
//! can build honest and deliberately broken patches without the generator
//! (sealed with `fwdelta_format::chain::seal_patch`).

use fwdelta_format::bit_coder::BitEncoder;
use fwdelta_format::diff_model::{DiffModel, OldContext};
use fwdelta_format::head_model::HeadModel;
use fwdelta_format::split_block::BlockHeader;
use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};

/// One raw LZMA2 stream with a `dict`-byte dictionary, cut into one chunk
/// per piece with sync flushes (each chunk decodes completely); the last
/// chunk ends the stream if `end`. `None` if liblzma refuses the settings.
pub fn lzma2_chunks(pieces: &[&[u8]], dict: u32, end: bool) -> Option<Vec<Vec<u8>>> {
    let mut opts = LzmaOptions::new_preset(1).ok()?;
    opts.dict_size(dict);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let mut s = Stream::new_raw_encoder(&filters).ok()?;
    let mut chunks = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut out = Vec::new();
        let mut data = *piece;
        while !data.is_empty() {
            out.reserve(1 << 16);
            let before = s.total_in();
            s.process_vec(data, &mut out, Action::Run).ok()?;
            data = &data[(s.total_in() - before) as usize..];
        }
        let action = if end && i + 1 == pieces.len() {
            Action::Finish
        } else {
            Action::SyncFlush
        };
        loop {
            out.reserve(1 << 16);
            if s.process_vec(&[], &mut out, action).ok()? == Status::StreamEnd {
                break;
            }
        }
        chunks.push(out);
    }
    Some(chunks)
}

/// The diff chunks of layout 3: each piece's difference bytes, with the old
/// context each applies to, coded by one diff model with a history of
/// `2^history_log` bytes (the header's window), one chunk per piece.
pub fn model_diff_chunks(pieces: &[Vec<(OldContext, u8)>], history_log: u8) -> Vec<Vec<u8>> {
    let mut model = DiffModel::new(history_log);
    let mut bits = BitEncoder::new();
    pieces
        .iter()
        .map(|piece| {
            for &(ctx, d) in piece {
                model.code(&mut bits, ctx, d);
            }
            bits.finish()
        })
        .collect()
}

/// The heads chunks of layout 3: each block's raw record heads (as
/// `Record::encode_head` writes them, one after another) coded by one head
/// model, one chunk per block, each record announced by the model's flag and
/// the block ended by it. A record is the bytes up to its fourth varint's
/// last byte; a block's trailing incomplete record is coded as it is (for
/// tests of what an applier makes of one). An empty block gives an empty
/// chunk.
pub fn model_head_chunks(blocks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut model = HeadModel::new();
    let mut bits = BitEncoder::new();
    blocks
        .iter()
        .map(|raw| {
            if raw.is_empty() {
                return Vec::new();
            }
            let mut records = Vec::new();
            let mut rest = *raw;
            while !rest.is_empty() {
                let mut ends = 0;
                let len = rest
                    .iter()
                    .position(|&b| {
                        ends += usize::from(b < 0x80);
                        ends == 4
                    })
                    .map_or(rest.len(), |i| i + 1);
                records.push(&rest[..len]);
                rest = &rest[len..];
            }
            model.code_block(&mut bits, records);
            bits.finish()
        })
        .collect()
}

/// A split payload: each block's header, then its three chunks as given.
pub fn split_payload(blocks: &[[&[u8]; 3]]) -> Vec<u8> {
    let mut out = Vec::new();
    for [h, d, l] in blocks {
        BlockHeader {
            heads_len: h.len() as u32,
            diffs_len: d.len() as u32,
            lits_len: l.len() as u64,
        }
        .encode(&mut out);
        out.extend_from_slice(h);
        out.extend_from_slice(d);
        out.extend_from_slice(l);
    }
    out
}

/// An honest split payload of `blocks` (raw record heads, diff bytes and
/// literal bytes per block): each stream one LZMA2 stream with a `dict`-byte
/// dictionary, cut at the blocks and ended in the last.
pub fn split_lzma2(blocks: &[[&[u8]; 3]], dict: u32) -> Option<Vec<u8>> {
    let mut streams = Vec::new();
    for s in 0..3 {
        let pieces: Vec<&[u8]> = blocks.iter().map(|b| b[s]).collect();
        streams.push(lzma2_chunks(&pieces, dict, true)?);
    }
    let chunks: Vec<[&[u8]; 3]> = (0..blocks.len())
        .map(|i| [&streams[0][i][..], &streams[1][i][..], &streams[2][i][..]])
        .collect();
    Some(split_payload(&chunks))
}

/// A stored, interleaved patch from `old` to `new` of one segment per new
/// byte, each a single record: `copy_len(i)` old bytes copied (0 gives an
/// honest patch; more than the segment holds, a decode fault in segment
/// `i`), then new byte `i` as a literal. Sealed with
/// `fwdelta_format::chain::seal_patch`; the header claims the memory floor.
pub fn one_byte_segments(old: &[u8], new: &[u8], copy_len: impl Fn(usize) -> u64) -> Vec<u8> {
    use fwdelta_format::{chain::seal_patch, check_of, Codec, Header, Layout, Record};
    let payloads: Vec<Vec<u8>> = new
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let mut p = Vec::new();
            Record {
                copy_len: copy_len(i),
                diff_len: 0,
                literal_len: 1,
                seek: 0,
            }
            .encode_head(&mut p);
            p.push(b);
            p
        })
        .collect();
    let mut header = Header {
        flags: 0,
        old_len: old.len() as u64,
        old_check: check_of(old),
        new_len: new.len() as u64,
        new_hash: *blake3::hash(new).as_bytes(),
        codec: Codec::Stored,
        window_log: 10,
        layout: Layout::Interleaved,
        segment_count: new.len() as u32,
        apply_memory: 0,
        cell_log: None,
        code_refs: None,
        literal_filter: None,
        release: None,
    };
    header.apply_memory = header.memory_floor();
    seal_patch(
        &header,
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, 1u64, 0u64, &p[..])),
    )
}
