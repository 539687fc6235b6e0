//! Walk a patch's container without decoding payloads: header, every segment
//! header and check, and the end. For `fwdelta info`, and for a terminal that wants
//! to verify a downloaded patch's integrity before it starts applying. The last
//! segment of an ordinary patch carries no check (the new image's hash covers
//! it when the patch is applied), so only its framing is verified here; every
//! segment of an in-place patch, which overwrites the old image, is checked.

use crate::error::ApplyError;
use crate::BUFFER_LEN;
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::signature::SignatureSection;
use fwdelta_format::{chain, truncate_check, FormatError, CHECK_LEN};
use std::io::{self, Read};

/// The layout of a patch, as read by [`inspect`].
#[derive(Debug, Clone)]
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
/// the section's (both bounded by the header and the memory model).
pub fn read_patch_start<R: Read>(
    r: &mut R,
) -> Result<(Header, Vec<u8>, Option<SignatureSection>, u64), ApplyError> {
    let mut offset = 0u64;
    let mut prefix = [0u8; Header::PREFIX_LEN];
    read_part(r, &mut prefix, &mut offset, "inside the header")?;
    let header_len = Header::parse_prefix(&prefix)?;
    let mut hbuf = vec![0u8; header_len];
    hbuf[..Header::PREFIX_LEN].copy_from_slice(&prefix);
    read_part(
        r,
        &mut hbuf[Header::PREFIX_LEN..],
        &mut offset,
        "inside the header",
    )?;
    let header = Header::parse(&hbuf)?;
    let section = if header.is_signed() {
        let stage = "inside the signature section";
        let mut sbuf = vec![0u8; SignatureSection::fixed_len(&header)];
        read_part(r, &mut sbuf, &mut offset, stage)?;
        let count = sbuf[sbuf.len() - 1];
        let fixed = sbuf.len();
        sbuf.resize(fixed + SignatureSection::signatures_len(count)?, 0);
        read_part(r, &mut sbuf[fixed..], &mut offset, stage)?;
        Some(SignatureSection::parse(&header, &sbuf)?)
    } else {
        None
    };
    Ok((header, hbuf, section, offset))
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
    let (header, hbuf, section, mut offset) = read_patch_start(&mut r)?;
    let header_len = hbuf.len();
    let body_start = offset;
    let header_hash = chain::start(&hbuf);

    let mut produced = 0u64;
    // In-place patches: one bit per cell (at most 8 KiB; the count was checked).
    let mut cells_seen = header
        .cell_log
        .map(|_| vec![0u8; (header.segment_count as usize).div_ceil(8)]);
    let mut buf = vec![0u8; BUFFER_LEN];
    for index in 0..header.segment_count {
        let at = offset;
        let b = read_segment_head(&mut r, &mut offset, &header, index)?;
        let seg = match &mut cells_seen {
            None => SegmentHeader::parse(&b, &header, index, produced)?,
            Some(seen) => {
                let (seg, cell) = SegmentHeader::parse_cell(&b, &header, index)?;
                let (byte, bit) = ((cell / 8) as usize, 1u8 << (cell % 8));
                if seen[byte] & bit != 0 {
                    return Err(FormatError::BadSegment {
                        index,
                        detail: format!("cell {cell} comes twice"),
                    }
                    .into());
                }
                seen[byte] |= bit;
                seg
            }
        };
        on_segment(&seg, at);
        let mut check = chain::segment_hasher(&header_hash, index);
        check.update(&b);
        let mut left = seg.payload_len as usize;
        while left > 0 {
            let n = left.min(buf.len());
            read_part(
                &mut r,
                &mut buf[..n],
                &mut offset,
                &format!("inside segment {index}"),
            )?;
            check.update(&buf[..n]);
            left -= n;
        }
        // The last segment of an ordinary unsigned patch has no check: only
        // applying it (the new image's hash) verifies its bytes.
        if let Some(section) = &section {
            if section.checks[index as usize] != truncate_check(&check.finalize()) {
                return Err(ApplyError::CorruptSegment {
                    index,
                    detail: "segment check mismatch (signed table)".into(),
                });
            }
        } else if header.segment_has_check(index) {
            let mut c = [0u8; CHECK_LEN];
            read_part(
                &mut r,
                &mut c,
                &mut offset,
                &format!("inside the check of segment {index}"),
            )?;
            if truncate_check(&check.finalize()) != c {
                return Err(ApplyError::CorruptSegment {
                    index,
                    detail: "segment check mismatch".into(),
                });
            }
        }
        produced += seg.new_len;
    }
    if produced != header.new_len {
        return Err(FormatError::BadField {
            field: "segments",
            detail: format!("cover {produced} of {} new bytes", header.new_len),
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
    Ok(PatchSummary {
        header,
        header_len: header_len as u64,
        body_start,
        patch_len: offset,
        section,
        header_bytes: hbuf,
    })
}

/// Read a segment header, byte by byte until its varints end (at most
/// [`SegmentHeader::MAX_LEN`] bytes), advancing `offset`.
pub(crate) fn read_segment_head<R: Read>(
    r: &mut R,
    offset: &mut u64,
    header: &Header,
    index: u32,
) -> Result<Vec<u8>, ApplyError> {
    let mut b = Vec::with_capacity(SegmentHeader::MAX_LEN);
    let (before, inside) = (
        format!("before segment {index}"),
        format!("inside the header of segment {index}"),
    );
    loop {
        let stage = if b.is_empty() { &before } else { &inside };
        let mut one = [0u8; 1];
        read_part(r, &mut one, offset, stage)?;
        b.push(one[0]);
        if SegmentHeader::complete_len(&b, header, index)?.is_some() {
            return Ok(b);
        }
    }
}

fn read_part<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    offset: &mut u64,
    stage: &str,
) -> Result<(), ApplyError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(ApplyError::Truncated {
                    stage: stage.to_string(),
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
