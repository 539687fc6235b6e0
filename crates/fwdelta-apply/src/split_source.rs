//! The split layouts (2 and 3) as a [`RecordSource`]: a segment's payload
//! is a run of blocks, each holding three streams — record heads, diff
//! bytes, literal bytes — which this source decodes block by block and hands
//! to the record interpreter in record order. In layout 3 the record heads
//! come from the head model (`fwdelta_format::head_model`) and the diff bytes
//! from the diff model (`fwdelta_format::diff_model`), decoded as each record
//! needs them, with the old bytes the interpreter read for the record as
//! their context (the same read the new bytes are made from: no old byte is
//! read or copied twice).
//!
//! Memory: three payload decoders (windows as
//! `MemoryModel::split_window_logs` derives them from the header's; in layout
//! 3 the head model instead of the heads decoder, and the diff model with a
//! history of the diff window instead of the diff decoder), one block
//! buffer of at most `MAX_BLOCK_BUFFER` (64 KiB) for a block's compressed
//! heads and diffs, and three 16 KiB decoded-byte windows, as
//! `MemoryModel::required_for_layout` counts them. The literal chunk, usually
//! the largest, streams through without being held. Passes: one over the
//! payload.

use crate::error::ApplyError;
use crate::payload_decoder::PayloadDecoder;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::record_interpreter::{Head, OldRun, RecordInterpreter, RecordSource, SegmentFault};
use crate::sink::Sink;
use crate::source::OldImage;
use crate::BUFFER_LEN;
use fwdelta_format::bit_coder::BitDecoder;
use fwdelta_format::diff_model::{DiffModel, OldContext};
use fwdelta_format::head_model::HeadModel;
use fwdelta_format::header::{Header, Layout};
use fwdelta_format::record::{Record, MAX_HEAD_LEN};
use fwdelta_format::split_block::{BlockHeader, MAX_BLOCK_BUFFER, MAX_BLOCK_HEAD_LEN, STREAMS};
use fwdelta_format::MemoryModel;

const HEADS: usize = 0;
const DIFFS: usize = 1;
const LITS: usize = 2;
const NAMES: [&str; STREAMS] = ["record-head", "diff", "literal"];

/// Where in a block the payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Collecting a block header.
    BlockHead,
    /// Buffering the block's heads and diffs chunks.
    Buffer,
    /// Streaming the block's literal chunk (`left` compressed bytes to come).
    Literals { left: u64 },
}

