//! Signed patches against a terminal's policy: every forgery, damage, foreign
//! or older patch is refused with its own typed error, before the old image
//! is read or a byte reaches the sink; honest signed patches apply in any
//! split, resumed and in place; and the committed test vector still verifies.

use ed25519_dalek::SigningKey;
use fwdelta_apply::{
    apply, apply_in_place, Applier, ApplyError, ApplyOptions, ErrorClass, MemRegion, OldImage,
    Sink, TrustPolicy,
};
use fwdelta_diff::patch_signer::{self, sign, sign_for_release, signable};
use fwdelta_diff::{diff, Options};
use fwdelta_format::patch_parts::split;
use fwdelta_format::signature::KeyId;
use fwdelta_format::{check_of, Checkpoint, Release, SegmentHeader, CHECK_LEN};
use std::cell::Cell;
use std::io;
use std::sync::Arc;

fn testdata(path: &str) -> Vec<u8> {
    let p = format!("{}/../../testdata/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn release(counter: u64) -> Release {
    Release {
        product: "acme-t300".into(),
        version: format!("2.{counter}"),
        security_counter: counter,
        expires: 0,
    }
}

/// The bundled Cortex-M4 pair and an unsigned multi-segment patch.
fn pair() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let old = testdata("fw-cortex-m4/old");
    let new = testdata("fw-cortex-m4/new");
    let opts = Options {
        segment_cost: 600,
        level: 9,
        ..Options::default()
    };
    let patch = diff(&old, &new, &opts).unwrap().bytes;
    (old, new, patch)
}

fn signed(patch: &[u8], counter: u64, keys: &[SigningKey]) -> Vec<u8> {
    sign_for_release(patch, Some(&release(counter)), keys).unwrap()
}

/// A device policy: trusts `keys`, is an acme-t300 at counter 5, the time
/// is 2,000,000,000.
fn policy(keys: &[&SigningKey]) -> TrustPolicy {
    let mut p = TrustPolicy::trusting(keys.iter().map(|k| k.verifying_key().to_bytes()).collect());
    p.product = Some("acme-t300".into());
    p.min_counter = 5;
    p.now = Some(2_000_000_000);
    p
}

fn opts(p: TrustPolicy) -> ApplyOptions {
    ApplyOptions::default().with_policy(Some(Arc::new(p)))
}

/// An old image that counts its reads, and a sink that counts its bytes.
struct Counted<'a>(&'a [u8], Cell<usize>);
impl OldImage for Counted<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), fwdelta_apply::IoError> {
        self.1.set(self.1.get() + 1);
        self.0.read_at(offset, buf)
    }
}
#[derive(Default)]
struct CountingSink(usize);
impl Sink for CountingSink {
    fn write(&mut self, data: &[u8]) -> Result<(), fwdelta_apply::IoError> {
        self.0 += data.len();
        Ok(())
    }
}

/// Apply `patch` under `p`; on a refusal, assert nothing was read from the
/// old image and nothing written, and return the error.
fn refused_before_anything(old: &[u8], patch: &[u8], p: TrustPolicy) -> ApplyError {
    let image = Counted(old, Cell::new(0));
    let err = match apply(&image, patch, CountingSink::default(), opts(p)) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert_eq!(image.1.get(), 0, "old image read before the refusal: {err}");
    err
}

fn apply_ok(old: &[u8], patch: &[u8], p: TrustPolicy) -> Vec<u8> {
    apply(old, patch, Vec::new(), opts(p)).unwrap().1
}

#[test]
fn an_honest_signed_patch_applies_in_any_split_and_reports_its_signer() {
    let (old, new, patch) = pair();
    let k = key(1);
    let s = signed(&patch, 5, std::slice::from_ref(&k));
    let (report, out) = apply(&old[..], &s[..], Vec::new(), opts(policy(&[&k]))).unwrap();
    assert_eq!(out, new);
    assert_eq!(
        report.verdict.signed_by,
        vec![KeyId::of(k.verifying_key().as_bytes())]
    );
    assert_eq!(report.verdict.release, Some(release(5)));
    assert_eq!(report.patch_len, s.len() as u64);
    for step in [1usize, 7, 71, 4096] {
        let mut a = Applier::new(&old[..], Vec::new(), opts(policy(&[&k])));
        for chunk in s.chunks(step) {
            a.feed(chunk).unwrap();
        }
        assert_eq!(a.finish().unwrap().1, new, "pieces of {step}");
    }
    // Without a policy it applies too (signatures reported, not checked).
    let (report, out) = apply(&old[..], &s[..], Vec::new(), ApplyOptions::default()).unwrap();
    assert_eq!(out, new);
    assert!(report.verdict.signed_by.is_empty());
    assert_eq!(report.verdict.signers.len(), 1);
}

