//! Fuzz target functions. `fuzz/` (cargo-fuzz, libFuzzer) calls them with
//! generated inputs; `tests/replay.rs` calls them with every committed corpus
//! file, so CI exercises the corpora without a fuzzer.
//!
//! Each target panics only when the code under test misbehaves: a panic inside
//! the parsers or applier, a success whose output is not what the header
//! promises, push and pull modes disagreeing, or (structured target) the applier
//! disagreeing with an independent reference interpreter.

use arbitrary::{Result as ArbResult, Unstructured};
use fwdelta_apply::{apply, inspect, Applier, ApplyOptions};
use fwdelta_format::diff_model::OldContext;
use fwdelta_format::header::Header;
use fwdelta_format::record::Record;
use fwdelta_format::reference_rewriter::Arch;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::{literal_filter, Checkpoint, Codec, Layout, MemoryModel};

/// The old image the apply targets patch: the bundled Cortex-M4 firmware.
pub static OLD: &[u8] = include_bytes!("../../../testdata/fw-cortex-m4/old");

/// Output limit for fuzzed applies, so a patch claiming a huge image with
/// cheap records cannot make a run slow.
const MAX_NEW: u64 = 1 << 20;

fn opts() -> ApplyOptions {
    ApplyOptions::default()
        .with_memory_limit(8 << 20)
        .with_max_new_len(MAX_NEW)
}

/// Seed of the Ed25519 key the `trust` target and its signed seeds trust.
pub const TRUSTED_SEED: [u8; 32] = [0x5e; 32];

/// The signature check and the device-state parsers on raw bytes: a patch's
/// start (header and signature section) judged by a policy trusting
/// [`TRUSTED_SEED`]'s key, for product `fuzz-t1` at counter 2; an accepted
/// patch must carry a signature that verifies independently and must apply
/// to exactly its new image (or be refused). Also the state file, the
/// history log, rotation statements and key files: whatever parses must
/// encode back to the same meaning.
pub fn trust(data: &[u8]) {
    use fwdelta_format::signature::{self, KeyId};
    let key = ed25519_dalek::SigningKey::from_bytes(&TRUSTED_SEED);
    let public = key.verifying_key().to_bytes();
    let mut policy = fwdelta_apply::TrustPolicy::trusting(vec![public]);
    policy.product = Some("fuzz-t1".into());
    policy.min_counter = 2;
    let mut r = data;
    if let Ok((header, header_bytes, section, _)) = fwdelta_apply::inspect::read_patch_start(&mut r)
    {
        if let Ok(verdict) = policy.check(&header, &header_bytes, section.as_ref()) {
            let section = section.expect("an accepted patch is signed");
            let message = section.message(&header_bytes);
            assert!(
                section
                    .signatures
                    .iter()
                    .any(|s| s.key_id == KeyId::of(&public)
                        && signature::verify(&public, &message, &s.signature)),
                "accepted without a valid trusted signature"
            );
            assert_eq!(verdict.message, Some(message));
            let mut o = opts();
            o.policy = Some(std::sync::Arc::new(policy.clone()));
            if let Ok((report, out)) = apply(OLD, data, Vec::new(), o) {
                assert_eq!(report.header.new_len, out.len() as u64);
                assert_eq!(*blake3::hash(&out).as_bytes(), report.header.new_hash);
            }
        }
    }
    if let Ok(state) = fwdelta_device::state_file::State::decode(data) {
        let again = fwdelta_device::state_file::State::decode(&state.encode());
        assert_eq!(again.ok(), Some(state), "state file does not round-trip");
    }
    let h = fwdelta_device::history_log::parse(data);
    let lines = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(h.entries.len() + h.skipped, lines);
    if let Ok(rot) = fwdelta_format::key_rotation::KeyRotation::decode(data) {
        assert_eq!(rot.encode(), data, "rotation statement is not canonical");
    }
    let _ = fwdelta_format::key_file::parse_public_key(data);
}

