//! Key rotation statements: "trust this new key (and stop trusting these)",
//! signed by keys the terminal already trusts and by the new key itself (so
//! nobody can make a terminal trust a key whose owner did not agree, and a
//! stolen statement cannot introduce a key without its holder). A terminal
//! accepts one only if at least its threshold of currently trusted keys
//! signed it; see `docs/FORMAT.md`, "Key rotation statements".
//!
//! Wire form: magic `89 46 57 4B` (`\x89FWK`), version `1`, the new public
//! key (32), `retire_count` (1 byte, at most 8) and that many key ids (8
//! each), `sig_count` (1 byte, 1..=8) and that many (key id, signature)
//! entries of 72 bytes. Signatures sign `BLAKE3-derive-key(ROTATION_CONTEXT,
//! every byte before sig_count)`.

use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::signature::{
    is_valid_public_key, KeyId, SignatureEntry, ENTRY_LEN, KEY_ID_LEN, MAX_SIGNATURES,
    PUBLIC_KEY_LEN, SIGNATURE_LEN,
};

/// First bytes of a rotation statement.
pub const ROTATION_MAGIC: [u8; 4] = [0x89, b'F', b'W', b'K'];
/// The statement version this build reads and writes.
pub const ROTATION_VERSION: u8 = 1;
/// BLAKE3 derive-key context of the signed part of a rotation statement.
pub const ROTATION_CONTEXT: &str = "fwdelta 2026-12 key rotation v1";
/// Most key ids a statement may retire.
pub const MAX_RETIRED: usize = 8;

/// A decoded key rotation statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// The key to trust from now on.
    pub new_key: [u8; PUBLIC_KEY_LEN],
    /// Keys to stop trusting.
    pub retire: Vec<KeyId>,
    /// Signatures of [`Self::message`].
    pub signatures: Vec<SignatureEntry>,
}

impl KeyRotation {
    /// The signed part: magic, version, new key, retired ids.
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(6 + PUBLIC_KEY_LEN + self.retire.len() * KEY_ID_LEN);
        b.extend_from_slice(&ROTATION_MAGIC);
        b.push(ROTATION_VERSION);
        b.extend_from_slice(&self.new_key);
        b.push(self.retire.len() as u8);
        for id in &self.retire {
            b.extend_from_slice(&id.0);
        }
        b
    }

    /// The 32 bytes every signer of this statement signs.
    pub fn message(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(ROTATION_CONTEXT);
        h.update(&self.body());
        *h.finalize().as_bytes()
    }

    /// The statement's bytes. Panics past [`MAX_RETIRED`] retired ids or
    /// [`MAX_SIGNATURES`] signatures (writers refuse more).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.retire.len() <= MAX_RETIRED && self.signatures.len() <= MAX_SIGNATURES);
        let mut b = self.body();
        b.push(self.signatures.len() as u8);
        for s in &self.signatures {
            b.extend_from_slice(&s.key_id.0);
            b.extend_from_slice(&s.signature);
        }
        b
    }

    /// Parse a statement (signatures are not verified here). Cost: no
    /// allocation beyond the (bounded) lists.
    pub fn decode(bytes: &[u8]) -> Result<KeyRotation, FormatError> {
        let bad = FormatError::BadRotation;
        if bytes.get(..4) != Some(&ROTATION_MAGIC[..]) {
            return Err(bad("not a key rotation statement"));
        }
        if bytes.get(4) != Some(&ROTATION_VERSION) {
            return Err(bad("unsupported statement version"));
        }
        let mut new_key = [0u8; PUBLIC_KEY_LEN];
        new_key.copy_from_slice(bytes.get(5..5 + PUBLIC_KEY_LEN).ok_or(bad("truncated"))?);
        if !is_valid_public_key(&new_key) {
            return Err(bad("the new key is not a valid Ed25519 key"));
        }
        let mut at = 5 + PUBLIC_KEY_LEN;
        let retired = usize::from(*bytes.get(at).ok_or(bad("truncated"))?);
        if retired > MAX_RETIRED {
            return Err(bad("retires too many keys"));
        }
        at += 1;
        let ids = bytes
            .get(at..at + retired * KEY_ID_LEN)
            .ok_or(bad("truncated"))?;
        let retire = ids
            .chunks_exact(KEY_ID_LEN)
            .map(|c| {
                let mut id = [0u8; KEY_ID_LEN];
                id.copy_from_slice(c);
                KeyId(id)
            })
            .collect();
        at += retired * KEY_ID_LEN;
        let count = usize::from(*bytes.get(at).ok_or(bad("truncated"))?);
        if count == 0 || count > MAX_SIGNATURES {
            return Err(bad("needs 1 to 8 signatures"));
        }
        at += 1;
        let sigs = bytes.get(at..).ok_or(bad("truncated"))?;
        if sigs.len() != count * ENTRY_LEN {
            return Err(bad("length does not match its signature count"));
        }
        let signatures = sigs
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
        Ok(KeyRotation {
            new_key,
            retire,
            signatures,
        })
    }
}