#[test]
fn the_signed_form_moves_every_check_into_the_table_and_keeps_the_segments() {
    let (_, _, patch) = pair();
    let plain = split(&patch).unwrap();
    let s = signable(&patch, Some(&release(5))).unwrap();
    let parts = split(&s).unwrap();
    let section = parts.section.as_ref().unwrap();
    assert_eq!(section.checks.len(), plain.segments.len());
    assert!(section.signatures.is_empty());
    for (a, b) in plain.segments.iter().zip(&parts.segments) {
        assert_eq!(a.head_bytes, b.head_bytes);
        assert_eq!(a.payload, b.payload);
    }
    // Exactly the section, the statement and the last check are added:
    // no segment keeps an inline check.
    let inline = (plain.segments.len() - 1) * CHECK_LEN;
    let statement = 4 + release(5).encoded_len();
    assert_eq!(
        s.len(),
        patch.len() + statement + section.encoded_len() - inline,
        "signed form {} vs unsigned {}",
        s.len(),
        patch.len()
    );
    // Signing twice with one key is refused; a second key is added.
    let once = sign(&s, &key(1)).unwrap();
    assert!(matches!(
        sign(&once, &key(1)),
        Err(patch_signer::SignError::AlreadySigned(_))
    ));
    let twice = sign(&once, &key(2)).unwrap();
    assert_eq!(twice.len(), once.len() + 72);
    assert_eq!(
        patch_signer::signing_message(&s).unwrap(),
        patch_signer::signing_message(&twice).unwrap(),
        "signatures do not change the message"
    );
}

#[test]
fn forged_damaged_and_transplanted_signatures_are_refused_before_any_read() {
    let (old, _, patch) = pair();
    let (k, evil) = (key(1), key(9));
    let good = signed(&patch, 6, std::slice::from_ref(&k));
    let parts = split(&good).unwrap();
    let section_at = parts.header_bytes.len();
    let sigs_at = section_at + parts.segments.len() * CHECK_LEN + 1;
    let p = || policy(&[&k]);

    // Unsigned, where the device trusts keys.
    assert!(matches!(
        refused_before_anything(&old, &patch, p()),
        ApplyError::Unsigned
    ));
    // Signed form with no signature yet.
    let bare = signable(&patch, Some(&release(6))).unwrap();
    let e = refused_before_anything(&old, &bare, p());
    assert!(
        matches!(e, ApplyError::NotAuthentic { verified: 0, .. }),
        "{e}"
    );
    // A valid signature by a key the device does not trust.
    let e = refused_before_anything(&old, &signed(&patch, 6, std::slice::from_ref(&evil)), p());
    assert_eq!(e.class(), ErrorClass::NotAuthentic, "{e}");
    // Every byte of the signature entry flipped, one at a time (key id and
    // signature).
    for i in sigs_at..sigs_at + 72 {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let e = refused_before_anything(&old, &bad, p());
        assert_eq!(e.class(), ErrorClass::NotAuthentic, "flip at {i}: {e}");
    }
    // Every byte of the check table: the message changes.
    for i in section_at..sigs_at - 1 {
        let mut bad = good.clone();
        bad[i] ^= 0x40;
        let e = refused_before_anything(&old, &bad, p());
        assert_eq!(
            e.class(),
            ErrorClass::NotAuthentic,
            "table flip at {i}: {e}"
        );
    }
    // The signature cut off, at every byte of the section.
    for cut in section_at..good.len().min(sigs_at + 72) {
        let e = match apply(&old[..], &good[..cut], Vec::new(), opts(p())) {
            Ok(_) => panic!("cut at {cut} accepted"),
            Err(e) => e,
        };
        assert!(
            matches!(e.class(), ErrorClass::BadPatch | ErrorClass::NotAuthentic),
            "cut at {cut}: {e}"
        );
    }
    // Another patch's signatures over this patch's header (both by k).
    let other_new = {
        let mut n = testdata("fw-cortex-m4/new");
        n[100] ^= 0xff;
        n
    };
    let other = signed(
        &diff(&old, &other_new, &Options::default()).unwrap().bytes,
        6,
        std::slice::from_ref(&k),
    );
    let other_parts = split(&other).unwrap();
    let mut transplanted = good[..sigs_at].to_vec();
    let o_sigs = other_parts.header_bytes.len() + other_parts.segments.len() * CHECK_LEN + 1;
    transplanted.extend_from_slice(&other[o_sigs..o_sigs + 72]);
    transplanted.extend_from_slice(&good[sigs_at + 72..]);
    let e = refused_before_anything(&old, &transplanted, p());
    assert_eq!(e.class(), ErrorClass::NotAuthentic, "{e}");
    // A header field changed after signing, the header check re-sealed so
    // the header itself parses: the signature no longer matches.
    let mut changed = good.clone();
    let version_at =
        section_at - CHECK_LEN - (release(6).encoded_len() - 1 - "acme-t300".len() - 1); // version bytes
    changed[version_at] = b'9';
    let body = section_at - CHECK_LEN;
    let check = check_of(&changed[..body]);
    changed[body..section_at].copy_from_slice(&check);
    let e = refused_before_anything(&old, &changed, p());
    assert_eq!(e.class(), ErrorClass::NotAuthentic, "{e}");
    // ... and without re-sealing it is damage.
    let mut damaged = good.clone();
    damaged[version_at] = b'9';
    let e = refused_before_anything(&old, &damaged, p());
    assert_eq!(e.class(), ErrorClass::BadPatch, "{e}");
}

