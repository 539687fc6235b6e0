//! The release manifest (`manifest.json`) a release directory carries and a
//! terminal picks its patch from, and its detached signature
//! (`manifest.sig`). Described in `docs/RELEASE.md`.
//!
//! This module is shared by the generator (`fwdelta release`, which builds
//! a [`Manifest`] and [`Manifest::encode`]s it) and the terminal (`fwdelta
//! apply --manifest`, which [`Manifest::parse`]s it and [`Manifest::pick`]s
//! its entry), so the two can never disagree about the form. It needs only
//! `serde_json` and `blake3`, never the generator.
//!
//! The signature signs the exact bytes of `manifest.json`: a signer signs
//! [`signing_message`], the BLAKE3 of those bytes in derive-key mode with
//! [`MANIFEST_CONTEXT`], a context no patch signature uses (patches sign
//! under [`fwdelta_format::signature::PATCH_CONTEXT`]), so a manifest
//! signature can never be passed off as a patch signature or the reverse.

use fwdelta_format::key_file::hex;
use fwdelta_format::signature::{self, KeyId, KEY_ID_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use thiserror::Error;

/// The manifest form this module writes and the only one it reads.
pub const MANIFEST_VERSION: u64 = 1;
/// BLAKE3 derive-key context of the message a manifest signature signs.
pub const MANIFEST_CONTEXT: &str = "fwdelta 2026-12 release manifest v1";
/// First word of every line of a manifest signature file.
pub const SIGNATURE_TAG: &str = "fwdelta-manifest-signature-v1";
/// Largest manifest or signature file a terminal reads (16 MiB: about
/// 50 000 old images).
pub const MAX_MANIFEST_LEN: u64 = 16 << 20;
/// Most signatures a manifest signature file may hold.
pub const MAX_MANIFEST_SIGNATURES: usize = signature::MAX_SIGNATURES;

/// Why a manifest was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest is not JSON of the expected form.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// The manifest is of a form this fwdelta does not read.
    #[error(
        "manifest version {0} is not supported (this fwdelta reads version {MANIFEST_VERSION})"
    )]
    Unsupported(u64),
    /// Trusted keys were given but the manifest has no signature file.
    #[error("the manifest is not signed (no {0}) and trusted keys were given")]
    Unsigned(String),
    /// The signature file is malformed.
    #[error("malformed manifest signature: {0}")]
    BadSignatureFile(&'static str),
    /// Too few trusted keys signed the manifest (damaged, forged, unknown
    /// signer, or a manifest changed after signing).
    #[error("the manifest is not signed by a trusted key ({verified} of {threshold} trusted signatures verify; signers named: {signers})")]
    NotAuthentic {
        /// Distinct trusted keys whose signatures verified.
        verified: usize,
        /// How many are needed.
        threshold: usize,
        /// The key ids the signature file names.
        signers: String,
    },
    /// The manifest has no entry for this old image and no full image.
    #[error("the manifest has no patch for {0} and no full image")]
    NoEntry(String),
    /// A patch file's bytes are not the ones the manifest names.
    #[error("{file} does not match the manifest (BLAKE3 {actual}, the manifest says {expected}); refusing it")]
    PatchMismatch {
        /// The patch file's name.
        file: String,
        /// The BLAKE3 the manifest gives.
        expected: String,
        /// The file's BLAKE3.
        actual: String,
    },
    /// A patch (as opened for applying) makes another image than the
    /// manifest's new image: swapped after its bytes were checked.
    #[error("{file} makes another image than the manifest's (new image BLAKE3 {actual}, the manifest says {expected}); refusing it")]
    WrongNewImage {
        /// The patch file's name.
        file: String,
        /// The manifest's new image BLAKE3.
        expected: String,
        /// The new image BLAKE3 the patch's header names.
        actual: String,
    },
    /// A patch (as fetched) was made for another old image than the one
    /// the manifest names it for.
    #[error("{file} was made for another old image than the manifest names it for (old image BLAKE3 {actual}..., the manifest's entry is {expected}...); refusing it")]
    WrongOldImage {
        /// The patch file's name.
        file: String,
        /// The first bytes of the BLAKE3 of the old image the manifest names.
        expected: String,
        /// The first bytes of the BLAKE3 of the old image the patch's header names.
        actual: String,
    },
}

