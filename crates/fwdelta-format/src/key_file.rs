//! Text form of public keys: one line, `fwdelta-ed25519-public-key-v1`, a
//! space and 64 hex digits. What `fwdelta keygen` writes to NAME.pub and
//! what a terminal's trust store holds.

use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::signature::{is_valid_public_key, PUBLIC_KEY_LEN};

/// First word of a public key file.
pub const PUBLIC_KEY_TAG: &str = "fwdelta-ed25519-public-key-v1";

/// The text of a public key file (with its newline).
pub fn encode_public_key(key: &[u8; PUBLIC_KEY_LEN]) -> String {
    format!("{PUBLIC_KEY_TAG} {}\n", hex(key))
}

/// Parse a public key file: the tag, one space, 64 hex digits, an optional
/// newline; the key must be a valid Ed25519 point. Cost: no allocation.
pub fn parse_public_key(text: &[u8]) -> Result<[u8; PUBLIC_KEY_LEN], FormatError> {
    parse_tagged(text, PUBLIC_KEY_TAG)
        .filter(is_valid_public_key)
        .ok_or(FormatError::BadKeyFile(
            "expected 'fwdelta-ed25519-public-key-v1' and 64 hex digits of a valid key",
        ))
}

/// `tag`, a space, 64 hex digits and an optional newline, as 32 bytes.
pub fn parse_tagged(text: &[u8], tag: &str) -> Option<[u8; 32]> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let rest = text.strip_prefix(tag.as_bytes())?.strip_prefix(b" ")?;
    if rest.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(rest.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        // the Ed25519 base point's encoding is a valid key
        let mut key = [0u8; 32];
        key[0] = 0x58;
        key[1..].fill(0x66);
        let text = encode_public_key(&key);
        assert_eq!(parse_public_key(text.as_bytes()), Ok(key));
        assert_eq!(parse_public_key(text.trim_end().as_bytes()), Ok(key));
        for cut in 0..text.len() - 1 {
            assert!(
                parse_public_key(&text.as_bytes()[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut bad = text.clone().into_bytes();
        bad[PUBLIC_KEY_TAG.len() + 3] = b'g';
        assert!(parse_public_key(&bad).is_err());
        assert!(parse_public_key(format!("{text}x").as_bytes()).is_err());
        // all-zero bytes decode to a small-order point: refused
        assert!(parse_public_key(encode_public_key(&[0; 32]).as_bytes()).is_err());
    }
}