#[test]
fn foreign_older_expired_and_replayed_patches_are_refused_by_name() {
    let (old, _, patch) = pair();
    let k = key(1);
    let good = signed(&patch, 6, std::slice::from_ref(&k));
    let p = || policy(&[&k]);

    let mut other = p();
    other.product = Some("acme-t500".into());
    match refused_before_anything(&old, &good, other) {
        ApplyError::WrongProduct { patch, device } => {
            assert_eq!(
                (patch.as_str(), device.as_str()),
                ("acme-t300", "acme-t500")
            )
        }
        e => panic!("{e}"),
    }
    match refused_before_anything(&old, &signed(&patch, 4, std::slice::from_ref(&k)), p()) {
        e @ ApplyError::Downgrade {
            patch: 4,
            device: 5,
            ..
        } => {
            let msg = e.to_string();
            assert!(msg.contains('4') && msg.contains('5'), "{msg}");
        }
        e => panic!("{e}"),
    }
    // The same counter is not a downgrade.
    apply_ok(&old, &signed(&patch, 5, std::slice::from_ref(&k)), p());
    let mut expiring = release(6);
    expiring.expires = 1_999_999_999;
    let exp = sign_for_release(&patch, Some(&expiring), std::slice::from_ref(&k)).unwrap();
    assert!(matches!(
        refused_before_anything(&old, &exp, p()),
        ApplyError::Expired {
            expires: 1_999_999_999,
            now: 2_000_000_000
        }
    ));
    let mut later = p();
    later.now = Some(1_999_999_999);
    apply_ok(&old, &exp, later);
    let mut installed = p();
    installed.installed = vec![patch_signer::signing_message(&good).unwrap()];
    assert!(matches!(
        refused_before_anything(&old, &good, installed),
        ApplyError::Replay { .. }
    ));
}

