//! In-place apply for single-slot flash: rewrite one region holding the old
//! image into the new image, with a cell-sized scratch buffer.
//!
//! Nothing is overwritten until the patch has been proven to produce the
//! declared image from this old image:
//!
//! 1. the whole patch is verified (header, every segment check, every cell
//!    exactly once, none missing);
//! 2. the old image's length and BLAKE3 are verified;
//! 3. an ordering pass decodes every cell in the patch's order and refuses the
//!    patch if any cell reads old bytes of a cell written before it (the
//!    generator orders cells so this never happens; a patch that does it
//!    would destroy the image it reads);
//! 4. a dry run decodes every cell, in image order, against the untouched
//!    region and checks the new image's BLAKE3;
//! 5. only then are cells decoded again, in the patch's order, each into the
//!    scratch buffer and then over its cell (the ordering guard stays on);
//! 6. the region is cut to the new length, synced, and hashed once more.
//!
//! Costs: the patch is read four times (it must be seekable: a file, or a
//! download kept in storage), cells are decoded three times, the old image is
//! read about four times. Memory: the header's claim (decoder, buffers, one cell,
//! and 8 bytes per cell); a resume first reads both journal slots (up to two
//! cells), freed before the cell buffer is taken, and checks the record
//! against the region with a dry run from it (the unwritten cells decoded
//! once more, the region read once) before it writes anything.
//!
//! Journal (see [`Journal`]): before step 5 a first record goes to both of
//! two slots; before each cell is written over the image, its bytes go to
//! both slots, one after the other, each record with a higher sequence
//! number and its own checks. The journal is therefore written about twice
//! the image's size. A power loss tears at most the slot being written, and
//! the image is only written while both slots hold the cell, so one intact
//! slot always suffices: the newest usable record wins.

use crate::applier::Segment;
use crate::error::{ApplyError, PatchPart};
use crate::inspect::inspect_each;
use crate::patch_reader::{limits, read_start, Mode, Part, PatchReader, ReadParts};
use crate::payload_decoder::PayloadDecoder;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::record_interpreter::SegmentFault;
use crate::record_interpreter::{Buffers, NewWriter, RecordInterpreter};
use crate::sink::Sink;
use crate::source::OldImage;
use crate::stream_source::StreamSource;
use crate::trust_policy::Verdict;
use crate::IoError;
use crate::{ApplyOptions, ApplyReport, BUFFER_LEN};
use fwdelta_format::header::Header;
use fwdelta_format::segment::SegmentHeader;
use fwdelta_format::InPlaceCheckpoint;
use fwdelta_format::{FormatError, Layout, HASH_LEN};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Decodes whole segments one at a time from a reader: the building block of
/// the in-place applier, which visits segments in its own order (and a
/// different sink in each pass). Holds the interleaved source (a payload
/// decoder, unless payloads are stored, and its 16 KiB window), the
/// interpreter's two 16 KiB buffers between runs, and a 16 KiB input buffer.
pub(crate) struct SegmentRunner {
    source: StreamSource,
    buffers: Option<Buffers>,
    in_buf: Vec<u8>,
    header_hash: [u8; HASH_LEN],
}

impl SegmentRunner {
    /// A runner for the segments of the patch with `header`, whose bytes hash
    /// to `header_hash` (segment checks bind to it).
    pub(crate) fn new(
        header: &Header,
        header_hash: [u8; HASH_LEN],
    ) -> Result<SegmentRunner, ApplyError> {
        // The header parser refuses split in-place patches; this runner only
        // knows the interleaved layout.
        if header.layout != Layout::Interleaved {
            return Err(ApplyError::Format(FormatError::BadField {
                field: "layout",
                detail: "in-place patches use the interleaved layout".into(),
            }));
        }
        Ok(SegmentRunner {
            source: StreamSource::new(PayloadDecoder::for_header(header)?),
            buffers: Some(Buffers::new()),
            in_buf: vec![0; BUFFER_LEN],
            header_hash,
        })
    }

    /// Decode segment `head` (encoded as `head_bytes`), whose payload is next
    /// in `patch`, reading `old` and writing to `sink`. Returns the segment's
    /// hash (bound to the patch header and the segment's index); the caller
    /// checks it against the stored check. Validates the stream as the push
    /// applier does.
    pub(crate) fn run<O: OldImage + ?Sized, S: Sink, R: Read>(
        &mut self,
        head: SegmentHeader,
        head_bytes: &[u8],
        patch: &mut R,
        old: &O,
        sink: S,
    ) -> Result<blake3::Hash, ApplyError> {
        self.source.reset()?;
        let mut seg = Segment::new(head, head_bytes, &self.header_hash);
        let new = NewWriter {
            sink,
            // Segment output is checked by the caller (dry-run hash, final
            // region hash); hashing it here too would be wasted.
            hash: None,
            produced: 0,
        };
        let buffers = self.buffers.take().unwrap_or_else(Buffers::new);
        // The header refuses a predictor and a literal filter in in-place
        // patches.
        let mut interp = RecordInterpreter::new(old, None, None, new, buffers);
        interp.start_segment(&head);
        let result = self.pump(&mut seg, &mut interp, patch).and_then(|()| {
            interp.finish_segment(self.source.frame_done(), self.source.partial_head())
        });
        self.buffers = Some(interp.into_buffers());
        result?;
        Ok(seg.check.finalize())
    }