/// One patch file of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchFile {
    /// File name, relative to the manifest's directory (no directory part).
    pub file: String,
    /// Length in bytes.
    pub bytes: u64,
    /// BLAKE3 of the whole file.
    pub blake3: [u8; 32],
}

/// What the manifest says about one old image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldEntry {
    /// The old image's version.
    pub version: String,
    /// The old image's length.
    pub len: u64,
    /// Its delta patch, or `None` when the delta was larger than the
    /// release's share of the full-image patch: those terminals take the
    /// full image.
    pub patch: Option<PatchFile>,
}

/// A parsed (or to-be-written) release manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Product id.
    pub product: String,
    /// The new image's version.
    pub version: String,
    /// The new image's security counter.
    pub security_counter: u64,
    /// Expiry of the patches (Unix seconds), 0 for never.
    pub expires: u64,
    /// The new image's length.
    pub new_len: u64,
    /// The new image's BLAKE3.
    pub new_blake3: [u8; 32],
    /// The full-image patch (from an empty old image), if the release has one.
    pub full_image: Option<PatchFile>,
    /// Share of the full-image patch above which a delta was left out.
    pub max_share: f64,
    /// Every old image, by its BLAKE3.
    pub old_images: BTreeMap<[u8; 32], OldEntry>,
}

/// Which patch a terminal with a given old image should apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick<'m> {
    /// Its own delta patch.
    Delta(&'m OldEntry, &'m PatchFile),
    /// The full image, because its delta was over the share.
    FullOverShare(&'m OldEntry, &'m PatchFile),
    /// The full image, because the manifest has no entry for this old image.
    FullNoEntry(&'m PatchFile),
    /// Nothing: no entry and no full image.
    Nothing,
}

fn malformed(what: impl Into<String>) -> ManifestError {
    ManifestError::Malformed(what.into())
}

fn hash_of(v: &Value, what: &str) -> Result<[u8; 32], ManifestError> {
    v.as_str()
        .filter(|s| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(crate::parse_hash)
        .ok_or_else(|| malformed(format!("{what} is not 64 lower-case hex digits")))
}

fn u64_of(v: &Value, what: &str) -> Result<u64, ManifestError> {
    v.as_u64()
        .ok_or_else(|| malformed(format!("{what} is not a non-negative integer")))
}

fn str_of<'v>(v: &'v Value, what: &str) -> Result<&'v str, ManifestError> {
    v.as_str()
        .ok_or_else(|| malformed(format!("{what} is not a string")))
}

/// A product id or version string: as a patch's release statement allows
/// them (1 to 64 bytes; product: ASCII letters, digits, `. _ -`; version:
/// printable ASCII), so no control character reaches a terminal or a log.
fn name_of<'v>(v: &'v Value, what: &str, ok: fn(u8) -> bool) -> Result<&'v str, ManifestError> {
    let s = str_of(v, what)?;
    if s.is_empty() || s.len() > 64 || !s.bytes().all(ok) {
        return Err(malformed(format!(
            "{what} is not 1 to 64 allowed characters (product ids: ASCII letters, digits, . _ -; versions: printable ASCII)"
        )));
    }
    Ok(s)
}

fn object_of<'v>(v: &'v Value, what: &str) -> Result<&'v Map<String, Value>, ManifestError> {
    v.as_object()
        .ok_or_else(|| malformed(format!("{what} is not an object")))
}

/// Refuse keys of `obj` not in `known` (a typo must not be silently ignored).
fn only_keys(obj: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), ManifestError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(malformed(format!("unknown field `{k}` in {what}"))),
        None => Ok(()),
    }
}

