//! Pull-mode adapters for [`fwdelta_format::PatchReader`], the one reader of
//! a patch's framing (header, signature section, segment heads and checks,
//! with the limits checked in one place): drive it from an [`io::Read`] or a
//! slice, and take its limits from [`ApplyOptions`]. Reads go straight into
//! the reader's part buffer, at most what it wants at a time.

use crate::error::ApplyError;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::ApplyOptions;
pub(crate) use fwdelta_format::patch_reader::{Limits, Mode, Part, PatchReader};
#[cfg(feature = "std")]
use std::io::{self, Read};

/// The options' limits, for `mode`.
pub(crate) fn limits(opts: &ApplyOptions, mode: Mode) -> Limits {
    Limits::new(opts.memory_limit, opts.max_new_len, mode)
}

#[cfg(feature = "std")]
/// Read the start of a patch (header and section) from `r`, which is left
/// where segment 0 begins; returns the reader, ready for segment 0.
pub(crate) fn read_start<R: Read + ?Sized>(
    r: &mut R,
    limits: Limits,
) -> Result<PatchReader, ApplyError> {
    let mut reader = PatchReader::new(limits);
    match reader.read_part(r)? {
        Part::Start => Ok(reader),
        _ => Err(ApplyError::Poisoned),
    }
}

/// Read the start of a patch from the front of `bytes` (a resume's copy of
/// it); bytes after the start are ignored.
pub(crate) fn start_from_slice(bytes: &[u8], limits: Limits) -> Result<PatchReader, ApplyError> {
    Ok(PatchReader::start_from_slice(bytes, limits)?)
}

#[cfg(feature = "std")]
/// Reading a [`PatchReader`]'s parts from an [`io::Read`].
pub(crate) trait ReadParts {
    /// Read from `r` until the part the reader expects is complete.
    fn read_part<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Part, ApplyError>;
}

