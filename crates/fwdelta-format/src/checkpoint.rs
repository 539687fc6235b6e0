//! Resume checkpoints: the applier's whole state at a segment boundary, small
//! enough to write to a flash sector after every segment.

use crate::error::FormatError;
use crate::header::Header;
use crate::{check_of, u32_at, u64_at, CHECK_LEN, HASH_LEN};

/// Magic opening an encoded checkpoint (version 2 of the checkpoint record:
/// version 1, `FWDRSM01`, had no `new_hash` and is no longer read; a resume
/// from one starts over).
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"FWDRSM02";

/// Where an apply stood after its last durable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// BLAKE3 of the patch header: which patch this checkpoint belongs to.
    pub header_hash: [u8; HASH_LEN],
    /// Index of the next segment to apply.
    pub next_segment: u32,
    /// Patch offset where that segment starts (or the patch's length).
    pub patch_offset: u64,
    /// New-image bytes already produced and made durable.
    pub new_offset: u64,
    /// Hash-chain state after the last applied segment (see [`crate::chain`]).
    pub chain: [u8; HASH_LEN],
    /// BLAKE3 of the first `new_offset` new-image bytes: a resume checks the
    /// kept partial output against it before continuing.
    pub new_hash: [u8; HASH_LEN],
}

/// Offset of the check in an encoded checkpoint (the length it covers).
const CHECKED: usize = 8 + HASH_LEN + 4 + 8 + 8 + HASH_LEN + HASH_LEN;

impl Checkpoint {
    /// Encoded length: magic, fields, 8-byte check (132 bytes).
    pub const LEN: usize = CHECKED + CHECK_LEN;

