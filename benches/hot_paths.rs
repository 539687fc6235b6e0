//! Criterion benchmarks: suffix sorting, match finding (sort + scan), the
//! reference rewriter, the diff model, segment encoding, apply, and the
//! signed-patch check a terminal makes before it reads its image.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fwdelta_apply::inspect::read_patch_start;
use fwdelta_apply::{apply, ApplyOptions, TrustPolicy};
use fwdelta_benches::{synthetic_pair, testdata};
use fwdelta_diff::patch_signer::sign_for_release;
use fwdelta_diff::suffix_array::SuffixArray;
use fwdelta_diff::{address_mapper, diff, matcher, Options, Plan};
use fwdelta_format::bit_coder::{BitDecoder, BitEncoder};
use fwdelta_format::diff_model::{DiffModel, OldContext};
use fwdelta_format::head_model::HeadModel;
use fwdelta_format::record::{Record, MAX_HEAD_LEN};
use fwdelta_format::reference_rewriter::{Arch, ReferenceRewriter};
use fwdelta_format::Release;

fn inputs() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let (old, new) = synthetic_pair(4 << 20);
    vec![
        (
            "fw-cortex-m4",
            testdata("fw-cortex-m4", "old"),
            testdata("fw-cortex-m4", "new"),
        ),
        ("synthetic-4MiB", old, new),
    ]
}

