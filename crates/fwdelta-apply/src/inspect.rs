//! Walk a patch's container without decoding payloads: header, every segment
//! header and check, and the end. For `fwdelta info`, and for a terminal that wants
//! to verify a downloaded patch's integrity before it starts applying. The last
//! segment of an ordinary patch carries no check (the new image's hash covers
//! it when the patch is applied), so only its framing is verified here; every
//! segment of an in-place patch, which overwrites the old image, is checked.

use crate::error::{ApplyError, PatchPart};
use crate::patch_reader::{read_start, Limits, Part, ReadParts};
#[allow(unused_imports)]
use crate::prelude::*;
use crate::record_interpreter::SegmentFault;
use crate::BUFFER_LEN;
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::signature::SignatureSection;
use fwdelta_format::{chain, truncate_check, FormatError};
use std::io::{self, Read};

/// The layout of a patch, as read by [`inspect`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PatchInfo {
    /// The validated header.
    pub header: Header,
    /// Length of the header in bytes.
    pub header_len: u64,
    /// Every segment header, in order.
    pub segments: Vec<SegmentHeader>,
    /// Total patch length.
    pub patch_len: u64,
    /// A signed patch's signature section (signatures not verified here).
    pub section: Option<SignatureSection>,
    /// The header's bytes (with the section: what signatures sign).
    pub header_bytes: Vec<u8>,
}

/// Summary of a patch, as read by [`inspect_each`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PatchSummary {
    /// The validated header.
    pub header: Header,
    /// Length of the header in bytes.
    pub header_len: u64,
    /// Where segment 0 starts: after the header and, in a signed patch, the
    /// signature section.
    pub body_start: u64,
    /// Total patch length.
    pub patch_len: u64,
    /// A signed patch's signature section (signatures not verified here).
    pub section: Option<SignatureSection>,
    /// The header's bytes.
    pub header_bytes: Vec<u8>,
}

/// The start of a patch read from `r`: the parsed header, its bytes, and a
/// signed patch's signature section; returns them with the number of bytes
/// read (where segment 0 starts). What a resumed or in-place apply reads
/// before it seeks into the body. Cost: a buffer of the header's length and
/// the section's (both bounded by the header and the memory model); `r` is
/// read in pieces no longer than the part being read.
pub fn read_patch_start<R: Read>(
    r: &mut R,
) -> Result<(Header, Vec<u8>, Option<SignatureSection>, u64), ApplyError> {
    let start = read_start(r, Limits::none())?
        .into_start()
        .ok_or(ApplyError::Poisoned)?;
    Ok((
        start.header,
        start.header_bytes,
        start.section,
        start.body_start,
    ))
}

/// Read a whole patch from `r`, validating its structure and every checksum
/// (header check, segment checks, the segment count) without decompressing
/// anything (an ordinary patch's last segment has no check: see the module
/// doc).
/// In-place patches are checked cell by cell: every cell exactly once.
/// Collects the segment headers: memory grows by ~40 bytes per segment (each
/// segment takes at least 50 patch bytes). For fixed memory use [`inspect_each`].
pub fn inspect<R: Read>(r: R) -> Result<PatchInfo, ApplyError> {
    let mut segments = Vec::new();
    let summary = inspect_each(r, |s, _| segments.push(*s))?;
    Ok(PatchInfo {
        header: summary.header,
        header_len: summary.header_len,
        segments,
        patch_len: summary.patch_len,
        section: summary.section,
        header_bytes: summary.header_bytes,
    })
}

/// Like [`inspect`], but hands each segment header and the patch offset where
/// the segment starts to `on_segment` as it is validated (its check, if it
/// has one, is verified after the call) instead of keeping them:
/// a terminal can verify a downloaded patch in one pass with a 16 KiB buffer
/// and a header buffer of at most 4 KiB.
pub fn inspect_each<R: Read>(
    mut r: R,
    mut on_segment: impl FnMut(&SegmentHeader, u64),
) -> Result<PatchSummary, ApplyError> {
    let mut reader = read_start(&mut r, Limits::none())?;
    let start = reader.start().ok_or(ApplyError::Poisoned)?;
    let header_hash = start.header_hash;
    let (count, cell_len, new_len) = (
        start.header.segment_count,
        start.header.cell_len(),
        start.header.new_len,
    );
    let mut produced = 0u64;
    // In-place patches: one bit per cell (at most 8 KiB; the count was checked).
    let mut cells_seen = cell_len.map(|_| vec![0u8; (count as usize).div_ceil(8)]);
    let mut buf = vec![0u8; BUFFER_LEN];
    for index in 0..count {
        let at = reader.offset();
        reader.expect_segment(index);
        let Part::Segment(seg) = reader.read_part(&mut r)? else {
            return Err(ApplyError::Poisoned);
        };
        if let Some(seen) = &mut cells_seen {
            let cell = seg.new_offset / cell_len.unwrap_or(1).max(1);
            let (byte, bit) = ((cell / 8) as usize, 1u8 << (cell % 8));
            if seen[byte] & bit != 0 {
                return Err(FormatError::BadSegment {
                    index,
                    detail: format!("cell {cell} comes twice"),
                }
                .into());
            }
            seen[byte] |= bit;
        }
        on_segment(&seg, at);
        let mut check = chain::segment_hasher(&header_hash, index);
        check.update(reader.segment_bytes());
        let mut left = seg.payload_len as usize;
        while left > 0 {
            let n = left.min(buf.len());
            let mut offset = reader.offset();
            read_part(
                &mut r,
                &mut buf[..n],
                &mut offset,
                PatchPart::Segment(index),
            )?;
            reader.skipped(n as u64);
            check.update(&buf[..n]);
            left -= n;
        }
        // The last segment of an ordinary unsigned patch has no check: only
        // applying it (the new image's hash) verifies its bytes.
        let start = reader.start().ok_or(ApplyError::Poisoned)?;
        if start.header.is_signed() {
            let expected = start
                .section
                .as_ref()
                .and_then(|s| s.checks.get(index as usize));
            if expected != Some(&truncate_check(&check.finalize())) {
                return Err(SegmentFault::SignedCheckMismatch.at(index));
            }
        } else if start.header.segment_has_check(index) {
            reader.expect_check();
            let Part::Check(c) = reader.read_part(&mut r)? else {
                return Err(ApplyError::Poisoned);
            };
            if truncate_check(&check.finalize()) != c {
                return Err(SegmentFault::CheckMismatch.at(index));
            }
        }
        produced += seg.new_len;
    }
    if produced != new_len {
        return Err(FormatError::SegmentsCover {
            covered: produced,
            new_len,
        }
        .into());
    }
    let mut extra = [0u8; 1];
    loop {
        match r.read(&mut extra) {
            Ok(0) => break,
            Ok(_) => return Err(ApplyError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApplyError::PatchRead(e)),
        }
    }
    let patch_len = reader.offset();
    let start = reader.into_start().ok_or(ApplyError::Poisoned)?;
    Ok(PatchSummary {
        header_len: start.header_bytes.len() as u64,
        body_start: start.body_start,
        patch_len,
        header: start.header,
        section: start.section,
        header_bytes: start.header_bytes,
    })
}

fn read_part<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    offset: &mut u64,
    stage: PatchPart,
) -> Result<(), ApplyError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(ApplyError::Truncated {
                    stage,
                    offset: *offset + got as u64,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApplyError::PatchRead(e)),
        }
    }
    *offset += buf.len() as u64;
    Ok(())
}
