//! Segment-parallel apply (`apply_parallel`) held to the streaming applier:
//! the same image and the same checkpoints, in order, at every thread count;
//! refused (in the same class) wherever the streaming applier refuses a
//! damaged, cut or foreign patch; resumable from its checkpoints; and never
//! given more decoders than the memory limit holds.

use ed25519_dalek::SigningKey;
use fwdelta_apply::{
    apply_parallel, parallel_threads, Applier, ApplyError, ApplyOptions, Sink, TrustPolicy,
};
use fwdelta_diff::patch_signer::sign_for_release;
use fwdelta_diff::{diff, Options};
use fwdelta_format::{Checkpoint, Header, Release, SegmentHeader};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

/// Records checkpoints; fails the `fail_at`-th one (a kill after it).
#[derive(Default)]
struct Recorder {
    checkpoints: Vec<Checkpoint>,
    out: Vec<u8>,
    fail_at: Option<usize>,
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
        assert_eq!(cp.new_offset, seg.new_offset + seg.new_len);
        if self.fail_at == Some(self.checkpoints.len()) {
            return Err(io::Error::other("power cut").into());
        }
        self.checkpoints.push(*cp);
        Ok(())
    }
}

fn testdata(path: &str) -> Vec<u8> {
    let p = format!("{}/../../testdata/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A bundled firmware pair and a patch of many small segments.
fn pair(name: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let old = testdata(&format!("{name}/old"));
    let new = testdata(&format!("{name}/new"));
    let opts = Options {
        segment_cost: 400,
        level: 6,
        ..Options::default()
    };
    let patch = diff(&old, &new, &opts).unwrap().bytes;
    let header =
        Header::parse(&patch[..Header::parse_prefix(patch[..8].try_into().unwrap()).unwrap()])
            .unwrap();
    assert!(
        header.segment_count >= 3,
        "{name}: {} segments",
        header.segment_count
    );
    (old, new, patch)
}

fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn read_all(mut f: &File) -> Vec<u8> {
    let mut v = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut v).unwrap();
    v
}

fn parallel(
    old: &[u8],
    patch: &[u8],
    opts: ApplyOptions,
    threads: usize,
    rec: &mut Recorder,
) -> Result<Vec<u8>, ApplyError> {
    let pf = file_with(patch);
    let out = tempfile::tempfile().unwrap();
    apply_parallel(old, &pf, &out, rec, opts, threads)?;
    Ok(read_all(&out))
}

fn streaming(old: &[u8], patch: &[u8], opts: ApplyOptions) -> Result<Recorder, ApplyError> {
    let mut a = Applier::new(old, Recorder::default(), opts);
    a.feed(patch)?;
    Ok(a.finish()?.1)
}

#[test]
fn same_image_and_checkpoints_as_the_streaming_applier() {
    for name in ["fw-x86-64", "fw-cortex-m4"] {
        let (old, new, patch) = pair(name);
        let reference = streaming(&old, &patch, ApplyOptions::default()).unwrap();
        assert_eq!(reference.out, new);
        for threads in [1, 2, 3, 8] {
            let mut rec = Recorder::default();
            let out = parallel(&old, &patch, ApplyOptions::default(), threads, &mut rec).unwrap();
            assert_eq!(out, new, "{name}, {threads} threads");
            assert_eq!(rec.checkpoints, reference.checkpoints, "{name}, {threads}");
            assert!(rec.out.is_empty(), "the sink's write is never called");
        }
    }
}

#[test]
fn refuses_every_damage_the_streaming_applier_refuses() {
    let (old, new, patch) = pair("fw-x86-64");
    let mut refused = 0;
    for at in 0..patch.len() {
        let mut bad = patch.clone();
        bad[at] ^= 0x10;
        let want = streaming(&old, &bad, ApplyOptions::default());
        let got = parallel(
            &old,
            &bad,
            ApplyOptions::default(),
            2,
            &mut Recorder::default(),
        );
        match (want, got) {
            (Ok(r), Ok(out)) => {
                assert_eq!((r.out, out), (new.clone(), new.clone()), "flip at {at}")
            }
            (Err(w), Err(g)) => {
                assert_eq!(w.class(), g.class(), "flip at {at}: {w} / {g}");
                refused += 1;
            }
            (w, g) => panic!(
                "flip at {at}: streaming {:?}, parallel {:?}",
                w.err(),
                g.err()
            ),
        }
    }
    assert!(
        refused > patch.len() * 9 / 10,
        "{refused} of {}",
        patch.len()
    );
    for cut in 0..patch.len() {
        let got = parallel(
            &old,
            &patch[..cut],
            ApplyOptions::default(),
            2,
            &mut Recorder::default(),
        );
        assert!(got.is_err(), "cut at {cut} applied");
    }
    let mut long = patch.clone();
    long.push(0);
    assert!(matches!(
        parallel(
            &old,
            &long,
            ApplyOptions::default(),
            2,
            &mut Recorder::default()
        ),
        Err(ApplyError::TrailingData)
    ));
    let mut other_old = old.clone();
    other_old[100] ^= 1;
    let err = parallel(
        &other_old,
        &patch,
        ApplyOptions::default(),
        2,
        &mut Recorder::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.class(),
        fwdelta_apply::ErrorClass::WrongOldImage,
        "{err}"
    );
}

#[test]
fn resumes_from_its_checkpoints() {
    let (old, new, patch) = pair("fw-cortex-m4");
    let all = streaming(&old, &patch, ApplyOptions::default())
        .unwrap()
        .checkpoints;
    assert!(all.len() >= 3);
    // A cut before the first checkpoint: nothing recorded, an error.
    let mut rec = Recorder {
        fail_at: Some(0),
        ..Recorder::default()
    };
    assert!(parallel(&old, &patch, ApplyOptions::default(), 2, &mut rec).is_err());
    assert!(rec.checkpoints.is_empty());
    // The last checkpoint is given after the new image verified: a cut
    // after any earlier one leaves something to resume.
    for (k, want) in all.iter().enumerate().take(all.len() - 1) {
        let mut rec = Recorder {
            fail_at: Some(k + 1),
            ..Recorder::default()
        };
        let pf = file_with(&patch);
        let out = tempfile::tempfile().unwrap();
        let err =
            apply_parallel(&old[..], &pf, &out, &mut rec, ApplyOptions::default(), 2).unwrap_err();
        assert!(matches!(err, ApplyError::Sink(_)), "{err}");
        let cp = *rec.checkpoints.last().unwrap();
        assert_eq!(cp, *want);
        // What a kill leaves: the partial file, possibly with bytes past the
        // checkpoint (a segment decoded ahead), cut back on resume.
        let kept = read_all(&out)[..cp.new_offset as usize].to_vec();
        let a = Applier::resume(
            &old[..],
            Vec::new(),
            ApplyOptions::default(),
            &patch,
            &cp,
            &kept[..],
        )
        .unwrap();
        let (_, rest) = a.finish_from(&patch[cp.patch_offset as usize..]).unwrap();
        assert_eq!([kept, rest].concat(), new, "resumed after checkpoint {k}");
    }
}

#[test]
fn signed_patches_pass_the_policy_once_and_forgeries_fail_it() {
    let (old, new, patch) = pair("fw-cortex-m4");
    let key = SigningKey::from_bytes(&[7; 32]);
    let release = Release {
        product: "acme-t300".into(),
        version: "2.6".into(),
        security_counter: 6,
        expires: 0,
    };
    let signed = sign_for_release(&patch, Some(&release), std::slice::from_ref(&key)).unwrap();
    let mut policy = TrustPolicy::trusting(vec![key.verifying_key().to_bytes()]);
    policy.product = Some("acme-t300".into());
    policy.min_counter = 5;
    let opts = ApplyOptions::default().with_policy(Some(Arc::new(policy)));
    let out = parallel(&old, &signed, opts.clone(), 2, &mut Recorder::default()).unwrap();
    assert_eq!(out, new);
    // Unsigned, or signed by another key: refused before a segment is decoded.
    let other =
        sign_for_release(&patch, Some(&release), &[SigningKey::from_bytes(&[8; 32])]).unwrap();
    for bad in [&patch, &other] {
        let mut rec = Recorder::default();
        let err = parallel(&old, bad, opts.clone(), 2, &mut rec).unwrap_err();
        assert_eq!(
            err.class(),
            fwdelta_apply::ErrorClass::NotAuthentic,
            "{err}"
        );
        assert!(rec.checkpoints.is_empty());
    }
}

#[test]
fn decoders_at_once_stay_within_the_memory_limit() {
    let (_, _, patch) = pair("fw-x86-64");
    let len = Header::parse_prefix(patch[..8].try_into().unwrap()).unwrap();
    let header = Header::parse(&patch[..len]).unwrap();
    let each = header.apply_memory;
    let with = |limit| ApplyOptions::default().with_memory_limit(limit);
    assert_eq!(parallel_threads(&header, &with(each * 8), 4), 4);
    assert_eq!(parallel_threads(&header, &with(each * 2 + each / 2), 4), 2);
    assert_eq!(parallel_threads(&header, &with(each * 2 - 1), 4), 1);
    assert_eq!(
        parallel_threads(&header, &with(each * 100), 1000),
        header.segment_count as usize
    );
    assert_eq!(parallel_threads(&header, &with(each * 100), 1), 1);
}

/// REVIEW (hole): the streaming applier hands the sink the last segment's
/// checkpoint only after the new image's hash matched (the last segment of
/// an unsigned patch has no check: `Sink::segment_done` promises "the last
/// segment ... verified by the new image's hash"). apply_parallel gives it
/// first (parallel_apply.rs: segment_done in the in-order loop, the
/// `header.new_hash` comparison only after the scope), so a damaged last
/// segment that still decodes gets a checkpoint claiming the whole image
/// (next_segment == segment_count) before NewHashMismatch: a sink that
/// commits on its last checkpoint (an A/B slot switch) commits a wrong image,
/// and a power cut in between leaves a checkpoint of unverified bytes.
#[test]
fn review_no_checkpoint_for_an_unverified_last_segment() {
    let (old, _, patch) = pair("fw-x86-64");
    let info = fwdelta_apply::inspect(&patch[..]).unwrap();
    let count = info.header.segment_count;
    let last_at = patch.len() - info.segments.last().unwrap().payload_len as usize;
    let mut tried = 0;
    for at in last_at..patch.len() {
        let mut bad = patch.clone();
        bad[at] ^= 0x10;
        // Only damage that decodes and is caught by the new image's hash.
        if !matches!(
            streaming(&old, &bad, ApplyOptions::default()),
            Err(ApplyError::NewHashMismatch)
        ) {
            continue;
        }
        tried += 1;
        let mut rec = Recorder::default();
        let err = parallel(&old, &bad, ApplyOptions::default(), 2, &mut rec).unwrap_err();
        assert!(matches!(err, ApplyError::NewHashMismatch), "{err}");
        let last = rec.checkpoints.last().map(|c| c.next_segment);
        assert!(
            last < Some(count),
            "flip at {at}: the sink was given the final checkpoint (segment {count} of {count}) \
             of an image that then failed its hash"
        );
    }
    assert!(
        tried > 0,
        "no flip in the last segment decoded to a wrong image"
    );
}

/// REVIEW (coverage): degenerate patches through apply_parallel give what
/// the streaming applier gives: an empty new image (0 segments), an empty
/// old image, an in-place patch (refused: wrong mode), at 1 and 4 threads.
#[test]
fn review_degenerate_patches_match_streaming() {
    let (old, new, _) = pair("fw-cortex-m4");
    let opts = Options {
        segment_cost: 400,
        level: 3,
        ..Options::default()
    };
    let in_place = Options {
        in_place: Some(12),
        ..opts.clone()
    };
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        (
            "empty new",
            old.clone(),
            diff(&old, &[], &opts).unwrap().bytes,
        ),
        (
            "empty old",
            Vec::new(),
            diff(&[], &new, &opts).unwrap().bytes,
        ),
        (
            "empty both",
            Vec::new(),
            diff(&[], &[], &opts).unwrap().bytes,
        ),
        (
            "in place",
            old.clone(),
            diff(&old, &new, &in_place).unwrap().bytes,
        ),
    ];
    for (what, old, patch) in cases {
        let want = streaming(&old, &patch, ApplyOptions::default());
        for threads in [1, 4] {
            let mut rec = Recorder::default();
            let got = parallel(&old, &patch, ApplyOptions::default(), threads, &mut rec);
            match (&want, got) {
                (Ok(r), Ok(out)) => {
                    assert_eq!(r.out, out, "{what}, {threads}");
                    assert_eq!(r.checkpoints, rec.checkpoints, "{what}, {threads}");
                }
                (Err(w), Err(g)) => assert_eq!(w.class(), g.class(), "{what}: {w} / {g}"),
                (w, g) => panic!(
                    "{what}, {threads}: streaming {:?}, parallel {:?}",
                    w.as_ref().err(),
                    g.err()
                ),
            }
        }
    }
}