fn bench(c: &mut Criterion) {
    let inputs = inputs();
    let opts = Options::default();

    let mut g = c.benchmark_group("suffix_sort");
    g.sample_size(10);
    for (name, old, _) in &inputs {
        g.throughput(Throughput::Bytes(old.len() as u64));
        // Ours (libsais and the bucket table) beside divsufsort alone.
        g.bench_with_input(BenchmarkId::new("suffix_array", name), old, |b, o| {
            b.iter(|| SuffixArray::new(o))
        });
        g.bench_with_input(BenchmarkId::new("divsufsort", name), old, |b, o| {
            b.iter(|| {
                let mut sa = vec![0i32; o.len()];
                divsufsort::sort_in_place(o, &mut sa);
                sa
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("predict_old");
    g.sample_size(10);
    for (name, old, new) in &inputs {
        let ops = matcher::find_ops(old, new);
        let map = address_mapper::build_map(&ops, old.len() as u64, 4096);
        for arch in [Arch::Thumb2, Arch::X86_64] {
            g.throughput(Throughput::Bytes(old.len() as u64));
            g.bench_with_input(BenchmarkId::new(arch.name(), name), &map, |b, map| {
                b.iter(|| {
                    let mut img = old.clone();
                    ReferenceRewriter::new(arch, map.clone(), old.len() as u64)
                        .rewrite_image(&mut img);
                    img
                })
            });
        }
    }
    g.finish();

    // The diff model on the difference bytes of each pair's equal-length
    // prefix (mostly zeros, as in real diff streams): coding and decoding,
    // per difference byte.
    let mut g = c.benchmark_group("diff_model");
    g.sample_size(10);
    for (name, old, new) in &inputs {
        let n = old.len().min(new.len()).min(1 << 20);
        let ctx: Vec<OldContext> = (0..n).map(|p| OldContext::at(old, p, p as u64)).collect();
        let diffs: Vec<u8> = (0..n).map(|p| new[p].wrapping_sub(old[p])).collect();
        let code = |m: &mut DiffModel| {
            let mut enc = BitEncoder::new();
            for (&c, &d) in ctx.iter().zip(&diffs) {
                m.code(&mut enc, c, d);
            }
            enc.finish()
        };
        let chunk = code(&mut DiffModel::new(20));
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(BenchmarkId::new("encode", name), |b| {
            let mut m = DiffModel::new(20);
            b.iter(|| {
                m.reset();
                code(&mut m)
            })
        });
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            let mut m = DiffModel::new(20);
            b.iter(|| {
                m.reset();
                let mut dec = BitDecoder::start(&chunk);
                ctx.iter()
                    .map(|&c| m.code(&mut dec.io(&chunk), c, 0))
                    .fold(0u8, |a, v| a ^ v)
            })
        });
    }
    g.finish();

    // The head model on 50,000 record heads with the rhythm of real ones
    // (copies of a few hundred bytes, short diff runs, rare literals, seeks
    // that mostly undo them), in blocks of 2,000: per head byte.
    let mut g = c.benchmark_group("head_model");
    g.sample_size(10);
    let mut rng = fwdelta_testkit::XorShift::new(21);
    let heads: Vec<Vec<u8>> = (0..50_000)
        .map(|_| {
            let literal_len = if rng.next_u64().is_multiple_of(5) {
                rng.next_u64() % 40
            } else {
                0
            };
            let seek = if rng.next_u64().is_multiple_of(7) {
                (rng.next_u64() % 5000) as i64 - 2500
            } else {
                -(literal_len as i64)
            };
            let mut h = Vec::new();
            Record {
                copy_len: 64 + rng.next_u64() % 700,
                diff_len: 1 + rng.next_u64() % 12,
                literal_len,
                seek,
            }
            .encode_head(&mut h);
            h
        })
        .collect();
    let encode_heads = |m: &mut HeadModel| -> Vec<Vec<u8>> {
        let mut bits = BitEncoder::new();
        heads
            .chunks(2_000)
            .map(|block| {
                m.code_block(&mut bits, block.iter().map(Vec::as_slice));
                bits.finish()
            })
            .collect()
    };
    let chunks = encode_heads(&mut HeadModel::new());
    g.throughput(Throughput::Bytes(
        heads.iter().map(|h| h.len() as u64).sum(),
    ));
    g.bench_function("encode", |b| {
        let mut m = HeadModel::new();
        b.iter(|| {
            m.reset();
            encode_heads(&mut m)
        })
    });
    g.bench_function("decode", |b| {
        let mut m = HeadModel::new();
        b.iter(|| {
            m.reset();
            let mut total = 0usize;
            for chunk in &chunks {
                let mut dec = BitDecoder::start(chunk);
                let mut first = true;
                while m.code_more(&mut dec.io(chunk), first, false) {
                    first = false;
                    let mut out = [0u8; MAX_HEAD_LEN];
                    total += m.decode_head(&mut dec.io(chunk), &mut out).unwrap_or(0);
                }
            }
            total
        })
    });
    g.finish();

    let mut g = c.benchmark_group("match");
    g.sample_size(10);
    for (name, old, new) in &inputs {
        g.throughput(Throughput::Bytes(new.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(name),
            &(old, new),
            |b, (o, n)| b.iter(|| matcher::find_ops(o, n)),
        );
    }
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.sample_size(10);
    for (name, old, new) in &inputs {
        let plan = Plan::build(old, new).expect("plan");
        g.throughput(Throughput::Bytes(new.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &plan, |b, plan| {
            b.iter(|| plan.encode(old, new, &opts).expect("encode"))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("apply");
    for (name, old, new) in &inputs {
        let patch = diff(old, new, &opts).expect("diff").bytes;
        g.throughput(Throughput::Bytes(new.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &patch, |b, patch| {
            b.iter(|| {
                let (_, out) = apply(
                    &old[..],
                    &patch[..],
                    Vec::with_capacity(new.len()),
                    ApplyOptions::default(),
                )
                .expect("apply");
                out
            })
        });
    }
    g.finish();

    // What a forged or foreign patch costs a terminal: read the header and
    // the signature section, hash them, verify the signature and check the
    // release statement (no old-image read, no payload byte decoded).
    let mut g = c.benchmark_group("trust_check");
    let (old, new) = (&inputs[0].1, &inputs[0].2);
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let release = Release {
        product: "acme-t300".into(),
        version: "4.2.0".into(),
        security_counter: 42,
        expires: 0,
    };
    let unsigned = diff(old, new, &opts).expect("diff").bytes;
    let signed =
        sign_for_release(&unsigned, Some(&release), std::slice::from_ref(&key)).expect("sign");
    let mut policy = TrustPolicy::trusting(vec![key.verifying_key().to_bytes()]);
    policy.product = Some("acme-t300".into());
    policy.min_counter = 40;
    g.bench_function("header_read_unsigned", |b| {
        b.iter(|| read_patch_start(&mut &unsigned[..]).expect("read"))
    });
    g.bench_function("header_read_and_verify_signed", |b| {
        b.iter(|| {
            let (header, bytes, section, _) = read_patch_start(&mut &signed[..]).expect("read");
            policy
                .check(&header, &bytes, section.as_ref())
                .expect("accepted")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
