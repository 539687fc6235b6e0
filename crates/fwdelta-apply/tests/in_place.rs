//! In-place apply against bad input: whatever is wrong, the image must be
//! left exactly as it was, because it is the only copy.

use fwdelta_apply::{apply, apply_in_place, ApplyError, ApplyOptions, MemRegion};
use fwdelta_diff::{diff, Options};
use fwdelta_format::header::{Header, FLAG_IN_PLACE};
use fwdelta_format::record::Record;
use fwdelta_format::InPlaceCheckpoint;
use fwdelta_format::{Codec, Layout, MemoryModel};
use std::cell::{Cell, RefCell};
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

/// What a durable step of the simulated device did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A journal slot write of this many bytes.
    Journal(usize),
    /// An image write of this many bytes.
    Image(usize),
    /// A sync, a length change, or removing a journal slot.
    Other,
}

impl Step {
    fn len(self) -> usize {
        match self {
            Step::Journal(n) | Step::Image(n) => n,
            Step::Other => 0,
        }
    }
}

/// Persistent state that survives a simulated power cut: the region's bytes
/// and the journal's two slots, both byte for byte. The power goes during
/// durable step `cut.0` (counted from 0 in each run), after `cut.1` bytes of
/// that step's write have reached storage; after that every step fails.
#[derive(Default)]
struct Device {
    image: RefCell<Vec<u8>>,
    slots: RefCell<[Vec<u8>; 2]>,
    cut: Cell<Option<(usize, usize)>>,
    dead: Cell<bool>,
    /// Every durable step of the current run, in order.
    trace: RefCell<Vec<Step>>,
}

impl Device {
    fn new(image: &[u8]) -> Device {
        let d = Device::default();
        *d.image.borrow_mut() = image.to_vec();
        d
    }

    /// Power comes back: a new run, cut during step `cut` (if any).
    fn power_on(&self, cut: Option<(usize, usize)>) {
        self.cut.set(cut);
        self.dead.set(false);
        self.trace.borrow_mut().clear();
    }

    /// Count one durable step: `Ok(None)` if it completes, `Ok(Some(k))` if
    /// the power goes after `k` of its bytes, `Err` if it already went.
    fn step(&self, step: Step) -> std::io::Result<Option<usize>> {
        if self.dead.get() {
            return Err(std::io::Error::other("no power"));
        }
        let mut trace = self.trace.borrow_mut();
        let at = trace.len();
        trace.push(step);
        match self.cut.get() {
            Some((c, k)) if c == at => {
                self.dead.set(true);
                Ok(Some(k.min(step.len())))
            }
            _ => Ok(None),
        }
    }

    fn journal_empty(&self) -> bool {
        self.slots.borrow().iter().all(|s| s.is_empty())
    }
}

fn power_cut() -> std::io::Error {
    std::io::Error::other("power cut")
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
        let reach = self.0.step(Step::Image(data.len()))?;
        let k = reach.unwrap_or(data.len());
        self.0.image.borrow_mut()[s..s + k].copy_from_slice(&data[..k]);
        reach.map_or(Ok(()), |_| Err(power_cut()))
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if self.0.step(Step::Other)?.is_some() {
            return Err(power_cut());
        }
        self.0.image.borrow_mut().resize(len as usize, 0);
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        match self.0.step(Step::Other)? {
            Some(_) => Err(power_cut()),
            None => Ok(()),
        }
    }
}

struct DevJournal<'d>(&'d Device);

impl fwdelta_apply::Journal for DevJournal<'_> {
    fn read_slot(&mut self, slot: usize, into: &mut Vec<u8>) -> std::io::Result<()> {
        *into = self.0.slots.borrow()[slot].clone();
        Ok(())
    }
    fn write_slot(&mut self, slot: usize, record: &[u8], cell: &[u8]) -> std::io::Result<()> {
        let bytes = [record, cell].concat();
        let reach = self.0.step(Step::Journal(bytes.len()))?;
        let mut slots = self.0.slots.borrow_mut();
        match reach {
            None => {
                slots[slot] = bytes.to_vec();
                Ok(())
            }
            // Torn: the first k bytes are new, the rest is what was there.
            Some(k) => {
                let old = std::mem::take(&mut slots[slot]);
                let mut torn = bytes[..k].to_vec();
                torn.extend_from_slice(old.get(k..).unwrap_or(&[]));
                slots[slot] = torn;
                Err(power_cut())
            }
        }
    }
    fn clear(&mut self) -> std::io::Result<()> {
        for slot in 0..2 {
            if self.0.step(Step::Other)?.is_some() {
                return Err(power_cut());
            }
            self.0.slots.borrow_mut()[slot].clear();
        }
        Ok(())
    }
}

