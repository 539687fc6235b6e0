//! The applier against every kind of bad patch: truncated, flipped, for another
//! old image, other versions, absurd claims, hand-crafted malicious records,
//! trailing data, budgets. Each must be refused with a typed error, never a
//! panic, and never with output that passes as the new image.

use fwdelta_apply::{
    apply, inspect, inspect_each, Applier, ApplyError, ApplyOptions, ErrorClass, OldImage,
};
use fwdelta_diff::{diff, Options};
use fwdelta_format::diff_model::OldContext;
use fwdelta_format::header::Header;
use fwdelta_format::record::Record;
use fwdelta_format::{check_of, Codec, Layout, MemoryModel, CHECK_LEN, FORMAT_VERSION};
use fwdelta_testkit::{seal_patch, split_payload};
use proptest::prelude::*;
use std::cell::Cell;
use std::io;

fn testdata(pair: &str, which: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../testdata/{pair}/{which}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A real firmware pair and a multi-segment patch between them. It is an
/// executable-aware patch (Thumb-2), so every test below also covers the
/// code extension and the predicted reads.
fn firmware_patch() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let old = testdata("fw-cortex-m4", "old");
    let new = testdata("fw-cortex-m4", "new");
    let opts = Options {
        segment_cost: 600,
        level: 9,
        ..Options::default()
    };
    let patch = diff(&old, &new, &opts).unwrap().bytes;
    let info = inspect(&patch[..]).unwrap();
    assert!(
        info.segments.len() >= 3,
        "want several segments, got {}",
        info.segments.len()
    );
    assert!(
        info.header.code_refs.is_some(),
        "want an executable-aware patch"
    );
    (old, new, patch)
}

fn run(old: &[u8], patch: &[u8]) -> Result<Vec<u8>, ApplyError> {
    apply(old, patch, Vec::new(), ApplyOptions::default()).map(|(_, out)| out)
}

/// Where the last segment of an ordinary `patch` starts: from there on no
/// segment check covers the bytes, the new image's hash does.
fn last_segment_at(patch: &[u8]) -> usize {
    let mut at = 0;
    let summary = inspect_each(patch, |_, offset| at = offset as usize).unwrap();
    assert!(summary.header.cell_log.is_none(), "an ordinary patch");
    at
}

/// Damage at byte `i` of `patch` (applied to `old`, it should give `new`) is
/// refused as a bad patch; only in the last segment, which has no check of
/// its own, may damage that leaves the output byte for byte intact (a zstd
/// table entry no symbol uses) be accepted, since the image it gives is the
/// one the header's hash names.
fn assert_flip_refused(old: &[u8], new: &[u8], bad: &[u8], i: usize, last_at: usize) {
    match run(old, bad) {
        Err(e) => assert_eq!(e.class(), ErrorClass::BadPatch, "flip at {i}: {e}"),
        Ok(out) if i >= last_at => assert_eq!(out, new, "flip at {i} gave a wrong image"),
        Ok(_) => panic!("flip at {i} accepted"),
    }
}

#[test]
fn valid_patch_applies_in_any_split() {
    let (old, new, patch) = firmware_patch();
    assert_eq!(run(&old, &patch).unwrap(), new);
    for chunk in [1usize, 2, 3, 7, 64, 1000] {
        let mut a = Applier::new(&old[..], Vec::new(), ApplyOptions::default());
        for piece in patch.chunks(chunk) {
            a.feed(piece).unwrap();
        }
        let (report, out) = a.finish().unwrap();
        assert_eq!(out, new, "chunk size {chunk}");
        assert_eq!(report.patch_len, patch.len() as u64);
    }
}

#[test]
fn every_truncation_is_refused() {
    let (old, _, patch) = firmware_patch();
    for cut in 0..patch.len() {
        match run(&old, &patch[..cut]) {
            Err(e @ ApplyError::Truncated { .. }) => assert_eq!(e.class(), ErrorClass::BadPatch),
            Err(e) => panic!("cut at {cut}: expected truncation, got {e}"),
            Ok(_) => panic!("cut at {cut} accepted"),
        }
        assert!(
            inspect(&patch[..cut]).is_err(),
            "inspect accepted cut at {cut}"
        );
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    let (old, new, patch) = firmware_patch();
    let last_at = last_segment_at(&patch);
    for i in 0..patch.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = patch.clone();
            bad[i] ^= bit;
            assert_flip_refused(&old, &new, &bad, i, last_at);
            // Without the old image only checks can tell: the last segment
            // has none.
            if i < last_at {
                assert!(inspect(&bad[..]).is_err(), "inspect accepted flip at {i}");
            }
        }
    }
}

#[test]
fn inspect_each_streams_segment_headers() {
    let (_, new, patch) = firmware_patch();
    let mut seen = Vec::new();
    let summary = fwdelta_apply::inspect_each(&patch[..], |s, _| {
        seen.push((s.index, s.new_offset, s.new_len))
    })
    .unwrap();
    assert_eq!(summary.patch_len, patch.len() as u64);
    assert_eq!(seen.len() as u32, summary.header.segment_count);
    let mut at = 0;
    for (i, (index, offset, len)) in seen.iter().enumerate() {
        assert_eq!(*index as usize, i);
        assert_eq!(*offset, at);
        at += len;
    }
    assert_eq!(at, new.len() as u64);
}

/// The firmware patch covers the default codec and layout, whichever the
/// generator chose; every other codec and layout gets the same treatment
/// here.
#[test]
fn every_codec_and_layout_refuses_every_truncation_and_flip() {
    let old = testdata("fw-x86-64", "old");
    let new = testdata("fw-x86-64", "new");
    // (codec asked for, budget, layout asked for) -> (codec, layout) written.
    // zstd with a 64 KiB budget, too small for its decoder: stored.
    let cases = [
        (
            (Codec::Zstd, 64 << 10, None),
            (Codec::Stored, Layout::Interleaved),
        ),
        (
            (Codec::Zstd, 2 << 20, None),
            (Codec::Zstd, Layout::Interleaved),
        ),
        (
            (Codec::Lzma2, 2 << 20, Some(Layout::Split)),
            (Codec::Lzma2, Layout::Split),
        ),
        (
            (Codec::Lzma2, 2 << 20, Some(Layout::Interleaved)),
            (Codec::Lzma2, Layout::Interleaved),
        ),
    ];
    for ((codec, apply_memory, layout), expected) in cases {
        let opts = Options {
            codec,
            apply_memory,
            layout,
            segment_cost: 800,
            ..Options::default()
        };
        let patch = diff(&old, &new, &opts).unwrap().bytes;
        let header = inspect(&patch[..]).unwrap().header;
        assert_eq!((header.codec, header.layout), expected);
        assert!(header.segment_count >= 3);
        every_truncation_and_flip_is_refused(&old, &new, &patch);
    }
}

