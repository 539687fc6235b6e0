//! Resume checkpoints: the applier's whole state at a segment boundary, small
//! enough to write to a flash sector after every segment.

use crate::error::FormatError;
use crate::header::Header;
#[allow(unused_imports)]
use crate::prelude::*;
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

/// Magic opening an in-place journal slot record: version 2 of the in-place
/// checkpoint (version 1, `FWDIPL01`, kept one copy and is not read).
pub const IN_PLACE_MAGIC: [u8; 8] = *b"FWDIPL02";

/// Where an in-place apply stood: written only once the patch, the old image
/// and the dry run have all been verified (its existence means the region may
/// already be partly rewritten), then twice per cell, with the cell staged,
/// before the cell is written over the image. Each record goes to one of two
/// journal slots (A/B, see [`pick_slot`]), so a torn or damaged copy falls
/// back to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlaceCheckpoint {
    /// Write sequence number: every record written gets one more than the
    /// highest intact one; the highest usable one wins.
    pub sequence: u64,
    /// BLAKE3 of the patch header.
    pub header_hash: [u8; HASH_LEN],
    /// Index (in patch order) of the next segment to decode.
    pub next_segment: u32,
    /// Patch offset of that segment (or the patch's length).
    pub patch_offset: u64,
    /// Whether segment `next_segment`'s cell follows this record in its slot,
    /// to be (re)written from there.
    pub staged: bool,
    /// Staged cell: new-image offset (0 unless staged).
    pub cell_offset: u64,
    /// Staged cell: length (0 unless staged).
    pub cell_len: u64,
    /// Staged cell: BLAKE3 of its bytes (zero unless staged).
    pub cell_hash: [u8; HASH_LEN],
}

impl InPlaceCheckpoint {
    /// Encoded length of the record's fixed part (the staged cell follows it).
    pub const LEN: usize = 8 + 8 + HASH_LEN + 4 + 8 + 1 + 8 + 8 + HASH_LEN + CHECK_LEN;

    /// Serialise the fixed part, with a check. Costs one BLAKE3 of 109 bytes.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&IN_PLACE_MAGIC);
        b[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        b[16..48].copy_from_slice(&self.header_hash);
        b[48..52].copy_from_slice(&self.next_segment.to_le_bytes());
        b[52..60].copy_from_slice(&self.patch_offset.to_le_bytes());
        b[60] = u8::from(self.staged);
        b[61..69].copy_from_slice(&self.cell_offset.to_le_bytes());
        b[69..77].copy_from_slice(&self.cell_len.to_le_bytes());
        b[77..109].copy_from_slice(&self.cell_hash);
        let check = check_of(&b[..109]);
        b[109..].copy_from_slice(&check);
        b
    }

    /// Parse and check the fixed part (exactly [`Self::LEN`] bytes). Refuses
    /// a bad magic or check, a staged flag other than 0/1, and an unstaged
    /// record with cell fields set. Costs one BLAKE3 of 109 bytes.
    pub fn decode(b: &[u8]) -> Result<InPlaceCheckpoint, FormatError> {
        let bad = |detail: &str| FormatError::BadField {
            field: "in-place checkpoint",
            detail: detail.into(),
        };
        if b.len() != Self::LEN || b[..8] != IN_PLACE_MAGIC {
            return Err(bad("not an in-place checkpoint"));
        }
        if check_of(&b[..109]) != b[109..] || b[60] > 1 {
            return Err(bad("checkpoint check mismatch"));
        }
        let mut header_hash = [0u8; HASH_LEN];
        header_hash.copy_from_slice(&b[16..48]);
        let mut cell_hash = [0u8; HASH_LEN];
        cell_hash.copy_from_slice(&b[77..109]);
        let cp = InPlaceCheckpoint {
            sequence: u64_at(b, 8),
            header_hash,
            next_segment: u32_at(b, 48),
            patch_offset: u64_at(b, 52),
            staged: b[60] == 1,
            cell_offset: u64_at(b, 61),
            cell_len: u64_at(b, 69),
            cell_hash,
        };
        if !cp.staged && (cp.cell_offset != 0 || cp.cell_len != 0 || cp.cell_hash != [0; 32]) {
            return Err(bad("an unstaged checkpoint names a cell"));
        }
        Ok(cp)
    }

    /// The fixed part of a journal slot record carrying `cell` (when
    /// staged): `cell_len` and `cell_hash` are set from it. The slot holds
    /// these bytes followed by the cell's. Costs one BLAKE3 of the cell.
    pub fn encode_for(&self, cell: &[u8]) -> [u8; Self::LEN] {
        let mut cp = *self;
        if cp.staged {
            cp.cell_len = cell.len() as u64;
            cp.cell_hash = *blake3::hash(cell).as_bytes();
        }
        cp.encode()
    }

    /// Parse a journal slot record (see [`Self::encode_for`]). An intact
    /// fixed part whose staged cell is short, long or fails its hash is
    /// [`Slot::CellLost`]: it still says how far the update had come. Costs
    /// one BLAKE3 of the slot's bytes.
    pub fn decode_slot(b: &[u8]) -> Result<Slot<'_>, FormatError> {
        let cp = Self::decode(b.get(..Self::LEN).unwrap_or(b))?;
        let cell = &b[Self::LEN..];
        let fits = u64::try_from(cell.len()).is_ok_and(|n| n == cp.cell_len);
        if fits && (!cp.staged || *blake3::hash(cell).as_bytes() == cp.cell_hash) {
            Ok(Slot::Usable(cp, cell))
        } else {
            Ok(Slot::CellLost(cp))
        }
    }
}