/// Every parser on raw bytes: header (both steps), segment header, record head,
/// checkpoint, and a whole-container walk.
pub fn container(data: &[u8]) {
    if data.len() >= Header::PREFIX_LEN {
        let mut prefix = [0u8; Header::PREFIX_LEN];
        prefix.copy_from_slice(&data[..Header::PREFIX_LEN]);
        if let Ok(len) = Header::parse_prefix(&prefix) {
            if let Some(h) = data.get(..len) {
                if let Ok(header) = Header::parse(h) {
                    let rest = &data[len..];
                    let seg = &rest[..rest.len().min(SegmentHeader::MAX_LEN)];
                    if let Ok(Some(n)) = SegmentHeader::complete_len(seg, &header, 0) {
                        let _ = SegmentHeader::parse(&seg[..n], &header, 0, 0);
                        let _ = SegmentHeader::parse_cell(&seg[..n], &header, 0);
                    }
                }
            }
        }
    }
    let _ = Record::parse_head(data);
    let _ = Checkpoint::decode(data);
    if let Ok(info) = inspect(data) {
        assert_eq!(info.patch_len, data.len() as u64);
        assert_eq!(info.segments.len() as u32, info.header.segment_count);
    }
}

/// Check a successful apply's output against its header.
fn check_success(header: &Header, out: &[u8]) {
    assert_eq!(
        out.len() as u64,
        header.new_len,
        "accepted output of the wrong length"
    );
    assert_eq!(
        *blake3::hash(out).as_bytes(),
        header.new_hash,
        "accepted output with the wrong hash"
    );
}

/// Pull-mode apply of `data` to [`OLD`].
pub fn apply_pull(data: &[u8]) {
    if let Ok((report, out)) = apply(OLD, data, Vec::new(), opts()) {
        check_success(&report.header, &out);
    }
}

/// The checkpoints a segment-parallel apply hands its sink: in order, each
/// one segment further; its `write` is never called.
struct CheckpointOrder(u32);

impl fwdelta_apply::Sink for CheckpointOrder {
    fn write(&mut self, _: &[u8]) -> Result<(), fwdelta_apply::IoError> {
        panic!("the parallel applier wrote through the sink");
    }
    fn segment_done(
        &mut self,
        seg: &SegmentHeader,
        cp: &Checkpoint,
    ) -> Result<(), fwdelta_apply::IoError> {
        assert_eq!(seg.index, self.0, "checkpoint out of order");
        assert_eq!(
            cp.next_segment,
            self.0 + 1,
            "checkpoint names the wrong segment"
        );
        assert_eq!(cp.new_offset, seg.new_offset + seg.new_len);
        self.0 += 1;
        Ok(())
    }
}

/// The segment-parallel applier (two threads, the patch and the output as
/// files) on `data`, compared with pull mode: both accept with the same
/// image, or both refuse in the same class.
pub fn apply_parallel(data: &[u8]) {
    use std::io::{Read, Seek, Write};
    let mut patch = tempfile::tempfile().expect("temporary patch file");
    patch.write_all(data).expect("write the patch file");
    let mut out = tempfile::tempfile().expect("temporary output file");
    let par = fwdelta_apply::apply_parallel(OLD, &patch, &out, &mut CheckpointOrder(0), opts(), 2);
    let pull = apply(OLD, data, Vec::new(), opts());
    match (par, pull) {
        (Ok(report), Ok((_, image))) => {
            let mut got = Vec::new();
            out.rewind().expect("rewind the output");
            out.read_to_end(&mut got).expect("read the output");
            check_success(&report.header, &got);
            assert!(got == image, "parallel and pull produced different images");
        }
        (Err(p), Err(q)) => assert_eq!(p.class(), q.class(), "parallel {p} vs pull {q}"),
        (par, pull) => panic!(
            "parallel {:?} vs pull {:?}",
            par.map(|_| ()),
            pull.map(|_| ())
        ),
    }
}

