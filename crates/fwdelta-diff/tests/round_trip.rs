//! Generator → applier round trips over random and structured edits.

use fwdelta_apply::{apply, ApplyOptions};
use fwdelta_diff::{diff, matcher, Options, Plan};
use fwdelta_format::{Codec, Layout};
use fwdelta_testkit::noise;
use proptest::prelude::*;

fn round_trip(old: &[u8], new: &[u8], opts: &Options) -> Vec<u8> {
    let patch = diff(old, new, opts).expect("diff");
    let (report, out) =
        apply(old, &patch.bytes[..], Vec::new(), ApplyOptions::default()).expect("apply");
    assert_eq!(report.patch_len, patch.bytes.len() as u64);
    assert_eq!(out, new, "round trip mismatch");
    patch.bytes
}

/// `patch` applied to `old` (default limits) gives exactly `new`.
fn assert_applies(old: &[u8], patch: &[u8], new: &[u8]) {
    let (_, out) = apply(old, patch, Vec::new(), ApplyOptions::default()).expect("apply");
    assert_eq!(out, new);
}

/// Code-like data: repeated 4-byte "instructions" with varying fields.
fn codeish(seed: u64, len: usize) -> Vec<u8> {
    let n = noise(seed, len / 4 + 1);
    let mut out = Vec::with_capacity(len);
    for (i, b) in n.iter().enumerate() {
        out.extend_from_slice(&[0xf0 | (b & 3), b & 0x0f, (i as u8) & 0x1f, 0xe8]);
    }
    out.truncate(len);
    out
}

#[test]
fn edge_cases() {
    for codec in [Codec::Lzma2, Codec::Zstd] {
        for layout in [None, Some(Layout::Split), Some(Layout::Interleaved)] {
            edge_cases_with(&Options {
                codec,
                layout,
                ..Options::default()
            });
        }
    }
}

/// Big changes make many blocks: diff bytes of every kind (dense and
/// compressible, dense and random, sparse), long literals, records split
/// across blocks. Both codecs; the applier holds each block within the
/// header's claim (it refuses a block over its buffer).
#[test]
fn split_layout_with_many_blocks_round_trips() {
    let old = noise(31, 1_200_000);
    let mut new = old.clone();
    for b in &mut new[100_000..400_000] {
        *b = b.wrapping_add(1); // dense, compressible differences
    }
    let n = noise(32, 200_000);
    for (b, d) in new[500_000..700_000].iter_mut().zip(&n) {
        *b = b.wrapping_add(*d | 1); // dense, incompressible differences
    }
    for b in new[800_000..1_000_000].iter_mut().step_by(61) {
        *b ^= 0x5A; // sparse
    }
    new.splice(1_100_000..1_100_000, noise(33, 150_000));
    for (codec, layout, budget) in [
        (Codec::Lzma2, Layout::Split, 2 << 20),
        (Codec::Zstd, Layout::Split, 2 << 20),
        (Codec::Lzma2, Layout::Modelled, 4 << 20),
        (Codec::Zstd, Layout::Modelled, 4 << 20),
    ] {
        let opts = Options {
            codec,
            level: 3,
            layout: Some(layout),
            apply_memory: budget,
            ..Options::default()
        };
        let patch = diff(&old, &new, &opts).unwrap();
        assert_eq!(patch.report.layout, layout);
        let header = fwdelta_apply::inspect(&patch.bytes[..]).unwrap().header;
        assert_eq!(header.layout, layout);
        let limit = ApplyOptions::default().with_memory_limit(header.apply_memory);
        assert!(
            header.apply_memory <= budget,
            "claims {}",
            header.apply_memory
        );
        let (_, out) = apply(&old[..], &patch.bytes[..], Vec::new(), limit).unwrap();
        assert_eq!(out, new);
    }
}

