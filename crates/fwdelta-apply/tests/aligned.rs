//! Applying to block-programmed flash through `AlignedSink`.

use fwdelta_apply::{AlignedSink, Applier, ApplyError, ApplyOptions, BlockWriter};
use fwdelta_diff::{diff, Options};
use fwdelta_format::Checkpoint;
use std::io;

/// Flash that accepts only whole, aligned, never-rewritten blocks.
struct Flash {
    block: usize,
    bytes: Vec<u8>,
    programmed: Vec<bool>,
    checkpoints: Vec<Checkpoint>,
}

impl Flash {
    fn new(block: usize, len: usize) -> Flash {
        let blocks = len.div_ceil(block);
        Flash {
            block,
            bytes: vec![0xFF; blocks * block],
            programmed: vec![false; blocks],
            checkpoints: Vec::new(),
        }
    }
}

impl BlockWriter for &mut Flash {
    fn write_block(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        assert_eq!(data.len(), self.block, "partial block");
        assert_eq!(offset % self.block as u64, 0, "unaligned block");
        let i = offset as usize / self.block;
        assert!(!self.programmed[i], "block {i} programmed twice");
        self.programmed[i] = true;
        self.bytes[i * self.block..(i + 1) * self.block].copy_from_slice(data);
        Ok(())
    }
    fn persist(&mut self, cp: &Checkpoint) -> io::Result<()> {
        self.checkpoints.push(*cp);
        Ok(())
    }
}

fn pair() -> (Vec<u8>, Vec<u8>) {
    let p = |w: &str| {
        std::fs::read(format!(
            "{}/../../testdata/fw-x86-64/{w}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    (p("old"), p("new"))
}

/// A many-segment patch of [`pair`] whose segment ends are aligned to
/// `align` bytes (1: not aligned).
fn patch_aligned_to(old: &[u8], new: &[u8], align: u64) -> Vec<u8> {
    let opts = Options {
        align,
        segment_cost: 500,
        level: 6,
        ..Options::default()
    };
    diff(old, new, &opts).unwrap().bytes
}

#[test]
fn aligned_patch_programs_whole_blocks_and_resumes_on_a_block() {
    let (old, new) = pair();
    let patch = patch_aligned_to(&old, &new, 256);

    let mut flash = Flash::new(256, new.len());
    let sink = AlignedSink::new(&mut flash, 256, 0).unwrap();
    let mut a = Applier::new(&old[..], sink, ApplyOptions::default());
    a.feed(&patch).unwrap();
    let (_, sink) = a.finish().unwrap();
    sink.finish().unwrap();
    assert_eq!(&flash.bytes[..new.len()], &new[..]);
    assert!(
        flash.bytes[new.len()..].iter().all(|&b| b == 0xFF),
        "padding"
    );
    assert!(
        flash.checkpoints.len() >= 3,
        "{} checkpoints",
        flash.checkpoints.len()
    );

    // Power lost after the second checkpoint: the blocks before it are
    // programmed, the rest erased; resume programs only the rest.
    let cp = flash.checkpoints[1];
    let mut again = Flash::new(256, new.len());
    let done = cp.new_offset as usize;
    again.bytes[..done].copy_from_slice(&new[..done]);
    again.programmed[..done / 256]
        .iter_mut()
        .for_each(|p| *p = true);
    let sink = AlignedSink::new(&mut again, 256, cp.new_offset).unwrap();
    let a = Applier::resume(
        &old[..],
        sink,
        ApplyOptions::default(),
        &patch,
        &cp,
        &new[..done],
    )
    .unwrap();
    let (_, sink) = a.finish_from(&patch[cp.patch_offset as usize..]).unwrap();
    sink.finish().unwrap();
    assert_eq!(&again.bytes[..new.len()], &new[..]);
}

#[test]
fn unaligned_patch_is_refused_at_its_first_unaligned_segment_end() {
    let (old, new) = pair();
    let patch = patch_aligned_to(&old, &new, 1);
    let mut flash = Flash::new(256, new.len());
    let sink = AlignedSink::new(&mut flash, 256, 0).unwrap();
    let mut a = Applier::new(&old[..], sink, ApplyOptions::default());
    match a.feed(&patch) {
        Err(ApplyError::Sink(e)) => assert!(e.to_string().contains("--align 256"), "{e}"),
        other => panic!("expected the sink to refuse: {:?}", other.map(|_| ())),
    }
}