/// REVIEW (hole, low): apply_parallel's doc says the error is "the one the
/// streaming applier would give for the first failing segment", but the walk
/// (inspect_each, all checks) runs before any segment is decoded, so a patch
/// whose segment 1 fails to decode (its check intact: an unsigned check is
/// no secret) and whose segment 3 has a damaged check is reported at segment
/// 3 by the parallel applier and at segment 1 by the streaming one.
#[test]
fn review_error_names_the_first_failing_segment() {
    let old = vec![7u8; 16];
    let new: Vec<u8> = (0..5u8).collect();
    // Segment 1 copies 100 old bytes into a 1-byte segment: a decode fault.
    let mut patch =
        fwdelta_testkit::crafted_patch::one_byte_segments(
            &old,
            &new,
            |i| {
                if i == 1 {
                    100
                } else {
                    0
                }
            },
        );
    // Segment 3's stored check ends where segment 4 starts.
    let mut at4 = None;
    fwdelta_apply::inspect_each(&patch[..], |s, at| {
        if s.index == 4 {
            at4 = Some(at)
        }
    })
    .unwrap();
    patch[at4.unwrap() as usize - 1] ^= 1;
    let want = streaming(&old, &patch, ApplyOptions::default())
        .err()
        .unwrap();
    let got = parallel(
        &old,
        &patch,
        ApplyOptions::default(),
        2,
        &mut Recorder::default(),
    )
    .unwrap_err();
    assert!(
        matches!(want, ApplyError::CorruptSegment { index: 1, .. }),
        "streaming: {want}"
    );
    assert!(
        matches!(got, ApplyError::CorruptSegment { index: 1, .. }),
        "streaming: {want}; parallel: {got}"
    );
}