fn apply_on(dev: &Device, patch: &[u8]) -> Result<(), ApplyError> {
    apply_on_with(dev, patch, ApplyOptions::default()).map(|_| ())
}

fn apply_on_with(
    dev: &Device,
    patch: &[u8],
    opts: ApplyOptions,
) -> Result<fwdelta_apply::ApplyReport, ApplyError> {
    fwdelta_apply::apply_in_place_with(
        &DevRegion(dev),
        Cursor::new(patch),
        opts,
        &mut DevJournal(dev),
    )
}

/// The durable steps of an uninterrupted apply of `patch` to `old`.
fn trace_of(old: &[u8], new: &[u8], patch: &[u8]) -> Vec<Step> {
    let dev = Device::new(old);
    dev.power_on(None);
    apply_on(&dev, patch).unwrap();
    assert!(*dev.image.borrow() == new && dev.journal_empty());
    let t = dev.trace.borrow().clone();
    t
}

/// A small pair (three 4 KiB cells, the last short, with an insertion so
/// every cell moves) whose in-place patch has few enough bytes of durable
/// writes to cut each of them at every byte.
fn small_pair() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut rng = fwdelta_testkit::XorShift::new(0x18b3);
    let old: Vec<u8> = (0..9000u32)
        .map(|i| {
            if i % 3 == 0 {
                rng.next_u64() as u8
            } else {
                (i >> 6) as u8
            }
        })
        .collect();
    let mut new = old.clone();
    new.splice(700..700, (0..300u32).map(|i| (i * 31) as u8));
    for _ in 0..40 {
        let at = (rng.next_u64() % new.len() as u64) as usize;
        new[at] = rng.next_u64() as u8;
    }
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    (old, new, patch)
}

/// Issue 18, hole 3: cut every write of an in-place update (journal slot and
/// image) after every possible number of bytes. Each cut must leave the old
/// image, the new one, or a state the next run finishes exactly, with no
/// journal left behind.
#[test]
fn a_write_torn_at_every_byte_of_every_step_still_reaches_the_new_image() {
    let (old, new, patch) = small_pair();
    let trace = trace_of(&old, &new, &patch);
    let (mut torn_journal, mut torn_image) = (0usize, 0usize);
    let (mut left_old, mut left_new, mut left_mid) = (0usize, 0usize, 0usize);
    for (i, step) in trace.iter().enumerate() {
        for k in 0..step.len().max(1) {
            let dev = Device::new(&old);
            dev.power_on(Some((i, k)));
            assert!(
                apply_on(&dev, &patch).is_err(),
                "step {i} byte {k}: cut unnoticed"
            );
            match step {
                Step::Journal(_) => torn_journal += 1,
                Step::Image(_) => torn_image += 1,
                Step::Other => {}
            }
            let now = dev.image.borrow().clone();
            if now == old {
                left_old += 1;
            } else if now == new {
                left_new += 1;
            } else {
                left_mid += 1;
            }
            dev.power_on(None);
            let again = apply_on(&dev, &patch);
            assert!(again.is_ok(), "step {i} ({step:?}) byte {k}: {again:?}");
            assert!(*dev.image.borrow() == new, "step {i} byte {k}: wrong image");
            assert!(dev.journal_empty(), "step {i} byte {k}: journal left");
        }
    }
    let cells = new.len().div_ceil(4096);
    let journal_bytes: usize = trace
        .iter()
        .filter(|s| matches!(s, Step::Journal(_)))
        .map(|s| s.len())
        .sum();
    // two begin records, then each cell twice in the journal and once over the image
    assert_eq!(
        journal_bytes,
        2 * InPlaceCheckpoint::LEN * (cells + 1) + 2 * new.len()
    );
    assert_eq!(torn_journal, journal_bytes);
    assert_eq!(torn_image, new.len());
    assert!(torn_journal + torn_image >= 1000);
    assert_eq!(
        left_old + left_new + left_mid,
        trace.iter().map(|s| s.len().max(1)).sum::<usize>()
    );
    assert!(
        left_old > 0 && left_mid > 0,
        "{left_old} old, {left_mid} half"
    );
}

