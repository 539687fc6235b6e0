//! What a terminal accepts: whose signatures count and how many, which
//! product it is, the lowest security counter it still installs, the time
//! (for expiry) and which patches it already installed. The applier checks a
//! patch against its policy right after the header and the signature section,
//! before it reads the old image or decodes a payload byte.

use crate::error::ApplyError;
#[allow(unused_imports)]
use crate::prelude::*;
use fwdelta_format::signature::{self, KeyId, SignatureSection, PUBLIC_KEY_LEN};
use fwdelta_format::{Header, Release};

/// A terminal's update policy. With no trusted keys every patch is taken as
/// authentic (signatures are not checked) and only the product, counter,
/// expiry and replay rules apply, to the release statement a signed patch
/// carries.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TrustPolicy {
    /// Public keys whose signatures count.
    pub keys: Vec<[u8; PUBLIC_KEY_LEN]>,
    /// How many distinct trusted keys must have signed (at least 1 when
    /// `keys` is not empty).
    pub threshold: usize,
    /// This terminal's product id: a patch for another is refused.
    pub product: Option<String>,
    /// The security counter the terminal stores: a patch below it is refused.
    pub min_counter: u64,
    /// The time now (Unix seconds), for expiry; `None` skips the check.
    pub now: Option<u64>,
    /// Signed messages of patches already installed: replays are refused.
    pub installed: Vec<[u8; 32]>,
}

/// What the policy established about an accepted patch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict {
    /// The release statement (signed patches).
    pub release: Option<Release>,
    /// Trusted keys whose signatures verified.
    pub signed_by: Vec<KeyId>,
    /// Key ids the patch's signatures name (verified or not).
    pub signers: Vec<KeyId>,
    /// The signed message, the patch's identity (signed patches).
    pub message: Option<[u8; 32]>,
}

impl TrustPolicy {
    /// A policy trusting `keys`, of which one signature suffices.
    pub fn trusting(keys: Vec<[u8; PUBLIC_KEY_LEN]>) -> TrustPolicy {
        TrustPolicy {
            keys,
            threshold: 1,
            ..TrustPolicy::default()
        }
    }

    /// Check a patch (`header`, whose bytes are `header_bytes`, and the
    /// signature section of a signed one) against this policy. Order: the
    /// signatures first (a forgery is refused as one, whatever it claims),
    /// then product, counter, expiry and replay. Cost: one hash over the
    /// header and table, one signature verification per signature that
    /// names a trusted key.
    pub fn check(
        &self,
        header: &Header,
        header_bytes: &[u8],
        section: Option<&SignatureSection>,
    ) -> Result<Verdict, ApplyError> {
        self.judge(header, header_bytes, section, true)
    }

    /// [`Self::check`] with expiry set aside, for an applier that finishes
    /// an interrupted update of this patch whatever the time (its expiry
    /// was judged when it began, and refusing would leave an image that is
    /// neither version): the verdict on every other rule, and the error
    /// `check` gives if that was expiry alone (`None`: not expired). Costs
    /// up to two [`Self::check`]s (the second only for an expired patch).
    pub fn check_deferring_expiry(
        &self,
        header: &Header,
        header_bytes: &[u8],
        section: Option<&SignatureSection>,
    ) -> Result<(Verdict, Option<ApplyError>), ApplyError> {
        match self.check(header, header_bytes, section) {
            Err(e @ ApplyError::Expired { .. }) => {
                Ok((self.judge(header, header_bytes, section, false)?, Some(e)))
            }
            judged => judged.map(|v| (v, None)),
        }
    }

    fn judge(
        &self,
        header: &Header,
        header_bytes: &[u8],
        section: Option<&SignatureSection>,
        expiry: bool,
    ) -> Result<Verdict, ApplyError> {
        let mut verdict = Verdict {
            release: header.release.clone(),
            ..Verdict::default()
        };
        if let Some(section) = section {
            let message = section.message(header_bytes);
            verdict.message = Some(message);
            verdict.signers = section.signatures.iter().map(|s| s.key_id).collect();
            for s in &section.signatures {
                let key = self
                    .keys
                    .iter()
                    .find(|k| KeyId::of(k) == s.key_id && !verdict.signed_by.contains(&s.key_id));
                if let Some(key) = key {
                    if signature::verify(key, &message, &s.signature) {
                        verdict.signed_by.push(s.key_id);
                    }
                }
            }
        }
        if !self.keys.is_empty() {
            let threshold = self.threshold.max(1);
            if section.is_none() {
                return Err(ApplyError::Unsigned);
            }
            if verdict.signed_by.len() < threshold {
                return Err(ApplyError::NotAuthentic {
                    verified: verdict.signed_by.len(),
                    threshold,
                    signers: verdict.signers.clone(),
                });
            }
        }
        let Some(release) = &header.release else {
            return Ok(verdict);
        };
        if let Some(product) = &self.product {
            if *product != release.product {
                return Err(ApplyError::WrongProduct {
                    patch: release.product.clone(),
                    device: product.clone(),
                });
            }
        }
        if release.security_counter < self.min_counter {
            return Err(ApplyError::Downgrade {
                patch: release.security_counter,
                device: self.min_counter,
                version: release.version.clone(),
            });
        }
        if let Some(now) = self.now.filter(|_| expiry) {
            if release.expires != 0 && now > release.expires {
                return Err(ApplyError::Expired {
                    expires: release.expires,
                    now,
                });
            }
        }
        if verdict.message.is_some_and(|m| self.installed.contains(&m)) {
            return Err(ApplyError::Replay {
                version: release.version.clone(),
            });
        }
        Ok(verdict)
    }
}