/// A file name the terminal may open beside the manifest: no directory
/// part, not hidden, not `.`/`..`, printable ASCII.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl PatchFile {
    fn to_json(&self) -> Value {
        json!({ "file": self.file, "bytes": self.bytes, "blake3": hex(&self.blake3) })
    }

    fn parse(v: &Value, what: &str) -> Result<PatchFile, ManifestError> {
        let o = object_of(v, what)?;
        only_keys(o, &["file", "bytes", "blake3"], what)?;
        let file = str_of(
            o.get("file").unwrap_or(&Value::Null),
            &format!("{what}.file"),
        )?
        .to_string();
        if !is_plain_file_name(&file) {
            return Err(malformed(format!(
                "{what}.file {file:?} is not a plain file name beside the manifest"
            )));
        }
        Ok(PatchFile {
            file,
            bytes: u64_of(
                o.get("bytes").unwrap_or(&Value::Null),
                &format!("{what}.bytes"),
            )?,
            blake3: hash_of(
                o.get("blake3").unwrap_or(&Value::Null),
                &format!("{what}.blake3"),
            )?,
        })
    }

    /// Check that `bytes` are this file's: length and BLAKE3.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), ManifestError> {
        let actual = blake3::hash(bytes);
        if bytes.len() as u64 != self.bytes || actual.as_bytes() != &self.blake3 {
            return Err(ManifestError::PatchMismatch {
                file: self.file.clone(),
                expected: hex(&self.blake3),
                actual: hex(actual.as_bytes()),
            });
        }
        Ok(())
    }
}

impl Manifest {
    /// The manifest's bytes: pretty JSON with sorted keys, old images in
    /// order of their hash, and a final newline. The same manifest always
    /// gives the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut old = Map::new();
        for (hash, e) in &self.old_images {
            let mut o = Map::new();
            o.insert("version".into(), json!(e.version));
            o.insert("len".into(), json!(e.len));
            match &e.patch {
                Some(p) => {
                    o.insert("patch".into(), p.to_json());
                }
                None => {
                    o.insert("patch".into(), Value::Null);
                    o.insert("use_full_image".into(), json!(true));
                }
            }
            old.insert(hex(hash), Value::Object(o));
        }
        let v = json!({
            "manifest_version": MANIFEST_VERSION,
            "product": self.product,
            "version": self.version,
            "security_counter": self.security_counter,
            "expires": self.expires,
            "new_image": { "len": self.new_len, "blake3": hex(&self.new_blake3) },
            "full_image": self.full_image.as_ref().map(PatchFile::to_json),
            "max_share": self.max_share,
            "old_images": Value::Object(sorted(old)),
        });
        let mut out = serde_json::to_vec_pretty(&sorted_value(v)).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parse manifest bytes. Never panics; unknown fields are refused.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON ({e})")))?;
        let o = object_of(&v, "the manifest")?;
        let version = u64_of(
            o.get("manifest_version").unwrap_or(&Value::Null),
            "manifest_version",
        )?;
        if version != MANIFEST_VERSION {
            return Err(ManifestError::Unsupported(version));
        }
        only_keys(
            o,
            &[
                "manifest_version",
                "product",
                "version",
                "security_counter",
                "expires",
                "new_image",
                "full_image",
                "max_share",
                "old_images",
            ],
            "the manifest",
        )?;
        let get = |k: &str| o.get(k).unwrap_or(&Value::Null);
        let new = object_of(get("new_image"), "new_image")?;
        only_keys(new, &["len", "blake3"], "new_image")?;
        let full_image = match get("full_image") {
            Value::Null => None,
            f => Some(PatchFile::parse(f, "full_image")?),
        };
        let mut old_images = BTreeMap::new();
        for (k, e) in object_of(get("old_images"), "old_images")? {
            let what = format!("old_images.{k}");
            let hash = hash_of(&Value::String(k.clone()), &format!("old image key {k:?}"))?;
            let eo = object_of(e, &what)?;
            only_keys(eo, &["version", "len", "patch", "use_full_image"], &what)?;
            let patch = match eo.get("patch").unwrap_or(&Value::Null) {
                Value::Null => None,
                p => Some(PatchFile::parse(p, &format!("{what}.patch"))?),
            };
            let full = match eo.get("use_full_image") {
                None => false,
                Some(b) => b
                    .as_bool()
                    .ok_or_else(|| malformed(format!("{what}.use_full_image is not a boolean")))?,
            };
            if full == patch.is_some() {
                return Err(malformed(format!(
                    "{what} must have either a patch or use_full_image: true"
                )));
            }
            old_images.insert(
                hash,
                OldEntry {
                    version: name_of(
                        eo.get("version").unwrap_or(&Value::Null),
                        &format!("{what}.version"),
                        fwdelta_format::release::is_version_byte,
                    )?
                    .to_string(),
                    len: u64_of(
                        eo.get("len").unwrap_or(&Value::Null),
                        &format!("{what}.len"),
                    )?,
                    patch,
                },
            );
        }
        Ok(Manifest {
            product: name_of(
                get("product"),
                "product",
                fwdelta_format::release::is_product_byte,
            )?
            .to_string(),
            version: name_of(
                get("version"),
                "version",
                fwdelta_format::release::is_version_byte,
            )?
            .to_string(),
            security_counter: u64_of(get("security_counter"), "security_counter")?,
            expires: u64_of(get("expires"), "expires")?,
            new_len: u64_of(new.get("len").unwrap_or(&Value::Null), "new_image.len")?,
            new_blake3: hash_of(
                new.get("blake3").unwrap_or(&Value::Null),
                "new_image.blake3",
            )?,
            full_image,
            max_share: get("max_share")
                .as_f64()
                .ok_or_else(|| malformed("max_share is not a number"))?,
            old_images,
        })
    }

    /// The patch a terminal whose old image has BLAKE3 `old` should apply.
    pub fn pick(&self, old: &[u8; 32]) -> Pick<'_> {
        match (self.old_images.get(old), &self.full_image) {
            (Some(e), full) => match (&e.patch, full) {
                (Some(p), _) => Pick::Delta(e, p),
                (None, Some(full)) => Pick::FullOverShare(e, full),
                (None, None) => Pick::Nothing,
            },
            (None, Some(full)) => Pick::FullNoEntry(full),
            (None, None) => Pick::Nothing,
        }
    }
}

