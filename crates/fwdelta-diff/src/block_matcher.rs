//! The block matcher: long stretches the new image shares with the old one,
//! found by hashing whole blocks, before any suffix sort.
//!
//! Every [`BLOCK`]-aligned block of the old image goes into a small hash
//! table; a rolling hash walks the new image a byte at a time and, where a
//! block's hash turns up, the bytes are compared and the match is widened
//! both ways as far as the bytes agree. Every exact match of at least
//! `2 * BLOCK - 1` bytes contains an aligned old block, so none of those is
//! missed. Matches at the same shift with a short gap between them are
//! joined into one approximate match, as bsdiff's scan would.
//!
//! When such matches cover most of the new image (near-identical pairs:
//! a rebuilt image, a patched bootloader), the match finder sorts and scans
//! only what they leave (see [`crate::matcher::find_scripts`]). That is
//! HDiffPatch's idea (its default block match before the suffix array);
//! the code is ours.

/// Shifts of recent matches tried before a repeated block's first copy.
const RECENT_SHIFTS: usize = 4;

/// Bytes per hashed old block.
pub const BLOCK: usize = 1024;

/// Matches at the same shift whose gap in the new image is at most this
/// many bytes are joined (the gap becomes difference bytes). On the public
/// corpus 256 made the smallest patches of 0, 256 and 4096, and joining
/// longer gaps where most of their bytes agree (bsdiff's widening rule)
/// made them larger: a long gap is better scanned.
pub const JOIN_GAP: usize = 256;

/// One match: new bytes `new..new + len` come from old bytes `old..` (with
/// differences only inside joined gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cover {
    /// Old offset.
    pub old: usize,
    /// New offset.
    pub new: usize,
    /// Length.
    pub len: usize,
}

/// Multiplier of the polynomial hash (odd, so every power is invertible
/// mod 2^64 and the hash mixes all bytes).
const P: u64 = 0x100_0000_01b3;

fn block_hash(block: &[u8]) -> u64 {
    block.iter().fold(0u64, |h, &b| {
        h.wrapping_mul(P).wrapping_add(u64::from(b) + 1)
    })
}

/// The long matches of `new` in `old`, in new order, not overlapping in the
/// new image.
///
/// Cost: one pass over `old` to hash its blocks (a table of 32 bytes per
/// block, in cache for images of tens of MB), one rolling-hash pass over
/// `new`, and a comparison of every match found.
pub fn find_covers(old: &[u8], new: &[u8]) -> Vec<Cover> {
    let blocks = old.len() / BLOCK;
    if blocks == 0 || new.len() < BLOCK {
        return Vec::new();
    }
    let slots = (blocks * 2).next_power_of_two();
    let mask = slots as u64 - 1;
    // (hash, block index + 1) per slot (index 0: empty); of blocks with one
    // hash (repeated fill, say) only the first is kept, so a lookup compares
    // bytes once per distinct hash.
    let mut table = vec![(0u64, 0u32); slots];
    let slot_of =
        |h: u64| ((h ^ h >> 29).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40 & mask) as usize;
    for (k, block) in old.chunks_exact(BLOCK).enumerate() {
        let h = block_hash(block);
        let mut s = slot_of(h);
        while table[s].1 != 0 && table[s].0 != h {
            s = (s + 1) & mask as usize;
        }
        if table[s].1 == 0 {
            table[s] = (h, k as u32 + 1);
        }
    }
    let top = (0..BLOCK - 1).fold(1u64, |p, _| p.wrapping_mul(P));
    let mut covers: Vec<Cover> = Vec::new();
    let mut at = 0usize;
    let mut h = block_hash(&new[..BLOCK]);
    let mut floor = 0usize;
    // The shifts of the last few matches, newest first.
    let mut recent = [isize::MIN; RECENT_SHIFTS];
    while at + BLOCK <= new.len() {
        let mut found = None;
        let mut s = slot_of(h);
        while table[s].1 != 0 {
            if table[s].0 == h {
                let o = (table[s].1 - 1) as usize * BLOCK;
                if old[o..o + BLOCK] == new[at..at + BLOCK] {
                    found = Some(o);
                }
                break;
            }
            s = (s + 1) & mask as usize;
        }
        // Repeated content (fill, tables, common code) hashes to its first
        // old block: where a recent match's shift also gives these bytes,
        // the one whose match runs furthest wins (a recent shift wins a tie).
        if let Some(hit) = found {
            // Bytes from `at` on that agree with old from `o` on.
            let reach = |o: usize| {
                old[o..]
                    .iter()
                    .zip(&new[at..])
                    .take_while(|(a, b)| a == b)
                    .count()
            };
            let (mut reach_len, mut o) = (reach(hit), hit);
            for &shift in &recent {
                let Some(Ok(r)) = (at as isize).checked_sub(shift).map(usize::try_from) else {
                    continue;
                };
                if r != hit && old.get(r..r + BLOCK) == Some(&new[at..at + BLOCK]) {
                    let len = reach(r);
                    if len >= reach_len {
                        (reach_len, o) = (len, r);
                    }
                }
            }
            let back = old[..o]
                .iter()
                .rev()
                .zip(new[floor..at].iter().rev())
                .take_while(|(a, b)| a == b)
                .count();
            let cover = Cover {
                old: o - back,
                new: at - back,
                len: back + reach_len,
            };
            join_or_push(&mut covers, cover);
            let shift = cover.new as isize - cover.old as isize;
            if !recent.contains(&shift) {
                recent.rotate_right(1);
                recent[0] = shift;
            }
            at = cover.new + cover.len;
            floor = at;
            if at + BLOCK > new.len() {
                break;
            }
            h = block_hash(&new[at..at + BLOCK]);
            continue;
        }
        if at + BLOCK == new.len() {
            break;
        }
        h = h
            .wrapping_sub((u64::from(new[at]) + 1).wrapping_mul(top))
            .wrapping_mul(P)
            .wrapping_add(u64::from(new[at + BLOCK]) + 1);
        at += 1;
    }
    covers
}