/// Push-mode apply of `data[1..]` in chunks sized from `data[0]`, compared with
/// pull mode: both must accept with the same output or both refuse.
pub fn apply_push(data: &[u8]) {
    let Some((&seed, patch)) = data.split_first() else {
        return;
    };
    let mut a = Applier::new(OLD, Vec::new(), opts());
    let mut rest = patch;
    let mut step = usize::from(seed) + 1;
    let mut pushed = Ok(());
    while !rest.is_empty() && pushed.is_ok() {
        let n = step.min(rest.len());
        pushed = a.feed(&rest[..n]);
        rest = &rest[n..];
        step = step * 7 % 251 + 1;
    }
    let push = pushed.and_then(|_| a.finish());
    let pull = apply(OLD, patch, Vec::new(), opts());
    match (push, pull) {
        (Ok((r1, o1)), Ok((_, o2))) => {
            check_success(&r1.header, &o1);
            assert!(o1 == o2, "push and pull produced different images");
        }
        (Err(_), Err(_)) => {}
        (push, pull) => panic!("push {:?} vs pull {:?}", push.map(|_| ()), pull.map(|_| ())),
    }
}

/// In-place apply of `data` to a copy of [`OLD`] in memory. A memory region
/// has no I/O errors, so every refusal must leave the image byte-identical,
/// and every success must leave exactly the image the header promises.
pub fn apply_in_place(data: &[u8]) {
    let region = fwdelta_apply::MemRegion::new(OLD.to_vec());
    let result = fwdelta_apply::apply_in_place(&region, std::io::Cursor::new(data), opts());
    let image = region.into_inner();
    match result {
        Ok(report) => check_success(&report.header, &image),
        Err(e) => assert!(image == OLD, "refused ({e}) but modified the image"),
    }
}

/// The in-place journal target's fixed update: an old image of three 4 KiB
/// cells (the start of [`OLD`]), the new image (cell 1 changed, then the
/// cells rotated), and a stored-codec in-place patch writing the cells in
/// the order 2, 0, 1 from literals.
pub struct JournalFixture {
    /// The old image.
    pub old: Vec<u8>,
    /// The new image.
    pub new: Vec<u8>,
    /// The in-place patch from `old` to `new`.
    pub patch: Vec<u8>,
    /// Cells in the patch's order.
    pub order: [u64; 3],
}

/// The fixture, built once (a few microseconds: three literal cells).
pub fn journal_fixture() -> &'static JournalFixture {
    static FIXTURE: std::sync::OnceLock<JournalFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let old = OLD[..3 * 4096].to_vec();
        let mut changed = old.clone();
        changed[4096..8192]
            .iter_mut()
            .for_each(|b| *b = b.wrapping_add(1));
        let new = [&changed[8192..], &changed[..8192]].concat();
        let order = [2u64, 0, 1];
        let streams: Vec<Vec<u8>> = order
            .iter()
            .map(|&c| {
                let mut v = Vec::new();
                Record {
                    copy_len: 0,
                    diff_len: 0,
                    literal_len: 4096,
                    seek: 0,
                }
                .encode_head(&mut v);
                v.extend_from_slice(&new[c as usize * 4096..][..4096]);
                v
            })
            .collect();
        let header = Header {
            flags: fwdelta_format::header::FLAG_IN_PLACE,
            old_len: old.len() as u64,
            old_check: fwdelta_format::check_of(&old),
            new_len: new.len() as u64,
            new_hash: *blake3::hash(&new).as_bytes(),
            codec: Codec::Stored,
            window_log: 10,
            layout: Layout::Interleaved,
            segment_count: 3,
            apply_memory: MemoryModel::required_for(Codec::Stored, 10)
                + MemoryModel::in_place_extra(12, 3),
            cell_log: Some(12),
            code_refs: None,
            literal_filter: None,
            release: None,
        };
        let patch = fwdelta_testkit::seal_patch(
            &header,
            order
                .iter()
                .zip(&streams)
                .map(|(&c, s)| (c * 4096, 4096, 0, &s[..])),
        );
        JournalFixture {
            old,
            new,
            patch,
            order,
        }
    })
}

/// A journal in memory: two slots; with `writes_left`, the power goes (the
/// write fails, nothing of it lands) once that many writes have been made.
#[derive(Debug, Default, Clone)]
pub struct MemJournal {
    /// The two slots' bytes.
    pub slots: [Vec<u8>; 2],
    /// Writes (and clears) allowed before the power goes; `None`: never.
    pub writes_left: Option<usize>,
}

