//! The signature check: the section that follows the header of a signed patch
//! (the check of every segment, then Ed25519 signatures over the header and
//! those checks), the key ids that name the signers, and the verification of
//! one signature. Deciding *whose* signatures count (trusted keys, threshold)
//! is the applier's policy; this module only says whether a given key signed
//! a given patch.
//!
//! Wire form (see `docs/FORMAT.md`, "Signed patches"):
//!
//! ```text
//! check table   segment_count × 8 bytes: the check of every segment, the last included
//! sig_count     1 byte, 0..=MAX_SIGNATURES
//! signatures    sig_count × (key id [8], Ed25519 signature [64])
//! ```
//!
//! A signature signs [`signing_message`]: a 32-byte BLAKE3 (in derive-key
//! mode, so it can never be confused with another fwdelta hash) of every
//! header byte and the check table. The header fixes the old image (length
//! and check), the new image (length and full hash), the coding, the release
//! statement ([`crate::release`]); the table fixes every segment's bytes. So
//! a verified signature costs one header read and commits to the whole patch
//! before the first payload byte is decoded.

use crate::error::FormatError;
use crate::header::Header;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::CHECK_LEN;
use core::fmt;
use ed25519_dalek::{Signature, VerifyingKey};

/// Most signatures one patch may carry (key rotation, second signers).
pub const MAX_SIGNATURES: usize = 8;
/// Most segments a signed patch may have: its check table (8 bytes each, at
/// most 512 KiB) is held by the applier until the last segment.
pub const MAX_SIGNED_SEGMENTS: u32 = 1 << 16;
/// Length of a key id.
pub const KEY_ID_LEN: usize = 8;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes one signature takes in the section: key id and signature.
pub const ENTRY_LEN: usize = KEY_ID_LEN + SIGNATURE_LEN;
/// BLAKE3 derive-key context of the signed message of a patch.
pub const PATCH_CONTEXT: &str = "fwdelta 2026-12 patch signature v7";
/// BLAKE3 derive-key context of key ids.
pub const KEY_ID_CONTEXT: &str = "fwdelta 2026-12 key id";

/// Names a public key: the first 8 bytes of its BLAKE3 (derive-key mode,
/// [`KEY_ID_CONTEXT`]). Only a hint of which key to try; a signature is
/// accepted only if it verifies with the full key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// The id of `public_key`. Cost: one BLAKE3 of 32 bytes.
    pub fn of(public_key: &[u8; PUBLIC_KEY_LEN]) -> KeyId {
        let mut h = blake3::Hasher::new_derive_key(KEY_ID_CONTEXT);
        h.update(public_key);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&h.finalize().as_bytes()[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One signature of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureEntry {
    /// Which key made it (as the patch claims; verified only by the key).
    pub key_id: KeyId,
    /// Ed25519 signature of [`signing_message`].
    pub signature: [u8; SIGNATURE_LEN],
}

/// The section after a signed patch's header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SignatureSection {
    /// Check of every segment, in order (the last included).
    pub checks: Vec<[u8; CHECK_LEN]>,
    /// The signatures, at most [`MAX_SIGNATURES`].
    pub signatures: Vec<SignatureEntry>,
}

impl SignatureSection {
    /// Bytes of the check table and the signature count: what a streaming
    /// reader takes before it knows how many signatures follow.
    pub fn fixed_len(header: &Header) -> usize {
        header.segment_count as usize * CHECK_LEN + 1
    }

    /// Bytes the signatures take after the count byte `count`; refused when
    /// `count` exceeds [`MAX_SIGNATURES`].
    pub fn signatures_len(count: u8) -> Result<usize, FormatError> {
        if usize::from(count) > MAX_SIGNATURES {
            return Err(FormatError::BadSignatureSection(
                "more signatures than the format allows",
            ));
        }
        Ok(usize::from(count) * ENTRY_LEN)
    }

    /// Length of the whole section as [`Self::encode`] writes it.
    pub fn encoded_len(&self) -> usize {
        self.checks.len() * CHECK_LEN + 1 + self.signatures.len() * ENTRY_LEN
    }

    /// The section's bytes. Panics if it holds more than [`MAX_SIGNATURES`]
    /// signatures (writers refuse to add more).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.signatures.len() <= MAX_SIGNATURES,
            "too many signatures"
        );
        let mut b = Vec::with_capacity(self.encoded_len());
        for c in &self.checks {
            b.extend_from_slice(c);
        }
        b.push(self.signatures.len() as u8);
        for s in &self.signatures {
            b.extend_from_slice(&s.key_id.0);
            b.extend_from_slice(&s.signature);
        }
        b
    }

    /// Parse the section of the patch with `header` from `bytes`, which must
    /// be exactly the section ([`Self::fixed_len`] plus the signatures).
    /// Cost: copies the table (8 bytes a segment, the header bounds it).
    pub fn parse(header: &Header, bytes: &[u8]) -> Result<SignatureSection, FormatError> {
        let fixed = Self::fixed_len(header);
        let count = *bytes
            .get(fixed - 1)
            .ok_or(FormatError::BadSignatureSection("truncated"))?;
        if bytes.len() != fixed + Self::signatures_len(count)? {
            return Err(FormatError::BadSignatureSection(
                "length does not match its signature count",
            ));
        }
        let checks = bytes[..fixed - 1]
            .chunks_exact(CHECK_LEN)
            .map(|c| {
                let mut a = [0u8; CHECK_LEN];
                a.copy_from_slice(c);
                a
            })
            .collect();
        let signatures = bytes[fixed..]
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                let mut key_id = [0u8; KEY_ID_LEN];
                key_id.copy_from_slice(&e[..KEY_ID_LEN]);
                let mut signature = [0u8; SIGNATURE_LEN];
                signature.copy_from_slice(&e[KEY_ID_LEN..]);
                SignatureEntry {
                    key_id: KeyId(key_id),
                    signature,
                }
            })
            .collect();
        Ok(SignatureSection { checks, signatures })
    }

    /// The message this patch's signatures sign (see [`signing_message`]).
    pub fn message(&self, header_bytes: &[u8]) -> [u8; 32] {
        signing_message(header_bytes, &self.checks)
    }
}

/// The 32 bytes a signer signs for the patch whose header is `header_bytes`
/// (all `header_len` bytes) and whose segments have `checks`:
/// `BLAKE3-derive-key(PATCH_CONTEXT, header ‖ check₀ ‖ … ‖ checkₙ₋₁)`. Also the
/// patch's identity in an update record. Cost: one hash over the header and
/// the table.
pub fn signing_message(header_bytes: &[u8], checks: &[[u8; CHECK_LEN]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(PATCH_CONTEXT);
    h.update(header_bytes);
    for c in checks {
        h.update(c);
    }
    *h.finalize().as_bytes()
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `message`, in
/// the strict sense (no weak keys, no malleable encodings). Cost: one
/// signature verification (tens of microseconds on a desktop core).
pub fn verify(
    public_key: &[u8; PUBLIC_KEY_LEN],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> bool {
    VerifyingKey::from_bytes(public_key)
        .and_then(|k| k.verify_strict(message, &Signature::from_bytes(signature)))
        .is_ok()
}

/// Whether `public_key` is a usable Ed25519 public key (a valid curve point).
pub fn is_valid_public_key(public_key: &[u8; PUBLIC_KEY_LEN]) -> bool {
    VerifyingKey::from_bytes(public_key).is_ok_and(|k| !k.is_weak())
}