/// Decoded bytes of one stream not yet used: `buf[start..end]`.
struct Window {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Window {
    fn new() -> Window {
        Window {
            buf: vec![0; BUFFER_LEN],
            start: 0,
            end: 0,
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Hand out the next `n` decoded bytes (at most what is available).
    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.start;
        self.start = (start + n).min(self.end);
        &self.buf[start..self.start]
    }
}

/// One stream: its decoder, its decoded bytes, and where it stands.
struct Stream {
    /// `None` for the heads and diff streams of layout 3 (the models decode
    /// them).
    dec: Option<PayloadDecoder>,
    out: Window,
    /// Received compressed bytes in this segment.
    started: bool,
    /// Its end (zstd frame end, LZMA2 end marker) has been decoded.
    ended: bool,
}

impl Stream {
    /// Decode from `input` into the free end of the window (compacting it
    /// first). Returns the input bytes consumed and the bytes decoded.
    fn decode(&mut self, input: &[u8], which: usize) -> Result<(usize, usize), SegmentFault> {
        if self.ended {
            if !input.is_empty() {
                return Err(SegmentFault::AfterStream(NAMES[which]));
            }
            return Ok((0, 0));
        }
        if self.out.start > 0 {
            self.out.buf.copy_within(self.out.start..self.out.end, 0);
            self.out.end -= self.out.start;
            self.out.start = 0;
        }
        let Some(dec) = self.dec.as_mut() else {
            return Err(SegmentFault::Decode(format!(
                "the {} stream has no decoder",
                NAMES[which]
            )));
        };
        let step = dec
            .run(input, &mut self.out.buf[self.out.end..])
            .map_err(SegmentFault::Decode)?;
        self.out.end += step.written;
        if step.done {
            self.ended = true;
            if step.read < input.len() {
                return Err(SegmentFault::AfterStream(NAMES[which]));
            }
        }
        Ok((step.read, step.written))
    }
}

/// The split-layout reader of one patch, reset between segments.
pub(crate) struct SplitStreams {
    streams: [Stream; STREAMS],
    part: Part,
    block: BlockHeader,
    /// Block header bytes collected so far.
    head_acc: Vec<u8>,
    /// Payload bytes left when the current block header started.
    left_at_block: u64,
    /// The block's heads chunk, then its diffs chunk.
    buf: Vec<u8>,
    /// Bytes of the heads and diffs chunks the decoders have consumed.
    used: [usize; 2],
    /// Layout 3: the diff model and its work.
    modelled: Option<Box<Modelled>>,
    /// The payload may end here (between blocks, every stream that began
    /// has ended).
    frame_done: bool,
    /// The segment being decoded (errors name it).
    index: u32,
}

/// The models of a layout-3 patch and the decoders of the current block's
/// heads and diffs chunks.
struct Modelled {
    model: DiffModel,
    bits: BitDecoder,
    /// Whether any diff byte of the current block was decoded.
    used: bool,
    heads: HeadModel,
    head_bits: BitDecoder,
    /// Where the block's records stand.
    records: Records,
}

/// Progress through a layout-3 block's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// None decoded yet.
    First,
    /// Some decoded; the flag before the next is still to come.
    More,
    /// The flag after the last was decoded.
    Done,
}

impl SplitStreams {
    /// A reader for `header`'s segments (which must use the split layout and
    /// a compressed codec). Allocates the three decoders and the buffers.
    pub(crate) fn new(header: &Header) -> Result<SplitStreams, ApplyError> {
        let [h, d, l] = MemoryModel::split_window_logs(header.window_log);
        let modelled = header.layout == Layout::Modelled;
        let stream = |window_log, decoded: bool| -> Result<Stream, ApplyError> {
            let dec = if decoded {
                Some(
                    PayloadDecoder::new(header.codec, window_log)?.ok_or_else(|| {
                        ApplyError::Decoder("split streams need a compressed codec".into())
                    })?,
                )
            } else {
                None
            };
            Ok(Stream {
                dec,
                out: Window::new(),
                started: false,
                ended: false,
            })
        };
        Ok(SplitStreams {
            streams: [
                stream(h, !modelled)?,
                stream(d, !modelled)?,
                stream(l, true)?,
            ],
            part: Part::BlockHead,
            block: BlockHeader {
                heads_len: 0,
                diffs_len: 0,
                lits_len: 0,
            },
            head_acc: Vec::with_capacity(MAX_BLOCK_HEAD_LEN),
            left_at_block: 0,
            buf: Vec::with_capacity(MAX_BLOCK_BUFFER),
            used: [0; 2],
            modelled: modelled.then(|| {
                Box::new(Modelled {
                    model: DiffModel::new(d),
                    bits: BitDecoder::default(),
                    used: false,
                    heads: HeadModel::new(),
                    head_bits: BitDecoder::default(),
                    records: Records::First,
                })
            }),
            frame_done: false,
            index: 0,
        })
    }

    /// Ready for the payload of segment `index`.
    pub(crate) fn reset(&mut self, index: u32) -> Result<(), ApplyError> {
        for s in &mut self.streams {
            if let Some(dec) = s.dec.as_mut() {
                dec.reset()?;
            }
            s.out.start = 0;
            s.out.end = 0;
            s.started = false;
            s.ended = false;
        }
        self.part = Part::BlockHead;
        self.head_acc.clear();
        self.buf.clear();
        self.used = [0; 2];
        if let Some(m) = self.modelled.as_mut() {
            m.model.reset();
            m.heads.reset();
        }
        self.frame_done = false;
        self.index = index;
        Ok(())
    }