    fn pump<O: OldImage + ?Sized, S: Sink, R: Read>(
        &mut self,
        seg: &mut Segment,
        interp: &mut RecordInterpreter<'_, O, S>,
        patch: &mut R,
    ) -> Result<(), ApplyError> {
        while seg.payload_left > 0 {
            let want = (seg.payload_left as usize).min(self.in_buf.len());
            let n = match patch.read(&mut self.in_buf[..want]) {
                Ok(0) => {
                    return Err(ApplyError::Truncated {
                        stage: PatchPart::Segment(seg.head.index),
                        offset: 0,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::PatchRead(e)),
            };
            let chunk = &self.in_buf[..n];
            seg.check.update(chunk);
            let mut fed = self.source.fed(chunk, n == seg.payload_left as usize);
            interp.run(&mut fed)?;
            fed.done().map_err(|f| f.at(seg.head.index))?;
            seg.payload_left -= n as u32;
        }
        Ok(())
    }
}

/// Storage that holds the old image and receives the new one in place.
pub trait Region {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the region is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Grow or shrink to `len` bytes (a fixed partition may accept any `len`
    /// up to its size and ignore it).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make everything written so far durable.
    fn sync(&self) -> io::Result<()>;
}

/// A region in a file, read and written by offset.
#[derive(Debug)]
pub struct FileRegion {
    file: File,
}

impl FileRegion {
    /// Open `path` for reading and writing.
    pub fn open(path: &Path) -> io::Result<FileRegion> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(FileRegion { file })
    }
}

impl Region for FileRegion {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

/// A region in memory (tests, RAM-backed images).
#[derive(Debug, Default)]
pub struct MemRegion(pub RefCell<Vec<u8>>);

impl MemRegion {
    /// A region holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> MemRegion {
        MemRegion(RefCell::new(bytes))
    }
    /// The region's bytes.
    pub fn into_inner(self) -> Vec<u8> {
        self.0.into_inner()
    }
}

impl Region for MemRegion {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.borrow().len() as u64)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Ok(self.0.borrow().as_slice().read_at(offset, buf)?)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut v = self.0.borrow_mut();
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(data.len())
            .ok_or(io::ErrorKind::InvalidInput)?;
        if end > v.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        v[start..end].copy_from_slice(data);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        self.0.borrow_mut().resize(len, 0);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The region seen as the old image: reads limited to the old length, and
/// refused where they would hit a cell already rewritten (other than the cell
/// being decoded, whose output goes to scratch first).
struct OldView<'r, R: ?Sized> {
    region: &'r R,
    old_len: u64,
    cell: u64,
    /// One bit per cell of the new image: rewritten (or, in the ordering
    /// pass, would have been).
    written: RefCell<Vec<u8>>,
    current: std::cell::Cell<u64>,
    violation: std::cell::Cell<Option<u64>>,
}

impl<'r, R: Region + ?Sized> OldView<'r, R> {
    fn new(region: &'r R, header: &Header, cell: u64) -> Self {
        OldView {
            region,
            old_len: header.old_len,
            cell,
            written: RefCell::new(vec![0; (header.segment_count as usize).div_ceil(8)]),
            current: std::cell::Cell::new(0),
            violation: std::cell::Cell::new(None),
        }
    }

    fn is_written(&self, c: u64) -> bool {
        let w = self.written.borrow();
        w.get((c / 8) as usize)
            .is_some_and(|b| b & (1 << (c % 8)) != 0)
    }

    fn mark_written(&self, c: u64) {
        if let Some(b) = self.written.borrow_mut().get_mut((c / 8) as usize) {
            *b |= 1 << (c % 8);
        }
    }

    fn reset(&self) {
        self.written.borrow_mut().iter_mut().for_each(|b| *b = 0);
        self.violation.set(None);
    }

    /// Turn an error from decoding cell `current` into the ordering refusal
    /// if the guard tripped.
    fn explain(&self, err: ApplyError, index: u32) -> ApplyError {
        match self.violation.get() {
            Some(c) => SegmentFault::ReadsRewrittenCell {
                cell: self.current.get(),
                reads: c,
            }
            .at(index),
            None => err,
        }
    }
}

impl<R: Region + ?Sized> OldImage for OldView<'_, R> {
    fn len(&self) -> u64 {
        self.old_len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        if !buf.is_empty() {
            let last = (offset + buf.len() as u64 - 1) / self.cell;
            for c in offset / self.cell..=last {
                if c != self.current.get() && self.is_written(c) {
                    self.violation.set(Some(c));
                    return Err(IoError::new("read of a rewritten cell"));
                }
            }
        }
        Ok(self.region.read_at(offset, buf)?)
    }
}

/// A sink that discards (ordering pass).
struct NullSink;

impl Sink for NullSink {
    fn write(&mut self, _data: &[u8]) -> Result<(), IoError> {
        Ok(())
    }
}

/// A sink that only hashes (dry run).
struct HashSink<'h>(&'h mut blake3::Hasher);

impl Sink for HashSink<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        self.0.update(data);
        Ok(())
    }
}

/// A sink into the cell buffer.
struct CellSink<'c>(&'c mut Vec<u8>);

impl Sink for CellSink<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        self.0.extend_from_slice(data);
        Ok(())
    }
}

fn read_exact<P: Read>(patch: &mut P, buf: &mut [u8], stage: PatchPart) -> Result<(), ApplyError> {
    patch.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ApplyError::Truncated { stage, offset: 0 },
        _ => ApplyError::PatchRead(e),
    })
}

/// Hash `len` bytes of the region from offset 0.
fn hash_region<R: Region + ?Sized>(region: &R, len: u64) -> io::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; BUFFER_LEN];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(BUFFER_LEN as u64) as usize;
        region.read_at(pos, &mut buf[..n])?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finalize())
}