impl MemJournal {
    fn tick(&mut self) -> std::io::Result<()> {
        match &mut self.writes_left {
            Some(0) => Err(std::io::Error::other("power cut")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl fwdelta_apply::Journal for MemJournal {
    fn read_slot(&mut self, slot: usize, into: &mut Vec<u8>) -> std::io::Result<()> {
        into.clear();
        into.extend_from_slice(self.slots.get(slot).map_or(&[][..], |s| &s[..]));
        Ok(())
    }
    fn write_slot(&mut self, slot: usize, record: &[u8], cell: &[u8]) -> std::io::Result<()> {
        self.tick()?;
        let s = self
            .slots
            .get_mut(slot)
            .ok_or_else(|| std::io::Error::other("no such slot"))?;
        *s = [record, cell].concat();
        Ok(())
    }
    fn clear(&mut self) -> std::io::Result<()> {
        self.tick()?;
        self.slots = Default::default();
        Ok(())
    }
}

/// One journal slot through the parsers: what decodes must re-encode to the
/// same bytes, and a usable staged record's cell must match its hash.
fn check_slot(bytes: &[u8]) {
    use fwdelta_format::{InPlaceCheckpoint, Slot};
    let fixed = &bytes[..bytes.len().min(InPlaceCheckpoint::LEN)];
    let plain = InPlaceCheckpoint::decode(fixed);
    match InPlaceCheckpoint::decode_slot(bytes) {
        Ok(Slot::Usable(cp, cell)) => {
            assert_eq!(plain, Ok(cp), "slot and fixed-part parsers disagree");
            assert_eq!(cp.encode()[..], *fixed, "usable record does not re-encode");
            assert_eq!(
                cp.encode_for(cell),
                cp.encode(),
                "cell does not match its record"
            );
            assert_eq!(cell.len() as u64, cp.cell_len);
            assert!(cp.staged || cell.is_empty(), "unstaged record with a cell");
        }
        Ok(Slot::CellLost(cp)) => {
            assert_eq!(plain, Ok(cp), "slot and fixed-part parsers disagree");
            assert_eq!(cp.encode()[..], *fixed, "intact record does not re-encode");
        }
        Err(_) => assert!(plain.is_err(), "fixed part accepted alone, slot refused"),
    }
}

/// In-place journal and checkpoint parsers, the A/B choice, and a resume
/// from them. Input: one byte `m`, a little-endian `u16` split, then the two
/// slots' bytes (slot A is the first `split` bytes). The region starts as
/// the [`journal_fixture`]'s old image with its first `m % 4` cells (in
/// patch order) already new. Fails when a parser panics or disagrees with
/// itself, the choice breaks an A/B rule (the newest usable record wins;
/// the next write goes to the other slot with a higher sequence), or the
/// resume accepts a wrong image, leaves a journal after success, or writes
/// while reporting the update lost.
pub fn in_place_journal(data: &[u8]) {
    let _ = journal_resumes(data);
}

/// Run [`in_place_journal`] on `data`; whether the resume reached the new
/// image (false for inputs too short to hold the header bytes).
pub fn journal_resumes(data: &[u8]) -> bool {
    use fwdelta_format::{pick_slot, InPlaceCheckpoint, Slot};
    let [m, lo, hi, rest @ ..] = data else {
        return false;
    };
    let split = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
    let slots = [&rest[..split], &rest[split..]];
    slots.iter().for_each(|s| check_slot(s));

    let pick = pick_slot(slots);
    let decoded: Vec<_> = slots
        .iter()
        .map(|s| InPlaceCheckpoint::decode_slot(s).ok())
        .collect();
    let intact = decoded.iter().flatten().map(|d| match d {
        Slot::Usable(cp, _) | Slot::CellLost(cp) => cp.sequence,
    });
    assert!(
        intact.clone().all(|q| q < pick.next_sequence),
        "next sequence is not the highest"
    );
    let usable = decoded.iter().enumerate().filter_map(|(i, d)| match d {
        Some(Slot::Usable(cp, _)) => Some((i, cp.sequence)),
        _ => None,
    });
    match pick.best {
        Some((i, cp, _)) => {
            assert!(
                usable.clone().all(|(_, q)| q <= cp.sequence),
                "not the newest"
            );
            assert_ne!(
                pick.next_slot, i,
                "the next write would overwrite the winner"
            );
        }
        None => assert_eq!(usable.count(), 0, "a usable record was missed"),
    }
    assert_eq!(pick.any, slots.iter().any(|s| !s.is_empty()));

    let fx = journal_fixture();
    let mut image = fx.old.clone();
    for &c in &fx.order[..usize::from(*m) % 4] {
        let at = c as usize * 4096;
        image[at..at + 4096].copy_from_slice(&fx.new[at..at + 4096]);
    }
    let region = fwdelta_apply::MemRegion::new(image.clone());
    let mut journal = MemJournal {
        slots: [slots[0].to_vec(), slots[1].to_vec()],
        writes_left: None,
    };
    let result = fwdelta_apply::apply_in_place_with(
        &region,
        std::io::Cursor::new(&fx.patch),
        opts(),
        &mut journal,
    );
    let after = region.into_inner();
    match result {
        Ok(report) => {
            check_success(&report.header, &after);
            assert!(journal.slots.iter().all(|s| s.is_empty()), "journal left");
            true
        }
        Err(fwdelta_apply::ApplyError::UpdateLost(_)) => {
            assert!(after == image, "an update reported lost wrote the image");
            false
        }
        Err(_) => false,
    }
}

/// Seeds for [`in_place_journal`]: the journal and region after a power cut
/// at every journal write of the fixture's update (and damaged copies of
/// some), as `(name, input)`.
pub fn journal_seeds() -> Vec<(String, Vec<u8>)> {
    let fx = journal_fixture();
    let mut seeds = Vec::new();
    for cut in 0.. {
        let region = fwdelta_apply::MemRegion::new(fx.old.clone());
        let mut journal = MemJournal {
            writes_left: Some(cut),
            ..MemJournal::default()
        };
        let r = fwdelta_apply::apply_in_place_with(
            &region,
            std::io::Cursor::new(&fx.patch),
            opts(),
            &mut journal,
        );
        let image = region.into_inner();
        let done = fx
            .order
            .iter()
            .take_while(|&&c| {
                let at = c as usize * 4096;
                image[at..at + 4096] == fx.new[at..at + 4096]
            })
            .count();
        let input = |slots: &[Vec<u8>; 2]| {
            let mut v = vec![done as u8];
            v.extend_from_slice(&(slots[0].len() as u16).to_le_bytes());
            v.extend_from_slice(&slots[0]);
            v.extend_from_slice(&slots[1]);
            v
        };
        seeds.push((format!("cut-{cut:02}"), input(&journal.slots)));
        if let Some(i) = (0..2).find(|&i| journal.slots[i].len() > 20) {
            let mut bad = journal.slots.clone();
            let at = bad[i].len() / 2;
            bad[i][at] ^= 0x20;
            seeds.push((format!("cut-{cut:02}-flipped"), input(&bad)));
        }
        if r.is_ok() {
            break;
        }
    }
    seeds
}

/// A record as the structured target generates it.
#[derive(Debug, Clone)]
struct GenRecord {
    record: Record,
    diff: Vec<u8>,
    literal: Vec<u8>,
}

/// Independent reference interpreter: the new bytes a segment's records make
/// and the old cursor they leave, or `None` where the format says the applier
/// must refuse.
fn reference(old: &[u8], old_start: u64, records: &[GenRecord]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    let mut pos = i128::from(old_start);
    for r in records {
        let rec = &r.record;
        if rec.copy_len + rec.diff_len + rec.literal_len == 0 {
            return None;
        }
        let start = usize::try_from(pos).ok()?;
        let end = start.checked_add(usize::try_from(rec.copy_len + rec.diff_len).ok()?)?;
        let src = old.get(start..end)?;
        let (copy, diff) = src.split_at(rec.copy_len as usize);
        out.extend_from_slice(copy);
        out.extend(diff.iter().zip(&r.diff).map(|(o, d)| o.wrapping_add(*d)));
        out.extend_from_slice(&r.literal);
        pos = end as i128 + i128::from(rec.seek);
        if pos < 0 || pos > old.len() as i128 {
            return None;
        }
    }
    Some((out, usize::try_from(pos).ok()?))
}

fn gen_records(u: &mut Unstructured<'_>, old_len: usize) -> ArbResult<Vec<GenRecord>> {
    let n = u.int_in_range(0..=6)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let copy_len = u.int_in_range(0..=(old_len as u64 / 4))?;
        let diff_len = u.int_in_range(0..=64u64)?;
        let literal_len = u.int_in_range(0..=64u64)?;
        // Mostly plausible seeks, sometimes wild ones.
        let seek = if u.ratio(1, 8)? {
            u.arbitrary::<i64>()?
        } else {
            u.int_in_range(-512i64..=512)?
        };
        let diff = u.bytes(diff_len as usize)?.to_vec();
        let literal = u.bytes(literal_len as usize)?.to_vec();
        v.push(GenRecord {
            record: Record {
                copy_len,
                diff_len: diff.len() as u64,
                literal_len: literal.len() as u64,
                seek,
            },
            diff,
            literal,
        });
    }
    Ok(v)
}

/// Build a well-sealed patch (valid header and segment checks) from arbitrary
/// records, compute the expected image with [`reference`], and require the
/// applier to produce exactly it, or to refuse exactly when the reference does.
pub fn apply_structured(data: &[u8]) {
    let _ = structured(&mut Unstructured::new(data));
}

/// How many of `inputs` the structured target built into patches the
/// applier accepted, and how many into patches it (rightly) refused.
pub fn structured_verdicts(inputs: &[Vec<u8>]) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for i in inputs {
        match structured(&mut Unstructured::new(i)) {
            Ok(Some(true)) => ok += 1,
            Ok(Some(false)) => refused += 1,
            _ => {}
        }
    }
    (ok, refused)
}

/// `Some(true)` if the built patch was valid and applied, `Some(false)` if it
/// was invalid and refused, `None` if the input ran out before a patch was built.
fn structured(u: &mut Unstructured<'_>) -> ArbResult<Option<bool>> {
    let old = OLD;
    let (codec, layout) = match u.int_in_range(0..=4u8)? {
        0 => (Codec::Stored, Layout::Interleaved),
        1 => (Codec::Zstd, Layout::Interleaved),
        2 => (Codec::Lzma2, Layout::Interleaved),
        3 => (Codec::Lzma2, Layout::Split),
        _ => (Codec::Lzma2, Layout::Modelled),
    };
    let window_log: u8 = u.int_in_range(10..=16)?;
    // Literal runs stored through a literal filter (AArch64, A32, x86-64): the reference
    // restores them word by word (see `restore_literals`).
    let literal_filter = match u.int_in_range(0..=3u8)? {
        0 => None,
        1 => Some(Arch::Aarch64),
        2 => Some(Arch::Arm32),
        _ => Some(Arch::X86_64),
    };
    let count = u.int_in_range(1..=4)?;
    let mut segments = Vec::new();
    let mut expected = Some(Vec::new());
    let mut new_len = 0u64;
    for _ in 0..count {
        let old_start = u.int_in_range(0..=old.len() as u64)?;
        let records = gen_records(u, old.len())?;
        // Sometimes the segment claims more than its records make: the
        // implied tail copy takes the rest from the old cursor.
        let tail = if u.ratio(1, 3)? {
            u.int_in_range(1..=old.len() / 2)?
        } else {
            0
        };
        let made = reference(old, old_start, &records).and_then(|(m, pos)| {
            let mut m = restore_literals(m, &records, new_len, literal_filter);
            m.extend_from_slice(old.get(pos..pos.checked_add(tail)?)?);
            Some(m)
        });
        let claimed = match &made {
            Some(m) => m.len() as u64,
            None => u.int_in_range(1..=4096)?,
        };
        if claimed == 0 {
            return Ok(None);
        }
        match (&mut expected, made) {
            (Some(e), Some(m)) => e.extend_from_slice(&m),
            _ => expected = None,
        }
        let payload = match layout {
            Layout::Interleaved => {
                let mut stream = Vec::new();
                for r in &records {
                    r.record.encode_head(&mut stream);
                    stream.extend_from_slice(&r.diff);
                    stream.extend_from_slice(&r.literal);
                }
                match codec {
                    Codec::Stored => stream,
                    Codec::Zstd => compress(&stream, window_log),
                    Codec::Lzma2 => compress_lzma2(&stream, window_log),
                }
            }
            // Blocks cut wherever the input says.
            Layout::Split | Layout::Modelled => {
                split_blocks(u, &records, old, old_start, window_log, layout)?
            }
        };
        if payload.is_empty() {
            return Ok(None);
        }
        segments.push((new_len, claimed, old_start, payload));
        new_len += claimed;
    }
    let new_hash = match &expected {
        Some(e) => *blake3::hash(e).as_bytes(),
        None => [0x5a; 32],
    };
    let header = Header {
        flags: 0,
        old_len: old.len() as u64,
        old_check: fwdelta_format::check_of(old),
        new_len,
        new_hash,
        codec,
        window_log,
        layout,
        segment_count: segments.len() as u32,
        apply_memory: MemoryModel::required_for_layout(codec, window_log, layout),
        cell_log: None,
        code_refs: None,
        literal_filter,
        release: None,
    };
    let patch = fwdelta_testkit::seal_patch(
        &header,
        segments
            .iter()
            .map(|(at, len, old_start, p)| (*at, *len, *old_start, &p[..])),
    );

    let result = apply(old, &patch[..], Vec::new(), opts());
    match (&expected, result) {
        (Some(e), Ok((_, out))) => {
            assert!(out == *e, "applier output differs from the reference");
            Ok(Some(true))
        }
        (Some(_), Err(err)) => panic!("applier refused a valid patch: {err}"),
        (None, Ok(_)) => panic!("applier accepted records the reference refuses"),
        (None, Err(_)) => Ok(Some(false)),
    }
}

/// The reference's output of one segment starting at new offset `at`, with
/// its literal runs (stored bytes) restored as the literal filter's rule
/// says: AArch64 and A32, each whole aligned word inside a run; x86-64, each E8/E9
/// rel32 met by a scan that steps 5 bytes past one and 1 byte otherwise.
fn restore_literals(
    mut made: Vec<u8>,
    records: &[GenRecord],
    at: u64,
    filter: Option<Arch>,
) -> Vec<u8> {
    let Some(arch) = filter else { return made };
    let mut pos = 0usize;
    for r in records {
        let start = pos + (r.record.copy_len + r.record.diff_len) as usize;
        let end = start + r.record.literal_len as usize;
        let mut w = start;
        while arch == Arch::X86_64 && w < end {
            if (made[w] == 0xe8 || made[w] == 0xe9) && w + 5 <= end {
                let v = u32::from_le_bytes([made[w + 1], made[w + 2], made[w + 3], made[w + 4]]);
                let restored = literal_filter::from_stored(arch, v, at + w as u64 + 5);
                made[w + 1..w + 5].copy_from_slice(&restored.to_le_bytes());
                w += 5;
            } else {
                w += 1;
            }
        }
        while matches!(arch, Arch::Aarch64 | Arch::Arm32) && w + 4 <= end {
            let abs = at + w as u64;
            if abs.is_multiple_of(4) {
                let word = u32::from_le_bytes([made[w], made[w + 1], made[w + 2], made[w + 3]]);
                let restored = literal_filter::from_stored(arch, word, abs);
                made[w..w + 4].copy_from_slice(&restored.to_le_bytes());
                w += 4;
            } else {
                w += 1;
            }
        }
        pos = end;
    }
    made
}

/// A split-layout payload of `records`, cut into blocks after the records
/// the input picks: in layout 2 each stream one LZMA2 stream, in layout 3
/// the heads and diffs coded by the head and diff models and the literals
/// one LZMA2 stream.
fn split_blocks(
    u: &mut Unstructured<'_>,
    records: &[GenRecord],
    old: &[u8],
    old_start: u64,
    window_log: u8,
    layout: Layout,
) -> ArbResult<Vec<u8>> {
    let mut blocks: Vec<[Vec<u8>; 3]> = vec![Default::default()];
    // Layout 3: each block's diff bytes with the old context they apply to
    // (zero context where a record reaches outside the old image: the
    // applier refuses it before decoding its diffs).
    let mut modelled: Vec<Vec<(OldContext, u8)>> = vec![Vec::new()];
    let mut cursor = i128::from(old_start);
    for (i, r) in records.iter().enumerate() {
        let b = blocks.last_mut().expect("one block at least");
        r.record.encode_head(&mut b[0]);
        b[1].extend_from_slice(&r.diff);
        b[2].extend_from_slice(&r.literal);
        cursor += i128::from(r.record.copy_len);
        let piece = modelled.last_mut().expect("one block at least");
        for (j, &d) in r.diff.iter().enumerate() {
            let p = cursor + j as i128;
            let ctx = usize::try_from(p).ok().filter(|&p| p < old.len()).map_or(
                OldContext {
                    prev: 0,
                    cur: 0,
                    next: 0,
                    pos: 0,
                },
                |p| OldContext::at(old, p, p as u64),
            );
            piece.push((ctx, d));
        }
        cursor += i128::from(r.record.diff_len) + i128::from(r.record.seek);
        if i + 1 < records.len() && u.arbitrary::<bool>()? {
            blocks.push(Default::default());
            modelled.push(Vec::new());
        }
    }
    let views: Vec<[&[u8]; 3]> = blocks
        .iter()
        .map(|b| [&b[0][..], &b[1][..], &b[2][..]])
        .collect();
    // One dictionary for all three streams: the smallest of their windows
    // (a stream may always use less than its window).
    let dict = MemoryModel::lzma_dict(MemoryModel::split_window_logs(window_log)[0]) as u32;
    if layout == Layout::Split {
        return Ok(fwdelta_testkit::split_lzma2(&views, dict).unwrap_or_default());
    }
    let heads: Vec<&[u8]> = views.iter().map(|v| v[0]).collect();
    let lits: Vec<&[u8]> = views.iter().map(|v| v[2]).collect();
    let heads = fwdelta_testkit::model_head_chunks(&heads);
    let diffs = fwdelta_testkit::model_diff_chunks(&modelled, window_log);
    let Some(lits) = fwdelta_testkit::lzma2_chunks(&lits, dict, true) else {
        return Ok(Vec::new());
    };
    let chunks: Vec<[&[u8]; 3]> = (0..views.len())
        .map(|i| [&heads[i][..], &diffs[i][..], &lits[i][..]])
        .collect();
    Ok(fwdelta_testkit::split_payload(&chunks))
}

fn compress(stream: &[u8], window_log: u8) -> Vec<u8> {
    use zstd::stream::raw::CParameter;
    let Ok(mut c) = zstd::bulk::Compressor::new(1) else {
        return Vec::new();
    };
    let _ = c.set_parameter(CParameter::WindowLog(u32::from(window_log)));
    let _ = c.set_parameter(CParameter::Format(zstd::zstd_safe::FrameFormat::Magicless));
    c.compress(stream).unwrap_or_default()
}

fn compress_lzma2(stream: &[u8], window_log: u8) -> Vec<u8> {
    use liblzma::stream::{Filters, LzmaOptions, Stream};
    use std::io::Write;
    let Ok(mut opts) = LzmaOptions::new_preset(1) else {
        return Vec::new();
    };
    opts.dict_size(MemoryModel::lzma_dict(window_log) as u32);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let Ok(enc) = Stream::new_raw_encoder(&filters) else {
        return Vec::new();
    };
    let mut w = liblzma::write::XzEncoder::new_stream(Vec::new(), enc);
    match w.write_all(stream) {
        Ok(()) => w.finish().unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// A fuzz target function.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/` and the replay test know them.
pub const TARGETS: [(&str, Target); 8] = [
    ("container", container),
    ("trust", trust),
    ("apply_pull", apply_pull),
    ("apply_push", apply_push),
    ("apply_parallel", apply_parallel),
    ("apply_structured", apply_structured),
    ("apply_in_place", apply_in_place),
    ("in_place_journal", in_place_journal),
];