#[test]
fn a_threshold_counts_distinct_trusted_keys() {
    let (old, new, patch) = pair();
    let (a, b, c) = (key(1), key(2), key(3));
    let mut two = policy(&[&a, &b]);
    two.threshold = 2;
    let e = refused_before_anything(
        &old,
        &signed(&patch, 6, std::slice::from_ref(&a)),
        two.clone(),
    );
    assert!(
        matches!(
            e,
            ApplyError::NotAuthentic {
                verified: 1,
                threshold: 2,
                ..
            }
        ),
        "{e}"
    );
    // One trusted and one untrusted signer is still one.
    let e = refused_before_anything(
        &old,
        &signed(&patch, 6, &[a.clone(), c.clone()]),
        two.clone(),
    );
    assert!(
        matches!(e, ApplyError::NotAuthentic { verified: 1, .. }),
        "{e}"
    );
    // The same signature entry twice counts once.
    let once = signed(&patch, 6, std::slice::from_ref(&a));
    let parts = split(&once).unwrap();
    let sigs_at = parts.header_bytes.len() + parts.segments.len() * CHECK_LEN;
    let mut dup = once[..sigs_at].to_vec();
    dup.push(2);
    dup.extend_from_slice(&once[sigs_at + 1..sigs_at + 73]);
    dup.extend_from_slice(&once[sigs_at + 1..sigs_at + 73]);
    dup.extend_from_slice(&once[sigs_at + 73..]);
    let e = refused_before_anything(&old, &dup, two.clone());
    assert!(
        matches!(e, ApplyError::NotAuthentic { verified: 1, .. }),
        "{e}"
    );
    assert_eq!(apply_ok(&old, &signed(&patch, 6, &[a, b]), two), new);
}

#[test]
fn every_flip_of_a_signed_patch_is_refused() {
    let (old, new, patch) = pair();
    let k = key(1);
    let good = signed(&patch, 6, std::slice::from_ref(&k));
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        match apply(&old[..], &bad[..], Vec::new(), opts(policy(&[&k]))) {
            Err(e) => assert!(
                matches!(e.class(), ErrorClass::BadPatch | ErrorClass::NotAuthentic),
                "flip at {i}: {e}"
            ),
            // Every segment of a signed patch has a check in the signed
            // table, so no flip may pass, whatever it would produce.
            Ok((_, out)) => panic!("flip at {i} accepted (output equal: {})", out == new),
        }
    }
}

/// A sink that keeps its bytes and records its checkpoints.
#[derive(Default)]
struct Recorder(Vec<u8>, Vec<Checkpoint>);
impl Sink for Recorder {
    fn write(&mut self, data: &[u8]) -> Result<(), fwdelta_apply::IoError> {
        self.0.extend_from_slice(data);
        Ok(())
    }
    fn segment_done(
        &mut self,
        _: &SegmentHeader,
        cp: &Checkpoint,
    ) -> Result<(), fwdelta_apply::IoError> {
        self.1.push(*cp);
        Ok(())
    }
}

/// The bundled pair, its key, its patch signed at counter 6, and that patch
/// applied into a [`Recorder`].
fn signed_and_recorded() -> (Vec<u8>, Vec<u8>, SigningKey, Vec<u8>, Recorder) {
    let (old, new, patch) = pair();
    let k = key(1);
    let good = signed(&patch, 6, std::slice::from_ref(&k));
    let (_, rec) = apply(
        &old[..],
        &good[..],
        Recorder::default(),
        opts(policy(&[&k])),
    )
    .unwrap();
    (old, new, k, good, rec)
}

#[test]
fn a_signed_patch_resumes_from_every_checkpoint() {
    let (old, new, k, good, rec) = signed_and_recorded();
    assert!(rec.1.len() >= 3);
    for cp in &rec.1 {
        let produced = &rec.0[..cp.new_offset as usize];
        let a = Applier::resume(
            &old[..],
            produced.to_vec(),
            opts(policy(&[&k])),
            &good,
            cp,
            produced,
        )
        .unwrap();
        let (_, out) = a.finish_from(&good[cp.patch_offset as usize..]).unwrap();
        assert_eq!(out, new, "resumed after segment {}", cp.next_segment);
        // A resume under a policy the patch does not meet is refused too.
        let err = Applier::resume(
            &old[..],
            Vec::new(),
            opts(policy(&[&key(8)])),
            &good,
            cp,
            produced,
        )
        .err()
        .expect("resume with an untrusted signer accepted");
        assert_eq!(err.class(), ErrorClass::NotAuthentic);
    }
}

