//! The reference rewriter: the executable-aware part of a patch.
//!
//! Machine code is full of PC-relative references (calls, branches, literal
//! loads, ADR/ADRP). When an update inserts code, every reference that spans
//! the insertion changes, although the code around it did not: a byte-level
//! diff pays for each one. An executable-aware patch carries an
//! [`AddressMap`] (where each old offset is expected in the new image) and an
//! instruction set; both generator and applier then read the old image through
//! this rewriter, which re-targets every reference it recognises as if the old
//! code had been moved by the map. Diff bytes are computed against that
//! *predicted old image*, so a reference that moved as predicted costs nothing.
//!
//! Recognition is local and positional, so the applier can predict any range
//! of the old image from a window of [`CONTEXT`] bytes around it, and the
//! result does not depend on how the image is cut into windows:
//!
//! - AArch64: every 4-aligned word; B/BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, LDR
//!   (literal), ADR, ADRP.
//! - ARM (A32): every 4-aligned word; B/BL, LDR (literal).
//! - Thumb-2: every 2-aligned halfword; BL, B.W, LDR.W (literal).
//! - x86-64: every byte; CALL/JMP rel32, Jcc rel32, CALL/JMP [rip+disp32], and
//!   MOV/LEA/CMP/ADD/SUB/TEST/MOVSXD with a `[rip+disp32]` operand.
//!
//! A variable-length pattern (Thumb-2, x86-64) at `p` is accepted only if no
//! other pattern starting before `p` overlaps it, which keeps accepted
//! references disjoint. A reference is rewritten only if its old target lies
//! inside the old image and the predicted value fits its field. Offsets are
//! file offsets: on a raw image they are addresses minus the load address, so
//! the prediction is exact; on ELF, references between segments whose file and
//! memory layouts differ are predicted less well (they still round-trip).

use crate::address_map::AddressMap;
use crate::error::FormatError;
#[allow(unused_imports)]
use crate::prelude::*;

/// Instruction set whose references a patch predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// 64-bit ARM (A64).
    Aarch64,
    /// 32-bit ARM (A32).
    Arm32,
    /// Thumb-2 (T32), the usual code of Cortex-M and armhf.
    Thumb2,
    /// x86-64 (its rel32 branches also cover 32-bit x86).
    X86_64,
}

impl Arch {
    /// Every instruction set, in wire-id order.
    pub const ALL: [Arch; 4] = [Arch::Aarch64, Arch::Arm32, Arch::Thumb2, Arch::X86_64];

    /// Wire id.
    pub fn id(self) -> u8 {
        match self {
            Arch::Aarch64 => 1,
            Arch::Arm32 => 2,
            Arch::Thumb2 => 3,
            Arch::X86_64 => 4,
        }
    }

    /// Parse a wire id.
    pub fn from_id(id: u8) -> Result<Self, FormatError> {
        Arch::ALL
            .into_iter()
            .find(|a| a.id() == id)
            .ok_or(FormatError::BadField {
                field: "instruction set",
                detail: format!("unknown id {id}"),
            })
    }

    /// Name for humans, JSON and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::Arm32 => "arm32",
            Arch::Thumb2 => "thumb2",
            Arch::X86_64 => "x86-64",
        }
    }

    /// Alignment of the positions a reference may start at.
    pub fn align(self) -> u64 {
        match self {
            Arch::Aarch64 | Arch::Arm32 => 4,
            Arch::Thumb2 => 2,
            Arch::X86_64 => 1,
        }
    }
}

/// Old-image bytes the rewriter must see on each side of a range to predict it.
pub const CONTEXT: u64 = 16;

/// Longest reference pattern (x86-64 REX + opcode + ModRM + disp32).
const MAX_PATTERN: u64 = 7;

/// A recognised reference.
#[derive(Debug, Clone, Copy)]
struct Ref {
    /// Bytes the instruction occupies from its start.
    len: u64,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A64 field of `bits` at `shift`, times 4, relative to the instruction.
    A64 { shift: u32, bits: u32 },
    /// A64 ADR (page = false) or ADRP (page = true).
    A64Adr { page: bool },
    /// A64 ADRP followed by an ADD (immediate) or an unsigned-offset LDR/STR
    /// on the same register: the pair names a full address, page and low 12
    /// bits (scaled by `1 << scale` for loads and stores).
    A64AdrpPair { scale: u32 },
    /// A32 B/BL: imm24 times 4, relative to the instruction + 8.
    A32Branch,
    /// A32 LDR literal: sign-magnitude imm12, relative to the instruction + 8.
    A32Literal,
    /// T32 BL / B.W: 25-bit offset, relative to the instruction + 4.
    T32Branch,
    /// T32 LDR.W literal: sign-magnitude imm12, relative to Align(instruction + 4, 4).
    T32Literal,
    /// x86 disp32 at `at`, relative to the end of the instruction.
    X86Rel { at: u64 },
}