fn every_truncation_and_flip_is_refused(old: &[u8], new: &[u8], patch: &[u8]) {
    let (old, patch) = (old.to_vec(), patch.to_vec());
    assert_eq!(run(&old, &patch).unwrap(), new);
    for cut in 0..patch.len() {
        assert!(
            matches!(run(&old, &patch[..cut]), Err(ApplyError::Truncated { .. })),
            "cut {cut}"
        );
    }
    let last_at = last_segment_at(&patch);
    for i in 0..patch.len() {
        let mut bad = patch.clone();
        bad[i] ^= 0x04;
        assert_flip_refused(&old, new, &bad, i, last_at);
    }
}

#[test]
fn trailing_data_is_refused() {
    let (old, _, mut patch) = firmware_patch();
    patch.push(0);
    assert!(matches!(run(&old, &patch), Err(ApplyError::TrailingData)));
    assert!(matches!(inspect(&patch[..]), Err(ApplyError::TrailingData)));
}

/// An old image that counts reads, to prove what the applier touched.
struct Counted<'a> {
    data: &'a [u8],
    reads: Cell<u64>,
}

impl OldImage for Counted<'_> {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), fwdelta_apply::IoError> {
        self.reads.set(self.reads.get() + 1);
        self.data.read_at(offset, buf)
    }
}