/// Where an in-place apply persists its progress, so a power loss can be
/// resumed: two slots (A = 0, B = 1), each holding one record (an
/// [`InPlaceCheckpoint`] and, when staged, the cell's bytes; `docs/FORMAT.md`,
/// "In-place patches"). The applier writes every record to the slot that does
/// not hold the newest valid one, and every staged cell to both slots before
/// the cell goes over the image, so any one torn or damaged slot falls back
/// to the other.
pub trait Journal {
    /// Read slot `slot` (0 or 1) into `into` (replacing its contents); an
    /// absent or empty slot reads as no bytes.
    fn read_slot(&mut self, slot: usize, into: &mut Vec<u8>) -> io::Result<()>;
    /// Durably replace slot `slot` with `record` followed by `cell` (which
    /// may be empty). A power loss part-way may leave that slot damaged,
    /// never the other.
    fn write_slot(&mut self, slot: usize, record: &[u8], cell: &[u8]) -> io::Result<()>;
    /// Forget both slots (the apply finished).
    fn clear(&mut self) -> io::Result<()>;
}

/// A journal that keeps nothing: an interrupted apply cannot be resumed.
#[derive(Debug, Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn read_slot(&mut self, _: usize, into: &mut Vec<u8>) -> io::Result<()> {
        into.clear();
        Ok(())
    }
    fn write_slot(&mut self, _: usize, _: &[u8], _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn clear(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A journal in two hidden files beside the image: slot A is
/// `.NAME.fwdelta-inplace`, slot B `.NAME.fwdelta-journal`. Each is rewritten
/// in place (no temporary file) and fsynced; a slot file is created
/// exclusively with mode 0600, opened with `O_NOFOLLOW`, and refused unless
/// it is a regular file owned by this user with one link, so nothing is ever
/// written through a planted link.
#[derive(Debug)]
pub struct FileJournal {
    slots: [std::path::PathBuf; 2],
}

impl FileJournal {
    /// The journal for the image at `image` (nothing is opened yet).
    pub fn beside(image: &Path) -> io::Result<FileJournal> {
        Ok(FileJournal {
            slots: [
                crate::atomic_file::sibling(image, "fwdelta-inplace")?,
                crate::atomic_file::sibling(image, "fwdelta-journal")?,
            ],
        })
    }

    fn path(&self, slot: usize) -> io::Result<&Path> {
        self.slots
            .get(slot)
            .map(|p| p.as_path())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such journal slot"))
    }
}

/// Longest valid journal slot: a record and a cell of 2^24 bytes (the
/// largest cell). A [`Journal`] may treat a longer slot as damaged without
/// reading it.
pub const MAX_JOURNAL_SLOT_LEN: u64 = InPlaceCheckpoint::LEN as u64 + (1 << 24);

/// Open an existing journal file without following a link, and check that it
/// is ours to write: a regular file, owned by this user, with one link.
/// (`O_NONBLOCK` so that a planted FIFO is refused instead of waited on; it
/// changes nothing for a regular file.)
fn open_slot(path: &Path, write: bool) -> io::Result<Option<File>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused(path, "is a symbolic link"))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() {
        return Err(refused(path, "is not a regular file"));
    }
    if meta.uid() != me {
        return Err(refused(path, "is owned by another user"));
    }
    if meta.nlink() != 1 {
        return Err(refused(path, "has other hard links"));
    }
    Ok(Some(file))
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("journal file {} {why}; refusing to use it", path.display()),
    )
}

impl Journal for FileJournal {
    fn read_slot(&mut self, slot: usize, into: &mut Vec<u8>) -> io::Result<()> {
        into.clear();
        if let Some(f) = open_slot(self.path(slot)?, false)? {
            // No valid record is longer than this; a longer file is damaged
            // and need not be read whole (one byte more shows it is longer).
            f.take(MAX_JOURNAL_SLOT_LEN + 1).read_to_end(into)?;
        }
        Ok(())
    }
    fn write_slot(&mut self, slot: usize, record: &[u8], cell: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.path(slot)?;
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
        let (file, new) = match created {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match open_slot(path, true)? {
                Some(f) => (f, false),
                None => return Err(refused(path, "vanished while opening")),
            },
            Err(e) => return Err(e),
        };
        if file.metadata()?.permissions().mode() & 0o777 != 0o600 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all_at(record, 0)?;
        file.write_all_at(cell, record.len() as u64)?;
        file.set_len((record.len() + cell.len()) as u64)?;
        file.sync_all()?;
        if new {
            crate::atomic_file::sync_dir_of(path)?;
        }
        Ok(())
    }
    fn clear(&mut self) -> io::Result<()> {
        // Removing a planted link removes the link only.
        crate::atomic_file::remove_if_present(&self.slots[0])?;
        crate::atomic_file::remove_if_present(&self.slots[1])?;
        crate::atomic_file::sync_dir_of(&self.slots[0])
    }
}

/// The applier's side of the A/B journal: where the next record goes and
/// which sequence number it carries.
struct AbWriter<'j, J: ?Sized> {
    journal: &'j mut J,
    next_slot: usize,
    next_sequence: u64,
}

impl<J: Journal + ?Sized> AbWriter<'_, J> {
    /// Write `cp` (with `cell` when staged) to the slot not holding the newest
    /// record.
    fn put(&mut self, cp: &mut InPlaceCheckpoint, cell: &[u8]) -> io::Result<()> {
        cp.sequence = self.next_sequence;
        let cell = if cp.staged { cell } else { &[] };
        self.journal
            .write_slot(self.next_slot, &cp.encode_for(cell), cell)?;
        self.next_slot ^= 1;
        self.next_sequence += 1;
        Ok(())
    }

    /// The same record in both slots, one after the other: once this
    /// returns, either copy alone is enough to resume.
    fn put_twice(&mut self, cp: &mut InPlaceCheckpoint, cell: &[u8]) -> io::Result<()> {
        self.put(cp, cell)?;
        self.put(cp, cell)
    }
}

