//! Regenerate the committed fuzz seed corpora in `fuzz/corpus/<target>/`:
//! `cargo run -p fwdelta-fuzz-targets --example make_seeds`.
//! Seeds are valid patches against the bundled Cortex-M4 image (several edits,
//! segment sizes and budgets), damaged copies of them, and deterministic noise.

use fwdelta_diff::{diff, Options};
use fwdelta_format::{Codec, Header, Layout};
use fwdelta_fuzz_targets::OLD;
use fwdelta_testkit::noise;
use std::fs;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let new_fw = include_bytes!("../../../testdata/fw-cortex-m4/new");
    let mut inserted = OLD.to_vec();
    inserted.splice(600..600, noise(3, 300));
    let mut deleted = OLD.to_vec();
    deleted.drain(4000..9000);
    let mut tweaked = OLD.to_vec();
    for b in tweaked.iter_mut().step_by(211) {
        *b = b.wrapping_add(1);
    }
    let news: Vec<(&str, Vec<u8>)> = vec![
        ("fw-v2", new_fw.to_vec()),
        ("identical", OLD.to_vec()),
        ("empty", Vec::new()),
        ("inserted", inserted),
        ("deleted", deleted),
        ("tweaked", tweaked),
        ("noise", noise(7, 3000)),
    ];
    let mut patches = Vec::new();
    for (name, new) in &news {
        // One codec and layout each, so the seeds exercise both decoders,
        // every layout and the diff model.
        let kinds = [
            ("one", u64::MAX, 2 << 20, Codec::Lzma2, Some(Layout::Split)),
            (
                "modelled",
                u64::MAX,
                4 << 20,
                Codec::Lzma2,
                Some(Layout::Modelled),
            ),
            (
                "many",
                300,
                256 << 10,
                Codec::Zstd,
                Some(Layout::Interleaved),
            ),
        ];
        for (tag, cost, mem, codec, layout) in kinds {
            let opts = Options {
                codec,
                level: 3,
                segment_cost: cost,
                apply_memory: mem,
                in_place: None,
                align: 1,
                code: fwdelta_diff::CodeMode::Auto,
                layout,
                literal_filter: true,
                probe_min_patch: fwdelta_diff::PROBE_MIN_PATCH,
                progress: None,
            };
            let p = diff(OLD, new, &opts).expect("diff").bytes;
            patches.push((format!("{name}-{tag}"), p));
        }
    }
    // Signed forms of a few (the key is the fuzz targets' trusted key).
    let key = ed25519_dalek::SigningKey::from_bytes(&fwdelta_fuzz_targets::TRUSTED_SEED);
    let release = fwdelta_format::Release {
        product: "fuzz-t1".into(),
        version: "2.0".into(),
        security_counter: 3,
        expires: 0,
    };
    let signed: Vec<(String, Vec<u8>)> = patches
        .iter()
        .take(3)
        .map(|(name, p)| {
            let s = fwdelta_diff::patch_signer::sign_for_release(
                p,
                Some(&release),
                std::slice::from_ref(&key),
            )
            .expect("sign");
            (format!("{name}-signed"), s)
        })
        .collect();
    patches.extend(signed);
    let mut damaged = Vec::new();
    for (name, p) in patches.iter().take(4) {
        let mut flip = p.clone();
        let at = p.len() / 2;
        flip[at] ^= 0x20;
        damaged.push((format!("{name}-flipped"), flip));
        damaged.push((format!("{name}-cut"), p[..p.len() * 2 / 3].to_vec()));
    }
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(name), bytes).expect("write seed");
    };
    for (name, p) in patches.iter().chain(&damaged) {
        write("container", name, p);
        write("apply_pull", name, p);
        let mut push = vec![(name.len() * 13) as u8];
        push.extend_from_slice(p);
        write("apply_push", name, &push);
    }
    let first = &patches[0].1;
    let prefix = first[..Header::PREFIX_LEN].try_into().expect("prefix");
    let header_len = Header::parse_prefix(&prefix).expect("header length");
    write("container", "header-only", &first[..header_len]);
    for (name, new) in &news {
        for cell_log in [12u8, 14] {
            let opts = Options {
                level: 3,
                in_place: Some(cell_log),
                ..Options::default()
            };
            let p = diff(OLD, new, &opts).expect("diff").bytes;
            write("apply_in_place", &format!("{name}-cell{cell_log}"), &p);
            write("container", &format!("{name}-in-place-cell{cell_log}"), &p);
            if cell_log == 12 {
                let s = fwdelta_diff::patch_signer::sign_for_release(
                    &p,
                    Some(&release),
                    std::slice::from_ref(&key),
                )
                .expect("sign");
                write(
                    "apply_in_place",
                    &format!("{name}-cell{cell_log}-signed"),
                    &s,
                );
            }
        }
    }
    for i in 0..24u64 {
        write(
            "apply_structured",
            &format!("noise-{i:02}"),
            &noise(100 + i, 64 + 97 * i as usize),
        );
    }
    // The signature, state and history parsers.
    for (name, p) in patches.iter().filter(|(n, _)| n.ends_with("-signed")) {
        write("trust", name, p);
        // damage in the signature, in the check table, and a cut section
        let parts = fwdelta_format::patch_parts::split(p).expect("signed seed");
        let section_at = parts.header_bytes.len();
        let mut sig = p.clone();
        let sig_at = section_at + parts.header.segment_count as usize * 8 + 1 + 8 + 5;
        sig[sig_at] ^= 1;
        write("trust", &format!("{name}-sig-flipped"), &sig);
        let mut table = p.clone();
        table[section_at] ^= 0x80;
        write("trust", &format!("{name}-table-flipped"), &table);
        write("trust", &format!("{name}-section-cut"), &p[..sig_at]);
    }
    let rotation = fwdelta_format::key_rotation::KeyRotation {
        new_key: ed25519_dalek::SigningKey::from_bytes(&[0x33; 32])
            .verifying_key()
            .to_bytes(),
        retire: vec![fwdelta_format::KeyId([1; 8])],
        signatures: vec![fwdelta_format::signature::SignatureEntry {
            key_id: fwdelta_format::KeyId([2; 8]),
            signature: [3; 64],
        }],
    };
    write("trust", "rotation", &rotation.encode());
    write(
        "trust",
        "public-key",
        fwdelta_format::key_file::encode_public_key(&key.verifying_key().to_bytes()).as_bytes(),
    );
    let state = fwdelta_device::state_file::State {
        product: "fuzz-t1".into(),
        version: "1.0".into(),
        counter: 2,
        threshold: 1,
        keys: vec![key.verifying_key().to_bytes()],
        retired: vec![fwdelta_format::signature::KeyId([7; 8])],
        installed: vec![[9; 32]],
        in_progress: None,
        pending: None,
    };
    write("trust", "state", &state.encode());
    write(
        "trust",
        "history",
        b"{\"event\":\"applied\"}\t0123456789abcdef\n{\"event\":\"x\"}\n",
    );
    for (name, input) in fwdelta_fuzz_targets::journal_seeds() {
        write("in_place_journal", &name, &input);
    }
    println!("seeds written under {}", root.display());
}
