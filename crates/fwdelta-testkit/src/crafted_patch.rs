//! Hand-made patches: segments sealed under a given header, and split-layout
//! payloads (format layout 2), so tests and fuzz targets can build honest and
//! deliberately broken ones without the generator.

use fwdelta_format::chain;
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::split_block::BlockHeader;
use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};

/// A whole patch: `header`, then each segment `(new_offset, new_len,
/// old_start, payload)` with its header and check, bound to the patch as the
/// generator binds them (so the segments pass their checks whatever their
/// payloads hold). For in-place headers `new_offset` names the cell.
pub fn seal_patch<'a>(
    header: &Header,
    segments: impl IntoIterator<Item = (u64, u64, u64, &'a [u8])>,
) -> Vec<u8> {
    let mut out = header.encode();
    let header_hash = chain::start(&out);
    let mut state = header_hash;
    for (index, (new_offset, new_len, old_start, payload)) in segments.into_iter().enumerate() {
        let head = SegmentHeader {
            index: index as u32,
            new_offset,
            new_len,
            old_start,
            payload_len: payload.len() as u32,
        }
        .encode(header);
        chain::seal_segment(
            &mut out,
            &header_hash,
            &mut state,
            index as u32,
            &head,
            payload,
        );
    }
    out
}

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