/// Power cut at every step boundary, a second cut during the resume at each
/// of its steps (torn in the middle), then a run to the end.
#[test]
fn a_second_cut_during_the_resume_still_reaches_the_new_image() {
    let (old, new, patch) = small_pair();
    let trace = trace_of(&old, &new, &patch);
    let mut runs = 0;
    for (i, step) in trace.iter().enumerate() {
        let mut j = 0;
        loop {
            let dev = Device::new(&old);
            dev.power_on(Some((i, step.len() / 2)));
            assert!(apply_on(&dev, &patch).is_err());
            dev.power_on(Some((j, usize::MAX / 2)));
            let second = apply_on(&dev, &patch);
            let steps = dev.trace.borrow().len();
            let half = dev.trace.borrow().get(j).map_or(0, |s| s.len() / 2);
            if second.is_ok() {
                assert!(*dev.image.borrow() == new && dev.journal_empty());
                break;
            }
            // the same cut again, torn in the middle of that step's bytes
            let dev2 = Device::new(&old);
            dev2.power_on(Some((i, step.len() / 2)));
            assert!(apply_on(&dev2, &patch).is_err());
            dev2.power_on(Some((j, half)));
            assert!(
                apply_on(&dev2, &patch).is_err(),
                "cut {i}/{j}: second cut unnoticed"
            );
            for d in [&dev, &dev2] {
                d.power_on(None);
                let third = apply_on(d, &patch);
                assert!(third.is_ok(), "cut {i} then {j}: {third:?}");
                assert!(
                    *d.image.borrow() == new && d.journal_empty(),
                    "cut {i} then {j}"
                );
            }
            runs += 1;
            j += 1;
            assert!(j <= steps, "cut {i}: resume never ends");
        }
    }
    assert!(runs > trace.len(), "{runs} double cuts");
}

/// Flip one byte of one journal slot after a cut at every step boundary
/// (each slot in turn; in its fixed part, in its staged cell and its last
/// byte): the other copy must carry the update to the new image.
#[test]
fn one_damaged_copy_at_every_step_still_reaches_the_new_image() {
    let (old, new, patch) = small_pair();
    let trace = trace_of(&old, &new, &patch);
    let mut damaged = 0;
    for i in 0..=trace.len() {
        for slot in 0..2 {
            for at in [9usize, InPlaceCheckpoint::LEN + 100, usize::MAX] {
                let dev = Device::new(&old);
                dev.power_on(Some((i, 0)));
                let first = apply_on(&dev, &patch);
                assert_eq!(first.is_ok(), i == trace.len());
                {
                    let mut slots = dev.slots.borrow_mut();
                    let s = &mut slots[slot];
                    if s.is_empty() {
                        continue;
                    }
                    let at = at.min(s.len() - 1);
                    s[at] ^= 0x10;
                }
                damaged += 1;
                dev.power_on(None);
                let again = apply_on(&dev, &patch);
                assert!(again.is_ok(), "cut {i}, slot {slot} byte {at}: {again:?}");
                assert!(*dev.image.borrow() == new, "cut {i}, slot {slot} byte {at}");
                assert!(dev.journal_empty());
            }
        }
    }
    assert!(damaged >= 4 * trace.len(), "only {damaged} damaged copies");
}