/// The automatic layout: split streams for LZMA2 when they are smaller (and
/// never a larger patch than either layout on small patches), interleaved
/// for zstd and for budgets without room for three decoders.
#[test]
fn automatic_layout_keeps_the_smaller() {
    let old = codeish(41, 400_000);
    let mut new = old.clone();
    for b in new.iter_mut().skip(1000).step_by(13) {
        *b = b.wrapping_add(4);
    }
    new.splice(200_000..200_000, noise(42, 5000));
    let plan = Plan::build(&old, &new).unwrap();
    let with = |codec, layout, apply_memory| Options {
        codec,
        layout,
        apply_memory,
        level: 9,
        ..Options::default()
    };
    let enc = |o: &Options| plan.encode(&old, &new, o).unwrap();
    let refused = |o: &Options| plan.encode(&old, &new, o).is_err();
    let modelled = enc(&with(Codec::Lzma2, Some(Layout::Modelled), 4 << 20));
    let split = enc(&with(Codec::Lzma2, Some(Layout::Split), 2 << 20));
    let inter = enc(&with(Codec::Lzma2, Some(Layout::Interleaved), 2 << 20));
    let auto = enc(&with(Codec::Lzma2, None, 4 << 20));
    assert!(
        modelled.bytes.len() < split.bytes.len() && split.bytes.len() < inter.bytes.len(),
        "modelled {} vs split {} vs interleaved {}",
        modelled.bytes.len(),
        split.bytes.len(),
        inter.bytes.len()
    );
    assert_eq!(auto.report.layout, Layout::Modelled);
    assert_eq!(auto.bytes, modelled.bytes);
    // 1 MiB holds three decoders but not the diff model's tables.
    let mid = enc(&with(Codec::Lzma2, None, 1 << 20));
    assert_eq!(mid.report.layout, Layout::Split);
    assert!(refused(&with(
        Codec::Lzma2,
        Some(Layout::Modelled),
        1 << 20
    )));
    assert_eq!(
        enc(&with(Codec::Zstd, None, 2 << 20)).report.layout,
        Layout::Interleaved
    );
    // 384 KiB holds one LZMA2 decoder with a 128 KiB window, but not three
    // with the block buffer (412 KiB at the smallest windows).
    let small = enc(&with(Codec::Lzma2, None, 384 << 10));
    assert_eq!(small.report.layout, Layout::Interleaved);
    assert!(refused(&with(Codec::Lzma2, Some(Layout::Split), 384 << 10)));
    for p in [&modelled, &split, &inter, &small, &mid] {
        assert_applies(&old, &p.bytes, &new);
    }
    // A tiny change: every layout is tried and the smallest kept.
    let mut one = old.clone();
    one[777] ^= 1;
    let plan = Plan::build(&old, &one).unwrap();
    let sizes: Vec<usize> = [
        None,
        Some(Layout::Modelled),
        Some(Layout::Split),
        Some(Layout::Interleaved),
    ]
    .into_iter()
    .map(|l| {
        plan.encode(&old, &one, &with(Codec::Lzma2, l, 4 << 20))
            .unwrap()
            .bytes
            .len()
    })
    .collect();
    assert_eq!(sizes[0], *sizes[1..].iter().min().unwrap(), "{sizes:?}");
}

fn edge_cases_with(opts: &Options) {
    let opts = opts.clone();
    let base = codeish(1, 100_000);
    round_trip(&[], &[], &opts);
    round_trip(&[], &base, &opts);
    round_trip(&base, &[], &opts);
    round_trip(&base, &base, &opts);
    round_trip(b"a", b"b", &opts);
    let mut one = base.clone();
    one[50_000] ^= 1;
    round_trip(&base, &one, &opts);
    let mut moved = base.clone();
    let block: Vec<u8> = moved.drain(10_000..30_000).collect();
    moved.splice(70_000..70_000, block);
    round_trip(&base, &moved, &opts);
    round_trip(&base, &noise(9, 100_000), &opts);
}

#[test]
fn identical_patch_is_small() {
    let data = codeish(3, 2_000_000);
    let p = round_trip(&data, &data, &Options::default());
    assert!(
        p.len() < 300,
        "identical 2 MB gave a {}-byte patch",
        p.len()
    );
}