#[test]
fn wrong_old_image_is_refused_before_any_output() {
    let (old, _, patch) = firmware_patch();
    let mut other = old.clone();
    other[100] ^= 1;
    let mut a = Applier::new(&other[..], Vec::new(), ApplyOptions::default());
    let err = a.feed(&patch).unwrap_err();
    assert!(matches!(err, ApplyError::OldHash { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::WrongOldImage);
    assert_eq!(
        a.produced(),
        0,
        "bytes were written before the old image was checked"
    );
    assert!(matches!(a.feed(&[]), Err(ApplyError::Poisoned)));

    let shorter = &old[..old.len() - 1];
    let err = run(shorter, &patch).unwrap_err();
    assert!(matches!(err, ApplyError::OldLength { .. }), "{err}");
}

#[test]
fn memory_budget_is_enforced_from_the_header_alone() {
    let (old, _, patch) = firmware_patch();
    let info = inspect(&patch[..]).unwrap();
    let header = info.header;
    let counted = Counted {
        data: &old,
        reads: Cell::new(0),
    };
    let opts = ApplyOptions::default().with_memory_limit(header.apply_memory - 1);
    let mut a = Applier::new(&counted, Vec::new(), opts);
    let err = a.feed(&patch[..info.header_len as usize]).unwrap_err();
    assert!(matches!(err, ApplyError::MemoryBudget { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Limits);
    assert_eq!(counted.reads.get(), 0, "old image read despite refusal");

    let opts = ApplyOptions::default().with_memory_limit(header.apply_memory);
    apply(&old[..], &patch[..], Vec::new(), opts).unwrap();

    let opts = ApplyOptions::default().with_max_new_len(header.new_len - 1);
    let err = apply(&old[..], &patch[..], Vec::new(), opts).unwrap_err();
    assert!(matches!(err, ApplyError::NewTooLarge { .. }), "{err}");
}

#[test]
fn a_large_header_is_refused_before_it_is_buffered() {
    // An executable-aware header with a big address map (~20 KB): an applier
    // whose whole budget is 64 KiB must refuse it from its first few bytes
    // instead of buffering it first.
    let old = vec![0u8; 1 << 20];
    let runs: Vec<(u64, i64)> = (0..10_000u64)
        .map(|i| (i * 100, (i % 2) as i64 * 4))
        .collect();
    let mut header = Header {
        flags: 0,
        old_len: old.len() as u64,
        old_check: check_of(&old),
        new_len: old.len() as u64,
        new_hash: [0; 32],
        codec: Codec::Stored,
        window_log: 10,
        layout: Layout::Interleaved,
        segment_count: 1,
        apply_memory: 0,
        cell_log: None,
        code_refs: Some(fwdelta_format::CodeRefs {
            arch: fwdelta_format::reference_rewriter::Arch::Aarch64,
            map: fwdelta_format::address_map::AddressMap::from_runs(&runs, old.len() as u64)
                .unwrap(),
        }),
        literal_filter: None,
        release: None,
    };
    header.apply_memory = 1 << 21;
    let bytes = header.encode();
    assert!(bytes.len() > 16_000, "header is {} bytes", bytes.len());
    let opts = ApplyOptions::default().with_memory_limit(64 << 10);
    let mut a = Applier::new(&old[..], Vec::new(), opts);
    let err = a.feed(&bytes[..Header::PREFIX_LEN]).unwrap_err();
    assert!(matches!(err, ApplyError::MemoryBudget { .. }), "{err}");
    // With room for it, the same header is read (and then refused for its
    // claim only once whole: here the claim of 2 MiB is over this limit).
    let opts = ApplyOptions::default().with_memory_limit(1 << 20);
    let mut a = Applier::new(&old[..], Vec::new(), opts);
    a.feed(&bytes[..Header::PREFIX_LEN]).unwrap();
    let err = a.feed(&bytes[Header::PREFIX_LEN..]).unwrap_err();
    assert!(
        matches!(err, ApplyError::MemoryBudget { needed, .. } if needed == 1 << 21),
        "{err}"
    );
}

/// The header's length, from its frozen framing (the varint after the version).
fn header_len(patch: &[u8]) -> usize {
    let prefix = patch[..Header::PREFIX_LEN].try_into().unwrap();
    Header::parse_prefix(&prefix).unwrap()
}

/// Re-seal a header after editing its fields, so field checks (not the header
/// check) are what is tested.
fn reseal(patch: &mut [u8]) {
    let len = header_len(patch);
    let n = len - CHECK_LEN;
    let c = check_of(&patch[..n]);
    patch[n..len].copy_from_slice(&c);
}

#[test]
fn bad_code_extensions_are_refused() {
    let (old, new, patch) = firmware_patch();
    // The extension is the last thing before the header check: type, length,
    // arch id, map.
    let header_len = header_len(&patch);
    let header = Header::parse(&patch[..header_len]).unwrap();
    let at = header_len - CHECK_LEN - header.code_refs.as_ref().unwrap().extension_len();
    assert_eq!(
        u16::from_le_bytes([patch[at], patch[at + 1]]),
        fwdelta_format::header::EXT_CODE_REFS
    );
    let value = at + 4;
    let cases: [(usize, u8, &str); 3] = [
        (value, 0, "instruction set"),
        (value, 9, "instruction set"),
        (value + 1, 0, "address map"),
    ];
    for (offset, byte, expect) in cases {
        let mut bad = patch.clone();
        bad[offset] = byte;
        reseal(&mut bad);
        let err = run(&old, &bad).unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
        assert_eq!(err.class(), ErrorClass::BadPatch);
    }
    // Another valid instruction set is accepted by the parser, but predicts
    // other bytes: the segment output fails the new image's hash, never
    // passes as the new image.
    let mut other = patch.clone();
    other[value] = fwdelta_format::reference_rewriter::Arch::X86_64.id();
    reseal(&mut other);
    match run(&old, &other) {
        Ok(out) => panic!("accepted; output equal to new: {}", out == new),
        Err(e) => assert_eq!(e.class(), ErrorClass::BadPatch, "{e}"),
    }
}

#[test]
fn unknown_version_and_absurd_claims_are_refused() {
    let (old, _, patch) = firmware_patch();
    // The version byte follows the 4-byte magic.
    let mut damaged = patch.clone();
    damaged[4] = FORMAT_VERSION + 1;
    let err = run(&old, &damaged).unwrap_err();
    assert!(err.to_string().contains("header check mismatch"), "{err}");
    assert_eq!(err.class(), ErrorClass::BadPatch);

    for version in [2u8, FORMAT_VERSION - 1, FORMAT_VERSION + 1] {
        let mut other = patch.clone();
        other[4] = version;
        reseal(&mut other);
        let err = run(&old, &other).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("unsupported patch format version {version}")),
            "{err}"
        );
    }

    let header_len = header_len(&patch);
    let mut header = Header::parse(&patch[..header_len]).unwrap();
    header.new_len = 1 << 60;
    let mut absurd = header.encode();
    absurd.extend_from_slice(&patch[header_len..]);
    let err = run(&old, &absurd).unwrap_err();
    assert!(err.to_string().contains("absurd new image size"), "{err}");
    assert_eq!(err.class(), ErrorClass::BadPatch);

    // The flags varint follows the header_len varint.
    let flags_at = 5 + fwdelta_format::varint::len_u64(header_len as u64);
    let mut flags = patch.clone();
    flags[flags_at] = 4;
    reseal(&mut flags);
    let err = run(&old, &flags).unwrap_err();
    assert!(err.to_string().contains("unsupported features"), "{err}");
    assert_eq!(err.class(), ErrorClass::Unsupported);
    // The signed flag without a release statement is malformed, not newer.
    let mut signed = patch.clone();
    signed[flags_at] = 2;
    reseal(&mut signed);
    let err = run(&old, &signed).unwrap_err();
    assert!(err.to_string().contains("signed flag"), "{err}");
    assert_eq!(err.class(), ErrorClass::BadPatch);

    assert!(run(&old, b"this is not a patch at all")
        .unwrap_err()
        .to_string()
        .contains("bad magic"));
    assert!(matches!(run(&old, b""), Err(ApplyError::Truncated { .. })));
}

/// Build a patch by hand with valid checks, whose segments carry the given raw
/// (uncompressed) record streams. `claimed_new` is what the header says.
fn craft(old: &[u8], claimed_new: &[u8], segments: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
    let window_log = 16;
    let compressed: Vec<_> = segments
        .iter()
        .map(|(len, start, stream)| (*len, *start, compress(stream, window_log)))
        .collect();
    craft_payloads(old, claimed_new, window_log, &compressed)
}

/// As [`craft`], with the payloads given as they go into the patch.
fn craft_payloads(
    old: &[u8],
    claimed_new: &[u8],
    window_log: u8,
    segments: &[(u64, u64, Vec<u8>)],
) -> Vec<u8> {
    craft_codec(old, claimed_new, Codec::Zstd, window_log, segments)
}

/// As [`craft_payloads`], for payloads of `codec`.
fn craft_codec(
    old: &[u8],
    claimed_new: &[u8],
    codec: Codec,
    window_log: u8,
    segments: &[(u64, u64, Vec<u8>)],
) -> Vec<u8> {
    craft_layout(
        old,
        claimed_new,
        codec,
        Layout::Interleaved,
        window_log,
        segments,
    )
}

/// As [`craft_codec`], in `layout`.
fn craft_layout(
    old: &[u8],
    claimed_new: &[u8],
    codec: Codec,
    layout: Layout,
    window_log: u8,
    segments: &[(u64, u64, Vec<u8>)],
) -> Vec<u8> {
    let header = Header {
        flags: 0,
        old_len: old.len() as u64,
        old_check: fwdelta_format::check_of(old),
        new_len: claimed_new.len() as u64,
        new_hash: *blake3::hash(claimed_new).as_bytes(),
        codec,
        window_log,
        layout,
        segment_count: segments.len() as u32,
        apply_memory: MemoryModel::required_for_layout(codec, window_log, layout),
        cell_log: None,
        code_refs: None,
        literal_filter: None,
        release: None,
    };
    let mut at = 0;
    let sealed = segments.iter().map(|(new_len, old_start, payload)| {
        at += new_len;
        (at - new_len, *new_len, *old_start, &payload[..])
    });
    seal_patch(&header, sealed)
}

fn compress(stream: &[u8], window_log: u8) -> Vec<u8> {
    use zstd::stream::raw::CParameter;
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.set_parameter(CParameter::WindowLog(u32::from(window_log)))
        .unwrap();
    c.set_parameter(CParameter::Format(zstd::zstd_safe::FrameFormat::Magicless))
        .unwrap();
    c.set_parameter(CParameter::ChecksumFlag(false)).unwrap();
    c.compress(stream).unwrap()
}

fn rec(copy: u64, diff: u64, literal: u64, seek: i64, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    Record {
        copy_len: copy,
        diff_len: diff,
        literal_len: literal,
        seek,
    }
    .encode_head(&mut v);
    v.extend_from_slice(bytes);
    v
}

fn corrupt_detail(result: Result<Vec<u8>, ApplyError>) -> String {
    match result {
        Err(ApplyError::CorruptSegment { detail, .. }) => detail,
        Err(e) => panic!("expected a corrupt segment, got {e}"),
        Ok(_) => panic!("malicious patch accepted"),
    }
}

#[test]
fn crafted_patches_round_trip_when_honest() {
    let old = b"0123456789abcdef".to_vec();
    let new = b"0123XYZ".to_vec();
    // copy 4 from 0, literal "XYZ"
    let p = craft(&old, &new, &[(7, 0, rec(4, 0, 3, 0, b"XYZ"))]);
    assert_eq!(run(&old, &p).unwrap(), new);
    // two segments, second starts its old cursor at 10: copies "abc"
    let new2 = b"0123abc".to_vec();
    let p = craft(
        &old,
        &new2,
        &[(4, 0, rec(4, 0, 0, 0, b"")), (3, 10, rec(3, 0, 0, 0, b""))],
    );
    assert_eq!(run(&old, &p).unwrap(), new2);
}

#[test]
fn records_that_stop_short_end_with_the_implied_tail_copy() {
    let old = b"0123456789abcdef".to_vec();
    // literal "XY", seek +6 to 8: the 5 bytes left are old[8..13]
    let new = b"XY89abc".to_vec();
    let p = craft(&old, &new, &[(7, 0, rec(0, 0, 2, 8, b"XY"))]);
    assert_eq!(run(&old, &p).unwrap(), new);
    // the same with stored and split payloads, and in a first segment of two
    for codec in [Codec::Stored, Codec::Lzma2] {
        let stream = rec(0, 0, 2, 8, b"XY");
        let payload = match codec {
            Codec::Stored => stream,
            _ => lzma2_chunks(&[&stream], true).concat(),
        };
        let p = craft_codec(&old, &new, codec, 16, &[(7, 0, payload)]);
        assert_eq!(run(&old, &p).unwrap(), new, "{codec:?}");
    }
    // split streams: the head (0, 0, 2, 8) in the heads stream, "XY" in the literals
    let head = rec(0, 0, 2, 8, b"");
    let p = craft_layout(
        &old,
        &new,
        Codec::Lzma2,
        Layout::Split,
        16,
        &[(7, 0, split_lzma2(&[[&head, b"", b"XY"]]))],
    );
    assert_eq!(run(&old, &p).unwrap(), new);
    let new2 = b"XY8ef".to_vec();
    let p = craft(
        &old,
        &new2,
        &[
            (3, 0, rec(0, 0, 2, 8, b"XY")),
            (2, 14, rec(1, 0, 0, 0, b"")),
        ],
    );
    assert_eq!(run(&old, &p).unwrap(), new2);
    // the tail copy may not read past the old image: cursor 14, 3 bytes left
    let d = corrupt_detail(run(
        &old,
        &craft(&old, &[b'x'; 8], &[(8, 14, rec(0, 0, 5, 0, &[b'x'; 5]))]),
    ));
    assert!(
        d.contains("reads 3 old bytes at 14, past the 16-byte old image"),
        "{d}"
    );
    // nor after a seek to the very end
    let d = corrupt_detail(run(
        &old,
        &craft(&old, &[b'x'; 8], &[(8, 0, rec(0, 0, 5, 14, &[b'x'; 5]))]),
    ));
    assert!(d.contains("past the 16-byte old image"), "{d}");
}

#[test]
fn crafted_malicious_records_are_refused() {
    let old = b"0123456789abcdef".to_vec();
    let new = vec![b'x'; 8];
    // reads past the end of the old image
    let d = corrupt_detail(run(
        &old,
        &craft(&old, &new, &[(8, 12, rec(8, 0, 0, 0, b""))]),
    ));
    assert!(d.contains("past the 16-byte old image"), "{d}");
    // diff bytes past the end of the old image
    let d = corrupt_detail(run(
        &old,
        &craft(&old, &new, &[(8, 10, rec(0, 8, 0, 0, &[0; 8]))]),
    ));
    assert!(d.contains("past the 16-byte old image"), "{d}");
    // seeks before the start of the old image
    let stream = [rec(2, 0, 0, -5, b""), rec(6, 0, 0, 0, b"")].concat();
    let d = corrupt_detail(run(&old, &craft(&old, &new, &[(8, 0, stream)])));
    assert!(d.contains("outside the 16-byte old image"), "{d}");
    // a record larger than its segment
    let d = corrupt_detail(run(
        &old,
        &craft(&old, &new, &[(8, 0, rec(0, 0, 9, 0, &[b'x'; 9]))]),
    ));
    assert!(d.contains("overruns the segment"), "{d}");
    // a stream that stops inside a record (its literal bytes cut short)
    let d = corrupt_detail(run(
        &old,
        &craft(&old, &new, &[(8, 0, rec(0, 0, 7, 0, &[b'x'; 5]))]),
    ));
    assert!(d.contains("inside a record"), "{d}");
    // bytes after the last record
    let stream = [rec(0, 0, 8, 0, &[b'x'; 8]), vec![1, 2, 3]].concat();
    let d = corrupt_detail(run(&old, &craft(&old, &new, &[(8, 0, stream)])));
    assert!(d.contains("after the segment's last record"), "{d}");
    // a record that produces nothing
    let d = corrupt_detail(run(
        &old,
        &craft(&old, &new, &[(8, 0, rec(0, 0, 0, 3, b""))]),
    ));
    assert!(d.contains("produces no bytes"), "{d}");
    // a malformed varint
    let d = corrupt_detail(run(&old, &craft(&old, &new, &[(8, 0, vec![0xff; 12])])));
    assert!(d.contains("varint"), "{d}");
    // honest records, but the header's new hash is for other content
    let p = craft(&old, &new, &[(8, 0, rec(8, 0, 0, 0, b""))]);
    assert!(matches!(run(&old, &p), Err(ApplyError::NewHashMismatch)));
}

/// [`fwdelta_testkit::lzma2_chunks`] with a 4 KiB dictionary.
fn lzma2_chunks(pieces: &[&[u8]], end: bool) -> Vec<Vec<u8>> {
    fwdelta_testkit::lzma2_chunks(pieces, 4096, end).unwrap()
}

/// [`fwdelta_testkit::split_lzma2`] with a 4 KiB dictionary.
fn split_lzma2(blocks: &[[&[u8]; 3]]) -> Vec<u8> {
    fwdelta_testkit::split_lzma2(blocks, 4096).unwrap()
}

/// The split-layout test pair: old bytes, and records in two blocks making
/// `new` (copy 4, 3 diff bytes, literal "XY" | literal "abc", copy 5, 2 diff
/// bytes).
struct SplitCase {
    old: Vec<u8>,
    new: Vec<u8>,
    heads: [Vec<u8>; 2],
}

fn split_case() -> SplitCase {
    let old = b"0123456789abcdefghij".to_vec();
    let mut new = b"0123".to_vec();
    new.extend(old[4..7].iter().map(|b| b + 1));
    new.extend_from_slice(b"XYabc");
    new.extend_from_slice(&old[7..12]);
    new.extend(old[12..14].iter().map(|b| b + 2));
    let heads = [
        rec(4, 3, 2, 0, b""),
        [rec(0, 0, 3, 0, b""), rec(5, 2, 0, 0, b"")].concat(),
    ];
    SplitCase { old, new, heads }
}

impl SplitCase {
    /// A layout-2 patch of one segment with `payload`.
    fn patch(&self, payload: Vec<u8>) -> Vec<u8> {
        self.patch_in(Layout::Split, payload)
    }

    /// A stored-codec patch in a split `layout` is refused: its streams
    /// need a compressed codec.
    fn assert_stored_refused(&self, layout: Layout) {
        let p = craft_layout(
            &self.old,
            &self.new,
            Codec::Stored,
            layout,
            10,
            &[(19, 0, vec![0; 8])],
        );
        let err = run(&self.old, &p).unwrap_err();
        assert!(err.to_string().contains("split streams need"), "{err}");
    }

    /// A patch of one segment with `payload` in `layout` (LZMA2, window 2^10).
    fn patch_in(&self, layout: Layout, payload: Vec<u8>) -> Vec<u8> {
        let n = self.new.len() as u64;
        craft_layout(
            &self.old,
            &self.new,
            Codec::Lzma2,
            layout,
            10,
            &[(n, 0, payload)],
        )
    }

    /// The honest blocks with some raw parts replaced.
    fn blocks<'a>(&'a self, diffs: [&'a [u8]; 2], lits: [&'a [u8]; 2]) -> Vec<u8> {
        split_lzma2(&[
            [&self.heads[0], diffs[0], lits[0]],
            [&self.heads[1], diffs[1], lits[1]],
        ])
    }
}

#[test]
fn crafted_split_patches_round_trip_when_honest() {
    let c = split_case();
    let p = c.patch(c.blocks([&[1, 1, 1], &[2, 2]], [b"XY", b"abc"]));
    assert_eq!(run(&c.old, &p).unwrap(), c.new);
    // fed a byte at a time
    let mut a = Applier::new(&c.old[..], Vec::new(), ApplyOptions::default());
    for b in &p {
        a.feed(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(a.finish().unwrap().1, c.new);
    // all in one block
    let one = split_lzma2(&[[
        &[c.heads[0].clone(), c.heads[1].clone()].concat(),
        &[1, 1, 1, 2, 2],
        b"XYabc",
    ]]);
    assert_eq!(run(&c.old, &c.patch(one)).unwrap(), c.new);
}

#[test]
fn crafted_bad_split_blocks_are_refused() {
    let c = split_case();
    let refused = |payload: Vec<u8>, want: &str| {
        let d = corrupt_detail(run(&c.old, &c.patch(payload)));
        assert!(d.contains(want), "want {want:?}, got {d:?}");
    };
    refused(
        c.blocks([&[1, 1], &[2, 2]], [b"XY", b"abc"]),
        "needs diff bytes",
    );
    refused(
        c.blocks([&[1, 1, 1, 1], &[2, 2]], [b"XY", b"abc"]),
        "diff bytes no record",
    );
    refused(
        c.blocks([&[1, 1, 1], &[2, 2]], [b"XYZ", b"abc"]),
        "literal bytes no record",
    );
    refused(
        c.blocks([&[1, 1, 1], &[2, 2]], [b"X", b"abc"]),
        "needs literal bytes",
    );
    // a head cut between blocks
    let h0 = [&c.heads[0][..], &c.heads[1][..1]].concat();
    let payload = split_lzma2(&[
        [&h0, &[1, 1, 1], b"XY"],
        [&c.heads[1][1..], &[2, 2], b"abc"],
    ]);
    refused(payload, "inside a record head");
    // streams that never end
    let s: Vec<Vec<Vec<u8>>> = [
        [&c.heads[0][..], &c.heads[1][..]],
        [&[1u8, 1, 1][..], &[2, 2]],
        [&b"XY"[..], &b"abc"[..]],
    ]
    .iter()
    .map(|pieces| lzma2_chunks(pieces, false))
    .collect();
    let payload = split_payload(&[
        [&s[0][0], &s[1][0], &s[2][0]],
        [&s[0][1], &s[1][1], &s[2][1]],
    ]);
    refused(payload, "ends before its frame does");
    // a literal stream that ended in the first block and goes on
    let ended = lzma2_chunks(&[b"XY"], true);
    let more = lzma2_chunks(&[b"abc"], true);
    let h = lzma2_chunks(&[&c.heads[0], &c.heads[1]], true);
    let d = lzma2_chunks(&[&[1, 1, 1], &[2, 2]], true);
    let payload = split_payload(&[[&h[0], &d[0], &ended[0]], [&h[1], &d[1], &more[0]]]);
    refused(payload, "after the end of the literal stream");
    // block headers: empty, over the buffer, past the payload
    let honest = c.blocks([&[1, 1, 1], &[2, 2]], [b"XY", b"abc"]);
    refused([vec![0, 0, 0], honest.clone()].concat(), "empty block");
    let mut big = Vec::new();
    fwdelta_format::varint::put_u64(&mut big, 65_536);
    big.extend_from_slice(&[1, 0]);
    big.extend_from_slice(&honest);
    refused(big, "block buffer");
    refused([vec![1, 1, 100], honest].concat(), "runs past the payload");
    c.assert_stored_refused(Layout::Split);
}

/// One block of [`modelled_payload`]: raw heads, diff bytes at an old
/// offset, raw literals.
type ModelledBlock<'a> = (Vec<u8>, Option<(usize, Vec<u8>)>, &'a [u8]);

/// Layout 3: the split case's blocks with the heads coded by the head model
/// and the diff chunks by the diff model. `blocks` gives each block's head
/// records, diff bytes (with the old offset of the first) and literal bytes;
/// `extra` is appended to block `k`'s diff chunk, `extra_heads` to block
/// `k`'s heads chunk.
fn modelled_payload_with(
    old: &[u8],
    blocks: &[ModelledBlock<'_>],
    extra: Option<(usize, &[u8])>,
    extra_heads: Option<(usize, &[u8])>,
) -> Vec<u8> {
    let pieces: Vec<Vec<(OldContext, u8)>> = blocks
        .iter()
        .map(|(_, d, _)| match d {
            Some((at, bytes)) => diff_piece(old, *at, bytes),
            None => Vec::new(),
        })
        .collect();
    let mut diffs = fwdelta_testkit::model_diff_chunks(&pieces, 10);
    if let Some((k, bytes)) = extra {
        diffs[k].extend_from_slice(bytes);
    }
    let heads: Vec<&[u8]> = blocks.iter().map(|b| &b.0[..]).collect();
    let lits: Vec<&[u8]> = blocks.iter().map(|b| b.2).collect();
    let mut h = fwdelta_testkit::model_head_chunks(&heads);
    if let Some((k, bytes)) = extra_heads {
        h[k].extend_from_slice(bytes);
    }
    let l = lzma2_chunks(&lits, true);
    let chunks: Vec<[&[u8]; 3]> = (0..blocks.len())
        .map(|i| [&h[i][..], &diffs[i][..], &l[i][..]])
        .collect();
    split_payload(&chunks)
}

/// Difference bytes `diffs` applying to `old` from offset `at`, each with
/// its old context, as the diff model codes them.
fn diff_piece(old: &[u8], at: usize, diffs: &[u8]) -> Vec<(OldContext, u8)> {
    diffs
        .iter()
        .enumerate()
        .map(|(j, &b)| (OldContext::at(old, at + j, (at + j) as u64), b))
        .collect()
}

fn modelled_payload(
    old: &[u8],
    blocks: &[ModelledBlock<'_>],
    extra: Option<(usize, &[u8])>,
) -> Vec<u8> {
    modelled_payload_with(old, blocks, extra, None)
}

#[test]
fn crafted_modelled_patches_round_trip_when_honest_and_refuse_unused_diffs() {
    let c = split_case();
    let patch = |payload: Vec<u8>| c.patch_in(Layout::Modelled, payload);
    // three blocks: copy 4, diffs at 4..7, "XY" | "abc" | copy 5, diffs at 12..14
    let blocks = |mid_diffs: Option<(usize, Vec<u8>)>| {
        vec![
            (rec(4, 3, 2, 0, b""), Some((4, vec![1, 1, 1])), &b"XY"[..]),
            (rec(0, 0, 3, 0, b""), mid_diffs, &b"abc"[..]),
            (rec(5, 2, 0, 0, b""), Some((12, vec![2, 2])), &b""[..]),
        ]
    };
    let honest = patch(modelled_payload(&c.old, &blocks(None), None));
    assert_eq!(run(&c.old, &honest).unwrap(), c.new);
    let mut a = Applier::new(&c.old[..], Vec::new(), ApplyOptions::default());
    for b in &honest {
        a.feed(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(a.finish().unwrap().1, c.new);
    let refused = |payload: Vec<u8>, want: &str| {
        let d = corrupt_detail(run(&c.old, &patch(payload)));
        assert!(d.contains(want), "want {want:?}, got {d:?}");
    };
    // a chunk longer than what its records decode
    refused(
        modelled_payload(&c.old, &blocks(None), Some((0, &[0xA5; 8]))),
        "diff bytes no record",
    );
    // a diff chunk in a block whose records have no diff bytes
    refused(
        modelled_payload(&c.old, &blocks(Some((9, vec![7, 7]))), None),
        "diff bytes no record",
    );
    // a record that needs diff bytes from an empty chunk
    let mut no_diffs = blocks(None);
    no_diffs[2].1 = None;
    refused(
        modelled_payload(&c.old, &no_diffs, None),
        "needs diff bytes its block does not have",
    );
    // a damaged diff chunk decodes to other bytes: the new image's hash
    // fails (a one-segment patch: its only segment has no check)
    let mut damaged = honest.clone();
    let at = damaged.len() - 20;
    damaged[at] ^= 0x40;
    assert!(run(&c.old, &damaged).is_err());
    // the literals of layout 3 still need a compressed codec
    c.assert_stored_refused(Layout::Modelled);
}

#[test]
fn crafted_modelled_heads_are_refused_when_they_hide_bytes_or_run_long() {
    use fwdelta_format::bit_coder::BitEncoder;
    use fwdelta_format::head_model::HeadModel;
    let c = split_case();
    let patch = |payload: Vec<u8>| c.patch_in(Layout::Modelled, payload);
    let blocks = |second_heads: Vec<u8>| {
        vec![
            (rec(4, 3, 2, 0, b""), Some((4, vec![1, 1, 1])), &b"XY"[..]),
            (second_heads, Some((12, vec![2, 2])), &b"abc"[..]),
        ]
    };
    let two = [rec(0, 0, 3, 0, b""), rec(5, 2, 0, 0, b"")].concat();
    let honest = patch(modelled_payload(&c.old, &blocks(two.clone()), None));
    assert_eq!(run(&c.old, &honest).unwrap(), c.new);
    let refused = |payload: Vec<u8>, want: &str| {
        let d = corrupt_detail(run(&c.old, &patch(payload)));
        assert!(d.contains(want), "want {want:?}, got {d:?}");
    };
    // bytes after the flag that ends the block's records
    refused(
        modelled_payload_with(&c.old, &blocks(two.clone()), None, Some((1, &[0x5A; 8]))),
        "record-head bytes after the block's last record",
    );
    // a varint that never ends: the head model stops at the longest head
    refused(
        modelled_payload(&c.old, &blocks(vec![0x80; 48]), None),
        "a record head longer than any valid one",
    );
    // a heads chunk whose first flag says no record follows
    let mut model = HeadModel::new();
    let mut bits = BitEncoder::new();
    model.code_block(&mut bits, [&rec(4, 3, 2, 0, b"")[..]]);
    let first = bits.finish();
    model.code_more(&mut bits, true, false);
    let empty = bits.finish();
    let testkit_first = &fwdelta_testkit::model_head_chunks(&[&rec(4, 3, 2, 0, b"")])[0];
    assert_eq!(
        &first, testkit_first,
        "the testkit codes heads as the model does"
    );
    let lits = lzma2_chunks(&[b"XY", b"abc"], true);
    let diffs = fwdelta_testkit::model_diff_chunks(
        &[
            diff_piece(&c.old, 4, &[1, 1, 1]),
            diff_piece(&c.old, 12, &[2, 2]),
        ],
        10,
    );
    let chunks = [
        [&first[..], &diffs[0][..], &lits[0][..]],
        [&empty[..], &diffs[1][..], &lits[1][..]],
    ];
    refused(
        split_payload(&chunks),
        "a record-head chunk without records",
    );
}

#[test]
fn crafted_bad_segment_headers_are_refused() {
    let old = b"0123456789abcdef".to_vec();
    let new = b"01234567".to_vec();
    // a segment claiming more than the new image (only segments before the
    // last store their length)
    let p = craft(
        &old,
        &new,
        &[(9, 0, rec(9, 0, 0, 0, b"")), (1, 0, rec(1, 0, 0, 0, b""))],
    );
    let e = run(&old, &p).unwrap_err().to_string();
    assert!(e.contains("segment 0") && e.contains("does not fit"), "{e}");
    // the last segment when the others have produced the whole image
    let p = craft(
        &old,
        &new,
        &[(8, 0, rec(8, 0, 0, 0, b"")), (1, 0, rec(1, 0, 0, 0, b""))],
    );
    let e = run(&old, &p).unwrap_err().to_string();
    assert!(e.contains("segment 1") && e.contains("does not fit"), "{e}");
    // old cursor beyond the old image
    let p = craft(&old, &new, &[(8, 17, rec(0, 0, 8, 0, b"01234567"))]);
    assert!(run(&old, &p)
        .unwrap_err()
        .to_string()
        .contains("past the 16-byte old image"));
    // the last segment produces the rest of the image: a stream that stops
    // short of it ends with the implied tail copy, which must fit the old image
    let p = craft(&old, &new, &[(4, 0, rec(4, 0, 0, 0, b""))]);
    assert_eq!(run(&old, &p).unwrap(), new);
    let p = craft(&old, &new, &[(4, 10, rec(4, 0, 0, 0, b""))]);
    let e = run(&old, &p).unwrap_err().to_string();
    assert!(
        e.contains("segment 0") && e.contains("4 old bytes at 14"),
        "{e}"
    );
}

/// Byte ranges of a patch's segments (header, payload, and check but for the
/// last one).
fn segment_ranges(patch: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut starts = Vec::new();
    fwdelta_apply::inspect_each(patch, |_, at| starts.push(at as usize)).unwrap();
    starts.push(patch.len());
    starts.windows(2).map(|w| w[0]..w[1]).collect()
}

#[test]
fn segments_are_bound_to_their_patch_and_position() {
    // No trailer: the segment checks alone must catch segments that are
    // swapped, dropped or spliced in from another patch, even when every
    // segment is well formed and the lengths still add up (the last segment,
    // which has no check, stays in place here).
    let old = b"0123456789abcdef".to_vec();
    let new = b"abcdabcdabcd".to_vec();
    let same = rec(4, 0, 0, 0, b"");
    let three = [(4, 10, same.clone()), (4, 10, same.clone()), (4, 10, same)];
    let p = craft(&old, &new, &three);
    assert_eq!(run(&old, &p).unwrap(), new);
    let r = segment_ranges(&p);
    assert_eq!(r.len(), 3);
    // Two byte-identical segments swapped: the bytes are the same, the
    // positions differ, so this must be caught by the index binding.
    let body = |i: usize| &p[r[i].start..r[i].end - CHECK_LEN];
    assert_eq!(body(0), body(1));
    let swapped = [
        &p[..r[0].start],
        &p[r[1].clone()],
        &p[r[0].clone()],
        &p[r[2].clone()],
    ]
    .concat();
    let d = corrupt_detail(run(&old, &swapped));
    assert!(d.contains("check mismatch"), "{d}");
    // The first segment's bytes twice (a replayed segment).
    let replayed = [&p[..r[1].start], &p[r[0].clone()], &p[r[2].clone()]].concat();
    let d = corrupt_detail(run(&old, &replayed));
    assert!(d.contains("check mismatch"), "{d}");
    // A segment spliced in from a patch with another header (other new
    // image), identical in every segment byte but its check.
    let other_new = b"abcdabcdabce".to_vec();
    let q = craft(&old, &other_new, &three);
    let rq = segment_ranges(&q);
    let spliced = [&p[..r[1].start], &q[rq[1].clone()], &p[r[2].clone()]].concat();
    let d = corrupt_detail(run(&old, &spliced));
    assert!(d.contains("check mismatch"), "{d}");
    // Dropping the last segment is truncation, not a shorter image.
    let err = run(&old, &p[..r[2].start]).unwrap_err();
    assert!(matches!(err, ApplyError::Truncated { .. }), "{err}");
}

#[test]
fn frames_with_a_larger_window_than_declared_are_refused() {
    // A payload compressed with a 1 MiB window in a patch that declares 2^16:
    // the decoder must refuse it rather than allocate the larger window.
    let old = vec![0u8; 16];
    let new: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 19) as u8)
        .collect();
    let mut stream = Vec::new();
    Record {
        copy_len: 0,
        diff_len: 0,
        literal_len: new.len() as u64,
        seek: 0,
    }
    .encode_head(&mut stream);
    stream.extend_from_slice(&new);
    let mut c = zstd::bulk::Compressor::new(1).unwrap();
    use zstd::stream::raw::CParameter;
    c.set_parameter(CParameter::WindowLog(20)).unwrap();
    c.set_parameter(CParameter::Format(zstd::zstd_safe::FrameFormat::Magicless))
        .unwrap();
    let big = c.compress(&stream).unwrap();
    // The header declares 2^16; the payload's frame needs 2^20.
    let p = craft_payloads(&old, &new, 16, &[(new.len() as u64, 0, big)]);
    let d = corrupt_detail(run(&old, &p));
    assert!(d.contains("decompression failed"), "{d}");
}

#[test]
fn lzma2_payloads_reaching_past_the_declared_window_are_refused() {
    // 200 KB of noise twice: the second copy is one match 200 KB back. The
    // payload is made with a 1 MiB dictionary; the header declares 2^16, so
    // the decoder's dictionary cannot hold the match source and must refuse
    // the payload (not read outside its buffer, not grow it).
    let old = vec![0u8; 16];
    let half = fwdelta_testkit::noise(77, 200_000);
    let new = [half.clone(), half].concat();
    let payload = lzma2(&rec(0, 0, new.len() as u64, 0, &new), 1 << 20);
    assert!(payload.len() < 220_000, "the match was not used");
    let wide = craft_codec(
        &old,
        &new,
        Codec::Lzma2,
        20,
        &[(new.len() as u64, 0, payload.clone())],
    );
    assert_eq!(run(&old, &wide).unwrap(), new);
    let narrow = craft_codec(
        &old,
        &new,
        Codec::Lzma2,
        16,
        &[(new.len() as u64, 0, payload)],
    );
    let d = corrupt_detail(run(&old, &narrow));
    assert!(d.contains("LZMA2 decompression failed"), "{d}");
}

#[test]
fn lzma2_garbage_and_cut_payloads_are_refused() {
    let old = b"0123456789abcdef".to_vec();
    let new = b"0123XYZ".to_vec();
    let stream = rec(4, 0, 3, 0, b"XYZ");
    let good = lzma2(&stream, 1 << 12);
    let p = craft_codec(&old, &new, Codec::Lzma2, 12, &[(7, 0, good.clone())]);
    assert_eq!(run(&old, &p).unwrap(), new);
    // not an LZMA2 stream at all (0xFF is an invalid chunk control byte)
    let p = craft_codec(&old, &new, Codec::Lzma2, 12, &[(7, 0, vec![0xff; 9])]);
    let d = corrupt_detail(run(&old, &p));
    assert!(d.contains("LZMA2 decompression failed"), "{d}");
    // the stream without its end marker: the payload ends before the stream
    let cut = good[..good.len() - 1].to_vec();
    let p = craft_codec(&old, &new, Codec::Lzma2, 12, &[(7, 0, cut)]);
    let d = corrupt_detail(run(&old, &p));
    assert!(d.contains("ends before its frame"), "{d}");
    // bytes after the end marker
    let long = [good, vec![0]].concat();
    let p = craft_codec(&old, &new, Codec::Lzma2, 12, &[(7, 0, long)]);
    let d = corrupt_detail(run(&old, &p));
    assert!(d.contains("after the end of the compressed frame"), "{d}");
}

/// One raw LZMA2 stream of `stream`, made with a `dict`-byte dictionary.
fn lzma2(stream: &[u8], dict: u32) -> Vec<u8> {
    let mut opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
    opts.dict_size(dict);
    let mut filters = liblzma::stream::Filters::new();
    filters.lzma2(&opts);
    let enc = liblzma::stream::Stream::new_raw_encoder(&filters).unwrap();
    let mut w = liblzma::write::XzEncoder::new_stream(Vec::new(), enc);
    io::Write::write_all(&mut w, stream).unwrap();
    w.finish().unwrap()
}

#[test]
fn memory_model_covers_the_real_lzma2_decoder() {
    use liblzma_sys::{
        lzma_filter, lzma_lzma_preset, lzma_options_lzma, lzma_raw_decoder_memusage,
        LZMA_FILTER_LZMA2, LZMA_VLI_UNKNOWN,
    };
    for wl in [10u8, 12, 16, 20, 24] {
        // SAFETY: a zeroed options struct is valid input to lzma_lzma_preset,
        // which fills it; the filter array is terminated as liblzma requires
        // and outlives the call.
        let used = unsafe {
            let mut opts: lzma_options_lzma = std::mem::zeroed();
            assert_eq!(lzma_lzma_preset(&mut opts, 6), 0);
            opts.dict_size = MemoryModel::lzma_dict(wl) as u32;
            let filters = [
                lzma_filter {
                    id: LZMA_FILTER_LZMA2,
                    options: (&mut opts as *mut lzma_options_lzma).cast(),
                },
                lzma_filter {
                    id: LZMA_VLI_UNKNOWN,
                    options: std::ptr::null_mut(),
                },
            ];
            lzma_raw_decoder_memusage(filters.as_ptr())
        };
        assert!(used != u64::MAX, "liblzma refused the filter");
        assert!(
            used <= MemoryModel::lzma_decoder(wl),
            "window 2^{wl}: LZMA2 decoder holds {used} bytes, model says {}",
            MemoryModel::lzma_decoder(wl)
        );
    }
}

#[test]
fn memory_model_covers_the_real_decoder() {
    use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 21) as u8)
        .collect();
    for wl in [10u8, 14, 16, 17, 18, 20] {
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.set_parameter(zstd::stream::raw::CParameter::WindowLog(u32::from(wl)))
            .unwrap();
        let frame = c.compress(&data).unwrap();
        let mut dctx = zstd::zstd_safe::DCtx::create();
        dctx.set_parameter(DParameter::WindowLogMax(u32::from(wl)))
            .unwrap();
        {
            let mut dec = Decoder::with_context(&mut dctx);
            let mut buf = vec![0u8; 16 << 10];
            let mut input = InBuffer::around(&frame);
            loop {
                let mut out = OutBuffer::around(&mut buf[..]);
                let hint = dec.run(&mut input, &mut out).unwrap();
                if hint == 0 && out.pos() < buf.len() {
                    break;
                }
            }
        }
        let real = dctx.sizeof() as u64;
        assert!(
            real <= MemoryModel::decoder(wl),
            "window 2^{wl}: decoder holds {real} bytes, model says {}",
            MemoryModel::decoder(wl)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random splits of a valid patch apply; random damage never yields success.
    #[test]
    fn random_splits_and_damage(splits in prop::collection::vec(1usize..500, 1..40),
                                pos in any::<prop::sample::Index>(), byte in 1u8..=255) {
        let (old, new, patch) = firmware_patch_cached();
        let mut a = Applier::new(&old[..], Vec::new(), ApplyOptions::default());
        let mut rest = &patch[..];
        for s in splits.iter().cycle() {
            if rest.is_empty() { break; }
            let n = (*s).min(rest.len());
            a.feed(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        prop_assert_eq!(&a.finish().unwrap().1, new);

        let mut bad = patch.clone();
        let i = pos.index(bad.len());
        bad[i] ^= byte;
        prop_assert!(run(old, &bad).is_err());
    }
}

fn firmware_patch_cached() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static CELL: std::sync::OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    CELL.get_or_init(firmware_patch)
}

#[test]
fn literal_filter_restores_whole_aligned_words_of_each_run() {
    use fwdelta_format::literal_filter::to_stored;
    use fwdelta_format::reference_rewriter::Arch;
    // The format's rule, written out independently of the crate's loop: in a
    // literal run filling new bytes [start, end), each word at a multiple of
    // 4 that lies wholly inside is stored with `to_stored`.
    let store = |new: &[u8], start: usize, end: usize| {
        let mut run = new[start..end].to_vec();
        for w in (start.div_ceil(4) * 4..end).step_by(4) {
            if w + 4 <= end {
                let word = u32::from_le_bytes(new[w..w + 4].try_into().unwrap());
                let s = to_stored(Arch::Aarch64, word, w as u64);
                run[w - start..w - start + 4].copy_from_slice(&s.to_le_bytes());
            }
        }
        run
    };
    let old: Vec<u8> = (0..64u8).collect();
    // Every aligned word of the new image is a BL (so every whole word a run
    // holds changes when stored); copies take old bytes.
    let mut new: Vec<u8> = (0..73u32)
        .flat_map(|i| (0x9400_0000u32 | (i * 37)).to_le_bytes())
        .take(73)
        .collect();
    new[..3].copy_from_slice(&old[..3]);
    new[33..40].copy_from_slice(&old[3..10]);
    // segment 0: copy 3, a 30-byte run from offset 3 (starts and ends inside
    // words), copy 7; segment 1: a 33-byte run from offset 40.
    let seg0 = [rec(3, 0, 30, 0, &store(&new, 3, 33)), rec(7, 0, 0, 0, b"")].concat();
    let seg1 = rec(0, 0, 33, 0, &store(&new, 40, 73));
    assert_ne!(store(&new, 3, 33), new[3..33], "the runs hold stored words");
    let mut header = Header {
        flags: 0,
        old_len: old.len() as u64,
        old_check: fwdelta_format::check_of(&old),
        new_len: new.len() as u64,
        new_hash: *blake3::hash(&new).as_bytes(),
        codec: Codec::Stored,
        window_log: 10,
        layout: Layout::Interleaved,
        segment_count: 2,
        apply_memory: MemoryModel::required_for_layout(Codec::Stored, 10, Layout::Interleaved),
        cell_log: None,
        code_refs: None,
        literal_filter: Some(Arch::Aarch64),
        release: None,
    };
    let segments = [(0, 40, 0, &seg0[..]), (40, 33, 10, &seg1[..])];
    let patch = seal_patch(&header, segments);
    assert_eq!(run(&old, &patch).unwrap(), new);
    for piece in [1, 2, 3, 5] {
        let mut a = Applier::new(&old[..], Vec::new(), ApplyOptions::default());
        for p in patch.chunks(piece) {
            a.feed(p).unwrap();
        }
        assert_eq!(a.finish().unwrap().1, new, "pieces of {piece}");
    }
    // The same segments read without the filter give other bytes, which the
    // new image's hash refuses.
    header.literal_filter = None;
    let unfiltered = seal_patch(&header, segments);
    assert!(matches!(
        run(&old, &unfiltered),
        Err(ApplyError::NewHashMismatch)
    ));
}