fn sext(v: u64, bits: u32) -> i64 {
    let s = 64 - bits;
    ((v << s) as i64) >> s
}

fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn half(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Whether a variable-length pattern (Thumb-2, x86-64) can start at
/// `window[i]`: a one-byte test that is true wherever [`recognise`] could
/// match, so the scan calls it only there.
#[inline]
fn may_start(arch: Arch, window: &[u8], i: usize) -> bool {
    match arch {
        // BL / B.W and LDR.W literal: the first halfword's high byte is
        // 0xF0..=0xF7 or 0xF8.
        Arch::Thumb2 => matches!(window.get(i + 1), Some(0xF0..=0xF8)),
        Arch::X86_64 => matches!(
            window[i],
            0xE8 | 0xE9 | 0x0F | 0xFF | 0x8B | 0x8D | 0x89 | 0x40..=0x4F
        ),
        Arch::Aarch64 | Arch::Arm32 => true,
    }
}

/// Recognise a reference at the start of `b` (which holds at least the
/// pattern's bytes when one can match; shorter slices simply match less).
fn recognise(arch: Arch, b: &[u8]) -> Option<Ref> {
    match arch {
        Arch::Aarch64 => {
            let w = word(b.get(..4)?);
            let kind = if w & 0x7C00_0000 == 0x1400_0000 {
                Kind::A64 { shift: 0, bits: 26 }
            } else if w & 0xFF00_0010 == 0x5400_0000
                || w & 0x7E00_0000 == 0x3400_0000
                || w & 0x3B00_0000 == 0x1800_0000
            {
                Kind::A64 { shift: 5, bits: 19 }
            } else if w & 0x7E00_0000 == 0x3600_0000 {
                Kind::A64 { shift: 5, bits: 14 }
            } else if w & 0x1F00_0000 == 0x1000_0000 {
                let page = w & 0x8000_0000 != 0;
                if let Some(scale) = page.then(|| adrp_partner(w, b)).flatten() {
                    return Some(Ref {
                        len: 8,
                        kind: Kind::A64AdrpPair { scale },
                    });
                }
                Kind::A64Adr { page }
            } else {
                return None;
            };
            Some(Ref { len: 4, kind })
        }
        Arch::Arm32 => {
            let w = word(b.get(..4)?);
            let kind = if w & 0x0E00_0000 == 0x0A00_0000 && w >> 28 != 0xF {
                Kind::A32Branch
            } else if w & 0x0F7F_0000 == 0x051F_0000 && w >> 28 != 0xF {
                Kind::A32Literal
            } else {
                return None;
            };
            Some(Ref { len: 4, kind })
        }
        Arch::Thumb2 => {
            let b = b.get(..4)?;
            let (h1, h2) = (half(b, 0), half(b, 2));
            let kind = if h1 & 0xF800 == 0xF000 && (h2 & 0xD000 == 0xD000 || h2 & 0xD000 == 0x9000)
            {
                Kind::T32Branch
            } else if h1 & 0xFF7F == 0xF85F {
                Kind::T32Literal
            } else {
                return None;
            };
            Some(Ref { len: 4, kind })
        }
        Arch::X86_64 => {
            let op = *b.first()?;
            let (len, at) = match op {
                0xE8 | 0xE9 => (5, 1),
                0x0F if (0x80..=0x8F).contains(b.get(1)?) => (6, 2),
                0xFF if matches!(b.get(1)?, 0x15 | 0x25) => (6, 2),
                0x8B | 0x8D | 0x89 if b.get(1)? & 0xC7 == 0x05 => (6, 2),
                0x40..=0x4F
                    if matches!(
                        b.get(1)?,
                        0x8B | 0x8D | 0x89 | 0x3B | 0x39 | 0x03 | 0x2B | 0x85 | 0x63
                    ) && b.get(2)? & 0xC7 == 0x05 =>
                {
                    (7, 3)
                }
                _ => return None,
            };
            b.get(..len as usize)?;
            Some(Ref {
                len,
                kind: Kind::X86Rel { at },
            })
        }
    }
}

/// If the instruction after the ADRP `w` (at `b[4..8]`) uses its register as
/// the base of an ADD (immediate, 64-bit, unshifted) or of an unsigned-offset
/// integer LDR/STR, the scale of its 12-bit offset (0 for ADD).
fn adrp_partner(w: u32, b: &[u8]) -> Option<u32> {
    let w2 = word(b.get(4..8)?);
    if (w2 >> 5) & 0x1F != w & 0x1F {
        return None;
    }
    if w2 & 0xFFC0_0000 == 0x9100_0000 {
        Some(0)
    } else if w2 & 0x3F00_0000 == 0x3900_0000 {
        Some(w2 >> 30)
    } else {
        None
    }
}

/// The old target of reference `r` at old offset `p` (bytes `b`), and its value
/// re-encoded for a target at `new_target` from an instruction at `new_p`
/// (`None` if it does not fit).
fn target_of(r: Ref, p: u64, b: &[u8]) -> i64 {
    let p = p as i64;
    match r.kind {
        Kind::A64 { shift, bits } => {
            let w = u64::from(word(b));
            p + 4 * sext((w >> shift) & ((1 << bits) - 1), bits)
        }
        Kind::A64Adr { page } => {
            let w = u64::from(word(b));
            let imm = sext((((w >> 5) & 0x7FFFF) << 2) | ((w >> 29) & 3), 21);
            if page {
                (p & !0xFFF) + (imm << 12)
            } else {
                p + imm
            }
        }
        Kind::A64AdrpPair { scale } => {
            let page = target_of(
                Ref {
                    len: 4,
                    kind: Kind::A64Adr { page: true },
                },
                p as u64,
                b,
            );
            page + i64::from(((word(&b[4..8]) >> 10) & 0xFFF) << scale)
        }
        Kind::A32Branch => p + 8 + 4 * sext(u64::from(word(b)) & 0xFF_FFFF, 24),
        Kind::A32Literal => {
            let w = word(b);
            let imm = i64::from(w & 0xFFF);
            p + 8 + if w & (1 << 23) != 0 { imm } else { -imm }
        }
        Kind::T32Branch => {
            let (h1, h2) = (u64::from(half(b, 0)), u64::from(half(b, 2)));
            let s = (h1 >> 10) & 1;
            let i1 = !((h2 >> 13) & 1 ^ s) & 1;
            let i2 = !((h2 >> 11) & 1 ^ s) & 1;
            let v = (s << 23) | (i1 << 22) | (i2 << 21) | ((h1 & 0x3FF) << 11) | (h2 & 0x7FF);
            p + 4 + 2 * sext(v, 24)
        }
        Kind::T32Literal => {
            let (h1, h2) = (half(b, 0), half(b, 2));
            let imm = i64::from(h2 & 0xFFF);
            ((p + 4) & !3) + if h1 & 0x80 != 0 { imm } else { -imm }
        }
        Kind::X86Rel { at } => {
            let a = at as usize;
            let d = i32::from_le_bytes([b[a], b[a + 1], b[a + 2], b[a + 3]]);
            p + r.len as i64 + i64::from(d)
        }
    }
}

/// If a call instruction starts at `b` (old offset `p`), its target: x86 CALL
/// rel32, A64 BL, A32 BL (condition "always"), T32 BL. The instruction-set
/// detector counts these; `b` shorter than the instruction matches nothing.
pub fn call_target(arch: Arch, b: &[u8], p: u64) -> Option<i64> {
    let r = recognise(arch, b)?;
    let is_call = match r.kind {
        Kind::A64 { shift: 0, .. } => word(b) & 0xFC00_0000 == 0x9400_0000,
        Kind::A32Branch => word(b) >> 24 == 0xEB,
        Kind::T32Branch => half(b, 2) & 0xD000 == 0xD000,
        Kind::X86Rel { .. } => b[0] == 0xE8,
        _ => false,
    };
    is_call.then(|| target_of(r, p, b))
}

/// Write reference `r` (bytes `b`, instruction now expected at `np`) so it
/// points at `nt`. Returns false, leaving `b` alone, if the value does not fit.
fn retarget(r: Ref, np: i64, nt: i64, b: &mut [u8]) -> bool {
    let put_word = |b: &mut [u8], w: u32| b[..4].copy_from_slice(&w.to_le_bytes());
    let fits = |v: i64, bits: u32| {
        let lim = 1i64 << (bits - 1);
        (-lim..lim).contains(&v)
    };
    match r.kind {
        Kind::A64 { shift, bits } => {
            let off = nt - np;
            if off & 3 != 0 || !fits(off >> 2, bits) {
                return false;
            }
            let mask = ((1u32 << bits) - 1) << shift;
            let w = word(b) & !mask | ((((off >> 2) as u32) << shift) & mask);
            put_word(b, w);
        }
        Kind::A64Adr { page } => {
            let imm = if page {
                (nt >> 12) - (np >> 12)
            } else {
                nt - np
            };
            if !fits(imm, 21) {
                return false;
            }
            let imm = imm as u32;
            let w =
                word(b) & !(0x7FFFF << 5 | 3 << 29) | ((imm >> 2) & 0x7FFFF) << 5 | (imm & 3) << 29;
            put_word(b, w);
        }
        Kind::A64AdrpPair { scale } => {
            let low = nt & 0xFFF;
            if low & ((1 << scale) - 1) != 0 {
                return false;
            }
            let adrp = Ref {
                len: 4,
                kind: Kind::A64Adr { page: true },
            };
            if !retarget(adrp, np, nt, b) {
                return false;
            }
            let w2 = word(&b[4..8]) & !(0xFFF << 10) | ((low >> scale) as u32) << 10;
            b[4..8].copy_from_slice(&w2.to_le_bytes());
        }
        Kind::A32Branch => {
            let off = nt - np - 8;
            if off & 3 != 0 || !fits(off >> 2, 24) {
                return false;
            }
            put_word(b, word(b) & 0xFF00_0000 | ((off >> 2) as u32 & 0xFF_FFFF));
        }
        Kind::A32Literal => {
            let off = nt - np - 8;
            if off.unsigned_abs() > 0xFFF {
                return false;
            }
            let up = if off >= 0 { 1 << 23 } else { 0 };
            put_word(
                b,
                word(b) & !(0xFFF | 1 << 23) | up | off.unsigned_abs() as u32,
            );
        }
        Kind::T32Branch => {
            let off = nt - np - 4;
            if off & 1 != 0 || !fits(off >> 1, 24) {
                return false;
            }
            let v = (off >> 1) as u32 & 0xFF_FFFF;
            let s = (v >> 23) & 1;
            let j1 = ((v >> 22) & 1 ^ s) ^ 1;
            let j2 = ((v >> 21) & 1 ^ s) ^ 1;
            let h1 = half(b, 0) & 0xF800 | (s << 10 | (v >> 11) & 0x3FF) as u16;
            let h2 = half(b, 2) & 0xD000 | (j1 << 13 | j2 << 11 | v & 0x7FF) as u16;
            b[..2].copy_from_slice(&h1.to_le_bytes());
            b[2..4].copy_from_slice(&h2.to_le_bytes());
        }
        Kind::T32Literal => {
            let off = nt - ((np + 4) & !3);
            if off.unsigned_abs() > 0xFFF {
                return false;
            }
            let h1 = half(b, 0) & !0x80 | if off >= 0 { 0x80 } else { 0 };
            let h2 = half(b, 2) & !0xFFF | off.unsigned_abs() as u16;
            b[..2].copy_from_slice(&h1.to_le_bytes());
            b[2..4].copy_from_slice(&h2.to_le_bytes());
        }
        Kind::X86Rel { at } => {
            let Ok(d) = i32::try_from(nt - np - r.len as i64) else {
                return false;
            };
            let a = at as usize;
            b[a..a + 4].copy_from_slice(&d.to_le_bytes());
        }
    }
    true
}

/// Reads of the old image through an instruction set and an address map.
///
/// Cost: the map (16 bytes per run); nothing allocated per rewrite.
#[derive(Debug, Clone)]
pub struct ReferenceRewriter {
    arch: Arch,
    map: AddressMap,
    image_len: u64,
}

impl ReferenceRewriter {
    /// A rewriter for an old image of `image_len` bytes.
    pub fn new(arch: Arch, map: AddressMap, image_len: u64) -> Self {
        ReferenceRewriter {
            arch,
            map,
            image_len,
        }
    }

    /// The instruction set.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The address map.
    pub fn map(&self) -> &AddressMap {
        &self.map
    }

    /// Predict old-image bytes `from..to`. `window` holds the old image's bytes
    /// at `window_start..window_start + window.len()`, and must cover
    /// `from - CONTEXT .. to + CONTEXT` (clipped to the image). Every reference
    /// overlapping `from..to` is rewritten in place; bytes outside `from..to`
    /// may be rewritten too and are not meaningful. The result in `from..to` is
    /// the same whatever the window, so a streaming applier and the generator
    /// (which rewrites the whole image at once) agree. Cost: one pass over the
    /// range (a one-byte test per position for x86-64 and Thumb-2), two
    /// address-map lookups per recognised reference, no allocation.
    pub fn rewrite(&mut self, window: &mut [u8], window_start: u64, from: u64, to: u64) {
        let window_end = window_start + window.len() as u64;
        let align = self.arch.align();
        // First position whose pattern could overlap `from`, and the first whose
        // pattern could overlap that one.
        let reach = match self.arch {
            // An ADRP pair (8 bytes) may start one word before `from`.
            Arch::Aarch64 => 4,
            Arch::Arm32 => 0,
            _ => MAX_PATTERN - 1,
        };
        let lo = from.saturating_sub(reach) / align * align;
        let scan_lo = lo.saturating_sub(reach) / align * align;
        let hi = to.min(self.image_len);
        if lo >= hi || scan_lo < window_start {
            debug_assert!(lo >= hi, "window does not cover the context");
            return;
        }
        let local = |pos: u64| (pos - window_start) as usize;
        let end = window_end.min(self.image_len);
        if align == 4 {
            let mut p = lo;
            while p < hi && p + 4 <= end {
                self.rewrite_one(window, local(p), p);
                p += 4;
            }
            return;
        }
        // Variable-length patterns: a pattern at `p` is rewritten only if no
        // pattern recognised at an earlier position (from `scan_lo`, in the
        // bytes as they were before any rewrite) reaches past `p`. Patterns
        // are at most `MAX_PATTERN` long, so the furthest end seen so far
        // decides it, and a rewrite (which changes only its own bytes) is
        // held back until the scan is `MAX_PATTERN` bytes past its start:
        // every recognition reads the original bytes.
        let arch = self.arch;
        let mut pending: Option<(u64, Ref)> = None;
        let mut reach_end = 0u64;
        let mut q = scan_lo;
        while q < hi {
            if let Some((p, r)) = pending {
                if q >= p + r.len {
                    self.retarget_at(window, local(p), p, r);
                    pending = None;
                }
            }
            let i = local(q);
            if may_start(arch, window, i) {
                if let Some(r) = recognise(arch, &window[i..local(end)]) {
                    if q >= lo && reach_end <= q {
                        // Every earlier pattern ends by `q`: nothing pending.
                        debug_assert!(pending.is_none());
                        pending = Some((q, r));
                    }
                    reach_end = reach_end.max(q + r.len);
                }
            }
            q += align;
        }
        if let Some((p, r)) = pending {
            self.retarget_at(window, local(p), p, r);
        }
    }

    /// Rewrite a whole old image in place (what the generator diffs against).
    /// Cost: one pass, no allocation.
    pub fn rewrite_image(&mut self, image: &mut [u8]) {
        let len = image.len() as u64;
        self.rewrite(image, 0, 0, len);
    }

    /// Rewrite the reference at window index `at` (old offset `p`), if there is one
    /// whose target lies in the image and whose new value fits.
    fn rewrite_one(&self, window: &mut [u8], at: usize, p: u64) {
        if let Some(r) = recognise(self.arch, &window[at..]) {
            self.retarget_at(window, at, p, r);
        }
    }

    /// Rewrite reference `r`, recognised at window index `at` (old offset
    /// `p`), if its target lies in the image and its new value fits.
    fn retarget_at(&self, window: &mut [u8], at: usize, p: u64, r: Ref) {
        let b = &mut window[at..at + r.len as usize];
        let t = target_of(r, p, b);
        if t < 0 || t as u64 >= self.image_len {
            return;
        }
        let np = self.map.map(p);
        let nt = self.map.map(t as u64);
        if np == p as i64 && nt == t {
            return;
        }
        retarget(r, np, nt, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shifted_map(at: u64, by: i64, len: u64) -> AddressMap {
        AddressMap::from_runs(&[(0, 0), (at, by)], len).unwrap()
    }

    /// Encode a reference of `kind` at `p` pointing at `t`, through `retarget`.
    fn encode(arch: Arch, template: &[u8], p: u64, t: i64) -> Vec<u8> {
        let mut b = template.to_vec();
        let r = recognise(arch, &b).expect("template is a reference");
        assert!(retarget(r, p as i64, t, &mut b));
        assert_eq!(target_of(r, p, &b), t, "{arch:?} {template:02x?}");
        b
    }

    #[test]
    fn every_kind_round_trips_its_target() {
        let cases: &[(Arch, &[u8], &[i64])] = &[
            (
                Arch::Aarch64,
                &0x9400_0000u32.to_le_bytes(),
                &[0, 4, -4096, 1 << 20],
            ),
            (Arch::Aarch64, &0x5400_0001u32.to_le_bytes(), &[8, -8]),
            (Arch::Aarch64, &0xB400_0000u32.to_le_bytes(), &[64]),
            (Arch::Aarch64, &0x3600_0000u32.to_le_bytes(), &[128, -128]),
            (Arch::Aarch64, &0x5800_0000u32.to_le_bytes(), &[1024]),
            (Arch::Aarch64, &0x1000_0000u32.to_le_bytes(), &[3, -7, 1000]),
            (
                Arch::Aarch64,
                &0x9000_0000u32.to_le_bytes(),
                &[0, 4096 * 9, -4096 * 3],
            ),
            // ADRP x1 + ADD x1, x1, #lo12
            (
                Arch::Aarch64,
                &[0x01, 0x00, 0x00, 0x90, 0x21, 0x00, 0x00, 0x91],
                &[0, 0x123, 4096 * 9 + 0xFFF, -4096 * 3 + 8],
            ),
            // ADRP x1 + LDR x2, [x1, #lo12] (scaled by 8)
            (
                Arch::Aarch64,
                &[0x01, 0x00, 0x00, 0x90, 0x22, 0x00, 0x40, 0xF9],
                &[0, 8 * 100, -4096 * 2 + 0x10],
            ),
            (
                Arch::Arm32,
                &0xEB00_0000u32.to_le_bytes(),
                &[8, 4000, -4000],
            ),
            (Arch::Arm32, &0xE59F_0000u32.to_le_bytes(), &[8, 100, -100]),
            (
                Arch::Thumb2,
                &[0x00, 0xF0, 0x00, 0xF8],
                &[4, 2, -2, 1 << 20, -(1 << 20)],
            ),
            (Arch::Thumb2, &[0x00, 0xF0, 0x00, 0xB8], &[6, -600]),
            (Arch::Thumb2, &[0xDF, 0xF8, 0x00, 0x00], &[8, 4000, -3000]),
            (Arch::X86_64, &[0xE8, 0, 0, 0, 0], &[5, -100, 1 << 30]),
            (Arch::X86_64, &[0x0F, 0x85, 0, 0, 0, 0], &[6, 77]),
            (Arch::X86_64, &[0x48, 0x8D, 0x05, 0, 0, 0, 0], &[7, -9999]),
        ];
        for (arch, template, targets) in cases {
            for &off in *targets {
                let p = 1 << 21;
                encode(*arch, template, p, p as i64 + off);
            }
        }
    }

    #[test]
    fn adrp_pairs_need_the_same_register_and_an_aligned_offset() {
        // ADD on another register: only the ADRP is a reference.
        let b = [0x01, 0x00, 0x00, 0x90, 0x42, 0x00, 0x00, 0x91];
        assert!(matches!(
            recognise(Arch::Aarch64, &b).map(|r| r.kind),
            Some(Kind::A64Adr { page: true })
        ));
        // An 8-byte load cannot reach an address that is not a multiple of 8.
        let pair = [0x01, 0x00, 0x00, 0x90, 0x22, 0x00, 0x40, 0xF9];
        let r = recognise(Arch::Aarch64, &pair).unwrap();
        let mut b = pair;
        assert!(!retarget(r, 0, 0x1004, &mut b));
        assert_eq!(b, pair);
        // Cut before the partner (end of the image): a plain ADRP.
        assert!(matches!(
            recognise(Arch::Aarch64, &pair[..6]).map(|r| r.kind),
            Some(Kind::A64Adr { page: true })
        ));
    }

    #[test]
    fn a_moved_call_is_predicted() {
        // a call at 0x100 to 0x2000; the callee moves by +0x40 in the new image
        let len = 0x4000u64;
        let mut old = vec![0u8; len as usize];
        let call = encode(Arch::X86_64, &[0xE8, 0, 0, 0, 0], 0x100, 0x2000);
        old[0x100..0x105].copy_from_slice(&call);
        let mut predicted = old.clone();
        let mut rw = ReferenceRewriter::new(Arch::X86_64, shifted_map(0x1000, 0x40, len), len);
        rw.rewrite_image(&mut predicted);
        let expected = encode(Arch::X86_64, &[0xE8, 0, 0, 0, 0], 0x100, 0x2040);
        assert_eq!(&predicted[0x100..0x105], &expected[..]);
        // nothing else changed
        predicted[0x100..0x105].copy_from_slice(&call);
        assert_eq!(predicted, old);
    }

    #[test]
    fn overlapping_patterns_are_resolved_once() {
        // E8 E8 ...: the second pattern overlaps the first and is not rewritten
        let len = 64u64;
        let mut old = vec![0u8; len as usize];
        old[10] = 0xE8;
        old[11] = 0xE8;
        let mut a = old.clone();
        ReferenceRewriter::new(Arch::X86_64, shifted_map(32, 3, len), len).rewrite_image(&mut a);
        // first: target 10 + 5 + 0x0000_00E8 = 247 is outside the image: untouched
        assert_eq!(a, old);
    }

    fn arb_code(arch: Arch) -> impl Strategy<Value = Vec<u8>> {
        // dense in references: random words salted with opcode bytes
        let ops: Vec<u8> = match arch {
            Arch::Aarch64 => vec![0x94, 0x14, 0x54, 0xB4, 0x36, 0x58, 0x10, 0x90],
            Arch::Arm32 => vec![0xEB, 0xEA, 0xE5],
            Arch::Thumb2 => vec![0xF0, 0xF8, 0xF7, 0xD0],
            Arch::X86_64 => vec![0xE8, 0xE9, 0x0F, 0x85, 0x48, 0x8D, 0x05, 0xFF, 0x15],
        };
        proptest::collection::vec(
            prop_oneof![any::<u8>(), proptest::sample::select(ops), Just(0u8)],
            0..3000,
        )
    }

    /// The rewrite as first specified, kept as the oracle of the faster scan:
    /// every position's pattern recognised first (in the bytes before any
    /// rewrite), then each one not overlapped by an earlier one rewritten.
    fn rewrite_oracle(rw: &ReferenceRewriter, window: &mut [u8], ws: u64, from: u64, to: u64) {
        let align = rw.arch.align();
        let reach = match rw.arch {
            Arch::Aarch64 => 4,
            Arch::Arm32 => 0,
            _ => MAX_PATTERN - 1,
        };
        let lo = from.saturating_sub(reach) / align * align;
        let scan_lo = lo.saturating_sub(reach) / align * align;
        let hi = to.min(rw.image_len);
        if lo >= hi || scan_lo < ws {
            return;
        }
        let end = (ws + window.len() as u64).min(rw.image_len);
        let local = |pos: u64| (pos - ws) as usize;
        if align == 4 {
            let mut p = lo;
            while p < hi && p + 4 <= end {
                rw.rewrite_one(window, local(p), p);
                p += 4;
            }
            return;
        }
        let mut lens = Vec::new();
        let mut q = scan_lo;
        while q < hi {
            lens.push(recognise(rw.arch, &window[local(q)..local(end)]).map_or(0, |r| r.len));
            q += align;
        }
        let mut p = lo;
        while p < hi {
            let i = ((p - scan_lo) / align) as usize;
            let back = ((MAX_PATTERN - 1) / align) as usize;
            let overlapped =
                (i.saturating_sub(back)..i).any(|j| scan_lo + j as u64 * align + lens[j] > p);
            if lens[i] != 0 && !overlapped {
                rw.rewrite_one(window, local(p), p);
            }
            p += align;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_scan_rewrites_what_the_oracle_does(
            arch_i in 0usize..4,
            code in arb_code(Arch::X86_64),
            shifts in proptest::collection::vec((1u64..400, -300i64..300), 0..8),
            from in 0usize..3000,
            span in 0usize..3000,
        ) {
            let arch = Arch::ALL[arch_i];
            let mut code = code;
            if arch != Arch::X86_64 {
                for (i, b) in code.iter_mut().enumerate() {
                    if i % 5 == 1 { *b = [0x94, 0xEB, 0xF0, 0xF8][arch_i % 4]; }
                }
            }
            let len = code.len() as u64;
            let mut runs = vec![(0u64, 0i64)];
            let mut at = 0;
            for (g, s) in shifts { at += g; if at < len { runs.push((at, s)); } }
            let map = AddressMap::from_runs(&runs, len.max(1)).unwrap();
            let from = (from as u64).min(len);
            let to = (from + span as u64).min(len);
            let ws = from.saturating_sub(CONTEXT);
            let we = (to + CONTEXT).min(len);
            let mut rw = ReferenceRewriter::new(arch, map, len);
            let mut fast = code[ws as usize..we as usize].to_vec();
            let mut slow = fast.clone();
            rw.rewrite(&mut fast, ws, from, to);
            rewrite_oracle(&rw, &mut slow, ws, from, to);
            prop_assert_eq!(fast, slow);
        }
    }

    /// Predict `code` whole, then in windows cut at `cuts` (each read with
    /// [`CONTEXT`] bytes either side, as the applier does): every window must
    /// give the whole-image bytes.
    fn windows_agree(
        arch: Arch,
        code: &[u8],
        map: AddressMap,
        cuts: Vec<usize>,
    ) -> Result<(), TestCaseError> {
        let len = code.len() as u64;
        let mut whole = code.to_vec();
        ReferenceRewriter::new(arch, map.clone(), len).rewrite_image(&mut whole);
        let mut cuts: Vec<u64> = cuts.into_iter().map(|c| c as u64 % (len + 1)).collect();
        cuts.push(0);
        cuts.push(len);
        cuts.sort_unstable();
        cuts.dedup();
        let mut rw = ReferenceRewriter::new(arch, map, len);
        for w in cuts.windows(2) {
            let (from, to) = (w[0], w[1]);
            let ws = from.saturating_sub(CONTEXT);
            let we = (to + CONTEXT).min(len);
            let mut window = code[ws as usize..we as usize].to_vec();
            rw.rewrite(&mut window, ws, from, to);
            prop_assert_eq!(
                &window[(from - ws) as usize..(to - ws) as usize],
                &whole[from as usize..to as usize]
            );
        }
        Ok(())
    }

    /// AArch64 code dense in ADRP pairs: words drawn from ADRP x1 (pages 0-2
    /// from its own, so targets mostly fall inside the image), ADD x1, LDR
    /// x2/w2 [x1], BL and noise.
    fn arb_a64_pairs() -> impl Strategy<Value = Vec<u8>> {
        let word = (0usize..6, any::<u32>()).prop_map(|(k, r)| {
            let lo12 = r >> 20;
            let w = match k {
                0 => 0x9000_0001 | ((r % 3) << 29),
                1 => 0x9100_0021 | lo12 << 10,
                2 => 0xF940_0022 | (lo12 % 512) << 10,
                3 => 0xB940_0022 | (lo12 % 1024) << 10,
                4 => 0x9400_0000 | (r & 0x03FF_FFFF),
                _ => r,
            };
            w.to_le_bytes()
        });
        proptest::collection::vec(word, 0..4000).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn aarch64_pairs_agree_across_windows(
            code in arb_a64_pairs(),
            shifts in proptest::collection::vec((1u64..400, -300i64..300), 0..8),
            cuts in proptest::collection::vec(0usize..16_000, 0..24),
        ) {
            let len = code.len() as u64;
            let mut runs = vec![(0u64, 0i64)];
            let mut at = 0;
            for (g, s) in shifts { at += g * 8; if at < len { runs.push((at, s * 4)); } }
            let map = AddressMap::from_runs(&runs, len.max(1)).unwrap();
            windows_agree(Arch::Aarch64, &code, map, cuts)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn windows_agree_with_the_whole_image(
            arch_i in 0usize..4,
            code in arb_code(Arch::X86_64),
            shifts in proptest::collection::vec((1u64..400, -300i64..300), 0..8),
            cuts in proptest::collection::vec(0usize..3000, 0..12),
        ) {
            let arch = Arch::ALL[arch_i];
            let mut code = code;
            // re-salt for the arch under test
            if arch != Arch::X86_64 {
                for (i, b) in code.iter_mut().enumerate() {
                    if i % 7 == 3 { *b = [0x94, 0xEB, 0xF0, 0xF8][arch_i % 4]; }
                }
            }
            let len = code.len() as u64;
            let mut runs = vec![(0u64, 0i64)];
            let mut at = 0;
            for (g, s) in shifts { at += g; if at < len { runs.push((at, s)); } }
            let map = AddressMap::from_runs(&runs, len.max(1)).unwrap();
            windows_agree(arch, &code, map, cuts)?;
        }
    }
}
