//! The container writer: header, then segments whose checks chain over the patch.

use crate::error::DiffError;
use crate::segment_encoder::EncodedSegment;
use crate::segmenter::SegmentPlan;
use fwdelta_format::header::{FLAG_IN_PLACE, MIN_WINDOW_LOG};
use fwdelta_format::reference_rewriter::Arch;
use fwdelta_format::{chain, truncate_check, CodeRefs, Codec, Header, Layout, MemoryModel};

/// What the header says about the two images.
#[derive(Debug, Clone)]
pub struct Images {
    /// Old image length.
    pub old_len: u64,
    /// Old image BLAKE3 (the header keeps its first 8 bytes).
    pub old_hash: [u8; 32],
    /// New image length.
    pub new_len: u64,
    /// New image BLAKE3.
    pub new_hash: [u8; 32],
}

/// How the body is coded, as the header declares it.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    /// Payload codec.
    pub codec: Codec,
    /// Stream layout of every segment.
    pub layout: Layout,
    /// With a cell size (log2): an in-place patch whose segments are cells
    /// in apply order.
    pub cell_log: Option<u8>,
    /// An executable-aware patch whose diff bytes apply to the old image as
    /// these references predict it.
    pub code_refs: Option<&'a CodeRefs>,
    /// Literal runs stored through this instruction set's literal filter.
    pub literal_filter: Option<Arch>,
}

/// Assemble a patch from encoded segments (`encoded[i]` belongs to
/// `segments[i]`, coded as `body` says). The header declares the largest
/// window any segment uses, and the memory that window needs. Cost: one pass
/// over the payloads to hash them; the patch is built in one allocation.
pub fn write(
    images: &Images,
    body: &Body<'_>,
    segments: &[SegmentPlan],
    encoded: &[EncodedSegment],
) -> Result<Vec<u8>, DiffError> {
    let window_log = encoded
        .iter()
        .map(|e| e.window_log)
        .max()
        .unwrap_or(MIN_WINDOW_LOG);
    let segment_count = u32::try_from(segments.len())
        .map_err(|_| DiffError::InvalidOption("too many segments".into()))?;
    let Body {
        codec,
        layout,
        cell_log,
        code_refs,
        literal_filter,
    } = *body;
    let mut header = Header {
        flags: if cell_log.is_some() { FLAG_IN_PLACE } else { 0 },
        old_len: images.old_len,
        old_check: truncate_check(&blake3::Hash::from_bytes(images.old_hash)),
        new_len: images.new_len,
        new_hash: images.new_hash,
        codec,
        window_log,
        layout,
        segment_count,
        apply_memory: 0,
        cell_log,
        code_refs: code_refs.cloned(),
        literal_filter,
        release: None,
    };
    // What the memory model says these fields need (decoders or models,
    // buffers, in-place cells): exactly what the header stores no excess for.
    header.apply_memory = header.memory_floor();
    if let Some(code) = code_refs {
        // The claim covers the header, whose length depends on the claim's own
        // varint: size it with the longest the claim could make the header.
        header.apply_memory +=
            MemoryModel::code_refs_extra(header.encoded_len_bound() as u64, code.map.runs() as u64);
    }
    Ok(chain::seal_patch(
        &header,
        segments
            .iter()
            .zip(encoded)
            .map(|(seg, enc)| (seg.new_offset, seg.new_len, seg.old_start, &enc.payload[..])),
    ))
}