#[test]
fn one_byte_change_is_small() {
    let data = codeish(4, 4_000_000);
    let mut new = data.clone();
    new[1_234_567] ^= 0x40;
    let p = round_trip(&data, &new, &Options::default());
    assert!(
        p.len() < 400,
        "one changed byte in 4 MB gave a {}-byte patch",
        p.len()
    );
}

#[test]
fn tiny_patches_are_stored_when_that_is_smaller() {
    // A few scattered changed bytes: the records do not compress, so stored
    // payloads win and are chosen over the requested codec.
    let old = codeish(5, 1_000_000);
    let mut new = old.clone();
    for at in [1_000, 300_000, 777_777] {
        new[at] ^= 0x20;
    }
    let plan = Plan::build(&old, &new).unwrap();
    for codec in [Codec::Lzma2, Codec::Zstd] {
        let opts = Options {
            codec,
            ..Options::default()
        };
        let auto = plan.encode(&old, &new, &opts).unwrap();
        assert_eq!(auto.report.codec, Codec::Stored, "{codec:?}");
        assert_applies(&old, &auto.bytes, &new);
        // Asking for split streams keeps the codec (split needs one).
        let split = Options {
            layout: Some(Layout::Split),
            ..opts
        };
        let split = plan.encode(&old, &new, &split).unwrap();
        assert_eq!(split.report.codec, codec);
        assert!(split.bytes.len() > auto.bytes.len());
    }
    // A change that compresses keeps the codec: a repeated 2 KB block.
    let mut new = old.clone();
    let block = noise(9, 64).repeat(32);
    new[500_000..500_000 + block.len()].copy_from_slice(&block);
    let patch = round_trip(&old, &new, &Options::default());
    let header = fwdelta_format::Header::parse(&patch[..header_len(&patch)]).unwrap();
    assert_eq!(header.codec, Codec::Lzma2);
}

fn header_len(patch: &[u8]) -> usize {
    let prefix = patch[..fwdelta_format::Header::PREFIX_LEN]
        .try_into()
        .unwrap();
    fwdelta_format::Header::parse_prefix(&prefix).unwrap()
}

fn in_place_round_trip(old: &[u8], new: &[u8], opts: &Options) -> Vec<u8> {
    let patch = diff(old, new, opts).expect("diff");
    let region = fwdelta_apply::MemRegion::new(old.to_vec());
    fwdelta_apply::apply_in_place(
        &region,
        std::io::Cursor::new(&patch.bytes),
        ApplyOptions::default(),
    )
    .expect("apply in place");
    assert_eq!(region.into_inner(), new, "in-place round trip mismatch");
    patch.bytes
}

#[test]
fn in_place_edge_cases_and_shifts() {
    let opts = Options {
        in_place: Some(12),
        ..Options::default()
    };
    let base = codeish(11, 100_000);
    in_place_round_trip(&base, &base, &opts);
    in_place_round_trip(&[], &base, &opts);
    in_place_round_trip(&base, &[], &opts);
    // insertion near the start: everything shifts up (grows)
    let mut grown = base.clone();
    grown.splice(300..300, noise(1, 9000));
    in_place_round_trip(&base, &grown, &opts);
    // deletion near the start: everything shifts down (shrinks)
    let mut shrunk = base.clone();
    shrunk.drain(300..9300);
    in_place_round_trip(&base, &shrunk, &opts);
    // blocks swapped: a dependency cycle
    let mut swapped = base.clone();
    let a: Vec<u8> = swapped[8192..16384].to_vec();
    let b: Vec<u8> = swapped[40960..49152].to_vec();
    swapped[8192..16384].copy_from_slice(&b);
    swapped[40960..49152].copy_from_slice(&a);
    in_place_round_trip(&base, &swapped, &opts);
    let stored = Options {
        apply_memory: 64 << 10,
        ..opts
    };
    in_place_round_trip(&base, &grown, &stored);
}