/// Append `cover`, joining it to the last one when both are at the same
/// shift with at most [`JOIN_GAP`] new bytes between them.
fn join_or_push(covers: &mut Vec<Cover>, cover: Cover) {
    if let Some(last) = covers.last_mut() {
        let gap = cover.new - (last.new + last.len);
        let same_shift =
            cover.new as isize - cover.old as isize == last.new as isize - last.old as isize;
        if same_shift && gap <= JOIN_GAP {
            last.len = cover.new + cover.len - last.new;
            return;
        }
    }
    covers.push(cover);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gram_filter::tests::noise;

    fn check(old: &[u8], new: &[u8], covers: &[Cover]) {
        let mut end = 0;
        for c in covers {
            assert!(c.new >= end, "{covers:?} overlap");
            assert!(c.old + c.len <= old.len() && c.new + c.len <= new.len());
            end = c.new + c.len;
        }
    }

    #[test]
    fn finds_moved_blocks_and_joins_small_edits() {
        let old = noise(100_000, 3);
        // old[40k..70k] with two bytes changed, fresh bytes, old[0..20k].
        let mut new = old[40_000..70_000].to_vec();
        new[10_000] ^= 1;
        new[10_100] ^= 1;
        new.extend(noise(5_000, 77));
        new.extend_from_slice(&old[..20_000]);
        let covers = find_covers(&old, &new);
        check(&old, &new, &covers);
        assert_eq!(
            covers,
            [
                Cover {
                    old: 40_000,
                    new: 0,
                    len: 30_000
                },
                Cover {
                    old: 0,
                    new: 35_000,
                    len: 20_000
                }
            ]
        );
    }

    #[test]
    fn repeated_blocks_follow_the_current_shift() {
        // A 1208-byte record repeated: once early in old, then 30 times
        // after a unique stretch X. New is X and the 30 records: one match
        // at X's shift, not one per record from the first copy.
        let unit = noise(1_208, 5);
        let x = noise(6_000, 9);
        let mut old = noise(5_000, 3);
        old.extend_from_slice(&unit);
        old.extend(noise(7_000, 11));
        let x_at = old.len();
        old.extend_from_slice(&x);
        for _ in 0..30 {
            old.extend_from_slice(&unit);
        }
        let mut new = old[x_at..].to_vec();
        // A changed byte in the first record ends the first match there.
        new[x.len() + 10] ^= 1;
        let covers = find_covers(&old, &new);
        assert_eq!(
            covers,
            [Cover {
                old: x_at,
                new: 0,
                len: new.len()
            }]
        );
    }

    #[test]
    fn nothing_in_common_and_tiny_inputs() {
        let old = noise(50_000, 3);
        assert!(find_covers(&old, &noise(50_000, 9)).is_empty());
        assert!(find_covers(&old, &old[..BLOCK - 1]).is_empty());
        assert!(find_covers(&old[..BLOCK - 1], &old).is_empty());
        // A match of exactly one aligned block is found.
        let covers = find_covers(&old, &old[BLOCK..2 * BLOCK]);
        assert_eq!(
            covers,
            [Cover {
                old: BLOCK,
                new: 0,
                len: BLOCK
            }]
        );
    }

    #[test]
    fn repeated_blocks_cover_without_overlap() {
        let unit = noise(3 * BLOCK, 5);
        let old: Vec<u8> = unit.iter().cycle().take(40 * BLOCK).copied().collect();
        let new: Vec<u8> = unit
            .iter()
            .cycle()
            .skip(17)
            .take(35 * BLOCK)
            .copied()
            .collect();
        let covers = find_covers(&old, &new);
        check(&old, &new, &covers);
        let covered: usize = covers.iter().map(|c| c.len).sum();
        assert!(
            covered + 2 * BLOCK >= new.len(),
            "{covered} of {}",
            new.len()
        );
    }
}
