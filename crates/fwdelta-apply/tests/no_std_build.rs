//! The format crate, the applier's core and the C library build without
//! `std` (issue 19, sections 2 and 3): `cargo build --no-default-features`
//! for a Cortex-M4F target
//! (`thumbv7em-none-eabihf`, which has no `std` at all, so any use of it
//! fails to compile), and, on the host, with both codecs but without the
//! `std` feature. Builds go to `target/no-std`, reused between runs. The
//! microcontroller target is added with `rustup` if missing; the test fails
//! with rustup's output if it cannot be.

use std::path::{Path, PathBuf};
use std::process::Command;

const MCU: &str = "thumbv7em-none-eabihf";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    workspace().join("target/no-std")
}

fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .arg("build")
        .args(args)
        .arg("--target-dir")
        .arg(target_dir())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ensure_target(triple: &str) {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .expect("rustup is needed to add the microcontroller target");
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == triple)
    {
        return;
    }
    let out = Command::new("rustup")
        .args(["target", "add", triple])
        .output()
        .expect("run rustup");
    assert!(
        out.status.success(),
        "rustup target add {triple} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No codec (the C codecs need a cross C compiler and the zstd wrapper
/// needs std): stored patches only, on a target without `std`.
#[test]
fn core_builds_for_a_cortex_m4_without_std() {
    ensure_target(MCU);
    cargo_build(&[
        "-p",
        "fwdelta-format",
        "-p",
        "fwdelta-apply",
        "--no-default-features",
        "--target",
        MCU,
    ]);
    let lib = target_dir().join(MCU).join("debug/libfwdelta_apply.rlib");
    assert!(lib.is_file(), "{} was not built", lib.display());
}

/// The C library without its `std` feature, for the same target: a static
/// library a Cortex-M firmware links (its own arena allocator and panic
/// handler, no `std`), exporting the push-mode entry points and not the
/// in-place ones (they need `std`).
#[test]
fn c_library_builds_for_a_cortex_m4_without_std() {
    ensure_target(MCU);
    cargo_build(&[
        "-p",
        "fwdelta-capi",
        "--no-default-features",
        "--target",
        MCU,
    ]);
    let lib = target_dir().join(MCU).join("debug/libfwdelta_capi.a");
    let bytes = std::fs::read(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let has = |name: &str| {
        let name = format!("{name}\0");
        bytes.windows(name.len()).any(|w| w == name.as_bytes())
    };
    for symbol in [
        "fwd_applier_new",
        "fwd_applier_feed",
        "fwd_applier_finish",
        "fwd_applier_trust",
        "fwd_applier_resume",
        "__rust_alloc",
    ] {
        assert!(has(symbol), "{symbol} is not in {}", lib.display());
    }
    assert!(
        !has("fwd_apply_in_place"),
        "in-place entry point without std"
    );
}

/// The core with both codec features and without its `std` feature (the
/// crate is then `#![no_std]`, so it cannot name `std` itself).
#[test]
fn core_with_both_codecs_builds_without_its_std_feature() {
    cargo_build(&[
        "-p",
        "fwdelta-apply",
        "--no-default-features",
        "--features",
        "lzma,zstd",
    ]);
}