/// What the image holds when an update cannot go on: runs of cells in image
/// order, e.g. "cells 0-11 are new, 12 may be torn, 13-40 are old".
fn describe_cells(state: &[u8]) -> String {
    const NAMES: [&str; 3] = ["old", "new", "may be torn"];
    let mut runs: Vec<(usize, usize, u8)> = Vec::new();
    for (c, &s) in state.iter().enumerate() {
        match runs.last_mut() {
            Some((_, end, last)) if *last == s => *end = c,
            _ => runs.push((c, c, s)),
        }
    }
    if runs.len() > 8 {
        let count = |k: u8| state.iter().filter(|&&s| s == k).count();
        return format!(
            "{} of {} cells are new, {} may be torn, {} are old",
            count(1),
            state.len(),
            count(2),
            count(0)
        );
    }
    let parts: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(i, &(a, b, s))| {
            let cells = if a == b {
                format!("{a}")
            } else {
                format!("{a}-{b}")
            };
            let verb = match (s, a == b) {
                (2, _) => NAMES[2].to_string(),
                (_, true) => format!("is {}", NAMES[s as usize]),
                (_, false) => format!("are {}", NAMES[s as usize]),
            };
            if i == 0 {
                format!("{} {cells} {verb}", if a == b { "cell" } else { "cells" })
            } else {
                format!("{cells} {verb}")
            }
        })
        .collect();
    parts.join(", ")
}

/// Apply the in-place patch `patch` to `region`, which holds the old image,
/// keeping no journal (see [`apply_in_place_with`]).
pub fn apply_in_place<R: Region + ?Sized, P: Read + Seek>(
    region: &R,
    patch: P,
    opts: ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    apply_in_place_with(region, patch, opts, &mut NoJournal)
}

/// Apply the in-place patch `patch` to `region`, which holds the old image
/// (see the module documentation for the steps and their costs), persisting
/// progress in `journal`. If the journal holds the state of an interrupted
/// apply of this same patch (its newest usable record, in either slot), it is
/// resumed once a dry run from that state (step 4 with the recorded cells
/// taken as the region and the journal hold them) makes the new image: the
/// staged cell (if any) is written again from the journal and the rewrite
/// continues. A record that does not describe the region (the image was
/// restored or changed since the cut, or the journal was written by hand)
/// is not trusted: a region holding the old image is updated from the start
/// (an expired patch is then refused), one holding the new image is reported
/// as applied, and any other is refused as [`ApplyError::UpdateLost`] with
/// nothing written. A journal whose records are all damaged is ignored if
/// the region still holds the old image (or already the new one).
///
/// Errors before step 5 leave the region untouched. An I/O error during steps
/// 5-6 leaves it partly rewritten (the error says so); with a journal, calling
/// again finishes the job. If the journal lost every usable record while the
/// region is neither version, the result is [`ApplyError::UpdateLost`], which
/// says what the region holds; it writes nothing.
///
/// Segment headers are read a byte at a time (their length is known when
/// their varints end): give a buffered `patch` (a `BufReader` over a file).
pub fn apply_in_place_with<R: Region + ?Sized, P: Read + Seek, J: Journal + ?Sized>(
    region: &R,
    patch: P,
    opts: ApplyOptions,
    journal: &mut J,
) -> Result<ApplyReport, ApplyError> {
    let mut run = InPlaceApply::open(region, patch, &opts, journal)?;
    let slots = run.read_journal()?;
    let pick = fwdelta_format::pick_slot([&slots[0], &slots[1]]);
    run.ab.next_slot = pick.next_slot;
    run.ab.next_sequence = pick.next_sequence;
    let resumable = match run.journal_resume(&pick)? {
        Some((cp, staged)) => run.check_resume(cp, staged)?,
        None => None,
    };
    let cp = match resumable {
        Some((cp, staged)) => run.resume(cp, staged)?,
        // No record of this patch, or one that does not describe the region
        // (which then holds the old image or the new one): from the start.
        None => {
            if run.already_applied()? {
                return run.report(true);
            }
            // An image that is neither version (its journal lost) is
            // reported as such first: an expired patch cannot finish it.
            run.verify_old(&pick)?;
            if let Some(e) = run.expired.take() {
                return Err(e);
            }
            run.ordering_pass()?;
            run.dry_run()?;
            run.first_record()?
        }
    };
    // The slots read back are no longer needed: free them before the cell
    // buffer is taken.
    drop(slots);
    run.rewrite(cp)?;
    run.finish()?;
    run.report(false)
}

/// The two journal slots as read back.
type Slots = [Vec<u8>; 2];

/// Which image a region may hold.
#[derive(Clone, Copy)]
enum Version {
    Old,
    New,
}

/// One in-place apply, one method per step of the module documentation.
/// Holds the patch's framing reader (header, section), the cell index (8
/// bytes a cell), the guarded view of the region and the segment decoder.
struct InPlaceApply<'a, R: ?Sized, P, J: ?Sized> {
    region: &'a R,
    patch: P,
    /// The header and section; reads every segment head.
    reader: PatchReader,
    /// Where segment 0 starts (after a signed patch's signature section).
    body_start: u64,
    header_hash: [u8; 32],
    cell: u64,
    checks: Checks,
    verdict: Verdict,
    /// The policy refused the patch as expired: it may only finish an
    /// update of it the journal shows begun.
    expired: Option<ApplyError>,
    /// Per cell: where its segment starts in the patch, and its position in
    /// patch order (which its check binds to), packed as `offset << 16 |
    /// index` (at most 2^16 cells; a patch over 2^48 bytes is refused).
    cells: Vec<u64>,
    patch_len: u64,
    ab: AbWriter<'a, J>,
    old: OldView<'a, R>,
    runner: SegmentRunner,
}

