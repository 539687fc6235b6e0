//! The terminal-side applier must build without the generator: its manifest's
//! normal dependencies may not name the generator or its heavy crates.

#[test]
fn applier_has_no_generator_dependencies() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let deps: String = manifest
        .split("\n[")
        .filter(|section| section.starts_with("dependencies]"))
        .collect();
    assert!(
        deps.contains("fwdelta-format"),
        "dependencies section not found"
    );
    for forbidden in [
        "fwdelta-diff",
        "bidiff",
        "rayon",
        "memmap2",
        "divsufsort",
        "libsais",
    ] {
        assert!(
            !deps.contains(forbidden),
            "fwdelta-apply depends on {forbidden}"
        );
    }
}
