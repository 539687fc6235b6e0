//! The device state file (`state.json`): product, installed version,
//! security counter, trusted keys and threshold, the patches installed, and
//! the update in progress or awaiting confirmation. One JSON line followed by
//! a line `blake3 <hex>` of it: a damaged file is refused, never half-read,
//! and it is only ever replaced whole (see [`crate::safe_file::replace`]).

use crate::DeviceError;
use fwdelta_format::key_file::hex;
use fwdelta_format::release::{is_product_byte, is_version_byte, MAX_NAME_LEN};
use fwdelta_format::signature::{is_valid_public_key, KeyId, KEY_ID_LEN, MAX_SIGNATURES};
use serde_json::{json, Value};

/// The `format` field of a state file this build writes and reads.
pub const STATE_FORMAT: &str = "fwdelta-device-state-v1";
/// How many installed patches the state remembers for replay refusal.
pub const MAX_INSTALLED: usize = 64;
/// How many retired key ids the state remembers. A rotation that would
/// retire more is refused: forgetting one would let a replayed statement
/// bring that key back.
pub const MAX_RETIRED_KEYS: usize = 256;

/// An update the device has started or applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The patch's signed message (hex): its identity.
    pub patch: String,
    /// The version it installs.
    pub version: String,
    /// Its security counter.
    pub counter: u64,
    /// BLAKE3 of the image it produces (hex).
    pub new_hash: String,
    /// Runs that started this update (more than one: resumed).
    pub attempts: u32,
}

/// Everything the device keeps between updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Product id: patches for another are refused.
    pub product: String,
    /// The version installed and confirmed.
    pub version: String,
    /// Security counter: patches below it are refused; raised only by a
    /// confirmed update.
    pub counter: u64,
    /// Distinct trusted signatures a patch needs.
    pub threshold: usize,
    /// Trusted Ed25519 public keys.
    pub keys: Vec<[u8; 32]>,
    /// Ids of every key a rotation statement retired (at most
    /// [`MAX_RETIRED_KEYS`]): never trusted again, whatever statement names
    /// them later.
    pub retired: Vec<KeyId>,
    /// Signed messages of the last [`MAX_INSTALLED`] confirmed patches.
    pub installed: Vec<[u8; 32]>,
    /// An update started and not yet applied (a run was cut short).
    pub in_progress: Option<Update>,
    /// An update applied and awaiting `confirm` or `rollback`.
    pub pending: Option<Update>,
}

fn update_json(u: &Update) -> Value {
    json!({
        "patch": u.patch, "version": u.version, "counter": u.counter,
        "new_blake3": u.new_hash, "attempts": u.attempts,
    })
}

impl State {
    /// The file's bytes: the JSON line and its check line.
    pub fn encode(&self) -> Vec<u8> {
        let v = json!({
            "format": STATE_FORMAT,
            "product": self.product,
            "version": self.version,
            "security_counter": self.counter,
            "threshold": self.threshold,
            "trusted_keys": self.keys.iter().map(|k| hex(k)).collect::<Vec<_>>(),
            "retired_keys": self.retired.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            "installed": self.installed.iter().map(|k| hex(k)).collect::<Vec<_>>(),
            "in_progress": self.in_progress.as_ref().map(update_json),
            "pending": self.pending.as_ref().map(update_json),
        });
        sealed(&v)
    }