/// Both copies of the staged cell damaged while the cell is half written:
/// the update cannot go on, and the error says so and what the image holds.
#[test]
fn both_copies_lost_mid_update_is_reported_as_a_lost_update() {
    let (old, new, patch) = small_pair();
    let trace = trace_of(&old, &new, &patch);
    let second_cell = trace
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::Image(_)))
        .nth(1)
        .map(|(i, s)| (i, s.len() / 2))
        .unwrap();
    for (at, known) in [(InPlaceCheckpoint::LEN + 10, true), (9, false)] {
        let dev = Device::new(&old);
        dev.power_on(Some(second_cell));
        assert!(apply_on(&dev, &patch).is_err());
        for s in dev.slots.borrow_mut().iter_mut() {
            s[at] ^= 0x01;
        }
        let before = dev.image.borrow().clone();
        assert!(before != old && before != new);
        dev.power_on(None);
        let err = apply_on(&dev, &patch).unwrap_err();
        assert_eq!(err.class(), fwdelta_apply::ErrorClass::UpdateLost, "{err}");
        let msg = err.to_string();
        assert!(
            msg.ends_with("the image is neither version: reflash it"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        if known {
            assert!(msg.contains("are new") || msg.contains("is new"), "{msg}");
            assert!(msg.contains("may be torn"), "{msg}");
        } else {
            assert!(msg.contains("unknown"), "{msg}");
        }
        assert!(*dev.image.borrow() == before, "a refused resume wrote");
    }
}

#[test]
fn power_cut_at_every_durable_step_resumes_to_the_exact_image() {
    for pair in ["fw-x86-64", "fw-cortex-m4"] {
        let (old, new) = (testdata(pair, "old"), testdata(pair, "new"));
        let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
        let trace = trace_of(&old, &new, &patch);
        for (cut, step) in trace.iter().enumerate() {
            let dev = Device::new(&old);
            dev.power_on(Some((cut, step.len() / 2)));
            assert!(apply_on(&dev, &patch).is_err());
            // Power comes back; possibly cut again during the resume.
            dev.power_on(Some((cut / 2, 0)));
            let second = apply_on(&dev, &patch);
            dev.power_on(None);
            let third = apply_on(&dev, &patch);
            assert!(
                third.is_ok() || second.is_ok(),
                "{pair} cut {cut}: {third:?}"
            );
            assert!(
                *dev.image.borrow() == new,
                "{pair} cut {cut}: wrong image after resume"
            );
            assert!(dev.journal_empty(), "{pair} cut {cut}: journal not cleared");
        }
        assert!(
            trace.len() > 20,
            "{pair}: only {} durable steps",
            trace.len()
        );
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

/// A file region whose power goes at its `cut`-th cell write, half of which
/// reaches the file (counts image writes only; the journal is a real
/// `FileJournal` beside the file).
struct CutFile {
    inner: fwdelta_apply::FileRegion,
    cut: std::cell::Cell<Option<u32>>,
}

impl fwdelta_apply::Region for CutFile {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self.cut.get() {
            Some(0) => {
                self.inner.write_at(offset, &data[..data.len() / 2])?;
                Err(std::io::Error::other("power cut"))
            }
            Some(n) => {
                self.cut.set(Some(n - 1));
                self.inner.write_at(offset, data)
            }
            None => self.inner.write_at(offset, data),
        }
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
}

/// Issue 18, hole 3: after a power cut in the middle of the rewrite, one
/// damaged byte in either journal side file must not stop the next run from
/// finishing the update (the image is half old, half new: the only way out is
/// forward). And no side file may be left behind.
#[test]
fn one_damaged_journal_file_after_a_cut_still_finishes_the_update() {
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    let patch = diff(&old, &new, &in_place_opts()).unwrap().bytes;
    let cells = new.len().div_ceil(4096) as u32;
    assert!(cells >= 4, "{cells} cells");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img");
    let mut tried = 0;
    for cut in [1, cells / 2, cells - 1] {
        for (side, at) in [("fwdelta-inplace", 20usize), ("fwdelta-journal", 100)] {
            std::fs::write(&image, &old).unwrap();
            let region = CutFile {
                inner: fwdelta_apply::FileRegion::open(&image).unwrap(),
                cut: std::cell::Cell::new(Some(cut)),
            };
            let mut journal = fwdelta_apply::FileJournal::beside(&image).unwrap();
            let first = fwdelta_apply::apply_in_place_with(
                &region,
                Cursor::new(&patch),
                ApplyOptions::default(),
                &mut journal,
            );
            assert!(first.is_err(), "cut {cut}: the power cut went unnoticed");
            let file = dir.path().join(format!(".img.{side}"));
            let mut bytes = std::fs::read(&file).unwrap();
            let at = at % bytes.len();
            bytes[at] ^= 0x40;
            std::fs::write(&file, &bytes).unwrap();
            region.cut.set(None);
            let mut journal = fwdelta_apply::FileJournal::beside(&image).unwrap();
            let second = fwdelta_apply::apply_in_place_with(
                &region,
                Cursor::new(&patch),
                ApplyOptions::default(),
                &mut journal,
            );
            assert!(second.is_ok(), "cut {cut}, damaged {side}: {second:?}");
            assert!(std::fs::read(&image).unwrap() == new, "cut {cut}, {side}");
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .filter(|n| n != "img")
                .collect();
            assert!(left.is_empty(), "cut {cut}, {side}: left {left:?}");
            tried += 1;
        }
    }
    assert_eq!(tried, 6);
}

/// An in-place update cut by a power loss is finished even when the clock
/// passed the patch's expiry while the terminal was off: the expiry was
/// judged when the update began, and refusing it now would leave an image
/// that is neither version, for good (time only moves on). The signatures
/// are still checked on the resume; a fresh start after the expiry is
/// refused with the image untouched; an image that already is the new one
/// is reported as applied, writing nothing.
/// When the patches of [`expiring`] expire (Unix seconds).
const EXPIRES: u64 = 2_000_000_000;

/// The release key of [`expiring`].
fn release_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[3; 32])
}

/// `plain` signed with [`release_key`] for a release that expires at
/// [`EXPIRES`].
fn expiring(plain: &[u8]) -> Vec<u8> {
    let release = fwdelta_format::Release {
        product: "acme-t300".into(),
        version: "2.0".into(),
        security_counter: 5,
        expires: EXPIRES,
    };
    let key = std::slice::from_ref(&release_key()).to_vec();
    fwdelta_diff::patch_signer::sign_for_release(plain, Some(&release), &key).unwrap()
}

/// Options whose policy trusts `key` and judges at time `now`.
fn at(now: u64, key: &ed25519_dalek::SigningKey) -> ApplyOptions {
    let mut p = fwdelta_apply::TrustPolicy::trusting(vec![key.verifying_key().to_bytes()]);
    p.product = Some("acme-t300".into());
    p.min_counter = 5;
    p.now = Some(now);
    ApplyOptions::default().with_policy(Some(std::sync::Arc::new(p)))
}

/// The firmware pair, its in-place patch signed by [`expiring`], and the
/// durable steps of a whole update with it before the expiry.
fn expiring_update() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<Step>) {
    let (old, new) = (
        testdata("fw-cortex-m4", "old"),
        testdata("fw-cortex-m4", "new"),
    );
    let patch = expiring(&diff(&old, &new, &in_place_opts()).unwrap().bytes);
    let dev = Device::new(&old);
    dev.power_on(None);
    apply_on_with(&dev, &patch, at(EXPIRES - 1, &release_key())).unwrap();
    let trace = dev.trace.borrow().clone();
    (old, new, patch, trace)
}

