//! Resume after power loss through the library API: from every checkpoint,
//! after a download cut mid-segment, and refusals when the pieces do not fit.

use fwdelta_apply::{Applier, ApplyError, ApplyOptions, Sink};
use fwdelta_diff::{diff, Options};
use fwdelta_format::{Checkpoint, Header, SegmentHeader};

/// A sink that records the output and every checkpoint it was handed.
#[derive(Default)]
struct Recorder {
    out: Vec<u8>,
    checkpoints: Vec<Checkpoint>,
}

impl Sink for Recorder {
    fn write(&mut self, data: &[u8]) -> Result<(), fwdelta_apply::IoError> {
        self.out.extend_from_slice(data);
        Ok(())
    }
    fn segment_done(
        &mut self,
        seg: &SegmentHeader,
        cp: &Checkpoint,
    ) -> Result<(), fwdelta_apply::IoError> {
        assert_eq!(
            cp.new_offset,
            self.out.len() as u64,
            "checkpoint ahead of the data"
        );
        assert_eq!(cp.new_offset, seg.new_offset + seg.new_len);
        self.checkpoints.push(*cp);
        Ok(())
    }
}

fn pair() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let path = |w: &str| {
        format!(
            "{}/../../testdata/fw-x86-64/{w}",
            env!("CARGO_MANIFEST_DIR")
        )
    };
    let old = std::fs::read(path("old")).unwrap();
    let new = std::fs::read(path("new")).unwrap();
    let patch = diff(
        &old,
        &new,
        &Options {
            segment_cost: 400,
            level: 6,
            ..Options::default()
        },
    )
    .unwrap()
    .bytes;
    (old, new, patch)
}

/// Apply from scratch, recording checkpoints.
fn full_run(old: &[u8], patch: &[u8]) -> Recorder {
    let mut a = Applier::new(old, Recorder::default(), ApplyOptions::default());
    a.feed(patch).unwrap();
    a.finish().unwrap().1
}

/// Continue from `cp`, given the output produced before it.
fn resume_from(
    old: &[u8],
    patch: &[u8],
    cp: &Checkpoint,
    before: &[u8],
) -> Result<Vec<u8>, ApplyError> {
    let a = Applier::resume(old, Vec::new(), ApplyOptions::default(), patch, cp, before)?;
    let (_, rest) = a.finish_from(&patch[cp.patch_offset as usize..])?;
    Ok([before, &rest[..]].concat())
}

#[test]
fn resumes_from_every_checkpoint() {
    let (old, new, patch) = pair();
    let rec = full_run(&old, &patch);
    assert_eq!(rec.out, new);
    assert!(
        rec.checkpoints.len() >= 4,
        "only {} segments",
        rec.checkpoints.len()
    );
    for cp in &rec.checkpoints {
        let got = resume_from(&old, &patch, cp, &new[..cp.new_offset as usize]).unwrap();
        assert_eq!(got, new, "resume from segment {}", cp.next_segment);
    }
}

#[test]
fn cut_download_then_power_loss_resumes_from_the_last_checkpoint() {
    let (old, new, patch) = pair();
    for cut in (150..patch.len()).step_by(97) {
        // Feed until the link drops mid-stream; the device then loses power,
        // keeping only what its sink made durable: the last checkpoint.
        let mut a = Applier::new(&old[..], Recorder::default(), ApplyOptions::default());
        a.feed(&patch[..cut]).unwrap();
        let checkpoints = a.into_sink().checkpoints;
        let got = match checkpoints.last() {
            Some(cp) => resume_from(&old, &patch, cp, &new[..cp.new_offset as usize]).unwrap(),
            None => full_run(&old, &patch).out,
        };
        assert_eq!(got, new, "cut at {cut}");
    }
}

#[test]
fn resume_refuses_what_does_not_fit() {
    let (old, new, patch) = pair();
    let rec = full_run(&old, &patch);
    let cp = rec.checkpoints[2];
    let before = &new[..cp.new_offset as usize];

    // a checkpoint of another patch (different header)
    let other = diff(
        &old,
        &new,
        &Options {
            segment_cost: 300,
            level: 6,
            ..Options::default()
        },
    )
    .unwrap()
    .bytes;
    let header = |p: &[u8]| {
        let prefix = p[..Header::PREFIX_LEN].try_into().unwrap();
        p[..Header::parse_prefix(&prefix).unwrap()].to_vec()
    };
    assert_ne!(header(&other), header(&patch));
    let err = resume_from(&old, &other, &cp, before).unwrap_err();
    assert!(
        err.to_string().contains("belongs to another patch"),
        "{err}"
    );

    // another patch whose header is identical (same pair, window and segment
    // count, other level): the checkpoint cannot tell, but the segments read
    // from its offset do not parse or do not pass their checks
    let same_header = diff(
        &old,
        &new,
        &Options {
            segment_cost: 400,
            level: 19,
            ..Options::default()
        },
    )
    .unwrap()
    .bytes;
    assert_eq!(header(&same_header), header(&patch));
    assert_ne!(same_header, patch);
    assert!(resume_from(&old, &same_header, &cp, before).is_err());

    // damaged output from before the power loss: caught when the resume
    // starts, by the checkpoint's hash of the kept bytes, not blamed on the
    // patch
    let mut damaged = before.to_vec();
    damaged[10] ^= 1;
    assert!(matches!(
        resume_from(&old, &patch, &cp, &damaged),
        Err(ApplyError::PartialOutputDamaged { len }) if len == cp.new_offset
    ));
    // and a checkpoint whose hash is not that of the kept bytes, likewise
    let mut other_hash = cp;
    other_hash.new_hash[0] ^= 1;
    assert!(matches!(
        resume_from(&old, &patch, &other_hash, before),
        Err(ApplyError::PartialOutputDamaged { .. })
    ));

    // output shorter than the checkpoint claims
    let err = resume_from(&old, &patch, &cp, &before[..before.len() - 1]).unwrap_err();
    assert!(err.to_string().contains("could be read back"), "{err}");

    // a checkpoint beyond the patch
    let mut far = cp;
    far.next_segment = 10_000;
    let err = resume_from(&old, &patch, &far, before).unwrap_err();
    assert!(err.to_string().contains("does not fit this patch"), "{err}");

    // another old image
    let mut other_old = old.clone();
    other_old[0] ^= 1;
    assert!(matches!(
        resume_from(&other_old, &patch, &cp, before),
        Err(ApplyError::OldHash { .. })
    ));

    // patch bytes resumed at the wrong offset
    let a = Applier::resume(
        &old[..],
        Vec::new(),
        ApplyOptions::default(),
        &patch,
        &cp,
        before,
    )
    .unwrap();
    assert!(a
        .finish_from(&patch[cp.patch_offset as usize + 1..])
        .is_err());
}
