//! The committed C header is what cbindgen makes of `src/lib.rs`: every
//! exported function's signature, every constant and `fwd_io`'s layout. A
//! change to the interface without regenerating the header fails here.
//! Regenerate with `FWDELTA_BLESS=1 cargo test -p fwdelta-capi --test header`.

use std::path::Path;

#[test]
fn committed_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut made = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not parse the crate")
        .write(&mut made);
    let path = dir.join("include/fwdelta.h");
    if std::env::var_os("FWDELTA_BLESS").is_some() {
        std::fs::write(&path, &made).expect("write header");
    }
    let committed = std::fs::read(&path).expect("include/fwdelta.h");
    assert!(
        committed == made,
        "include/fwdelta.h differs from what cbindgen makes of src/lib.rs; \
         regenerate it with FWDELTA_BLESS=1 cargo test -p fwdelta-capi --test header\n\
         --- generated ---\n{}",
        String::from_utf8_lossy(&made)
    );
}
