//! In-place apply against bad input: whatever is wrong, the image must be
//! left exactly as it was, because it is the only copy.

use fwdelta_apply::{apply, apply_in_place, ApplyError, ApplyOptions, MemRegion};
use fwdelta_diff::{diff, Options};
use fwdelta_format::header::{Header, FLAG_IN_PLACE};
use fwdelta_format::record::Record;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::{chain, truncate_check, Codec, Layout, MemoryModel};
use std::io::Cursor;

fn testdata(pair: &str, which: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../testdata/{pair}/{which}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn in_place_opts() -> Options {
    Options {
        in_place: Some(12),
        level: 6,
        ..Options::default()
    }
}

/// Apply in place to a copy of `old`; return the result and the region.
fn run(old: &[u8], patch: &[u8]) -> (Result<(), ApplyError>, Vec<u8>) {
    let region = MemRegion::new(old.to_vec());
    let r = apply_in_place(&region, Cursor::new(patch), ApplyOptions::default()).map(|_| ());
    (r, region.into_inner())
}

#[test]
fn valid_patch_rewrites_the_image() {
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    let (r, out) = run(&old, &patch);
    r.unwrap();
    assert_eq!(out, new);
}

#[test]
fn every_truncation_and_flip_leaves_the_image_untouched() {
    let (old, new) = (
        testdata("fw-cortex-m4", "old"),
        testdata("fw-cortex-m4", "new"),
    );
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    for cut in 0..patch.len() {
        let (r, out) = run(&old, &patch[..cut]);
        assert!(r.is_err(), "cut at {cut} accepted");
        assert!(out == old, "cut at {cut} modified the image");
    }
    for i in 0..patch.len() {
        let mut bad = patch.clone();
        bad[i] ^= 0x08;
        let (r, out) = run(&old, &bad);
        assert!(r.is_err(), "flip at {i} accepted");
        assert!(out == old, "flip at {i} modified the image");
    }
}

#[test]
fn wrong_old_image_and_wrong_mode_are_refused_untouched() {
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    let mut other = old.clone();
    other[5000] ^= 1;
    let (r, out) = run(&other, &patch);
    assert!(matches!(r, Err(ApplyError::OldHash { .. })), "{r:?}");
    assert_eq!(out, other);

    // an A/B patch given to the in-place applier, and the other way round
    let ab = diff(&old, &new, &Options::default()).unwrap().bytes;
    let (r, out) = run(&old, &ab);
    assert!(matches!(r, Err(ApplyError::WrongMode(_))), "{r:?}");
    assert_eq!(out, old);
    let err = apply(&old[..], &patch[..], Vec::new(), ApplyOptions::default()).unwrap_err();
    assert!(matches!(err, ApplyError::WrongMode(_)), "{err}");
}

/// Seal an in-place patch by hand: cells in the given order, each with a raw
/// (stored) record stream.
fn craft(old: &[u8], new: &[u8], cells: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
    let header = Header {
        flags: FLAG_IN_PLACE,
        old_len: old.len() as u64,
        old_hash: *blake3::hash(old).as_bytes(),
        new_len: new.len() as u64,
        new_hash: *blake3::hash(new).as_bytes(),
        codec: Codec::Stored,
        window_log: 10,
        layout: Layout::Interleaved,
        segment_count: cells.len() as u32,
        apply_memory: MemoryModel::required_for(Codec::Stored, 10)
            + MemoryModel::in_place_extra(12, cells.len() as u64),
        cell_log: Some(12),
    };
    let mut out = header.encode();
    let mut state = chain::start(&out);
    for (index, (cell, old_start, stream)) in cells.iter().enumerate() {
        let head = SegmentHeader {
            index: index as u32,
            new_offset: cell * 4096,
            new_len: 4096,
            old_start: *old_start,
            payload_len: stream.len() as u32,
        }
        .encode();
        let mut h = blake3::Hasher::new();
        h.update(&head);
        h.update(stream);
        let hash = h.finalize();
        state = chain::next(&state, hash.as_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(stream);
        out.extend_from_slice(&truncate_check(&hash));
    }
    out.push(fwdelta_format::trailer::END_TAG);
    out.extend_from_slice(&chain::trailer(&state));
    out
}

fn copy_record(len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    Record {
        copy_len: len,
        diff_len: 0,
        literal_len: 0,
        seek: 0,
    }
    .encode_head(&mut v);
    v
}

#[test]
fn a_cell_reading_an_overwritten_cell_is_refused_before_writing() {
    // new = old with its two 4 KiB cells swapped. Written as cell 0 then cell
    // 1, cell 1 would read old cell 0 after it was overwritten: the dry run
    // alone (which reads the intact image) would pass; the ordering pass must
    // refuse it.
    let old: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let new = [&old[4096..], &old[..4096]].concat();
    let bad_order = craft(
        &old,
        &new,
        &[(0, 4096, copy_record(4096)), (1, 0, copy_record(4096))],
    );
    let (r, out) = run(&old, &bad_order);
    let err = r.unwrap_err();
    assert!(
        err.to_string()
            .contains("which an earlier segment overwrites"),
        "{err}"
    );
    assert_eq!(out, old, "the image was modified");

    // the same cells, one as literals, in a safe order, apply
    let mut literal = Vec::new();
    Record {
        copy_len: 0,
        diff_len: 0,
        literal_len: 4096,
        seek: 0,
    }
    .encode_head(&mut literal);
    literal.extend_from_slice(&old[..4096]);
    let good = craft(&old, &new, &[(0, 4096, copy_record(4096)), (1, 0, literal)]);
    let (r, out) = run(&old, &good);
    r.unwrap();
    assert_eq!(out, new);

    // a cell given twice (and another missing) is refused by the structure pass
    let twice = craft(
        &old,
        &new,
        &[(0, 4096, copy_record(4096)), (0, 4096, copy_record(4096))],
    );
    let (r, out) = run(&old, &twice);
    assert!(r.unwrap_err().to_string().contains("comes twice"));
    assert_eq!(out, old);
}
