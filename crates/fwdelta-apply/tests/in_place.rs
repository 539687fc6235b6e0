//! In-place apply against bad input: whatever is wrong, the image must be
//! left exactly as it was, because it is the only copy.

use fwdelta_apply::{apply, apply_in_place, ApplyError, ApplyOptions, MemRegion};
use fwdelta_diff::{diff, Options};
use fwdelta_format::header::{Header, FLAG_IN_PLACE};
use fwdelta_format::record::Record;
use fwdelta_format::{Codec, Layout, MemoryModel};
use std::io::Cursor;

fn testdata(pair: &str, which: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../testdata/{pair}/{which}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn in_place_opts() -> Options {
    Options {
        in_place: Some(12),
        level: 6,
        ..Options::default()
    }
}

/// Apply in place to a copy of `old`; return the result and the region.
fn run(old: &[u8], patch: &[u8]) -> (Result<(), ApplyError>, Vec<u8>) {
    let region = MemRegion::new(old.to_vec());
    let r = apply_in_place(&region, Cursor::new(patch), ApplyOptions::default()).map(|_| ());
    (r, region.into_inner())
}

#[test]
fn valid_patch_rewrites_the_image() {
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    let (r, out) = run(&old, &patch);
    r.unwrap();
    assert_eq!(out, new);
}

#[test]
fn every_truncation_and_flip_leaves_the_image_untouched() {
    let (old, new) = (
        testdata("fw-cortex-m4", "old"),
        testdata("fw-cortex-m4", "new"),
    );
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    for cut in 0..patch.len() {
        let (r, out) = run(&old, &patch[..cut]);
        assert!(r.is_err(), "cut at {cut} accepted");
        assert!(out == old, "cut at {cut} modified the image");
    }
    for i in 0..patch.len() {
        let mut bad = patch.clone();
        bad[i] ^= 0x08;
        let (r, out) = run(&old, &bad);
        assert!(r.is_err(), "flip at {i} accepted");
        assert!(out == old, "flip at {i} modified the image");
    }
}

#[test]
fn wrong_old_image_and_wrong_mode_are_refused_untouched() {
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    let mut other = old.clone();
    other[5000] ^= 1;
    let (r, out) = run(&other, &patch);
    assert!(matches!(r, Err(ApplyError::OldHash { .. })), "{r:?}");
    assert_eq!(out, other);

    // an A/B patch given to the in-place applier, and the other way round
    let ab = diff(&old, &new, &Options::default()).unwrap().bytes;
    let (r, out) = run(&old, &ab);
    assert!(matches!(r, Err(ApplyError::WrongMode(_))), "{r:?}");
    assert_eq!(out, old);
    let err = apply(&old[..], &patch[..], Vec::new(), ApplyOptions::default()).unwrap_err();
    assert!(matches!(err, ApplyError::WrongMode(_)), "{err}");
}

/// Seal an in-place patch by hand: cells in the given order, each with a raw
/// (stored) record stream.
fn craft(old: &[u8], new: &[u8], cells: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
    let header = Header {
        flags: FLAG_IN_PLACE,
        old_len: old.len() as u64,
        old_check: fwdelta_format::check_of(old),
        new_len: new.len() as u64,
        new_hash: *blake3::hash(new).as_bytes(),
        codec: Codec::Stored,
        window_log: 10,
        layout: Layout::Interleaved,
        segment_count: cells.len() as u32,
        apply_memory: MemoryModel::required_for(Codec::Stored, 10)
            + MemoryModel::in_place_extra(12, cells.len() as u64),
        cell_log: Some(12),
        code_refs: None,
        literal_filter: None,
        release: None,
    };
    let sealed = cells
        .iter()
        .map(|(cell, old_start, stream)| (cell * 4096, 4096, *old_start, &stream[..]));
    fwdelta_testkit::seal_patch(&header, sealed)
}

fn copy_record(len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    Record {
        copy_len: len,
        diff_len: 0,
        literal_len: 0,
        seek: 0,
    }
    .encode_head(&mut v);
    v
}

#[test]
fn a_cell_reading_an_overwritten_cell_is_refused_before_writing() {
    // new = old with its two 4 KiB cells swapped. Written as cell 0 then cell
    // 1, cell 1 would read old cell 0 after it was overwritten: the dry run
    // alone (which reads the intact image) would pass; the ordering pass must
    // refuse it.
    let old: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let new = [&old[4096..], &old[..4096]].concat();
    let bad_order = craft(
        &old,
        &new,
        &[(0, 4096, copy_record(4096)), (1, 0, copy_record(4096))],
    );
    let (r, out) = run(&old, &bad_order);
    let err = r.unwrap_err();
    assert!(
        err.to_string()
            .contains("which an earlier segment overwrites"),
        "{err}"
    );
    assert_eq!(out, old, "the image was modified");

    // the same cells, one as literals, in a safe order, apply
    let mut literal = Vec::new();
    Record {
        copy_len: 0,
        diff_len: 0,
        literal_len: 4096,
        seek: 0,
    }
    .encode_head(&mut literal);
    literal.extend_from_slice(&old[..4096]);
    let good = craft(&old, &new, &[(0, 4096, copy_record(4096)), (1, 0, literal)]);
    let (r, out) = run(&old, &good);
    r.unwrap();
    assert_eq!(out, new);

    // a cell given twice (and another missing) is refused by the structure pass
    let twice = craft(
        &old,
        &new,
        &[(0, 4096, copy_record(4096)), (0, 4096, copy_record(4096))],
    );
    let (r, out) = run(&old, &twice);
    assert!(r.unwrap_err().to_string().contains("comes twice"));
    assert_eq!(out, old);
}

/// Shared "persistent" state that survives a simulated power cut: the region's
/// bytes, the journal's records, and a countdown to the cut.
#[derive(Default)]
struct Device {
    image: std::cell::RefCell<Vec<u8>>,
    state: std::cell::RefCell<Option<fwdelta_format::InPlaceCheckpoint>>,
    staged: std::cell::RefCell<Vec<u8>>,
    /// Durable operations left before the power goes (None: never).
    left: std::cell::Cell<Option<u32>>,
}

impl Device {
    /// Count one durable operation; `Err` when the power goes now.
    fn tick(&self) -> std::io::Result<()> {
        match self.left.get() {
            Some(0) => Err(std::io::Error::other("power cut")),
            Some(n) => {
                self.left.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        }
    }
}

struct DevRegion<'d>(&'d Device);

impl fwdelta_apply::Region for DevRegion<'_> {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.image.borrow().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let img = self.0.image.borrow();
        let s = offset as usize;
        buf.copy_from_slice(
            img.get(s..s + buf.len())
                .ok_or(std::io::ErrorKind::UnexpectedEof)?,
        );
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let s = offset as usize;
        if let Err(e) = self.0.tick() {
            // torn write: half the cell reaches the flash
            let half = data.len() / 2;
            self.0.image.borrow_mut()[s..s + half].copy_from_slice(&data[..half]);
            return Err(e);
        }
        self.0.image.borrow_mut()[s..s + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.tick()?;
        self.0.image.borrow_mut().resize(len as usize, 0);
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        self.0.tick()
    }
}