#[test]
fn an_update_cut_before_its_expiry_is_finished_after_it() {
    use ed25519_dalek::SigningKey;
    let (old, new, patch, trace) = expiring_update();
    let key = release_key();

    // Cut before its last image write.
    let last_image = trace
        .iter()
        .rposition(|s| matches!(s, Step::Image(_)))
        .expect("image writes");
    let cut = || {
        let dev = Device::new(&old);
        dev.power_on(Some((last_image, 0)));
        assert!(apply_on_with(&dev, &patch, at(EXPIRES - 1, &key)).is_err());
        assert!(*dev.image.borrow() != old && *dev.image.borrow() != new);
        dev
    };

    // Resumed after the expiry: finished.
    let dev = cut();
    dev.power_on(None);
    let report = apply_on_with(&dev, &patch, at(EXPIRES + 1, &key))
        .expect("an update begun before its expiry is finished after it");
    assert!(*dev.image.borrow() == new);
    assert!(dev.journal_empty());
    assert_eq!(report.verdict.signed_by.len(), 1);

    // The resume still needs the trusted signature.
    let dev = cut();
    let before = dev.image.borrow().clone();
    dev.power_on(None);
    let other = SigningKey::from_bytes(&[4; 32]);
    let e = apply_on_with(&dev, &patch, at(EXPIRES + 1, &other)).unwrap_err();
    assert!(matches!(e, ApplyError::NotAuthentic { .. }), "{e}");
    assert!(*dev.image.borrow() == before);

    // Cut, then both journal copies lost: the image is neither version,
    // and that (not the expiry) is what is reported, before or after it.
    for now in [EXPIRES - 1, EXPIRES + 1] {
        let dev = cut();
        for slot in dev.slots.borrow_mut().iter_mut() {
            slot.iter_mut().for_each(|b| *b ^= 0x55);
        }
        dev.power_on(None);
        let e = apply_on_with(&dev, &patch, at(now, &key)).unwrap_err();
        assert!(matches!(e, ApplyError::UpdateLost { .. }), "at {now}: {e}");
    }

    // A fresh start after the expiry: refused, nothing written.
    let dev = Device::new(&old);
    dev.power_on(None);
    let e = apply_on_with(&dev, &patch, at(EXPIRES + 1, &key)).unwrap_err();
    assert!(matches!(e, ApplyError::Expired { .. }), "{e}");
    assert!(*dev.image.borrow() == old);
    assert!(dev.trace.borrow().is_empty(), "{:?}", dev.trace.borrow());

    // Already the new image (the first run finished, its caller did not
    // hear): reported as applied, nothing written.
    let dev = Device::new(&new);
    dev.power_on(None);
    let report = apply_on_with(&dev, &patch, at(EXPIRES + 1, &key)).unwrap();
    assert!(report.already_applied);
    assert!(*dev.image.borrow() == new);
    let wrote = dev.trace.borrow().iter().any(|s| s.len() > 0);
    assert!(!wrote, "{:?}", dev.trace.borrow());
}