    /// Whether the payload may end here: between blocks, every stream that
    /// began has ended.
    pub(crate) fn frame_done(&self) -> bool {
        self.frame_done
    }

    /// Consume payload bytes `data`, of which the payload has `payload_left`
    /// (counting them), running the block's records through `interp` as
    /// far as the bytes received allow.
    pub(crate) fn feed<O: OldImage + ?Sized, S: Sink>(
        &mut self,
        data: &[u8],
        payload_left: u32,
        interp: &mut RecordInterpreter<'_, O, S>,
    ) -> Result<(), ApplyError> {
        let mut at = 0;
        while at < data.len() {
            match self.part {
                Part::BlockHead => {
                    if self.head_acc.is_empty() {
                        self.left_at_block = u64::from(payload_left) - at as u64;
                        self.frame_done = false;
                    }
                    self.head_acc.push(data[at]);
                    at += 1;
                    let parsed = BlockHeader::parse(&self.head_acc, self.left_at_block)
                        .map_err(|e| SegmentFault::Format(e).at(self.index))?;
                    if let Some((block, _)) = parsed {
                        self.start_block(block).map_err(|f| f.at(self.index))?;
                        if block.buffered_len() == 0 {
                            self.after_buffer(interp)?;
                        }
                    }
                }
                Part::Buffer => {
                    let take = (self.block.buffered_len() - self.buf.len()).min(data.len() - at);
                    self.buf.extend_from_slice(&data[at..at + take]);
                    at += take;
                    if self.buf.len() == self.block.buffered_len() {
                        self.after_buffer(interp)?;
                    }
                }
                Part::Literals { left } => {
                    let take = (left.min((data.len() - at) as u64)) as usize;
                    interp.run(&mut Fed {
                        s: self,
                        lits: &data[at..at + take],
                    })?;
                    at += take;
                    let left = left - take as u64;
                    self.part = Part::Literals { left };
                    if left == 0 {
                        self.end_block(interp.at_head())
                            .map_err(|f| f.at(self.index))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_block(&mut self, block: BlockHeader) -> Result<(), SegmentFault> {
        for (s, len) in block.lens().into_iter().enumerate() {
            // The models' chunks have no end to wait for.
            if len > 0 && self.streams[s].dec.is_some() {
                if self.streams[s].ended {
                    return Err(SegmentFault::AfterStream(NAMES[s]));
                }
                self.streams[s].started = true;
            }
        }
        self.block = block;
        self.head_acc.clear();
        self.buf.clear();
        self.used = [0; 2];
        self.part = Part::Buffer;
        Ok(())
    }

    /// The block's heads and diffs are in: run its records as far as they
    /// go without literals.
    fn after_buffer<O: OldImage + ?Sized, S: Sink>(
        &mut self,
        interp: &mut RecordInterpreter<'_, O, S>,
    ) -> Result<(), ApplyError> {
        self.part = Part::Literals {
            left: self.block.lits_len,
        };
        if let Some(m) = self.modelled.as_mut() {
            let h = self.block.heads_len as usize;
            m.head_bits = BitDecoder::start(&self.buf[..h]);
            m.records = Records::First;
            m.bits = BitDecoder::start(&self.buf[h..]);
            m.used = false;
        }
        interp.run(&mut Fed { s: self, lits: &[] })?;
        if self.block.lits_len == 0 {
            self.end_block(interp.at_head())
                .map_err(|f| f.at(self.index))?;
        }
        Ok(())
    }

    /// Decode diff bytes into the (empty) diff window from the block's
    /// diffs chunk (layout 2).
    fn fill_diffs(&mut self) -> Result<(), SegmentFault> {
        let h = self.block.heads_len as usize;
        while self.streams[DIFFS].out.is_empty() {
            let input = &self.buf[h + self.used[1]..];
            let (read, written) = self.streams[DIFFS].decode(input, DIFFS)?;
            self.used[1] += read;
            if read == 0 && written == 0 {
                return Err(SegmentFault::MissingDiffs);
            }
        }
        Ok(())
    }

    /// Length of the next whole record head at the front of the heads
    /// window, decoding more as needed; `None` when the block has no more.
    fn next_head_len(&mut self) -> Result<Option<usize>, SegmentFault> {
        if let Some(m) = self.modelled.as_deref_mut() {
            return next_modelled_head(m, &self.buf, &self.block, &mut self.streams[HEADS].out)
                .map_err(SegmentFault::Heads);
        }
        loop {
            let avail = self.streams[HEADS].out.avail();
            if !avail.is_empty() {
                match Record::parse_head(avail) {
                    Ok(Some((_, n))) => return Ok(Some(n)),
                    Ok(None) => {}
                    Err(e) => return Err(SegmentFault::Format(e)),
                }
            }
            let input = &self.buf[self.used[0]..self.block.heads_len as usize];
            let (read, written) = self.streams[HEADS].decode(input, HEADS)?;
            self.used[0] += read;
            if read == 0 && written == 0 {
                return if !input.is_empty() {
                    Err(SegmentFault::NoProgress)
                } else if self.streams[HEADS].out.is_empty() {
                    Ok(None)
                } else {
                    Err(SegmentFault::CutHead)
                };
            }
        }
    }

    /// The block's literal chunk is in (and the interpreter has run its
    /// records as far as they go): its records must be done (`at_head`),
    /// and its chunks used up without leaving decoded bytes.
    fn end_block(&mut self, at_head: bool) -> Result<(), SegmentFault> {
        if !at_head {
            return Err(SegmentFault::MissingLiterals);
        }
        // The interpreter stopped at the end of the heads; the diffs and
        // literals must be used up, including anything a decoder still holds.
        let h = self.block.heads_len as usize;
        if let Some(m) = self.modelled.as_deref() {
            // next_head_len returned None: the heads chunk's records ended
            // (or it is empty), and the decoder must have reached its end.
            if h > 0 && (m.records != Records::Done || m.head_bits.read() < h) {
                return Err(SegmentFault::HeadsAfterLast);
            }
            let len = self.block.diffs_len as usize;
            // A chunk the model wrote ends within three bytes of where the
            // decoder stopped reading.
            let unused = if m.used { m.bits.read() < len } else { len > 0 };
            if unused || !self.streams[DIFFS].out.is_empty() {
                return Err(SegmentFault::UnusedDiffs);
            }
        } else {
            loop {
                let input = &self.buf[h + self.used[1]..];
                let (read, written) = self.streams[DIFFS].decode(input, DIFFS)?;
                self.used[1] += read;
                if written > 0 || !self.streams[DIFFS].out.is_empty() {
                    return Err(SegmentFault::UnusedDiffs);
                }
                if read == 0 {
                    if !input.is_empty() {
                        return Err(SegmentFault::NoProgress);
                    }
                    break;
                }
            }
        }
        let (_, written) = self.streams[LITS].decode(&[], LITS)?;
        if written > 0 || !self.streams[LITS].out.is_empty() {
            return Err(SegmentFault::UnusedLiterals);
        }
        self.part = Part::BlockHead;
        self.frame_done = self.streams.iter().all(|s| s.ended || !s.started);
        Ok(())
    }
}

/// The split source with the next bytes of the block's literal chunk to
/// draw on (the glue between the bytes that arrived and the interpreter).
struct Fed<'s, 'i> {
    s: &'s mut SplitStreams,
    lits: &'i [u8],
}

impl RecordSource for Fed<'_, '_> {
    fn diff_context(&self) -> bool {
        self.s.modelled.is_some()
    }

    fn next_head(&mut self) -> Result<Head, SegmentFault> {
        match self.s.next_head_len()? {
            Some(n) => {
                let bytes = self.s.streams[HEADS].out.take(n);
                match Record::parse_head(bytes).map_err(SegmentFault::Format)? {
                    Some((rec, _)) => Ok(Head::Record(rec)),
                    None => Err(SegmentFault::CutHead),
                }
            }
            None => {
                // The block's records are done: what is left of its
                // literal chunk must decode to nothing.
                while !self.lits.is_empty() {
                    let (read, written) = self.s.streams[LITS].decode(self.lits, LITS)?;
                    if written > 0 {
                        return Err(SegmentFault::UnusedLiterals);
                    }
                    if read == 0 {
                        return Err(SegmentFault::NoProgress);
                    }
                    self.lits = &self.lits[read..];
                }
                Ok(Head::Nothing)
            }
        }
    }

    fn diffs(&mut self, old: &OldRun<'_>, new: &mut [u8]) -> Result<usize, SegmentFault> {
        let n = old.len.min(new.len());
        let h = self.s.block.heads_len as usize;
        let Some(m) = self.s.modelled.as_deref_mut() else {
            if self.s.streams[DIFFS].out.is_empty() {
                self.s.fill_diffs()?;
            }
            let d = self.s.streams[DIFFS].out.take(n);
            for ((o, d), out) in old.run().iter().zip(d).zip(&mut new[..d.len()]) {
                *out = o.wrapping_add(*d);
            }
            return Ok(d.len());
        };
        // Layout 3: the diff model decodes each byte with the old bytes
        // around it as context.
        let chunk = &self.s.buf[h..];
        if chunk.is_empty() {
            return Err(SegmentFault::MissingDiffs);
        }
        let io = &mut m.bits.io(chunk);
        for (j, out) in new[..n].iter_mut().enumerate() {
            let i = old.first + j;
            let ctx = OldContext::at(old.bytes, i, old.pos + j as u64);
            *out = ctx.cur.wrapping_add(m.model.code(io, ctx, 0));
        }
        m.used = true;
        if m.bits.read() > chunk.len() + 3 {
            return Err(SegmentFault::MissingDiffs);
        }
        Ok(n)
    }

    fn literals(&mut self, max: usize) -> Result<&[u8], SegmentFault> {
        while self.s.streams[LITS].out.is_empty() {
            // Decode even without input: the decoder may hold output back
            // from an earlier call.
            let (read, written) = self.s.streams[LITS].decode(self.lits, LITS)?;
            self.lits = &self.lits[read..];
            if read == 0 && written == 0 {
                if self.lits.is_empty() {
                    return Ok(&[]);
                }
                return Err(SegmentFault::NoProgress);
            }
        }
        Ok(self.s.streams[LITS].out.take(max))
    }
}

/// [`SplitStreams::next_head_len`] in layout 3: the head model decodes the flag
/// before the block's next record and, if one follows, its head into the
/// (empty) heads window. A block with an empty heads chunk has no records;
/// one whose chunk is not empty has at least one.
fn next_modelled_head(
    m: &mut Modelled,
    buf: &[u8],
    block: &BlockHeader,
    window: &mut Window,
) -> Result<Option<usize>, &'static str> {
    let chunk = &buf[..block.heads_len as usize];
    if chunk.is_empty() || m.records == Records::Done {
        return Ok(None);
    }
    let first = m.records == Records::First;
    let io = &mut m.head_bits.io(chunk);
    if !m.heads.code_more(io, first, false) {
        if first {
            return Err("a record-head chunk without records");
        }
        m.records = Records::Done;
        return Ok(None);
    }
    m.records = Records::More;
    let head: &mut [u8; MAX_HEAD_LEN] = (&mut window.buf[..MAX_HEAD_LEN])
        .try_into()
        .map_err(|_| "the heads window is shorter than a record head")?;
    let n = m
        .heads
        .decode_head(io, head)
        .ok_or("a record head longer than any valid one")?;
    if m.head_bits.read() > chunk.len() + 3 {
        return Err("a record head past the end of its chunk");
    }
    window.start = 0;
    window.end = n;
    Ok(Some(n))
}