struct DevJournal<'d>(&'d Device);

impl fwdelta_apply::Journal for DevJournal<'_> {
    fn load(&mut self) -> std::io::Result<Option<fwdelta_format::InPlaceCheckpoint>> {
        Ok(*self.0.state.borrow())
    }
    fn save(&mut self, cp: &fwdelta_format::InPlaceCheckpoint) -> std::io::Result<()> {
        self.0.tick()?;
        *self.0.state.borrow_mut() = Some(*cp);
        Ok(())
    }
    fn stage(&mut self, cell: &[u8]) -> std::io::Result<()> {
        self.0.tick()?;
        *self.0.staged.borrow_mut() = cell.to_vec();
        Ok(())
    }
    fn staged(&mut self, len: u64, into: &mut Vec<u8>) -> std::io::Result<()> {
        *into = self.0.staged.borrow().clone();
        assert_eq!(into.len() as u64, len);
        Ok(())
    }
    fn clear(&mut self) -> std::io::Result<()> {
        self.0.tick()?;
        *self.0.state.borrow_mut() = None;
        Ok(())
    }
}

fn apply_on(dev: &Device, patch: &[u8]) -> Result<(), ApplyError> {
    fwdelta_apply::apply_in_place_with(
        &DevRegion(dev),
        Cursor::new(patch),
        ApplyOptions::default(),
        &mut DevJournal(dev),
    )
    .map(|_| ())
}

#[test]
fn power_cut_at_every_durable_step_resumes_to_the_exact_image() {
    for pair in ["fw-x86-64", "fw-cortex-m4"] {
        let (old, new) = (testdata(pair, "old"), testdata(pair, "new"));
        let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
        let mut cut = 0;
        loop {
            let dev = Device::default();
            *dev.image.borrow_mut() = old.clone();
            dev.left.set(Some(cut));
            let first = apply_on(&dev, &patch);
            // Power comes back; possibly cut again during the resume.
            dev.left.set(Some(cut / 2));
            let second = apply_on(&dev, &patch);
            dev.left.set(None);
            let third = apply_on(&dev, &patch);
            match (&first, &second) {
                (Ok(()), _) => {
                    assert_eq!(*dev.image.borrow(), new, "{pair}: uncut run");
                    break;
                }
                _ => {
                    // whichever run completed, the image must be exact
                    assert!(
                        third.is_ok() || second.is_ok(),
                        "{pair} cut {cut}: {third:?}"
                    );
                    assert!(
                        *dev.image.borrow() == new,
                        "{pair} cut {cut}: wrong image after resume"
                    );
                    assert!(
                        dev.state.borrow().is_none(),
                        "{pair} cut {cut}: journal not cleared"
                    );
                }
            }
            cut += 1;
        }
        assert!(cut > 20, "{pair}: only {cut} durable steps");
    }
}

#[test]
fn applying_again_to_the_new_image_is_a_no_op_success() {
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    let region = MemRegion::new(old.clone());
    let first = apply_in_place(&region, Cursor::new(&patch), ApplyOptions::default()).unwrap();
    assert!(!first.already_applied);
    let second = apply_in_place(&region, Cursor::new(&patch), ApplyOptions::default()).unwrap();
    assert!(second.already_applied);
    assert_eq!(region.into_inner(), new);
}
