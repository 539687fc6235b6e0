//! A whole patch held in memory, cut into its parts: header, signature
//! section (signed patches), and each segment's header, payload and check.
//! For tools that rewrite patches (signing, attaching signatures) and tests;
//! the applier reads patches as streams instead.

use crate::chain;
use crate::error::FormatError;
use crate::header::Header;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::segment::SegmentHeader;
use crate::signature::SignatureSection;
use crate::{truncate_check, CHECK_LEN, HASH_LEN};

/// One segment of a patch in memory.
#[derive(Debug, Clone)]
pub struct SegmentParts<'a> {
    /// The decoded segment header.
    pub head: SegmentHeader,
    /// Its encoded bytes.
    pub head_bytes: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
    /// The segment's full hash, bound to the header and the index (its check
    /// is the first [`CHECK_LEN`] bytes).
    pub hash: [u8; HASH_LEN],
}

/// A patch cut into its parts, every check verified.
#[derive(Debug, Clone)]
pub struct PatchParts<'a> {
    /// The parsed header.
    pub header: Header,
    /// The header's bytes.
    pub header_bytes: &'a [u8],
    /// The signature section of a signed patch.
    pub section: Option<SignatureSection>,
    /// The segments, in order.
    pub segments: Vec<SegmentParts<'a>>,
}

impl PatchParts<'_> {
    /// The checks of every segment, in order (what a signature section's
    /// table holds).
    pub fn checks(&self) -> Vec<[u8; CHECK_LEN]> {
        self.segments
            .iter()
            .map(|s| truncate_check(&blake3::Hash::from_bytes(s.hash)))
            .collect()
    }
}

fn truncated(at: usize) -> FormatError {
    FormatError::BadSegment {
        index: u32::MAX,
        detail: format!("patch is truncated at byte {at}"),
    }
}

/// Cut `bytes` into its parts, verifying the header, the signature section's
/// structure, every segment header and every stored check (inline, or in a
/// signed patch's table). Signatures are *not* verified: that needs a key.
/// The last segment of an unsigned ordinary patch has no check (the new
/// image's hash covers it), so it is only parsed. Cost: one hash over the
/// patch; the table and segment list are allocated (bounded by the header).
pub fn split(bytes: &[u8]) -> Result<PatchParts<'_>, FormatError> {
    let mut prefix = [0u8; Header::PREFIX_LEN];
    prefix.copy_from_slice(bytes.get(..Header::PREFIX_LEN).ok_or(truncated(0))?);
    let header_len = Header::parse_prefix(&prefix)?;
    let header_bytes = bytes.get(..header_len).ok_or(truncated(bytes.len()))?;
    let header = Header::parse(header_bytes)?;
    let mut at = header_len;
    let section = if header.is_signed() {
        let fixed = SignatureSection::fixed_len(&header);
        let count = *bytes.get(at + fixed - 1).ok_or(truncated(bytes.len()))?;
        let len = fixed + SignatureSection::signatures_len(count)?;
        let s = SignatureSection::parse(
            &header,
            bytes.get(at..at + len).ok_or(truncated(bytes.len()))?,
        )?;
        at += len;
        Some(s)
    } else {
        None
    };
    let header_hash = chain::start(header_bytes);
    let mut segments = Vec::new();
    let mut new_offset = 0u64;
    let mut cells_seen = vec![
        false;
        if header.cell_log.is_some() {
            header.segment_count as usize
        } else {
            0
        }
    ];
    for index in 0..header.segment_count {
        let rest = &bytes[at..];
        let head_len = SegmentHeader::complete_len(
            &rest[..rest.len().min(SegmentHeader::MAX_LEN)],
            &header,
            index,
        )?
        .ok_or(truncated(bytes.len()))?;
        let head_bytes = &rest[..head_len];
        let head = if header.cell_log.is_some() {
            let (head, cell) = SegmentHeader::parse_cell(head_bytes, &header, index)?;
            let seen = &mut cells_seen[cell as usize];
            if *seen {
                return Err(FormatError::BadSegment {
                    index,
                    detail: format!("cell {cell} appears twice"),
                });
            }
            *seen = true;
            head
        } else {
            SegmentHeader::parse(head_bytes, &header, index, new_offset)?
        };
        new_offset += head.new_len;
        at += head_len;
        let payload = bytes
            .get(at..at + head.payload_len as usize)
            .ok_or(truncated(bytes.len()))?;
        at += payload.len();
        let mut h = chain::segment_hasher(&header_hash, index);
        h.update(head_bytes);
        h.update(payload);
        let hash = h.finalize();
        let expected = match &section {
            Some(s) => Some(s.checks[index as usize]),
            None if header.segment_has_check(index) => {
                let c = bytes
                    .get(at..at + CHECK_LEN)
                    .ok_or(truncated(bytes.len()))?;
                at += CHECK_LEN;
                let mut a = [0u8; CHECK_LEN];
                a.copy_from_slice(c);
                Some(a)
            }
            None => None,
        };
        if expected.is_some_and(|e| e != truncate_check(&hash)) {
            return Err(FormatError::BadSegment {
                index,
                detail: "segment check mismatch".into(),
            });
        }
        segments.push(SegmentParts {
            head,
            head_bytes,
            payload,
            hash: *hash.as_bytes(),
        });
    }
    if at != bytes.len() {
        return Err(FormatError::BadSegment {
            index: header.segment_count,
            detail: format!("{} bytes after the last segment", bytes.len() - at),
        });
    }
    Ok(PatchParts {
        header,
        header_bytes,
        section,
        segments,
    })
}

/// Reassemble a patch from `header` and the segments of `parts` (their
/// header and payload bytes, which do not depend on the patch header): with
/// inline checks where `header` stores them, or, for a signed `header`, with
/// a signature section holding every check and `section_signatures`
/// (verified by the caller). The checks are recomputed, since they bind to
/// the new header. Cost: one hash over the patch.
pub fn reassemble(
    header: &Header,
    parts: &[SegmentParts<'_>],
    signatures: &[crate::signature::SignatureEntry],
) -> Vec<u8> {
    let header_bytes = header.encode();
    let header_hash = chain::start(&header_bytes);
    let hashes: Vec<blake3::Hash> = parts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut h = chain::segment_hasher(&header_hash, i as u32);
            h.update(s.head_bytes);
            h.update(s.payload);
            h.finalize()
        })
        .collect();
    let mut out = header_bytes;
    if header.is_signed() {
        let section = SignatureSection {
            checks: hashes.iter().map(truncate_check).collect(),
            signatures: signatures.to_vec(),
        };
        out.extend_from_slice(&section.encode());
    }
    for (i, (s, hash)) in parts.iter().zip(&hashes).enumerate() {
        out.extend_from_slice(s.head_bytes);
        out.extend_from_slice(s.payload);
        if header.segment_has_check(i as u32) {
            out.extend_from_slice(&truncate_check(hash));
        }
    }
    out
}