#[test]
fn budgets_below_zstd_use_stored_payloads() {
    let old = codeish(8, 200_000);
    let mut new = old.clone();
    new.splice(5000..5000, noise(2, 3000));
    for b in new.iter_mut().skip(100_000).step_by(501) {
        *b ^= 0x11;
    }
    let opts = Options {
        apply_memory: 64 << 10,
        ..Options::default()
    };
    let patch = diff(&old, &new, &opts).unwrap();
    assert_eq!(patch.report.codec, fwdelta_format::Codec::Stored);
    let header = fwdelta_apply::inspect(&patch.bytes[..]).unwrap().header;
    assert!(
        header.apply_memory <= 64 << 10,
        "claims {}",
        header.apply_memory
    );
    assert_applies(&old, &patch.bytes, &new);
    // stored patches stay far smaller than the image when little changed
    assert!(
        patch.bytes.len() < 12_000,
        "stored patch {} bytes",
        patch.bytes.len()
    );
    assert!(diff(
        &old,
        &new,
        &Options {
            apply_memory: 63 << 10,
            ..Options::default()
        }
    )
    .is_err());
}

#[test]
fn small_segments_and_tiny_budget_still_round_trip() {
    let old = codeish(5, 300_000);
    let mut new = old.clone();
    new.splice(100..100, noise(6, 40_000));
    for b in new.iter_mut().skip(200_000).step_by(97) {
        *b = b.wrapping_add(3);
    }
    let plan = Plan::build(&old, &new).unwrap();
    for codec in [Codec::Lzma2, Codec::Zstd] {
        let budget = fwdelta_format::MemoryModel::min_budget_for(codec);
        let tiny = Options {
            codec,
            segment_cost: 512,
            apply_memory: budget,
            level: 3,
            in_place: None,
            align: 1,
            code: fwdelta_diff::CodeMode::Auto,
            layout: None,
            literal_filter: true,
            probe_min_patch: fwdelta_diff::PROBE_MIN_PATCH,
            progress: None,
        };
        let patch = plan.encode(&old, &new, &tiny).unwrap();
        assert_eq!(patch.report.codec, codec);
        assert!(
            patch.report.segments > 20,
            "{} segments",
            patch.report.segments
        );
        let header = fwdelta_apply::inspect(&patch.bytes[..]).unwrap().header;
        assert_eq!(header.codec, codec);
        assert!(
            header.apply_memory <= budget,
            "claims {}",
            header.apply_memory
        );
        let limit = ApplyOptions::default().with_memory_limit(budget);
        let (_, out) = apply(&old[..], &patch.bytes[..], Vec::new(), limit).unwrap();
        assert_eq!(out, new);
    }
}