/// A journal slot record that passed its fixed part's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot<'a> {
    /// Intact, with its staged cell's bytes (empty unless staged).
    Usable(InPlaceCheckpoint, &'a [u8]),
    /// The fixed part is intact but the staged cell is damaged or torn.
    CellLost(InPlaceCheckpoint),
}

/// What two journal slots hold, as [`pick_slot`] judges them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPick<'a> {
    /// The usable record with the highest sequence number, its slot (0 or
    /// 1) and its staged cell: what a resume starts from.
    pub best: Option<(usize, InPlaceCheckpoint, &'a [u8])>,
    /// A record with an intact fixed part but a lost cell, newer than
    /// `best`: how far the update had come when nothing usable is left.
    pub lost: Option<InPlaceCheckpoint>,
    /// Whether any slot held bytes at all (valid or not).
    pub any: bool,
    /// The slot the next record must go to: the one not holding `best`.
    pub next_slot: usize,
    /// The sequence number the next record must carry: one more than the
    /// highest intact fixed part (1 if none).
    pub next_sequence: u64,
}

/// Judge the two journal slots `slots` (an absent slot is empty): the newest
/// usable copy wins, a damaged or torn one is ignored, and the next write is
/// aimed at the other slot, so it can never destroy the copy a resume needs.
/// Costs one BLAKE3 over each slot's bytes.
pub fn pick_slot<'a>(slots: [&'a [u8]; 2]) -> SlotPick<'a> {
    let mut pick = SlotPick {
        best: None,
        lost: None,
        any: false,
        next_slot: 0,
        next_sequence: 1,
    };
    for (i, bytes) in slots.iter().enumerate() {
        pick.any |= !bytes.is_empty();
        let (cp, cell) = match InPlaceCheckpoint::decode_slot(bytes) {
            Ok(Slot::Usable(cp, cell)) => (cp, Some(cell)),
            Ok(Slot::CellLost(cp)) => (cp, None),
            Err(_) => continue,
        };
        pick.next_sequence = pick.next_sequence.max(cp.sequence.saturating_add(1));
        match cell {
            Some(cell) if pick.best.is_none_or(|(_, b, _)| cp.sequence > b.sequence) => {
                pick.best = Some((i, cp, cell));
            }
            Some(_) => {}
            None if pick.lost.is_none_or(|l| cp.sequence > l.sequence) => pick.lost = Some(cp),
            None => {}
        }
    }
    if let (Some((_, b, _)), Some(l)) = (pick.best, pick.lost) {
        if l.sequence <= b.sequence {
            pick.lost = None;
        }
    }
    pick.next_slot = pick.best.map_or(0, |(i, _, _)| 1 - i);
    pick
}

#[cfg(test)]
mod in_place_tests {
    use super::*;

    fn sample(sequence: u64, staged: bool) -> InPlaceCheckpoint {
        InPlaceCheckpoint {
            sequence,
            header_hash: [3; 32],
            next_segment: 7,
            patch_offset: 4444,
            staged,
            cell_offset: if staged { 65536 } else { 0 },
            cell_len: 0,
            cell_hash: [0; 32],
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let mut c = sample(9, true);
        c.cell_len = 4096;
        c.cell_hash = [8; 32];
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
        // an unstaged record may not name a cell
        let mut u = sample(1, false);
        u.cell_len = 5;
        assert!(InPlaceCheckpoint::decode(&u.encode()).is_err());
    }

    #[test]
    fn slots_newest_usable_wins_and_writes_go_to_the_other() {
        let cell = [0x5au8; 300];
        let a = [&sample(4, true).encode_for(&cell)[..], &cell].concat();
        let b = [&sample(5, true).encode_for(&cell)[..], &cell].concat();
        let p = pick_slot([&a, &b]);
        assert_eq!(
            p.best.map(|(i, c, x)| (i, c.sequence, x.len())),
            Some((1, 5, 300))
        );
        assert_eq!((p.next_slot, p.next_sequence, p.lost), (0, 6, None));
        // the newest copy's cell torn: the older wins, the write goes over the torn one
        let torn = &b[..b.len() - 1];
        let p = pick_slot([&a, torn]);
        assert_eq!(p.best.map(|(i, c, _)| (i, c.sequence)), Some((0, 4)));
        assert_eq!((p.next_slot, p.next_sequence), (1, 6));
        assert_eq!(p.lost.map(|l| l.sequence), Some(5));
        // every single flipped byte of either copy falls back to the other
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x80;
            let p = pick_slot([&a, &d]);
            assert_eq!(
                p.best.map(|(s, c, _)| (s, c.sequence)),
                Some((0, 4)),
                "flip {i}"
            );
        }
        // nothing valid
        let p = pick_slot([b"junk", &[]]);
        assert!(p.best.is_none() && p.lost.is_none() && p.any);
        assert_eq!((p.next_slot, p.next_sequence), (0, 1));
    }
}
