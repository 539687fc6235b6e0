//! The code detector: guesses which instruction set an old image holds, so
//! `--arch auto` knows which references to predict.
//!
//! An ELF file names its machine in its header. Anything else (raw firmware,
//! archives of executables) is scored by call density: the share of aligned
//! positions holding a call instruction (x86 CALL rel32, A64 BL, A32 BL,
//! T32 BL) whose target lies inside the image. Machine code has calls every
//! few dozen bytes; in data, such a pattern with an in-range target is rare
//! (well under 0.1% of positions for images up to tens of MB).

use fwdelta_format::reference_rewriter::Arch;

/// Call density (calls per aligned position) above which an image counts as
/// code of that instruction set.
pub const MIN_CALL_DENSITY: f64 = 0.002;

const EM_386: u16 = 3;
const EM_ARM: u16 = 40;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// The instruction set of `image`, if it looks like code. Cost: one pass
/// over the image per instruction set (none for ELF).
pub fn detect(image: &[u8]) -> Option<Arch> {
    if let Some(arch) = elf_machine(image) {
        return Some(arch);
    }
    let (arch, density) = Arch::ALL
        .into_iter()
        .map(|a| (a, call_density(a, image)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (density >= MIN_CALL_DENSITY).then_some(arch)
}

/// The instruction set an ELF header names (little-endian ELF only).
fn elf_machine(b: &[u8]) -> Option<Arch> {
    if b.len() < 52 || b[..4] != *b"\x7fELF" || b[5] != 1 {
        return None;
    }
    match u16::from_le_bytes([b[18], b[19]]) {
        EM_X86_64 | EM_386 => Some(Arch::X86_64),
        EM_AARCH64 => Some(Arch::Aarch64),
        EM_ARM => {
            // ELF32 entry point: odd means it starts in Thumb state.
            let entry = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
            Some(if entry & 1 == 1 {
                Arch::Thumb2
            } else {
                Arch::Arm32
            })
        }
        _ => None,
    }
}

/// Calls with in-image targets per aligned position.
pub fn call_density(arch: Arch, b: &[u8]) -> f64 {
    let len = b.len() as i64;
    let in_range = |t: i64| (0..len).contains(&t);
    let mut calls = 0u64;
    let positions;
    match arch {
        Arch::X86_64 => {
            positions = b.len();
            for (p, w) in b.windows(5).enumerate() {
                if w[0] == 0xE8 {
                    let d = i32::from_le_bytes([w[1], w[2], w[3], w[4]]);
                    calls += u64::from(in_range(p as i64 + 5 + i64::from(d)));
                }
            }
        }
        Arch::Aarch64 | Arch::Arm32 => {
            positions = b.len() / 4;
            for (i, w) in b.chunks_exact(4).enumerate() {
                let w = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                let p = 4 * i as i64;
                let t = if arch == Arch::Aarch64 {
                    (w & 0xFC00_0000 == 0x9400_0000)
                        .then(|| p + 4 * ((((w & 0x03FF_FFFF) << 6) as i32) >> 6) as i64)
                } else {
                    (w & 0xFF00_0000 == 0xEB00_0000)
                        .then(|| p + 8 + 4 * ((((w & 0x00FF_FFFF) << 8) as i32) >> 8) as i64)
                };
                calls += u64::from(t.is_some_and(in_range));
            }
        }
        Arch::Thumb2 => {
            positions = b.len() / 2;
            for (i, w) in b.chunks_exact(2).collect::<Vec<_>>().windows(2).enumerate() {
                let (h1, h2) = (
                    u16::from_le_bytes([w[0][0], w[0][1]]),
                    u16::from_le_bytes([w[1][0], w[1][1]]),
                );
                if h1 & 0xF800 == 0xF000 && h2 & 0xD000 == 0xD000 {
                    let s = u32::from(h1 >> 10) & 1;
                    let i1 = !((u32::from(h2) >> 13) & 1 ^ s) & 1;
                    let i2 = !((u32::from(h2) >> 11) & 1 ^ s) & 1;
                    let v = (s << 23)
                        | (i1 << 22)
                        | (i2 << 21)
                        | ((u32::from(h1) & 0x3FF) << 11)
                        | (u32::from(h2) & 0x7FF);
                    let off = (((v << 8) as i32) >> 8) as i64 * 2;
                    calls += u64::from(in_range(2 * i as i64 + 4 + off));
                }
            }
        }
    }
    if positions == 0 {
        return 0.0;
    }
    calls as f64 / positions as f64
}