/// LZMA2 is not smaller on everything (on incompressible literals it costs a
/// few bytes more than zstd), so this is measured on the real firmware pairs.
#[test]
fn lzma2_is_the_default_and_smaller_than_zstd_on_firmware() {
    for pair in ["fw-cortex-m4", "fw-x86-64"] {
        let read = |which: &str| {
            let path = format!(
                "{}/../../testdata/{pair}/{which}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        codecs_compared(&read("old"), &read("new"));
    }
}

/// `--level max` tries several copy-run thresholds per segment, the default
/// one among them, so it is never larger than the default level.
#[test]
fn level_max_is_never_larger_and_round_trips() {
    let old = codeish(21, 300_000);
    let mut new = old.clone();
    new.splice(7000..7000, noise(22, 500));
    for (i, b) in new.iter_mut().enumerate().skip(40_000) {
        // changes 1 byte in 64 in some 4 KiB stretches: many short equal runs
        if (i / 4096) % 3 == 0 && i % 64 == 0 {
            *b ^= 0x40;
        }
    }
    let plan = Plan::build(&old, &new).unwrap();
    let opts = Options {
        segment_cost: 256,
        ..Options::default()
    };
    let default = plan.encode(&old, &new, &opts).unwrap();
    let max = Options {
        level: fwdelta_diff::segment_encoder::SEARCH_LEVEL + 2,
        ..opts
    };
    let max = plan.encode(&old, &new, &max).unwrap();
    assert!(default.report.segments > 3);
    assert!(
        max.bytes.len() <= default.bytes.len(),
        "max {} > default {}",
        max.bytes.len(),
        default.bytes.len()
    );
    assert_applies(&old, &max.bytes, &new);
}

fn codecs_compared(old: &[u8], new: &[u8]) {
    let (old, new) = (old.to_vec(), new.to_vec());
    let plan = Plan::build(&old, &new).unwrap();
    let lzma = plan.encode(&old, &new, &Options::default()).unwrap();
    let zstd = Options {
        codec: Codec::Zstd,
        ..Options::default()
    };
    let zstd = plan.encode(&old, &new, &zstd).unwrap();
    assert_eq!(lzma.report.codec, Codec::Lzma2);
    assert_eq!(zstd.report.codec, Codec::Zstd);
    assert!(
        lzma.bytes.len() < zstd.bytes.len(),
        "lzma2 {} vs zstd {}",
        lzma.bytes.len(),
        zstd.bytes.len()
    );
    for patch in [&lzma, &zstd] {
        assert_applies(&old, &patch.bytes, &new);
    }
}

/// One edit: (kind, position, length, seed).
type Edit = (u8, usize, usize, u64);

fn edit_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<Edit>)> {
    (
        prop::collection::vec(any::<u8>(), 0..4000),
        prop::collection::vec((0u8..4, 0usize..4000, 0usize..600, any::<u64>()), 0..8),
    )
}

/// Apply a list of edits (insert noise, delete, overwrite, move) to `old`.
fn edited(old: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut new = old.to_vec();
    for &(kind, at, len, seed) in edits {
        let at = if new.is_empty() {
            0
        } else {
            at % (new.len() + 1)
        };
        let end = (at + len).min(new.len());
        match kind {
            0 => {
                new.splice(at..at, noise(seed, len));
            }
            1 => {
                new.drain(at..end);
            }
            2 => {
                let n = noise(seed, end - at);
                new[at..end].copy_from_slice(&n);
            }
            _ => {
                let block: Vec<u8> = new.drain(at..end).collect();
                let to = (seed as usize) % (new.len() + 1);
                new.splice(to..to, block);
            }
        }
    }
    new
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_pairs_round_trip(old in prop::collection::vec(any::<u8>(), 0..3000),
                               new in prop::collection::vec(any::<u8>(), 0..3000)) {
        round_trip(&old, &new, &Options { level: 3, ..Options::default() });
    }

    #[test]
    fn structured_edits_round_trip((old, edits) in edit_strategy(), cost in 16u64..4096,
                                   codec in prop::sample::select(vec![Codec::Lzma2, Codec::Zstd]),
                                   layout in prop::sample::select(vec![None, Some(Layout::Split), Some(Layout::Interleaved)])) {
        let new = edited(&old, &edits);
        let opts = Options { codec, level: 3, segment_cost: cost, layout, ..Options::default() };
        round_trip(&old, &new, &opts);
        let stored = Options { apply_memory: 64 << 10, layout: None, ..opts.clone() };
        round_trip(&old, &new, &stored);
        let in_place = Options { in_place: Some(12), layout: None, ..opts };
        in_place_round_trip(&old, &new, &in_place);
    }
}

/// A synthetic program for `arch`: `funcs` functions of noise bytes, each
/// calling others; `insert` bytes are inserted before function `at`, so every
/// call spanning the insertion changes its displacement.
fn program(arch: fwdelta_format::reference_rewriter::Arch, insert: usize) -> Vec<u8> {
    program_of(arch, 96, |f| if f >= 48 { insert } else { 0 })
}

/// [`program`] with `funcs` functions of 512 bytes, `inserted(f)` noise
/// bytes inserted before function `f` in all (non-decreasing in `f`).
fn program_of(
    arch: fwdelta_format::reference_rewriter::Arch,
    funcs: usize,
    inserted: impl Fn(usize) -> usize,
) -> Vec<u8> {
    use fwdelta_format::reference_rewriter::Arch;
    let (funcs_n, func_len) = (funcs, 512);
    let start = |f: usize| f * func_len + inserted(f);
    let new_code = noise(99, inserted(funcs_n - 1));
    let mut img = Vec::new();
    for f in 0..funcs_n {
        let before = if f == 0 { 0 } else { inserted(f - 1) };
        img.extend_from_slice(&new_code[before..inserted(f)]);
        let mut body = noise(f as u64 + 1, func_len);
        if matches!(arch, Arch::Aarch64 | Arch::Arm32) {
            // top byte 0xAA: an A64 data-processing word, never a reference
            // (for A32, a conditional branch, never the BL-always the
            // literal filter rewrites)
            for w in body.chunks_mut(4) {
                w[3] = 0xAA;
            }
        }
        let base = img.len();
        img.extend_from_slice(&body);
        // a call every 32 bytes, to a function chosen by position
        for k in 0..func_len / 32 {
            let site = base + k * 32;
            let target = start((f * 7 + k * 13) % funcs_n) as i64;
            let call: [u8; 8] = match arch {
                Arch::X86_64 => {
                    let d = (target - site as i64 - 5) as i32;
                    let mut c = [0x90u8; 8];
                    c[0] = 0xE8;
                    c[1..5].copy_from_slice(&d.to_le_bytes());
                    c
                }
                Arch::Aarch64 => {
                    let w = 0x9400_0000u32 | (((target - site as i64) >> 2) as u32 & 0x03FF_FFFF);
                    let mut c = [0u8; 8];
                    c[..4].copy_from_slice(&w.to_le_bytes());
                    c[4..].copy_from_slice(&0xD503_201Fu32.to_le_bytes()); // nop
                    c
                }
                Arch::Arm32 => {
                    let w =
                        0xEB00_0000u32 | (((target - site as i64 - 8) >> 2) as u32 & 0x00FF_FFFF);
                    let mut c = [0u8; 8];
                    c[..4].copy_from_slice(&w.to_le_bytes());
                    c[4..].copy_from_slice(&0xE1A0_0000u32.to_le_bytes()); // nop
                    c
                }
                Arch::Thumb2 => unreachable!("not used"),
            };
            img[site..site + 8].copy_from_slice(&call);
        }
    }
    img
}

/// The plain (not executable-aware) patch for a pair.
fn plain_diff(old: &[u8], new: &[u8]) -> fwdelta_diff::Patch {
    let opts = Options {
        code: fwdelta_diff::CodeMode::Off,
        ..Options::default()
    };
    diff(old, new, &opts).unwrap()
}

#[test]
fn a_probe_leaves_clearly_larger_patches_unmade() {
    use fwdelta_diff::{matcher::SWITCH_MARGINS, CodeMode};
    use fwdelta_format::reference_rewriter::Arch;
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let (old, new) = (program(arch, 0), program(arch, 1024));
        // The default only probes patches of 1 MiB and more; this pair's are
        // a few KiB, where the probe's call is still right.
        let opts = Options {
            code: CodeMode::Arch(arch),
            probe_min_patch: 0,
            ..Options::default()
        };
        let patch = round_trip(&old, &new, &opts);
        let report = diff(&old, &new, &opts).unwrap().report;
        let probe = report
            .probe
            .unwrap_or_else(|| panic!("{arch:?}: no probe decided: {report:?}"));
        // Plain at every switch margin, aware at those the plain probe left
        // (at least one); the plain ones are clearly larger and were not
        // made in full.
        assert!(
            (SWITCH_MARGINS.len() + 1..=2 * SWITCH_MARGINS.len()).contains(&probe.candidates),
            "{probe:?}"
        );
        assert!(probe.made <= SWITCH_MARGINS.len(), "{probe:?}");
        assert_eq!(report.code.map(|c| c.0), Some(arch));
        assert!(report.plain_len.is_none(), "a plain patch was made in full");
        let plain = plain_diff(&old, &new);
        assert!(patch.len() < plain.bytes.len());
        // `--level max` makes both in full instead.
        let max = Options { level: 22, ..opts };
        let both = diff(&old, &new, &max).unwrap().report;
        assert!(both.probe.is_none() && both.plain_len.is_some());
    }
}