/// An old image that counts its reads.
struct CountingOld<'a>(&'a [u8], std::sync::atomic::AtomicUsize);

impl fwdelta_apply::OldImage for CountingOld<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), fwdelta_apply::IoError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.read_at(offset, buf)
    }
}

/// `ApplyOptions::with_expected_new_image`: every applier (streaming,
/// parallel, in place) refuses a patch whose header names another new image,
/// on the header it applies, before the old image is read or a byte written;
/// and takes the patch that names the expected one.
#[test]
fn a_patch_for_another_new_image_than_expected_is_refused_by_every_applier() {
    use fwdelta_apply::{apply_in_place, ErrorClass, MemRegion};
    let (old, new, patch) = pair("fw-x86-64");
    let right = *blake3::hash(&new).as_bytes();
    let mut wrong = right;
    wrong[0] ^= 1;
    let opts = |h| ApplyOptions::default().with_expected_new_image(Some(h));
    let refused = |e: ApplyError| {
        assert!(matches!(e, ApplyError::UnexpectedNewImage { .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::BadPatch);
    };

    // Streaming: no old read, nothing written.
    let counting = CountingOld(&old, Default::default());
    let mut a = Applier::new(&counting, Vec::new(), opts(wrong));
    refused(a.feed(&patch).unwrap_err());
    assert_eq!(counting.1.into_inner(), 0, "the old image was read");
    let mut a = Applier::new(&old[..], Vec::new(), opts(right));
    a.feed(&patch).unwrap();
    assert_eq!(a.finish().unwrap().1, new);

    // Parallel (the CLI's default): the same, and the output file empty.
    let counting = CountingOld(&old, Default::default());
    let pf = file_with(&patch);
    let out = tempfile::tempfile().unwrap();
    let mut rec = Recorder::default();
    refused(apply_parallel(&counting, &pf, &out, &mut rec, opts(wrong), 2).unwrap_err());
    assert_eq!(counting.1.into_inner(), 0, "the old image was read");
    assert!(read_all(&out).is_empty() && rec.checkpoints.is_empty());
    let got = parallel(&old, &patch, opts(right), 2, &mut Recorder::default()).unwrap();
    assert_eq!(got, new);

    // In place: the image untouched.
    let in_place = diff(
        &old,
        &new,
        &Options {
            in_place: Some(12),
            level: 6,
            ..Options::default()
        },
    )
    .unwrap()
    .bytes;
    let region = MemRegion::new(old.clone());
    refused(apply_in_place(&region, io::Cursor::new(&in_place), opts(wrong)).unwrap_err());
    assert_eq!(region.into_inner(), old);
    let region = MemRegion::new(old.clone());
    apply_in_place(&region, io::Cursor::new(&in_place), opts(right)).unwrap();
    assert_eq!(region.into_inner(), new);
}
