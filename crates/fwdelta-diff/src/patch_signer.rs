//! Signing patches (server side): turn a patch into a signed one bound to a
//! release statement, print what a signer signs, attach signatures made here
//! or by an offline signer / HSM, and generate key pairs.
//!
//! A signed patch differs from the unsigned one only in its header (the
//! signed flag and the release statement), the signature section after it,
//! and where segment checks are stored (all in the section's table). The
//! segments' bytes are reused as they are, so signing never re-encodes a
//! payload: it costs one hash over the patch.

use ed25519_dalek::{Signer, SigningKey};
use fwdelta_format::key_file::{hex, parse_tagged};
use fwdelta_format::patch_parts::{reassemble, split, PatchParts};
use fwdelta_format::signature::{self, KeyId, SignatureEntry, MAX_SIGNATURES, MAX_SIGNED_SEGMENTS};
use fwdelta_format::{FormatError, Header, Release};
use thiserror::Error;

/// First word of a secret key file.
pub const SECRET_KEY_TAG: &str = "fwdelta-ed25519-secret-key-v1";

/// Why a patch could not be signed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SignError {
    /// The patch itself is malformed or damaged.
    #[error("invalid patch")]
    Patch(#[from] FormatError),
    /// Signing needs a release statement and the patch has none.
    #[error("the patch has no release statement: give its product, version and security counter")]
    NoRelease,
    /// The patch already carries signatures over another statement.
    #[error("the patch is already signed with another release statement; re-signing would drop {0} signature(s)")]
    ReleaseConflict(usize),
    /// The patch has too many segments to be signed.
    #[error("the patch has {0} segments; a signed patch may have at most 65536 (make it with a larger --segment-size)")]
    TooManySegments(u32),
    /// The patch is not signed (for operations that need the signed form).
    #[error("the patch is not in signed form (sign it with a release statement first)")]
    NotSigned,
    /// The signature section is full.
    #[error("the patch already has the most signatures a patch may carry ({MAX_SIGNATURES})")]
    TooManySignatures,
    /// The key already signed this patch.
    #[error("key {0} has already signed this patch")]
    AlreadySigned(KeyId),
    /// A signature handed in does not verify with the given public key.
    #[error("the signature does not verify with key {0} over this patch's signed bytes")]
    BadSignature(KeyId),
    /// A secret key file is malformed.
    #[error("secret key file is malformed (expected '{SECRET_KEY_TAG}' and 64 hex digits)")]
    BadSecretKey,
    /// The operating system's random source failed.
    #[error("cannot read the system's random source: {0}")]
    Random(String),
}

/// Bring `patch` into signed form, bound to `release` (when given): an
/// unsigned patch gets the signed flag, the statement and an empty signature
/// section; a signed one keeps its signatures if the statement is the same,
/// and is re-bound (dropping no signature: it must have none) otherwise.
/// The patch's memory claim grows by what the applier holds for the section.
pub fn signable(patch: &[u8], release: Option<&Release>) -> Result<Vec<u8>, SignError> {
    let parts = split(patch)?;
    let kept = parts.section.as_ref().map_or(0, |s| s.signatures.len());
    let release = match (release, &parts.header.release) {
        (None, None) => return Err(SignError::NoRelease),
        (None, Some(r)) => r.clone(),
        (Some(r), _) => {
            r.validate()?;
            r.clone()
        }
    };
    if parts.header.release.as_ref() == Some(&release) {
        return Ok(patch.to_vec());
    }
    if kept > 0 {
        return Err(SignError::ReleaseConflict(kept));
    }
    if parts.header.segment_count > MAX_SIGNED_SEGMENTS {
        return Err(SignError::TooManySegments(parts.header.segment_count));
    }
    let mut header = parts.header.clone();
    header.flags |= fwdelta_format::header::FLAG_SIGNED;
    header.release = Some(release);
    rebase_memory_claim(&parts.header, &mut header);
    Ok(reassemble(&header, &parts.segments, &[]))
}