#[test]
fn executable_aware_patches_predict_moved_calls() {
    use fwdelta_diff::CodeMode;
    use fwdelta_format::reference_rewriter::Arch;
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let old = program(arch, 0);
        let new = program(arch, 1024);
        // In the split layout (LZMA2 diffs): the diff model learns the calls'
        // changed displacements too, which would blur what this measures.
        let split = |code| Options {
            code,
            layout: Some(Layout::Split),
            ..Options::default()
        };
        let plain = diff(&old, &new, &split(CodeMode::Off)).unwrap();
        assert!(plain.report.code.is_none());
        let opts = split(CodeMode::Arch(arch));
        let aware = diff(&old, &new, &opts).unwrap();
        assert_eq!(aware.report.code.map(|c| c.0), Some(arch), "{arch:?}");
        assert_eq!(aware.report.plain_len, Some(plain.bytes.len()));
        // the insertion itself is 1 KiB of noise; the ~770 calls across it
        // cost the plain patch a few hundred bytes, the aware one next to none
        assert!(
            aware.bytes.len() + 100 < plain.bytes.len(),
            "{arch:?}: aware {} vs plain {}",
            aware.bytes.len(),
            plain.bytes.len()
        );
        round_trip(&old, &new, &opts);
        // auto detection finds the same instruction set, and with every
        // layout tried the aware patch still wins
        let auto = diff(&old, &new, &Options::default()).unwrap();
        assert_eq!(auto.report.code.map(|c| c.0), Some(arch), "{arch:?}");
        assert!(auto.bytes.len() < plain_diff(&old, &new).bytes.len());
        assert_applies(&old, &auto.bytes, &new);
    }
}

