//! The literal filter: branch and address immediates in newly written code,
//! stored as absolute targets.
//!
//! Literal bytes are new code the old image has no match for. In it, a call
//! encodes its target relative to its own position, so a function called from
//! a hundred places gives a hundred different instruction words, and the
//! compressor sees noise. Rewritten as absolute targets, the calls to one
//! function are one repeated word (the idea of xz's BCJ filters). On the public
//! corpus's AArch64 pair the literal stream compressed 9.5% smaller with BL
//! and ADRP rewritten.
//!
//! The rule, the same on both sides: for a record's literal run that fills
//! new-image bytes `[start, end)`, every 4-byte little-endian word at a
//! new-image offset `w` with `w % 4 == 0`, `start <= w` and `w + 4 <= end` is
//! stored as [`to_stored`]`(word, w)`; the applier restores it with
//! [`from_stored`]. Bytes of words that straddle the run's edges are stored
//! as they are. Both functions are bijections on `u32` for every position,
//! so any stored bytes decode to something, and a wrong decode is caught by
//! the new image's hash like any other corruption.
//!
//! Defined for [`Arch::Aarch64`] only (BL and ADRP); other instruction sets
//! have no literal filter in this version.

use crate::reference_rewriter::Arch;

/// Size and alignment of the words the filter rewrites.
pub const WORD: usize = 4;

/// Whether `arch` has a literal filter.
pub fn supported(arch: Arch) -> bool {
    arch == Arch::Aarch64
}

/// BL: `100101 imm26`, target = pc + 4 · imm26.
const BL_MASK: u32 = 0xfc00_0000;
const BL_OP: u32 = 0x9400_0000;
const IMM26: u32 = 0x03ff_ffff;
/// ADRP: `1 immlo(2) 10000 immhi(19) Rd(5)`, target page = pc page + imm21.
const ADRP_MASK: u32 = 0x9f00_0000;
const ADRP_OP: u32 = 0x9000_0000;
const IMM21: u32 = 0x001f_ffff;

fn adrp_imm(w: u32) -> u32 {
    ((w >> 29) & 3) | (((w >> 5) & 0x7_ffff) << 2)
}

fn with_adrp_imm(w: u32, imm: u32) -> u32 {
    (w & !(3 << 29) & !(0x7_ffff << 5)) | ((imm & 3) << 29) | (((imm >> 2) & 0x7_ffff) << 5)
}

/// The stored form of instruction word `w` at new-image offset `pos`:
/// relative targets made absolute (modulo the immediate's width). Other
/// words are unchanged.
pub fn to_stored(arch: Arch, w: u32, pos: u64) -> u32 {
    shift(arch, w, pos, true)
}

/// Inverse of [`to_stored`] at the same position.
pub fn from_stored(arch: Arch, w: u32, pos: u64) -> u32 {
    shift(arch, w, pos, false)
}

fn shift(arch: Arch, w: u32, pos: u64, forward: bool) -> u32 {
    if arch != Arch::Aarch64 {
        return w;
    }
    let add = |imm: u32, by: u64, mask: u32| {
        let by = by as u32; // modulo 2^32, then masked to the immediate
        if forward {
            imm.wrapping_add(by) & mask
        } else {
            imm.wrapping_sub(by) & mask
        }
    };
    if w & BL_MASK == BL_OP {
        BL_OP | add(w & IMM26, pos >> 2, IMM26)
    } else if w & ADRP_MASK == ADRP_OP {
        with_adrp_imm(w, add(adrp_imm(w), pos >> 12, IMM21))
    } else {
        w
    }
}

/// Rewrite, in place, every whole aligned word of `buf`, whose first byte is
/// at new-image offset `at`, with `f(word, offset)`. Returns where a trailing
/// partial aligned word starts, if `buf` ends inside one (a streaming reader
/// holds those bytes back until the word is complete or the run ends).
/// Cost: one pass, no allocation.
fn for_each_word(buf: &mut [u8], at: u64, f: impl Fn(u32, u64) -> u32) -> Option<usize> {
    let mut i = ((WORD as u64 - at % WORD as u64) % WORD as u64) as usize;
    while i + WORD <= buf.len() {
        let word = [buf[i], buf[i + 1], buf[i + 2], buf[i + 3]];
        let w = f(u32::from_le_bytes(word), at + i as u64);
        buf[i..i + WORD].copy_from_slice(&w.to_le_bytes());
        i += WORD;
    }
    (i < buf.len()).then_some(i)
}