impl<'a, R: Region + ?Sized, P: Read + Seek, J: Journal + ?Sized> InPlaceApply<'a, R, P, J> {
    /// Step 1: the header and section, within the limits and accepted by
    /// the policy (before anything else is read), then the whole patch,
    /// verified, with an index of where each cell's segment starts.
    fn open(
        region: &'a R,
        mut patch: P,
        opts: &ApplyOptions,
        journal: &'a mut J,
    ) -> Result<Self, ApplyError> {
        patch
            .seek(SeekFrom::Start(0))
            .map_err(ApplyError::PatchRead)?;
        let mut reader = read_start(&mut patch, limits(opts, Mode::InPlace))?;
        let start = reader.start().ok_or(ApplyError::Poisoned)?;
        let header = &start.header;
        let cell = header.cell_len().ok_or(ApplyError::WrongMode(
            "this patch is not an in-place patch: apply it to a new file",
        ))?;
        // Signatures and release rules before anything else is read. An
        // expired patch is refused only if this is not the resume of an
        // update of it begun before (which the journal tells, next).
        let (verdict, expired) =
            opts.judge_deferring_expiry(header, &start.header_bytes, start.section.as_ref())?;
        let (body_start, header_hash) = (start.body_start, start.header_hash);
        let old = OldView::new(region, header, cell);
        let runner = SegmentRunner::new(header, header_hash)?;
        let checks = Checks::of(reader.take_section());
        patch
            .seek(SeekFrom::Start(0))
            .map_err(ApplyError::PatchRead)?;
        let count = reader.start().map_or(0, |s| s.header.segment_count);
        let mut cells = vec![0u64; count as usize];
        let mut too_long = false;
        let summary = inspect_each(&mut patch, |s, at| {
            too_long |= at >> 48 != 0;
            if let Some(slot) = cells.get_mut((s.new_offset / cell) as usize) {
                *slot = at << 16 | u64::from(s.index);
            }
        })?;
        if too_long {
            return Err(ApplyError::Format(fwdelta_format::FormatError::BadField {
                field: "segments",
                detail: "an in-place patch larger than 2^48 bytes".into(),
            }));
        }
        Ok(InPlaceApply {
            region,
            patch,
            reader,
            body_start,
            header_hash,
            cell,
            checks,
            verdict,
            expired,
            cells,
            patch_len: summary.patch_len,
            ab: AbWriter {
                journal,
                next_slot: 0,
                next_sequence: 0,
            },
            old,
            runner,
        })
    }

    fn header(&self) -> Result<&Header, ApplyError> {
        self.reader
            .start()
            .map(|s| &s.header)
            .ok_or(ApplyError::Poisoned)
    }

    /// Both journal slots (to be judged: the newest usable record wins, and
    /// the next record goes to the other slot).
    fn read_journal(&mut self) -> Result<Slots, ApplyError> {
        let mut slots: Slots = [Vec::new(), Vec::new()];
        for (i, slot) in slots.iter_mut().enumerate() {
            self.ab
                .journal
                .read_slot(i, slot)
                .map_err(|e| ApplyError::Sink(e.into()))?;
        }
        Ok(slots)
    }