/// Set `header`'s memory claim for its new flags and extensions from
/// `was`'s: the same excess over the floor, plus the bytes the header grew
/// by where the claim counts the header (executable-aware patches keep it).
pub fn rebase_memory_claim(was: &Header, header: &mut Header) {
    let excess = was.apply_memory - was.memory_floor();
    let keeps_header = header.code_refs.is_some();
    header.apply_memory = header.memory_floor() + excess;
    if keeps_header {
        // The header's length depends on the claim's varint: settle it.
        for _ in 0..4 {
            let grown = header.encoded_len().saturating_sub(was.encoded_len()) as u64;
            header.apply_memory = header.memory_floor() + excess + grown;
        }
    }
}

/// The signed form of `patch`'s parts, or [`SignError::NotSigned`].
fn signed_parts(patch: &[u8]) -> Result<PatchParts<'_>, SignError> {
    let parts = split(patch)?;
    if parts.section.is_none() {
        return Err(SignError::NotSigned);
    }
    Ok(parts)
}

/// The exact 32 bytes a signer must sign for the signed-form `patch`
/// ([`signature::signing_message`]).
pub fn signing_message(patch: &[u8]) -> Result<[u8; 32], SignError> {
    let parts = signed_parts(patch)?;
    Ok(signature::signing_message(
        parts.header_bytes,
        &parts.checks(),
    ))
}

/// Attach `signature`, made by the holder of `public_key`, to the
/// signed-form `patch`, after verifying it over the patch's signed bytes.
pub fn attach_signature(
    patch: &[u8],
    public_key: &[u8; 32],
    signature_bytes: &[u8; 64],
) -> Result<Vec<u8>, SignError> {
    let parts = signed_parts(patch)?;
    let key_id = KeyId::of(public_key);
    let message = signature::signing_message(parts.header_bytes, &parts.checks());
    if !signature::verify(public_key, &message, signature_bytes) {
        return Err(SignError::BadSignature(key_id));
    }
    let mut signatures = parts.section.map(|s| s.signatures).unwrap_or_default();
    if signatures.iter().any(|s| s.key_id == key_id) {
        return Err(SignError::AlreadySigned(key_id));
    }
    if signatures.len() >= MAX_SIGNATURES {
        return Err(SignError::TooManySignatures);
    }
    signatures.push(SignatureEntry {
        key_id,
        signature: *signature_bytes,
    });
    Ok(reassemble(&parts.header, &parts.segments, &signatures))
}

/// Sign the signed-form `patch` with `key` and attach the signature.
pub fn sign(patch: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignError> {
    let message = signing_message(patch)?;
    let sig = key.sign(&message).to_bytes();
    attach_signature(patch, key.verifying_key().as_bytes(), &sig)
}

/// Sign any patch for `release`: [`signable`] then [`sign`] with each key.
pub fn sign_for_release(
    patch: &[u8],
    release: Option<&Release>,
    keys: &[SigningKey],
) -> Result<Vec<u8>, SignError> {
    let mut out = signable(patch, release)?;
    for key in keys {
        out = sign(&out, key)?;
    }
    Ok(out)
}

/// A new key pair from the operating system's random source.
pub fn generate_key() -> Result<SigningKey, SignError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SignError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The text of a secret key file (with its newline).
pub fn encode_secret_key(key: &SigningKey) -> String {
    format!("{SECRET_KEY_TAG} {}\n", hex(&key.to_bytes()))
}

/// Parse a secret key file.
pub fn parse_secret_key(text: &[u8]) -> Result<SigningKey, SignError> {
    parse_tagged(text, SECRET_KEY_TAG)
        .map(|seed| SigningKey::from_bytes(&seed))
        .ok_or(SignError::BadSecretKey)
}

/// Whether `header` could be signed as it is (segment count within the limit).
pub fn can_sign(header: &Header) -> bool {
    header.segment_count <= MAX_SIGNED_SEGMENTS
}