    /// Parse and validate a state file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<State, DeviceError> {
        let damaged = |why: &str| DeviceError::Damaged(format!("state.json: {why}"));
        let text = std::str::from_utf8(bytes).map_err(|_| damaged("not text"))?;
        let (line, rest) = text.split_once('\n').ok_or_else(|| damaged("truncated"))?;
        if rest != check_line(line) {
            return Err(damaged("its check does not match (damaged or torn)"));
        }
        let v: Value = serde_json::from_str(line).map_err(|_| damaged("not JSON"))?;
        if v["format"] != STATE_FORMAT {
            return Err(damaged("unknown format"));
        }
        let name = |key: &str, ok: fn(u8) -> bool| -> Result<String, DeviceError> {
            let s = v[key]
                .as_str()
                .filter(|s| !s.is_empty() && s.len() <= MAX_NAME_LEN && s.bytes().all(ok))
                .ok_or_else(|| damaged(&format!("bad {key}")))?;
            Ok(s.to_owned())
        };
        let keys = hashes(&v["trusted_keys"]).ok_or_else(|| damaged("bad trusted_keys"))?;
        if keys.iter().any(|k| !is_valid_public_key(k)) || keys.len() > 4 * MAX_SIGNATURES {
            return Err(damaged("a trusted key is invalid"));
        }
        // Absent in files written before keys were remembered as retired.
        let retired = match &v["retired_keys"] {
            Value::Null => Vec::new(),
            ids => key_ids(ids)
                .filter(|ids| ids.len() <= MAX_RETIRED_KEYS)
                .ok_or_else(|| damaged("bad retired_keys"))?,
        };
        let threshold = v["threshold"]
            .as_u64()
            .filter(|&t| (1..=MAX_SIGNATURES as u64).contains(&t))
            .ok_or_else(|| damaged("bad threshold"))? as usize;
        let update = |key: &str| -> Result<Option<Update>, DeviceError> {
            let u = &v[key];
            if u.is_null() {
                return Ok(None);
            }
            let s = |f: &str| u[f].as_str().map(str::to_owned);
            Ok(Some(Update {
                patch: s("patch").ok_or_else(|| damaged(key))?,
                version: s("version").ok_or_else(|| damaged(key))?,
                counter: u["counter"].as_u64().ok_or_else(|| damaged(key))?,
                new_hash: s("new_blake3").ok_or_else(|| damaged(key))?,
                attempts: u["attempts"]
                    .as_u64()
                    .and_then(|a| u32::try_from(a).ok())
                    .ok_or_else(|| damaged(key))?,
            }))
        };
        Ok(State {
            product: name("product", is_product_byte)?,
            version: name("version", is_version_byte)?,
            counter: v["security_counter"]
                .as_u64()
                .ok_or_else(|| damaged("bad security_counter"))?,
            threshold,
            keys,
            retired,
            installed: hashes(&v["installed"]).ok_or_else(|| damaged("bad installed"))?,
            in_progress: update("in_progress")?,
            pending: update("pending")?,
        })
    }
}

/// The check line that follows the JSON line `line`.
fn check_line(line: &str) -> String {
    format!("blake3 {}\n", blake3::hash(line.as_bytes()).to_hex())
}

/// A state file's bytes for the JSON object `v`: its line, then its check line.
fn sealed(v: &Value) -> Vec<u8> {
    let line = v.to_string();
    let check = check_line(&line);
    format!("{line}\n{check}").into_bytes()
}

/// A JSON array of 16-digit hex strings, as key ids.
fn key_ids(v: &Value) -> Option<Vec<KeyId>> {
    v.as_array()?
        .iter()
        .map(|s| crate::manifest::unhex::<KEY_ID_LEN>(s.as_str()?).map(KeyId))
        .collect()
}

/// A JSON array of 64-digit hex strings, as 32-byte values.
fn hashes(v: &Value) -> Option<Vec<[u8; 32]>> {
    v.as_array()?
        .iter()
        .map(|s| {
            let tagged = format!("x {}", s.as_str()?);
            fwdelta_format::key_file::parse_tagged(tagged.as_bytes(), "x")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            product: "acme-t300".into(),
            version: "4.1".into(),
            counter: 6,
            threshold: 1,
            keys: vec![ed25519_dalek::SigningKey::from_bytes(&[3; 32])
                .verifying_key()
                .to_bytes()],
            retired: vec![KeyId([0xAB; KEY_ID_LEN]), KeyId([1, 2, 3, 4, 5, 6, 7, 8])],
            installed: Vec::new(),
            in_progress: None,
            pending: None,
        }
    }

    /// `state`'s file with its JSON line changed by `edit` and the check
    /// line recomputed.
    fn rewritten(state: &State, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let bytes = state.encode();
        let line = std::str::from_utf8(&bytes).unwrap().lines().next().unwrap();
        let mut v: Value = serde_json::from_str(line).unwrap();
        edit(&mut v);
        sealed(&v)
    }

    #[test]
    fn retired_keys_round_trip_and_older_files_have_none() {
        let s = state();
        assert_eq!(State::decode(&s.encode()).unwrap(), s);
        let older = rewritten(&s, |v| {
            v.as_object_mut().unwrap().remove("retired_keys");
        });
        assert_eq!(State::decode(&older).unwrap().retired, Vec::new());
        for bad in [
            json!("00"),
            json!(["abcd"]),
            json!(["zz00000000000000"]),
            json!([7]),
            json!(vec!["0011223344556677"; MAX_RETIRED_KEYS + 1]),
        ] {
            let file = rewritten(&s, |v| v["retired_keys"] = bad.clone());
            assert!(
                matches!(State::decode(&file), Err(DeviceError::Damaged(_))),
                "{bad}"
            );
        }
    }
}