/// `m` with its keys in sorted order (serde_json keeps insertion order when
/// its `preserve_order` feature is on anywhere in the build).
fn sorted(m: Map<String, Value>) -> Map<String, Value> {
    let b: BTreeMap<String, Value> = m.into_iter().collect();
    b.into_iter().map(|(k, v)| (k, sorted_value(v))).collect()
}

fn sorted_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(sorted(m)),
        Value::Array(a) => Value::Array(a.into_iter().map(sorted_value).collect()),
        v => v,
    }
}

/// The 32 bytes a signer signs for the manifest whose file holds `bytes`:
/// `BLAKE3-derive-key(MANIFEST_CONTEXT, bytes)`.
pub fn signing_message(bytes: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(MANIFEST_CONTEXT);
    h.update(bytes);
    *h.finalize().as_bytes()
}

/// One signature of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSignature {
    /// The signer's key id.
    pub key_id: KeyId,
    /// Ed25519 signature of [`signing_message`].
    pub signature: [u8; SIGNATURE_LEN],
}

/// The text of a signature file: one line per signature,
/// `fwdelta-manifest-signature-v1 KEYID SIGNATURE` (16 and 128 hex digits).
pub fn encode_signatures(sigs: &[ManifestSignature]) -> String {
    sigs.iter()
        .map(|s| {
            format!(
                "{SIGNATURE_TAG} {} {}\n",
                hex(&s.key_id.0),
                hex(&s.signature)
            )
        })
        .collect()
}

