//! The code detector: guesses which instruction set an old image holds, so
//! `--arch auto` knows which references to predict.
//!
//! An ELF file names its machine in its header (for 32-bit ARM, its entry
//! point's low bit tells Thumb from A32; a shared library, whose entry is
//! usually 0, is scored between the two). Anything else (raw firmware,
//! archives of executables) is scored by call density: the share of aligned
//! positions holding a call instruction (x86 CALL rel32, A64 BL, A32 BL,
//! T32 BL) whose target lies inside the image. Machine code has calls every
//! few dozen bytes; in data, such a pattern with an in-range target is rare
//! (well under 0.1% of positions for images up to tens of MB).

use fwdelta_format::reference_rewriter::{call_target, Arch};
use rayon::prelude::*;

/// Call density (calls per aligned position) above which an image counts as
/// code of that instruction set.
pub const MIN_CALL_DENSITY: f64 = 0.002;

const EM_386: u16 = 3;
const EM_ARM: u16 = 40;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// The instruction set of `image`, if it looks like code. Cost: one pass
/// over the image per instruction set (none for ELF, two for an ARM shared
/// library).
pub fn detect(image: &[u8]) -> Option<Arch> {
    if let Some(arch) = elf_machine(image) {
        return Some(arch);
    }
    let (arch, density) = densest(Arch::ALL, image)?;
    (density >= MIN_CALL_DENSITY).then_some(arch)
}

/// Of `arches`, the one with the highest [`call_density`] in `b` (the later
/// one on a tie), and that density. Cost: one pass per instruction set.
fn densest(arches: impl IntoIterator<Item = Arch>, b: &[u8]) -> Option<(Arch, f64)> {
    let arches: Vec<Arch> = arches.into_iter().collect();
    let densities: Vec<f64> = arches.par_iter().map(|&a| call_density(a, b)).collect();
    arches
        .into_iter()
        .zip(densities)
        .max_by(|x, y| x.1.total_cmp(&y.1))
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
            // ELF32 entry point: odd means it starts in Thumb state. A shared
            // library usually has none (0): Debian's armhf libraries are
            // Thumb-2, Go's ARM binaries A32, so let the calls decide.
            let entry = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
            match entry {
                0 => densest([Arch::Arm32, Arch::Thumb2], b).map(|(a, _)| a),
                e if e & 1 == 1 => Some(Arch::Thumb2),
                _ => Some(Arch::Arm32),
            }
        }
        _ => None,
    }
}

/// Calls with in-image targets per aligned position: over the whole image
/// up to [`SAMPLED_FROM`] bytes, over [`SAMPLE_WINDOWS`] evenly spaced
/// windows of [`SAMPLE_WINDOW`] bytes above it (the detector's scan over
/// every position was a third of the diff's time on near-identical 8-17 MB
/// pairs; on the corpus the sampled densities picked the same instruction
/// sets). Cost: one pass over at most [`SAMPLED_FROM`] bytes, in parallel.
pub fn call_density(arch: Arch, b: &[u8]) -> f64 {
    let align = arch.align() as usize;
    if b.len() / align == 0 {
        return 0.0;
    }
    let windows: Vec<(usize, usize)> = if b.len() <= SAMPLED_FROM {
        vec![(0, b.len())]
    } else {
        let span = b.len() - SAMPLE_WINDOW;
        (0..SAMPLE_WINDOWS)
            .map(|k| {
                // Aligned starts keep positions on the instruction grid.
                let start = (span * k / (SAMPLE_WINDOWS - 1)) / align * align;
                (start, start + SAMPLE_WINDOW)
            })
            .collect()
    };
    let positions: usize = windows.iter().map(|(s, e)| (e - s).div_ceil(align)).sum();
    let calls: usize = windows
        .par_iter()
        .map(|&(start, end)| {
            (start..end)
                .step_by(align)
                .filter(|&p| {
                    call_target(arch, &b[p..], p as u64)
                        .is_some_and(|t| (0..b.len() as i64).contains(&t))
                })
                .count()
        })
        .sum();
    calls as f64 / positions as f64
}

/// Images larger than this are sampled by [`call_density`].
pub const SAMPLED_FROM: usize = 4 << 20;

/// Windows [`call_density`] samples.
pub const SAMPLE_WINDOWS: usize = 64;

/// Bytes per sampled window (`SAMPLE_WINDOWS * SAMPLE_WINDOW` is
/// [`SAMPLED_FROM`]).
pub const SAMPLE_WINDOW: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64 KiB little-endian ELF32 ARM image with entry point `entry` and a
    /// call to 256 bytes ahead every 16 bytes: Thumb-2 BL pairs or A32 BL.
    fn arm_elf(entry: u32, thumb: bool) -> Vec<u8> {
        let mut b = vec![0u8; 64 << 10];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1; // ELFCLASS32
        b[5] = 1; // little-endian
        b[18..20].copy_from_slice(&EM_ARM.to_le_bytes());
        b[24..28].copy_from_slice(&entry.to_le_bytes());
        for p in (64..b.len() - 512).step_by(16) {
            if thumb {
                // BL to pc + 4 + 252: S = 0, J1 = J2 = 1, imm11 = 126
                b[p..p + 2].copy_from_slice(&0xf000u16.to_le_bytes());
                b[p + 2..p + 4].copy_from_slice(&(0xf800u16 | 126).to_le_bytes());
            } else {
                // BL to pc + 8 + 248
                b[p..p + 4].copy_from_slice(&(0xeb00_0000u32 | 62).to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn large_images_are_sampled_close_to_the_whole() {
        // 6 MiB: A32 calls every 16 bytes in the first 2 MiB, none after.
        let mut b = vec![0u8; 6 << 20];
        for p in (0..2 << 20).step_by(16) {
            b[p..p + 4].copy_from_slice(&(0xeb00_0000u32 | 62).to_le_bytes());
        }
        let whole = (0..b.len())
            .step_by(4)
            .filter(|&p| {
                call_target(Arch::Arm32, &b[p..], p as u64)
                    .is_some_and(|t| (0..b.len() as i64).contains(&t))
            })
            .count() as f64
            / (b.len() / 4) as f64;
        let sampled = call_density(Arch::Arm32, &b);
        assert!(whole > 0.08, "{whole}");
        assert!(
            (sampled - whole).abs() < whole * 0.05,
            "{sampled} against {whole}"
        );
        assert_eq!(detect(&b), Some(Arch::Arm32));
    }

    #[test]
    fn arm_elf_entry_bit_or_calls_decide_thumb_or_a32() {
        assert_eq!(detect(&arm_elf(0x1001, true)), Some(Arch::Thumb2));
        assert_eq!(detect(&arm_elf(0x1000, false)), Some(Arch::Arm32));
        // a shared library (entry 0): the denser call pattern wins
        assert_eq!(detect(&arm_elf(0, true)), Some(Arch::Thumb2));
        assert_eq!(detect(&arm_elf(0, false)), Some(Arch::Arm32));
        assert!(call_density(Arch::Thumb2, &arm_elf(0, true)) > MIN_CALL_DENSITY);
    }
}