#[test]
fn executable_aware_mode_never_makes_a_larger_patch() {
    use fwdelta_diff::CodeMode;
    use fwdelta_format::reference_rewriter::Arch;
    // noise with an insertion: nothing to predict, the plain patch is kept
    let old = noise(5, 50_000);
    let mut new = old.clone();
    new.splice(20_000..20_000, noise(6, 300));
    let plain = plain_diff(&old, &new);
    for arch in Arch::ALL {
        let opts = Options {
            code: CodeMode::Arch(arch),
            ..Options::default()
        };
        let patch = round_trip(&old, &new, &opts);
        assert!(patch.len() <= plain.bytes.len(), "{arch:?}");
    }
}

/// `program(arch, 0)` with `len` bytes of new code inserted at `at`: a call
/// every 16 bytes (AArch64 BL, A32 BL, x86 E8 rel32) to one of four functions of the
/// old part, with never-a-reference filler between them.
fn with_new_code(
    arch: fwdelta_format::reference_rewriter::Arch,
    at: usize,
    len: usize,
) -> (Vec<u8>, Vec<u8>) {
    use fwdelta_format::reference_rewriter::Arch;
    let old = program(arch, 0);
    let mut code = Vec::with_capacity(len);
    for (i, filler) in noise(77, len / 4).iter().enumerate() {
        let site = (at + 4 * i) as i64;
        let target = [0i64, 512, 4096, 8192][(i / 4) % 4];
        let w = match (arch, i % 4) {
            (Arch::Aarch64, 0) => 0x9400_0000u32 | (((target - site) >> 2) as u32 & 0x03FF_FFFF),
            (Arch::Aarch64, _) => 0xAA00_0000 | u32::from(*filler) << 8 | i as u32 & 0xff,
            // A32 BL (pc reads 8 ahead), then data-processing words
            (Arch::Arm32, 0) => 0xEB00_0000u32 | (((target - site - 8) >> 2) as u32 & 0x00FF_FFFF),
            (Arch::Arm32, _) => 0xE080_0000 | u32::from(*filler) << 8 | i as u32 & 0xff,
            // E8 at site + 3, rel32 in the next word
            (_, 0) => 0xe890_9090,
            (_, 1) => (target - (site + 4)) as i32 as u32,
            _ => 0x9090_9090 ^ u32::from(*filler & 0x07),
        };
        code.extend_from_slice(&w.to_le_bytes());
    }
    let mut new = old.clone();
    new.splice(at..at, code);
    (old, new)
}