/// `2N` lowercase hex digits as `N` bytes (`None` for anything else).
pub(crate) fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parse a signature file ([`encode_signatures`]'s form).
pub fn parse_signatures(text: &[u8]) -> Result<Vec<ManifestSignature>, ManifestError> {
    let text =
        std::str::from_utf8(text).map_err(|_| ManifestError::BadSignatureFile("not ASCII text"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut w = line.split(' ');
        if w.next() != Some(SIGNATURE_TAG) {
            return Err(ManifestError::BadSignatureFile(
                "a line does not start with fwdelta-manifest-signature-v1",
            ));
        }
        let key_id = w
            .next()
            .and_then(unhex::<KEY_ID_LEN>)
            .ok_or(ManifestError::BadSignatureFile("bad key id"))?;
        let signature = w
            .next()
            .and_then(unhex::<SIGNATURE_LEN>)
            .ok_or(ManifestError::BadSignatureFile("bad signature"))?;
        if w.next().is_some() {
            return Err(ManifestError::BadSignatureFile("extra words on a line"));
        }
        out.push(ManifestSignature {
            key_id: KeyId(key_id),
            signature,
        });
        if out.len() > MAX_MANIFEST_SIGNATURES {
            return Err(ManifestError::BadSignatureFile("too many signatures"));
        }
    }
    Ok(out)
}

/// Verify the manifest `bytes` against the signature file `sig_text`:
/// at least `threshold` (at least 1) distinct `trusted` keys must have
/// signed it. Returns the ids of the keys whose signatures verified.
pub fn verify(
    bytes: &[u8],
    sig_text: &[u8],
    trusted: &[[u8; PUBLIC_KEY_LEN]],
    threshold: usize,
) -> Result<Vec<KeyId>, ManifestError> {
    let sigs = parse_signatures(sig_text)?;
    let message = signing_message(bytes);
    let mut signed_by: Vec<KeyId> = Vec::new();
    for s in &sigs {
        let key = trusted
            .iter()
            .find(|k| KeyId::of(k) == s.key_id && !signed_by.contains(&s.key_id));
        if let Some(key) = key {
            if signature::verify(key, &message, &s.signature) {
                signed_by.push(s.key_id);
            }
        }
    }
    let threshold = threshold.max(1);
    if signed_by.len() < threshold {
        let signers: Vec<String> = sigs.iter().map(|s| s.key_id.to_string()).collect();
        return Err(ManifestError::NotAuthentic {
            verified: signed_by.len(),
            threshold,
            signers: if signers.is_empty() {
                "none".into()
            } else {
                signers.join(", ")
            },
        });
    }
    Ok(signed_by)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let pf = |n: u8| PatchFile {
            file: format!("p{n}.fwd"),
            bytes: 100 + u64::from(n),
            blake3: [n; 32],
        };
        let mut old_images = BTreeMap::new();
        old_images.insert(
            [9; 32],
            OldEntry {
                version: "1.0".into(),
                len: 10,
                patch: Some(pf(1)),
            },
        );
        old_images.insert(
            [3; 32],
            OldEntry {
                version: "0.9".into(),
                len: 11,
                patch: None,
            },
        );
        Manifest {
            product: "acme".into(),
            version: "2.0".into(),
            security_counter: 5,
            expires: 0,
            new_len: 42,
            new_blake3: [7; 32],
            full_image: Some(pf(2)),
            max_share: 0.8,
            old_images,
        }
    }

    #[test]
    fn round_trips_and_picks() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        assert_eq!(m.encode(), bytes);
        assert!(matches!(m.pick(&[9; 32]), Pick::Delta(_, p) if p.file == "p1.fwd"));
        assert!(matches!(m.pick(&[3; 32]), Pick::FullOverShare(_, p) if p.file == "p2.fwd"));
        assert!(matches!(m.pick(&[4; 32]), Pick::FullNoEntry(_)));
    }

    #[test]
    fn refuses_unknown_fields_paths_and_every_truncation() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() - 2 {
            assert!(Manifest::parse(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let text = String::from_utf8(bytes).unwrap();
        let extra = text.replacen("\"expires\"", "\"expire\": 1, \"expires\"", 1);
        assert!(Manifest::parse(extra.as_bytes()).is_err());
        let escape = text.replacen("p1.fwd", "../p1.fwd", 1);
        assert!(Manifest::parse(escape.as_bytes()).is_err());
    }

    #[test]
    fn signatures_verify_only_with_the_key_and_bytes() {
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let pk = key.verifying_key().to_bytes();
        let bytes = sample().encode();
        let sig = ManifestSignature {
            key_id: KeyId::of(&pk),
            signature: key.sign(&signing_message(&bytes)).to_bytes(),
        };
        let text = encode_signatures(&[sig]);
        assert_eq!(
            verify(&bytes, text.as_bytes(), &[pk], 1).unwrap(),
            vec![KeyId::of(&pk)]
        );
        let other_pk = other.verifying_key().to_bytes();
        assert!(verify(&bytes, text.as_bytes(), &[other_pk], 1).is_err());
        let mut changed = bytes.clone();
        changed[10] ^= 1;
        assert!(verify(&changed, text.as_bytes(), &[pk], 1).is_err());
        // a patch-context signature over the same bytes is not a manifest one
        let mut h = blake3::Hasher::new_derive_key(signature::PATCH_CONTEXT);
        h.update(&bytes);
        let patch_sig = ManifestSignature {
            key_id: KeyId::of(&pk),
            signature: key.sign(h.finalize().as_bytes()).to_bytes(),
        };
        assert!(verify(&bytes, encode_signatures(&[patch_sig]).as_bytes(), &[pk], 1).is_err());
    }
}