/// Generator side: turn one whole literal run, which fills new-image bytes
/// from `start`, into its stored form. Cost: one pass over the run.
pub fn filter_run(arch: Arch, run: &mut [u8], start: u64) {
    for_each_word(run, start, |w, pos| to_stored(arch, w, pos));
}

/// Applier side: restore the whole aligned words of `buf` (stored literal
/// bytes, the first at new-image offset `at`, all inside one run, and `at`
/// not inside a word begun earlier in the run). Returns where a trailing
/// partial word starts, if any: if the run goes on past `buf`, those bytes
/// must be held back and restored once the word is complete; if the run
/// ends with `buf`, they are stored as they are.
pub fn unfilter(arch: Arch, buf: &mut [u8], at: u64) -> Option<usize> {
    for_each_word(buf, at, |w, pos| from_stored(arch, w, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_to_one_target_become_one_word() {
        // BL from 0x1000 and from 0x2000 to 0x8000.
        let bl = |from: u64| BL_OP | (((0x8000 - from) >> 2) as u32 & IMM26);
        let a = to_stored(Arch::Aarch64, bl(0x1000), 0x1000);
        let b = to_stored(Arch::Aarch64, bl(0x2000), 0x2000);
        assert_ne!(bl(0x1000), bl(0x2000));
        assert_eq!(a, b);
        assert_eq!(a, BL_OP | (0x8000 >> 2));
        // ADRP x0 of the page 0x40000 from two pages.
        let adrp = |from: u64| with_adrp_imm(ADRP_OP, ((0x40000 - from) >> 12) as u32);
        let a = to_stored(Arch::Aarch64, adrp(0x1000), 0x1000);
        let b = to_stored(Arch::Aarch64, adrp(0x3000), 0x3000);
        assert_eq!(a, b);
        // other words and other instruction sets are left alone
        assert_eq!(to_stored(Arch::Aarch64, 0xd65f_03c0, 0x1234), 0xd65f_03c0);
        assert_eq!(to_stored(Arch::Thumb2, bl(0x1000), 0x1000), bl(0x1000));
    }

    #[test]
    fn stored_form_is_a_bijection_at_every_position() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (w, pos) = (x as u32, (x >> 24) & ((1 << 40) - 4));
            let s = to_stored(Arch::Aarch64, w, pos);
            assert_eq!(from_stored(Arch::Aarch64, s, pos), w, "{w:#x} at {pos}");
            assert_eq!(
                to_stored(Arch::Aarch64, from_stored(Arch::Aarch64, w, pos), pos),
                w
            );
        }
    }

    #[test]
    fn only_whole_aligned_words_inside_the_run_change() {
        let bl = (BL_OP | 5).to_le_bytes();
        // a run at offset 6 of 13 bytes: [6, 19) holds whole words at 8 and 12
        let mut run: Vec<u8> = (0..13).map(|i| bl[(i + 2) % 4]).collect();
        let orig = run.clone();
        filter_run(Arch::Aarch64, &mut run, 6);
        assert_eq!(run[..2], orig[..2]);
        assert_ne!(run[2..6], orig[2..6]);
        assert_ne!(run[6..10], orig[6..10]);
        assert_eq!(run[10..], orig[10..]);
        // restored in one piece, or in pieces with held-back partial words
        let mut whole = run.clone();
        assert_eq!(unfilter(Arch::Aarch64, &mut whole, 6), Some(10));
        assert_eq!(whole, orig);
        for cut in 0..=run.len() {
            let (mut out, mut carry, mut at) = (Vec::new(), Vec::new(), 6u64);
            for (piece, last) in [(&run[..cut], cut == run.len()), (&run[cut..], true)] {
                let mut buf = std::mem::take(&mut carry);
                buf.extend_from_slice(piece);
                let tail = unfilter(Arch::Aarch64, &mut buf, at);
                let keep = match tail {
                    Some(t) if !last => t,
                    _ => buf.len(),
                };
                carry = buf.split_off(keep);
                at += buf.len() as u64;
                out.extend_from_slice(&buf);
            }
            assert!(carry.is_empty());
            assert_eq!(out, orig, "cut at {cut}");
        }
    }
}