#[test]
fn literal_filter_makes_new_code_smaller_and_round_trips() {
    use fwdelta_apply::{Applier, ApplyOptions};
    use fwdelta_format::reference_rewriter::Arch;
    // Inserted at an offset that is not a multiple of 4 in the new image, so
    // literal runs start and end inside words.
    for (arch, layout) in [
        (Arch::Aarch64, Layout::Split),
        (Arch::Aarch64, Layout::Interleaved),
        (Arch::Arm32, Layout::Split),
        (Arch::X86_64, Layout::Split),
    ] {
        let (old, new) = with_new_code(arch, 20_002, 24_000);
        let plan = Plan::build_with(&old, &new, fwdelta_diff::CodeMode::Arch(arch)).unwrap();
        let on = Options {
            layout: Some(layout),
            ..Options::default()
        };
        let off = Options {
            literal_filter: false,
            ..on.clone()
        };
        let filtered = plan.encode(&old, &new, &on).unwrap();
        let plain = plan.encode(&old, &new, &off).unwrap();
        assert_eq!(filtered.report.literal_filter, Some(arch));
        assert_eq!(plain.report.literal_filter, None);
        assert!(
            filtered.bytes.len() + 500 < plain.bytes.len(),
            "{arch:?} {layout:?}: filtered {} vs plain {}",
            filtered.bytes.len(),
            plain.bytes.len()
        );
        assert_applies(&old, &filtered.bytes, &new);
        // fed a few bytes at a time: decoded literal runs arrive in pieces
        // that cut words, which the applier must hold back and restore
        for piece in [1, 7, 4093] {
            let mut a = Applier::new(&old[..], Vec::new(), ApplyOptions::default());
            for p in filtered.bytes.chunks(piece) {
                a.feed(p).unwrap();
            }
            let (_, out) = a.finish().unwrap();
            assert_eq!(out, new, "{arch:?} {layout:?}, pieces of {piece}");
        }
    }
    // No filter without an instruction set that has one, for in-place
    // patches, or for a handful of literal bytes.
    let (old, new) = with_new_code(Arch::Aarch64, 20_002, 24_000);
    for (opts, why) in [
        (
            Options {
                code: fwdelta_diff::CodeMode::Arch(Arch::Thumb2),
                ..Options::default()
            },
            "thumb2",
        ),
        (
            Options {
                in_place: Some(12),
                ..Options::default()
            },
            "in-place",
        ),
    ] {
        let p = diff(&old, &new, &opts).unwrap();
        assert_eq!(p.report.literal_filter, None, "{why}");
    }
    let (old, new) = with_new_code(Arch::Aarch64, 20_000, 400);
    let p = diff(&old, &new, &Options::default()).unwrap();
    assert_eq!(p.report.literal_filter, None, "400 literal bytes");
    assert_applies(&old, &p.bytes, &new);
}

/// A patch depends on its inputs and options only, not on the machine: the
/// same pair diffed on 1, 2 and 3 threads gives the same edit scripts and
/// the same bytes. (The scan used to cut the new image into one chunk per
/// thread, and chunk edges shape the matches: here 3 ops on one thread and
/// 4 on two; P7 at `-j 1` and `-j 2` gave different patches.) The pair is
/// large enough for the scan to cut it.
#[test]
fn the_patch_does_not_depend_on_the_thread_count() {
    let old = codeish(41, 1_700_000);
    let mut new = old.clone();
    new.splice(300_000..300_000, noise(42, 5_000));
    new.drain(900_000..904_000);
    for at in (1_000..new.len()).step_by(7_919) {
        new[at] ^= 0x24;
    }
    let opts = Options {
        level: 3,
        ..Options::default()
    };
    let on = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let scripts = matcher::find_scripts(&old, &new, &matcher::SWITCH_MARGINS);
                (scripts, diff(&old, &new, &opts).unwrap().bytes)
            })
    };
    let (scripts, patch) = on(1);
    assert_applies(&old, &patch, &new);
    for threads in [2, 3] {
        let (s, p) = on(threads);
        assert!(
            s == scripts,
            "1 and {threads} threads found different edit scripts"
        );
        assert!(p == patch, "1 and {threads} threads made different patches");
    }
}