/// A device cut during durable step `cut` of an apply of `patch` to `old`
/// under `opts`, then its image put back to `restored` (a technician
/// restoring the slot, or an attacker), the journal left beside it.
fn cut_then_restored(
    old: &[u8],
    patch: &[u8],
    opts: impl Fn() -> ApplyOptions,
    cut: usize,
    restored: &[u8],
) -> Device {
    let dev = Device::new(old);
    dev.power_on(Some((cut, 0)));
    assert!(apply_on_with(&dev, patch, opts()).is_err());
    assert!(!dev.journal_empty(), "cut {cut}: no journal left");
    *dev.image.borrow_mut() = restored.to_vec();
    dev.power_on(None);
    dev
}

/// The steps of `trace` that write the image (their indices).
fn image_writes(trace: &[Step]) -> Vec<usize> {
    (0..trace.len())
        .filter(|&i| matches!(trace[i], Step::Image(_)))
        .collect()
}

/// Issue 19 review, hole 1: a journal left by a cut update, beside an image
/// restored to the old version, made the resume write the journal's cell
/// over the old image and continue as if the earlier cells were new, leaving
/// neither version. The restored image must be updated afresh (the journal
/// describes another state); an image that is neither the journal's state
/// nor the old one must be refused with nothing written.
#[test]
fn a_stale_journal_beside_a_restored_image_is_not_trusted() {
    let (old, new, patch) = small_pair();
    let trace = trace_of(&old, &new, &patch);
    let writes = image_writes(&trace);
    assert!(writes.len() >= 3, "{trace:?}");
    for &cut in &writes {
        // Restored to the old image: updated from the start.
        let dev = cut_then_restored(&old, &patch, ApplyOptions::default, cut, &old);
        apply_on(&dev, &patch).unwrap_or_else(|e| panic!("cut at step {cut}: {e}"));
        assert!(*dev.image.borrow() == new, "cut at step {cut}");
        assert!(dev.journal_empty());

        // Restored to something else: refused, nothing written.
        let mut other = old.clone();
        other[old.len() / 2] ^= 0x01;
        let dev = cut_then_restored(&old, &patch, ApplyOptions::default, cut, &other);
        let slots = dev.slots.borrow().clone();
        let e = apply_on(&dev, &patch).unwrap_err();
        assert!(
            matches!(e, ApplyError::UpdateLost(_)),
            "cut at step {cut}: {e}"
        );
        assert!(
            *dev.image.borrow() == other,
            "cut at step {cut}: image written"
        );
        assert!(
            *dev.slots.borrow() == slots,
            "cut at step {cut}: journal written"
        );
    }
}

/// Issue 19 review, hole 1 (expiry): a journal naming an expired patch
/// (left by a cut before the first image write, or written by hand) beside
/// the intact old image finished the expired update. The image is whole, so
/// the patch is refused as expired, with nothing written; the same after a
/// later cut once the old image was restored.
#[test]
fn a_journal_does_not_let_an_expired_patch_start() {
    let (old, _, patch, trace) = expiring_update();
    let key = release_key();
    let writes = image_writes(&trace);
    for cut in [writes[0], writes[writes.len() / 2]] {
        let dev = cut_then_restored(&old, &patch, || at(EXPIRES - 1, &key), cut, &old);
        let e = apply_on_with(&dev, &patch, at(EXPIRES + 1, &key)).unwrap_err();
        assert!(
            matches!(e, ApplyError::Expired { .. }),
            "cut at step {cut}: {e}"
        );
        assert!(
            *dev.image.borrow() == old,
            "cut at step {cut}: image written"
        );
        let wrote = dev.trace.borrow().iter().any(|s| s.len() > 0);
        assert!(!wrote, "cut at step {cut}: {:?}", dev.trace.borrow());
    }
}