    /// The journal's record of an interrupted apply of this patch, if any
    /// (one of another patch is refused).
    fn journal_resume<'s>(
        &self,
        pick: &fwdelta_format::SlotPick<'s>,
    ) -> Result<Option<(InPlaceCheckpoint, &'s [u8])>, ApplyError> {
        match pick.best {
            Some((_, cp, staged)) if cp.header_hash == self.header_hash => Ok(Some((cp, staged))),
            Some(_) => Err(ApplyError::InterruptedUpdate(
                "the image is in the middle of an in-place update by another patch; finish that one first",
            )),
            None => Ok(None),
        }
    }

    /// Whether the journal's record `cp` (with its staged cell `staged`)
    /// describes the region, so the update may go on from it. The record
    /// alone proves nothing about the image: a journal left by a cut update
    /// beside an image restored since, or one written by hand, would have
    /// the resume write its cell over a whole image and leave neither
    /// version. So before anything is written:
    ///
    /// - an expired patch whose image is still the old one is refused as
    ///   expired (nothing of it was written: there is nothing to finish);
    /// - a dry run from the record must make the new image
    ///   ([`Self::resumes_to_new`]);
    /// - if it does not, a region holding the old or the new image is
    ///   updated (or reported) from the start (`None`), and any other is
    ///   refused as [`ApplyError::UpdateLost`].
    fn check_resume<'s>(
        &mut self,
        cp: InPlaceCheckpoint,
        staged: &'s [u8],
    ) -> Result<Option<(InPlaceCheckpoint, &'s [u8])>, ApplyError> {
        if self.expired.is_some() && self.holds(Version::Old)? {
            return Err(self.expired.take().unwrap_or(ApplyError::Poisoned));
        }
        if self.resumes_to_new(&cp, staged)? {
            return Ok(Some((cp, staged)));
        }
        self.old.reset();
        if self.holds(Version::Old)? || self.holds(Version::New)? {
            return Ok(None);
        }
        Err(ApplyError::UpdateLost(crate::error::UpdateLost {
            reason: "the image is not in the state the in-place journal beside it records (changed since the update was cut?)".into(),
            image: "it is neither the old image nor the new one".into(),
        }))
    }

    /// Whether the region holds the header's old (or new) image: its
    /// length and BLAKE3. Reads it once.
    fn holds(&self, version: Version) -> Result<bool, ApplyError> {
        let h = self.header()?;
        let len = match version {
            Version::Old => h.old_len,
            Version::New => h.new_len,
        };
        let actual = self
            .region
            .len()
            .map_err(|e| ApplyError::OldRead(e.into()))?;
        if actual != len {
            return Ok(false);
        }
        let hash = hash_region(self.region, len).map_err(|e| ApplyError::OldRead(e.into()))?;
        Ok(match version {
            Version::Old => crate::error::check_old_hash(&hash, h).is_ok(),
            Version::New => *hash.as_bytes() == h.new_hash,
        })
    }

    /// The dry run of step 4 from journal record `cp`: the cells it records
    /// as written are hashed as the region holds them (the staged one as the
    /// journal holds it), the others decoded from the region's old bytes
    /// with the ordering guard on; true if that is the new image. Writes
    /// nothing; leaves the written cells marked for the guard. Refuses a
    /// record that does not fit the patch. Costs what step 4 costs: the
    /// region read once, the unwritten cells decoded.
    fn resumes_to_new(
        &mut self,
        cp: &InPlaceCheckpoint,
        staged: &[u8],
    ) -> Result<bool, ApplyError> {
        let count = self.header()?.segment_count;
        if cp.next_segment > count || (cp.staged && cp.next_segment == count) {
            return Err(misfit());
        }
        let cell = self.cell;
        let old = &self.old;
        let offset = mark_done(
            &mut self.patch,
            &mut self.reader,
            self.body_start,
            cp.next_segment,
            |c| old.mark_written(c / cell),
        )?;
        if offset != cp.patch_offset {
            return Err(misfit());
        }
        if cp.staged {
            let (head, _) = segment_at(&mut self.patch, &mut self.reader, offset, cp.next_segment)?;
            if head.new_offset != cp.cell_offset || head.new_len != staged.len() as u64 {
                return Err(misfit());
            }
            self.old.mark_written(cp.cell_offset / cell);
        }
        let mut new_hash = blake3::Hasher::new();
        let mut buf = Vec::new();
        for c in 0..self.cells.len() {
            let packed = self.cells[c];
            let (offset, index) = (packed >> 16, (packed & 0xFFFF) as u32);
            let (head, bytes) = segment_at(&mut self.patch, &mut self.reader, offset, index)?;
            if index < cp.next_segment {
                buf.resize(BUFFER_LEN, 0);
                let end = head.new_offset + head.new_len;
                let mut pos = head.new_offset;
                while pos < end {
                    let n = (end - pos).min(BUFFER_LEN as u64) as usize;
                    match self.region.read_at(pos, &mut buf[..n]) {
                        Ok(()) => new_hash.update(&buf[..n]),
                        // Shorter than the record says it made it.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                        Err(e) => return Err(ApplyError::OldRead(e.into())),
                    };
                    pos += n as u64;
                }
            } else if cp.staged && index == cp.next_segment {
                new_hash.update(staged);
            } else {
                self.decode_cell(head, &bytes, c as u64, HashSink(&mut new_hash))?;
            }
        }
        Ok(*new_hash.finalize().as_bytes() == self.header()?.new_hash)
    }

    /// Resume from journal record `cp`, which [`Self::check_resume`] found
    /// to describe the region (and marked the cells written before the
    /// interruption for the guard): write the staged cell again.
    fn resume(
        &mut self,
        mut cp: InPlaceCheckpoint,
        staged: &[u8],
    ) -> Result<InPlaceCheckpoint, ApplyError> {
        let (old_len, new_len) = {
            let h = self.header()?;
            (h.old_len, h.new_len)
        };
        if new_len > old_len {
            self.region.set_len(new_len).map_err(partial)?;
        }
        if cp.staged {
            let (head, bytes) = segment_at(
                &mut self.patch,
                &mut self.reader,
                cp.patch_offset,
                cp.next_segment,
            )?;
            self.region
                .write_at(cp.cell_offset, staged)
                .map_err(partial)?;
            self.region.sync().map_err(partial)?;
            self.old.mark_written(cp.cell_offset / self.cell);
            cp.next_segment += 1;
            cp.patch_offset +=
                (bytes.len() + head.payload_len as usize + self.checks.stored_len()) as u64;
            cp.staged = false;
            cp.cell_offset = 0;
        }
        Ok(cp)
    }

    /// Whether the update already completed (a power loss after the last
    /// step but before the caller heard of it); then the journal is cleared.
    fn already_applied(&mut self) -> Result<bool, ApplyError> {
        let h = self.header()?;
        let actual = self
            .region
            .len()
            .map_err(|e| ApplyError::OldRead(e.into()))?;
        if actual == h.new_len
            && (actual != h.old_len || h.old_check[..] != h.new_hash[..fwdelta_format::CHECK_LEN])
        {
            let now =
                hash_region(self.region, h.new_len).map_err(|e| ApplyError::OldRead(e.into()))?;
            if *now.as_bytes() == h.new_hash {
                self.ab
                    .journal
                    .clear()
                    .map_err(|e| ApplyError::Sink(e.into()))?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Step 2: the old image's length and hash. Neither version, with a
    /// journal that is there but unusable: the update was under way and
    /// cannot be finished.
    fn verify_old(&mut self, pick: &fwdelta_format::SlotPick<'_>) -> Result<(), ApplyError> {
        let (expected, actual) = (
            self.header()?.old_len,
            self.region
                .len()
                .map_err(|e| ApplyError::OldRead(e.into()))?,
        );
        if actual != expected {
            if pick.any {
                return Err(self.lost(pick.lost));
            }
            return Err(ApplyError::OldLength { expected, actual });
        }
        let old_hash =
            hash_region(self.region, expected).map_err(|e| ApplyError::OldRead(e.into()))?;
        if let Err(e) = crate::error::check_old_hash(&old_hash, self.header()?) {
            return Err(if pick.any { self.lost(pick.lost) } else { e });
        }
        Ok(())
    }

    fn lost(&mut self, lost: Option<InPlaceCheckpoint>) -> ApplyError {
        lost_update(
            &mut self.patch,
            &mut self.reader,
            self.body_start,
            self.header_hash,
            lost,
        )
    }

    /// Decode cell `c` (segment `head`, whose header bytes are `bytes`)
    /// into `sink` with the ordering guard on (a read of a cell marked
    /// written is refused as such), and compare the segment's check.
    fn decode_cell<S: Sink>(
        &mut self,
        head: SegmentHeader,
        bytes: &[u8],
        c: u64,
        sink: S,
    ) -> Result<(), ApplyError> {
        self.old.current.set(c);
        let hash = self
            .runner
            .run(head, bytes, &mut self.patch, &self.old, sink)
            .map_err(|e| self.old.explain(e, head.index))?;
        self.checks.verify(&mut self.patch, &hash, head.index)
    }

    /// Step 3: decode every cell in patch order, refusing the patch if any
    /// reads old bytes of a cell written before it.
    fn ordering_pass(&mut self) -> Result<(), ApplyError> {
        self.patch
            .seek(SeekFrom::Start(self.body_start))
            .map_err(ApplyError::PatchRead)?;
        for index in 0..self.header()?.segment_count {
            let offset = self
                .patch
                .stream_position()
                .map_err(ApplyError::PatchRead)?;
            let (head, bytes) = segment_at(&mut self.patch, &mut self.reader, offset, index)?;
            let c = head.new_offset / self.cell;
            self.decode_cell(head, &bytes, c, NullSink)?;
            self.old.mark_written(c);
        }
        self.old.reset();
        Ok(())
    }

    /// Step 4: decode every cell in image order against the untouched
    /// region; the new image's hash must match. Nothing is written.
    fn dry_run(&mut self) -> Result<(), ApplyError> {
        let mut new_hash = blake3::Hasher::new();
        for c in 0..self.cells.len() {
            let packed = self.cells[c];
            let (offset, index) = (packed >> 16, (packed & 0xFFFF) as u32);
            let (head, bytes) = segment_at(&mut self.patch, &mut self.reader, offset, index)?;
            self.decode_cell(head, &bytes, c as u64, HashSink(&mut new_hash))?;
        }
        if *new_hash.finalize().as_bytes() != self.header()?.new_hash {
            return Err(ApplyError::NewHashMismatch);
        }
        Ok(())
    }

    /// From here on the region may change: record that first, in both
    /// slots, then give the region its new length if it grows.
    fn first_record(&mut self) -> Result<InPlaceCheckpoint, ApplyError> {
        let mut cp = InPlaceCheckpoint {
            sequence: 0,
            header_hash: self.header_hash,
            next_segment: 0,
            patch_offset: self.body_start,
            staged: false,
            cell_offset: 0,
            cell_len: 0,
            cell_hash: [0; 32],
        };
        self.ab
            .put_twice(&mut cp, &[])
            .map_err(|e| ApplyError::Sink(e.into()))?;
        let h = self.header()?;
        if h.new_len > h.old_len {
            self.region.set_len(h.new_len).map_err(partial)?;
        }
        Ok(cp)
    }

    /// Step 5: rewrite, cell by cell, in patch order (the guard stays on):
    /// decode the cell into the scratch buffer (one cell), stage it in both
    /// journal slots, then write it over the image.
    fn rewrite(&mut self, mut cp: InPlaceCheckpoint) -> Result<(), ApplyError> {
        let mut scratch = Vec::with_capacity(self.cell as usize);
        self.patch
            .seek(SeekFrom::Start(cp.patch_offset))
            .map_err(ApplyError::PatchRead)?;
        while cp.next_segment < self.header()?.segment_count {
            let (head, bytes) = segment_at(
                &mut self.patch,
                &mut self.reader,
                cp.patch_offset,
                cp.next_segment,
            )?;
            let c = head.new_offset / self.cell;
            scratch.clear();
            self.decode_cell(head, &bytes, c, CellSink(&mut scratch))?;
            cp.staged = true;
            cp.cell_offset = head.new_offset;
            self.ab.put_twice(&mut cp, &scratch).map_err(partial)?;
            self.region
                .write_at(head.new_offset, &scratch)
                .map_err(partial)?;
            self.region.sync().map_err(partial)?;
            self.old.mark_written(c);
            cp.staged = false;
            cp.cell_offset = 0;
            cp.next_segment += 1;
            cp.patch_offset = self
                .patch
                .stream_position()
                .map_err(ApplyError::PatchRead)?;
        }
        Ok(())
    }

    /// Step 6: final length, durability, one more look at the whole image,
    /// and the journal cleared.
    fn finish(&mut self) -> Result<(), ApplyError> {
        let (old_len, new_len, new_hash) = {
            let h = self.header()?;
            (h.old_len, h.new_len, h.new_hash)
        };
        if new_len < old_len {
            self.region.set_len(new_len).map_err(partial)?;
        }
        self.region.sync().map_err(partial)?;
        let final_hash = hash_region(self.region, new_len).map_err(partial)?;
        if *final_hash.as_bytes() != new_hash {
            return Err(partial(io::Error::other(
                "the rewritten image does not verify",
            )));
        }
        self.ab
            .journal
            .clear()
            .map_err(|e| ApplyError::Sink(e.into()))
    }

    /// What the apply did.
    fn report(self, already_applied: bool) -> Result<ApplyReport, ApplyError> {
        let start = self.reader.into_start().ok_or(ApplyError::Poisoned)?;
        Ok(ApplyReport {
            header: start.header,
            patch_len: self.patch_len,
            already_applied,
            verdict: self.verdict,
        })
    }
}

/// An I/O error once the region may have changed: it says so.
fn partial(e: io::Error) -> ApplyError {
    ApplyError::Sink(io::Error::new(e.kind(), format!("{e}; the image is partly rewritten")).into())
}

/// The journal holds a record of this patch that does not fit it.
fn misfit() -> ApplyError {
    ApplyError::InterruptedUpdate(
        "the in-place journal beside the image does not fit this patch; finish the update it belongs to first",
    )
}

/// Walk the headers of the first `done` segments (in patch order) from patch
/// offset `from`, calling `cell_at` with each one's new-image offset; returns
/// the patch offset of segment `done`. Reads only segment headers.
fn mark_done<P: Read + Seek>(
    patch: &mut P,
    reader: &mut PatchReader,
    from: u64,
    done: u32,
    mut cell_at: impl FnMut(u64),
) -> Result<u64, ApplyError> {
    let mut offset = from;
    for index in 0..done {
        let (head, bytes) = segment_at(patch, reader, offset, index)?;
        cell_at(head.new_offset);
        let header = &reader.start().ok_or(ApplyError::Poisoned)?.header;
        let check = if header.segment_has_check(index) {
            fwdelta_format::CHECK_LEN
        } else {
            0 // a signed patch's checks are in its signature section
        };
        offset += (bytes.len() + head.payload_len as usize + check) as u64;
    }
    Ok(offset)
}

/// The error for an update that cannot go on: no usable journal record, and
/// a region that is neither the old nor the new image. `lost` is the newest
/// record whose fixed part survived (its cell did not), if any: it tells
/// which cells were already new.
fn lost_update<P: Read + Seek>(
    patch: &mut P,
    reader: &mut PatchReader,
    header_len: u64,
    header_hash: [u8; 32],
    lost: Option<InPlaceCheckpoint>,
) -> ApplyError {
    let (cell, count) = match reader.start() {
        Some(s) => (
            s.header.cell_len().unwrap_or(1).max(1),
            s.header.segment_count,
        ),
        None => return ApplyError::Poisoned,
    };
    let mut state = vec![0u8; count as usize];
    let known = lost.filter(|l| l.header_hash == header_hash).and_then(|l| {
        let done = l.next_segment.min(count);
        let mut mark = |c: u64| {
            if let Some(s) = state.get_mut((c / cell) as usize) {
                *s = 1;
            }
        };
        mark_done(patch, reader, header_len, done, &mut mark).ok()?;
        if l.staged {
            if let Some(s) = state.get_mut((l.cell_offset / cell) as usize) {
                *s = 2;
            }
        }
        Some(l)
    });
    let (reason, image) = match known {
        Some(l) if l.staged => (
            format!(
                "both journal copies of cell {} are damaged while it was being written",
                l.cell_offset / cell
            ),
            describe_cells(&state),
        ),
        Some(_) => (
            "both copies of the in-place journal are damaged".to_string(),
            describe_cells(&state),
        ),
        None => (
            "both copies of the in-place journal are damaged or unreadable".to_string(),
            "which of its cells are new is unknown".to_string(),
        ),
    };
    ApplyError::UpdateLost(crate::error::UpdateLost { reason, image })
}

/// Read the header of segment `index` (in patch order) at patch offset
/// `offset` through `reader`; it may name any cell. Returns it and its bytes.
fn segment_at<P: Read + Seek>(
    patch: &mut P,
    reader: &mut PatchReader,
    offset: u64,
    index: u32,
) -> Result<(SegmentHeader, Vec<u8>), ApplyError> {
    patch
        .seek(SeekFrom::Start(offset))
        .map_err(ApplyError::PatchRead)?;
    reader.set_offset(offset);
    reader.expect_segment(index);
    match reader.read_part(patch)? {
        Part::Segment(head) => Ok((head, reader.segment_bytes().to_vec())),
        _ => Err(ApplyError::Poisoned),
    }
}

/// Where segment checks are: after each segment's payload, or (signed
/// patches) in the signature section's table, held in memory.
enum Checks {
    Inline,
    Table(Vec<[u8; fwdelta_format::CHECK_LEN]>),
}

impl Checks {
    fn of(section: Option<fwdelta_format::SignatureSection>) -> Checks {
        match section {
            Some(s) => Checks::Table(s.checks),
            None => Checks::Inline,
        }
    }

    /// Bytes a segment's check takes after its payload.
    fn stored_len(&self) -> usize {
        match self {
            Checks::Inline => fwdelta_format::CHECK_LEN,
            Checks::Table(_) => 0,
        }
    }

    /// Compare segment `index`'s check with the hash just computed (reading
    /// it from `patch` when it is stored inline; the patch may have changed
    /// since it was verified).
    fn verify<P: Read>(
        &self,
        patch: &mut P,
        hash: &blake3::Hash,
        index: u32,
    ) -> Result<(), ApplyError> {
        let mut c = [0u8; fwdelta_format::CHECK_LEN];
        match self {
            Checks::Inline => read_exact(patch, &mut c, PatchPart::SegmentCheck(index))?,
            Checks::Table(t) => c = t.get(index as usize).copied().unwrap_or_default(),
        }
        if fwdelta_format::truncate_check(hash) != c {
            return Err(SegmentFault::CheckMismatch.at(index));
        }
        Ok(())
    }
}