#[cfg(feature = "std")]
impl ReadParts for PatchReader {
    fn read_part<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Part, ApplyError> {
        loop {
            if self.wanted() == 0 {
                return Err(ApplyError::Poisoned);
            }
            let got = r.read(self.unfilled());
            let n = *got.as_ref().unwrap_or(&0);
            let part = self.filled(n)?;
            match got {
                Ok(0) => {
                    return Err(ApplyError::Truncated {
                        stage: self.stage_name(),
                        offset: self.offset(),
                    })
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::PatchRead(e)),
            }
            if part != Part::Partial {
                return Ok(part);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fwdelta_diff::{diff, Options};
    use fwdelta_format::header::Header;
    use fwdelta_format::segment::SegmentHeader;
    use fwdelta_format::{chain, PatchPart, CHECK_LEN, MAX_IMAGE_LEN};

    fn testdata(which: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../testdata/fw-cortex-m4/{which}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A multi-segment patch of the firmware pair (`in_place`: an in-place one).
    fn patch(in_place: bool) -> Vec<u8> {
        let opts = Options {
            segment_cost: 600,
            level: 9,
            in_place: in_place.then_some(12),
            ..Options::default()
        };
        diff(&testdata("old"), &testdata("new"), &opts)
            .unwrap()
            .bytes
    }

    /// Walk `patch` by pushing it `step` bytes at a time (payloads
    /// skipped): the segment heads and checks in order, and where it ended.
    fn walk(patch: &[u8], step: usize) -> (Vec<SegmentHeader>, Vec<[u8; CHECK_LEN]>, u64) {
        let mut r = PatchReader::new(Limits::none());
        let (mut heads, mut checks) = (Vec::new(), Vec::new());
        let mut at = 0;
        let mut index = 0;
        loop {
            let n = r.wanted().min(step).min(patch.len() - at);
            let part = r.push(&patch[at..at + n]).unwrap();
            at += n;
            let header = &r.start().map(|s| s.header.clone());
            match part {
                Part::Partial => continue,
                Part::Start => {}
                Part::Segment(head) => {
                    at += head.payload_len as usize;
                    r.skipped(u64::from(head.payload_len));
                    heads.push(head);
                    let h = header.as_ref().unwrap();
                    if h.segment_has_check(index) {
                        r.expect_check();
                        continue;
                    }
                    index += 1;
                }
                Part::Check(c) => {
                    checks.push(c);
                    index += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
            let count = header.as_ref().unwrap().segment_count;
            if index == count {
                return (heads, checks, r.offset());
            }
            r.expect_segment(index);
        }
    }

    #[test]
    fn any_split_reads_the_same_framing_as_inspect() {
        for in_place in [false, true] {
            let p = patch(in_place);
            let info = crate::inspect(&p[..]).unwrap();
            for step in [1, 2, 7, 64, usize::MAX] {
                let (heads, checks, end) = walk(&p, step);
                assert_eq!(heads, info.segments, "step {step}");
                assert_eq!(end, p.len() as u64, "step {step}");
                let want = info.segments.len() - usize::from(!in_place);
                assert_eq!(checks.len(), want, "step {step}");
            }
            // The three ways in agree on the start.
            let pulled = read_start(&mut &p[..], Limits::none()).unwrap();
            let sliced = start_from_slice(&p, Limits::none()).unwrap();
            for r in [&pulled, &sliced] {
                let s = r.start().unwrap();
                assert_eq!(s.header, info.header);
                assert_eq!(s.header_bytes, info.header_bytes);
                assert_eq!(s.body_start, info.header_len);
                assert_eq!(s.header_hash, chain::start(&info.header_bytes));
            }
        }
    }

    #[test]
    fn limits_are_checked_in_one_place_for_every_way_in() {
        let p = patch(false);
        let header = crate::inspect(&p[..]).unwrap().header;
        let cases = [
            (
                Limits::new(header.apply_memory - 1, MAX_IMAGE_LEN, Mode::Any),
                "memory",
            ),
            (
                Limits::new(u64::MAX, header.new_len - 1, Mode::Any),
                "new length",
            ),
            (Limits::new(u64::MAX, MAX_IMAGE_LEN, Mode::InPlace), "mode"),
        ];
        for (limits, what) in cases {
            let pulled = read_start(&mut &p[..], limits).err();
            let sliced = start_from_slice(&p, limits).err();
            let mut pushed = PatchReader::new(limits);
            let mut result = Ok(Part::Partial);
            let mut at = 0;
            while matches!(result, Ok(Part::Partial)) {
                let n = pushed.wanted();
                result = pushed.push(&p[at..at + n]);
                at += n;
            }
            for e in [pulled, sliced, result.err().map(ApplyError::from)] {
                let e = e.unwrap_or_else(|| panic!("{what}: accepted"));
                let ok = match what {
                    "memory" => matches!(e, ApplyError::MemoryBudget { .. }),
                    "new length" => matches!(e, ApplyError::NewTooLarge { .. }),
                    _ => matches!(e, ApplyError::WrongMode(_)),
                };
                assert!(ok, "{what}: {e}");
            }
        }
        // An in-place patch is refused by an applier to a new file.
        let p = patch(true);
        let e = start_from_slice(&p, limits(&Default::default(), Mode::NewImage));
        assert!(matches!(e, Err(ApplyError::WrongMode(_))));
    }

    #[test]
    fn a_cut_start_names_where_it_ends() {
        let p = patch(false);
        let len = crate::inspect(&p[..]).unwrap().header_len as usize;
        for cut in [0, 3, Header::PREFIX_LEN, len - 1] {
            match start_from_slice(&p[..cut], Limits::none()) {
                Err(ApplyError::Truncated { stage, offset }) => {
                    assert_eq!(stage, PatchPart::Header);
                    assert_eq!(offset, cut as u64);
                }
                Err(e) => panic!("cut {cut}: {e}"),
                Ok(_) => panic!("cut {cut}: accepted"),
            }
            match read_start(&mut &p[..cut], Limits::none()) {
                Err(ApplyError::Truncated { stage, offset }) => {
                    assert_eq!(stage, PatchPart::Header);
                    assert_eq!(offset, cut as u64);
                }
                Err(e) => panic!("cut {cut}: {e}"),
                Ok(_) => panic!("cut {cut}: accepted"),
            }
        }
    }
}