/// A checkpoint is an integrity record, not a signed one: whoever can write
/// the device's storage can forge it. One whose patch offset points inside
/// the signature section (where section bytes would be decoded as segment
/// data) or so far on that feeding the rest would overflow the count is
/// refused at resume, before the old image is read again or a byte written.
#[test]
fn a_resume_refuses_a_checkpoint_outside_the_patch_body() {
    let (old, _new, k, good, rec) = signed_and_recorded();
    let (_, header_bytes, _, body_start) =
        fwdelta_apply::inspect::read_patch_start(&mut &good[..]).unwrap();
    let first = rec.1[0];
    for offset in [header_bytes.len() as u64 + 1, body_start - 1, u64::MAX - 8] {
        let mut cp = first;
        cp.patch_offset = offset;
        let produced = &rec.0[..cp.new_offset as usize];
        let reads = Counted(&old, Cell::new(0));
        let err = Applier::resume(
            &reads,
            Vec::new(),
            opts(policy(&[&k])),
            &good,
            &cp,
            produced,
        )
        .err()
        .unwrap_or_else(|| panic!("checkpoint at patch offset {offset} accepted"));
        assert_eq!(err.class(), ErrorClass::BadPatch, "{offset}: {err}");
        assert_eq!(reads.1.get(), 0, "{offset}: old image read");
    }
}

#[test]
fn signed_in_place_patches_apply_and_forgeries_leave_the_image_alone() {
    let old = testdata("fw-cortex-m4/old");
    let new = testdata("fw-cortex-m4/new");
    let k = key(1);
    let plain = diff(
        &old,
        &new,
        &Options {
            in_place: Some(12),
            ..Options::default()
        },
    )
    .unwrap()
    .bytes;
    let good = signed(&plain, 6, std::slice::from_ref(&k));
    let region = MemRegion::new(old.clone());
    let report = apply_in_place(&region, io::Cursor::new(&good), opts(policy(&[&k]))).unwrap();
    assert_eq!(region.into_inner(), new);
    assert_eq!(report.verdict.signed_by.len(), 1);
    for bad in [
        plain.clone(),
        signed(&plain, 6, &[key(9)]),
        signed(&plain, 4, std::slice::from_ref(&k)),
    ] {
        let region = MemRegion::new(old.clone());
        let e = apply_in_place(&region, io::Cursor::new(&bad), opts(policy(&[&k]))).unwrap_err();
        assert!(
            matches!(e.class(), ErrorClass::NotAuthentic | ErrorClass::Downgrade),
            "{e}"
        );
        assert_eq!(
            region.into_inner(),
            old,
            "refused in-place patch touched the image"
        );
    }
    // A payload byte of a segment in the middle changed: its signed check
    // refuses it before the image is touched.
    let parts = split(&good).unwrap();
    let mid = &parts.segments[parts.segments.len() / 2];
    let at = mid.payload.as_ptr() as usize - good.as_ptr() as usize;
    let mut bad = good.clone();
    bad[at] ^= 1;
    let region = MemRegion::new(old.clone());
    let e = apply_in_place(&region, io::Cursor::new(&bad), opts(policy(&[&k]))).unwrap_err();
    assert_eq!(e.class(), ErrorClass::BadPatch, "{e}");
    assert_eq!(region.into_inner(), old);
}

/// `testdata/signed/`: a signed patch made once, with its public key and the
/// expected signer, message and new-image hash. Every later version of the
/// applier must still verify and apply it.
#[test]
fn signed_test_vector_still_verifies() {
    let patch = testdata("signed/fw-cortex-m4.fwd");
    let public =
        fwdelta_format::key_file::parse_public_key(&testdata("signed/release.pub")).unwrap();
    let expected = String::from_utf8(testdata("signed/expected.txt")).unwrap();
    let field = |name: &str| {
        expected
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("expected.txt has no {name}"))
            .to_string()
    };
    let old = testdata("fw-cortex-m4/old");
    let mut p = TrustPolicy::trusting(vec![public]);
    p.product = Some(field("product"));
    let (report, out) = apply(&old[..], &patch[..], Vec::new(), opts(p)).unwrap();
    let hex = fwdelta_format::key_file::hex;
    assert_eq!(hex(blake3::hash(&out).as_bytes()), field("new_blake3"));
    assert_eq!(out, testdata("fw-cortex-m4/new"));
    assert_eq!(report.verdict.signed_by[0].to_string(), field("key_id"));
    assert_eq!(hex(&report.verdict.message.unwrap()), field("message"));
    let r = report.verdict.release.unwrap();
    assert_eq!(r.version, field("version"));
    assert_eq!(r.security_counter.to_string(), field("security_counter"));
}