    /// Serialise, with a check so a torn or stale write is detected.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&CHECKPOINT_MAGIC);
        b[8..40].copy_from_slice(&self.header_hash);
        b[40..44].copy_from_slice(&self.next_segment.to_le_bytes());
        b[44..52].copy_from_slice(&self.patch_offset.to_le_bytes());
        b[52..60].copy_from_slice(&self.new_offset.to_le_bytes());
        b[60..92].copy_from_slice(&self.chain);
        b[92..CHECKED].copy_from_slice(&self.new_hash);
        let check = check_of(&b[..CHECKED]);
        b[CHECKED..].copy_from_slice(&check);
        b
    }

    /// Parse and check an encoded checkpoint (its own integrity only; see
    /// [`Self::validate_for`] for consistency with a patch).
    pub fn decode(b: &[u8]) -> Result<Checkpoint, FormatError> {
        let bad = |detail: &str| FormatError::BadField {
            field: "checkpoint",
            detail: detail.into(),
        };
        if b.len() != Self::LEN {
            return Err(bad("wrong length"));
        }
        if b[..8] != CHECKPOINT_MAGIC {
            return Err(bad("not a checkpoint"));
        }
        if check_of(&b[..CHECKED]) != b[CHECKED..] {
            return Err(bad("checkpoint check mismatch"));
        }
        let mut header_hash = [0u8; HASH_LEN];
        header_hash.copy_from_slice(&b[8..40]);
        let mut chain = [0u8; HASH_LEN];
        chain.copy_from_slice(&b[60..92]);
        let mut new_hash = [0u8; HASH_LEN];
        new_hash.copy_from_slice(&b[92..CHECKED]);
        Ok(Checkpoint {
            header_hash,
            next_segment: u32_at(b, 40),
            patch_offset: u64_at(b, 44),
            new_offset: u64_at(b, 52),
            chain,
            new_hash,
        })
    }

    /// Check that this checkpoint can belong to the patch whose header is
    /// `header_bytes` (parsed as `header`).
    pub fn validate_for(&self, header_bytes: &[u8], header: &Header) -> Result<(), FormatError> {
        let bad = |detail: String| FormatError::BadField {
            field: "checkpoint",
            detail,
        };
        if *blake3::hash(header_bytes).as_bytes() != self.header_hash {
            return Err(bad("it belongs to another patch".into()));
        }
        if self.next_segment > header.segment_count
            || self.new_offset > header.new_len
            || self.patch_offset < header_bytes.len() as u64
        {
            return Err(bad(format!(
                "segment {} at patch offset {} / new offset {} does not fit this patch",
                self.next_segment, self.patch_offset, self.new_offset
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let c = Checkpoint {
            header_hash: [7; 32],
            next_segment: 3,
            patch_offset: 12345,
            new_offset: 999_999,
            chain: [9; 32],
            new_hash: [5; 32],
        };
        let b = c.encode();
        assert_eq!(Checkpoint::decode(&b), Ok(c));
        for i in 0..b.len() {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(Checkpoint::decode(&d).is_err(), "flip at {i} accepted");
        }
        assert!(Checkpoint::decode(&b[..50]).is_err());
        // A version-1 checkpoint (100 bytes, `FWDRSM01`) is not read.
        let mut v1 = b[..100].to_vec();
        v1[..8].copy_from_slice(b"FWDRSM01");
        let check = check_of(&v1[..92]);
        v1[92..].copy_from_slice(&check);
        assert!(Checkpoint::decode(&v1).is_err());
    }
}

/// Magic opening an encoded in-place checkpoint.
pub const IN_PLACE_MAGIC: [u8; 8] = *b"FWDIPL01";

/// Where an in-place apply stood: written only once the patch, the old image
/// and the dry run have all been verified (its existence means the region may
/// already be partly rewritten), then after each cell is staged and after it
/// is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlaceCheckpoint {
    /// BLAKE3 of the patch header.
    pub header_hash: [u8; HASH_LEN],
    /// Index (in patch order) of the next segment to decode.
    pub next_segment: u32,
    /// Patch offset of that segment (or the patch's length).
    pub patch_offset: u64,
    /// Whether segment `next_segment`'s cell is staged in the journal, to be
    /// (re)written from there.
    pub staged: bool,
    /// Staged cell: new-image offset.
    pub cell_offset: u64,
    /// Staged cell: length.
    pub cell_len: u64,
    /// Staged cell: BLAKE3 of its bytes in the journal.
    pub cell_hash: [u8; HASH_LEN],
}

impl InPlaceCheckpoint {
    /// Encoded length.
    pub const LEN: usize = 8 + HASH_LEN + 4 + 8 + 1 + 8 + 8 + HASH_LEN + CHECK_LEN;

    /// Serialise, with a check.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&IN_PLACE_MAGIC);
        b[8..40].copy_from_slice(&self.header_hash);
        b[40..44].copy_from_slice(&self.next_segment.to_le_bytes());
        b[44..52].copy_from_slice(&self.patch_offset.to_le_bytes());
        b[52] = u8::from(self.staged);
        b[53..61].copy_from_slice(&self.cell_offset.to_le_bytes());
        b[61..69].copy_from_slice(&self.cell_len.to_le_bytes());
        b[69..101].copy_from_slice(&self.cell_hash);
        let check = check_of(&b[..101]);
        b[101..].copy_from_slice(&check);
        b
    }

    /// Parse and check.
    pub fn decode(b: &[u8]) -> Result<InPlaceCheckpoint, FormatError> {
        let bad = |detail: &str| FormatError::BadField {
            field: "in-place checkpoint",
            detail: detail.into(),
        };
        if b.len() != Self::LEN || b[..8] != IN_PLACE_MAGIC {
            return Err(bad("not an in-place checkpoint"));
        }
        if check_of(&b[..101]) != b[101..] || b[52] > 1 {
            return Err(bad("checkpoint check mismatch"));
        }
        let mut header_hash = [0u8; HASH_LEN];
        header_hash.copy_from_slice(&b[8..40]);
        let mut cell_hash = [0u8; HASH_LEN];
        cell_hash.copy_from_slice(&b[69..101]);
        Ok(InPlaceCheckpoint {
            header_hash,
            next_segment: u32_at(b, 40),
            patch_offset: u64_at(b, 44),
            staged: b[52] == 1,
            cell_offset: u64_at(b, 53),
            cell_len: u64_at(b, 61),
            cell_hash,
        })
    }
}

#[cfg(test)]
mod in_place_tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let c = InPlaceCheckpoint {
            header_hash: [3; 32],
            next_segment: 7,
            patch_offset: 4444,
            staged: true,
            cell_offset: 65536,
            cell_len: 4096,
            cell_hash: [8; 32],
        };
        let b = c.encode();
        assert_eq!(InPlaceCheckpoint::decode(&b), Ok(c));
        for i in 0..b.len() {
            let mut d = b;
            d[i] ^= 0x02;
            assert!(
                InPlaceCheckpoint::decode(&d).is_err(),
                "flip at {i} accepted"
            );
        }
    }
}
