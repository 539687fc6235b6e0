//! The release statement of a signed patch: which product it is for, the
//! version it installs, its security counter and when it expires. Carried in
//! the critical header extension [`EXT_RELEASE`], so the signature over the
//! header commits to it (see `docs/FORMAT.md`, "Signed patches").
//!
//! Wire form of the extension value: `product_len u8`, product bytes,
//! `version_len u8`, version bytes, `security_counter` varint, `expires`
//! varint (Unix seconds, 0 = never). Nothing may follow.

use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::varint;

/// Critical header extension carrying a [`Release`]; present exactly when the
/// header's signed flag is set.
pub const EXT_RELEASE: u16 = 0x8004;

/// Longest product id and version string, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// What a signed patch installs, and for whom. Every field is covered by the
/// patch's signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The product the patch is for (e.g. `acme-t300`): ASCII letters,
    /// digits and `.`, `_`, `-`, 1 to [`MAX_NAME_LEN`] bytes. A terminal
    /// refuses another product's patch.
    pub product: String,
    /// The version the new image is, for people (e.g. `4.2.0-rc1`): printable
    /// ASCII without spaces, 1 to [`MAX_NAME_LEN`] bytes.
    pub version: String,
    /// Security counter of the new image: only ever grows. A terminal refuses
    /// a patch whose counter is below the one it stores (anti-rollback).
    pub security_counter: u64,
    /// Unix time (seconds) after which the patch must not be installed; 0
    /// means it never expires.
    pub expires: u64,
}

impl Release {
    /// Check the fields against the wire rules (what [`Self::decode`]
    /// enforces), so a writer refuses what a reader would.
    pub fn validate(&self) -> Result<(), FormatError> {
        check_name("product", &self.product, is_product_byte)?;
        check_name("version", &self.version, is_version_byte)
    }

    /// The extension value. Call [`Self::validate`] first: a field that
    /// breaks the rules is encoded anyway and refused by readers.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        for s in [&self.product, &self.version] {
            v.push(s.len().min(255) as u8);
            v.extend_from_slice(s.as_bytes());
        }
        varint::put_u64(&mut v, self.security_counter);
        varint::put_u64(&mut v, self.expires);
        v
    }

    /// Length of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        2 + self.product.len()
            + self.version.len()
            + varint::len_u64(self.security_counter)
            + varint::len_u64(self.expires)
    }

    /// Parse and validate an extension value. Cost: no allocation beyond the
    /// two strings (at most [`MAX_NAME_LEN`] bytes each).
    pub fn decode(mut value: &[u8]) -> Result<Release, FormatError> {
        let product = take_name(&mut value, "product", is_product_byte)?;
        let version = take_name(&mut value, "version", is_version_byte)?;
        let mut num = |field: &'static str| -> Result<u64, FormatError> {
            match varint::get_u64(value) {
                Ok(Some((v, n))) => {
                    value = &value[n..];
                    Ok(v)
                }
                _ => Err(bad(field, "missing or malformed varint")),
            }
        };
        let security_counter = num("security counter")?;
        let expires = num("expiry")?;
        if !value.is_empty() {
            return Err(bad("release statement", "bytes after its last field"));
        }
        Ok(Release {
            product,
            version,
            security_counter,
            expires,
        })
    }
}

/// Whether `b` may appear in a product id.
pub fn is_product_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Whether `b` may appear in a version string.
pub fn is_version_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

fn bad(field: &'static str, detail: &str) -> FormatError {
    FormatError::BadField {
        field,
        detail: detail.into(),
    }
}

fn check_name(field: &'static str, s: &str, ok: fn(u8) -> bool) -> Result<(), FormatError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(bad(field, "must be 1 to 64 bytes long"));
    }
    if !s.bytes().all(ok) {
        return Err(bad(
            field,
            "has a character outside ASCII letters, digits and . _ - (versions: printable ASCII)",
        ));
    }
    Ok(())
}

fn take_name(
    value: &mut &[u8],
    field: &'static str,
    ok: fn(u8) -> bool,
) -> Result<String, FormatError> {
    let (&len, rest) = value.split_first().ok_or_else(|| bad(field, "missing"))?;
    let bytes = rest
        .get(..usize::from(len))
        .ok_or_else(|| bad(field, "runs past the extension"))?;
    let s = core::str::from_utf8(bytes).map_err(|_| bad(field, "is not ASCII"))?;
    check_name(field, s, ok)?;
    *value = &rest[usize::from(len)..];
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        Release {
            product: "acme-t300".into(),
            version: "4.2.0-rc1".into(),
            security_counter: 300,
            expires: 1_900_000_000,
        }
    }

    #[test]
    fn round_trips_and_says_how_long_it_is() {
        let r = release();
        let v = r.encode();
        assert_eq!(v.len(), r.encoded_len());
        assert_eq!(Release::decode(&v).unwrap(), r);
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let v = release().encode();
        for cut in 0..v.len() {
            assert!(Release::decode(&v[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = v.clone();
        long.push(0);
        assert!(Release::decode(&long).is_err());
    }

    #[test]
    fn names_outside_the_rules_are_refused_by_writer_and_reader() {
        for (product, version) in [
            ("", "1"),
            ("acme t300", "1"),
            ("acme/t300", "1"),
            ("acme", ""),
            ("acme", "1 0"),
            ("acme", "1\n"),
        ] {
            let r = Release {
                product: product.into(),
                version: version.into(),
                ..release()
            };
            assert!(r.validate().is_err(), "{product:?} {version:?}");
            assert!(
                Release::decode(&r.encode()).is_err(),
                "{product:?} {version:?}"
            );
        }
        let long = Release {
            product: "p".repeat(MAX_NAME_LEN + 1),
            ..release()
        };
        assert!(long.validate().is_err());
        assert!(Release::decode(&long.encode()).is_err());
    }
}
