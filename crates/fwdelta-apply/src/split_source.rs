//! The split-streams reader (layouts 2 and 3): decodes a segment's three
//! streams — record heads, diff bytes, literal bytes — block by block and
//! hands the record interpreter the same bytes the interleaved layout would,
//! so all layouts share one validation path. In layout 3 the record heads
//! come from the head model (`fwdelta_format::head_model`) and the diff bytes
//! from the diff model (`fwdelta_format::diff_model`), decoded as each record
//! needs them, the diffs with the old bytes under them as context.
//!
//! Memory: three payload decoders (windows as
//! `MemoryModel::split_window_logs` derives them from the header's; in layout
//! 3 the head model instead of the heads decoder, the diff model with a
//! history of the diff window instead of the diff decoder, and a 16 KiB read
//! of old bytes for its context), one block
//! buffer of at most `MAX_BLOCK_BUFFER` (64 KiB) for a block's compressed
//! heads and diffs, and three 16 KiB decoded-byte windows, as
//! `MemoryModel::required_for_layout` counts them. The literal chunk, usually
//! the largest, streams through without being held. Passes: one over the
//! payload; layout 3 reads the old bytes under each run of diffs once, with
//! a byte either side, for the model's context, and the interpreter applies
//! the diffs to that same read (`Output::read_base_kept`).

use crate::applier::{Output, Rec, Segment};
use crate::error::ApplyError;
use crate::payload_decoder::PayloadDecoder;
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
    fn decode(&mut self, input: &[u8], which: usize) -> Result<(usize, usize), String> {
        if self.ended {
            if !input.is_empty() {
                return Err(format!("data after the end of the {} stream", NAMES[which]));
            }
            return Ok((0, 0));
        }
        if self.out.start > 0 {
            self.out.buf.copy_within(self.out.start..self.out.end, 0);
            self.out.end -= self.out.start;
            self.out.start = 0;
        }
        let Some(dec) = self.dec.as_mut() else {
            return Err(format!("the {} stream has no decoder", NAMES[which]));
        };
        let step = dec.run(input, &mut self.out.buf[self.out.end..])?;
        self.out.end += step.written;
        if step.done {
            self.ended = true;
            if step.read < input.len() {
                return Err(format!("data after the end of the {} stream", NAMES[which]));
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
        })
    }

    /// Ready for the next segment's payload.
    pub(crate) fn reset(&mut self) -> Result<(), ApplyError> {
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
        Ok(())
    }

    /// Consume payload bytes `data` of segment `seg`, whose `payload_left`
    /// still counts them. Sets `seg.frame_done` when the payload may end here
    /// (between blocks, every stream that began has ended).
    pub(crate) fn feed<O: OldImage + ?Sized, S: Sink>(
        &mut self,
        data: &[u8],
        out: &mut Output<'_, O, S>,
        seg: &mut Segment,
    ) -> Result<(), ApplyError> {
        let mut at = 0;
        while at < data.len() {
            match self.part {
                Part::BlockHead => {
                    if self.head_acc.is_empty() {
                        self.left_at_block = u64::from(seg.payload_left) - at as u64;
                        seg.frame_done = false;
                    }
                    self.head_acc.push(data[at]);
                    at += 1;
                    let parsed = BlockHeader::parse(&self.head_acc, self.left_at_block)
                        .map_err(|e| seg.corrupt(e.to_string()))?;
                    if let Some((block, _)) = parsed {
                        self.start_block(block, seg)?;
                        if block.buffered_len() == 0 {
                            self.after_buffer(out, seg)?;
                        }
                    }
                }
                Part::Buffer => {
                    let take = (self.block.buffered_len() - self.buf.len()).min(data.len() - at);
                    self.buf.extend_from_slice(&data[at..at + take]);
                    at += take;
                    if self.buf.len() == self.block.buffered_len() {
                        self.after_buffer(out, seg)?;
                    }
                }
                Part::Literals { left } => {
                    let take = (left.min((data.len() - at) as u64)) as usize;
                    self.pump(out, seg, &data[at..at + take])?;
                    at += take;
                    let left = left - take as u64;
                    self.part = Part::Literals { left };
                    if left == 0 {
                        self.end_block(seg)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_block(&mut self, block: BlockHeader, seg: &Segment) -> Result<(), ApplyError> {
        for (s, len) in block.lens().into_iter().enumerate() {
            // The models' chunks have no end to wait for.
            if len > 0 && self.streams[s].dec.is_some() {
                if self.streams[s].ended {
                    return Err(
                        seg.corrupt(format!("data after the end of the {} stream", NAMES[s]))
                    );
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
        out: &mut Output<'_, O, S>,
        seg: &mut Segment,
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
        self.pump(out, seg, &[])?;
        if self.block.lits_len == 0 {
            self.end_block(seg)?;
        }
        Ok(())
    }

    /// Run the block's records with `lits` as the next literal-chunk bytes,
    /// until the records need literals not yet received or the block's
    /// records are done. Consumes all of `lits`.
    fn pump<O: OldImage + ?Sized, S: Sink>(
        &mut self,
        out: &mut Output<'_, O, S>,
        seg: &mut Segment,
        mut lits: &[u8],
    ) -> Result<(), ApplyError> {
        loop {
            match seg.rec {
                Rec::Head => match self.next_head(seg)? {
                    Some(n) => out.consume(seg, self.streams[HEADS].out.take(n))?,
                    None => {
                        // The block's records are done: what is left of
                        // its literal chunk must decode to nothing.
                        while !lits.is_empty() {
                            let (read, written) = self.streams[LITS]
                                .decode(lits, LITS)
                                .map_err(|e| seg.corrupt(e))?;
                            if written > 0 {
                                return Err(
                                    seg.corrupt("literal bytes no record of the block uses")
                                );
                            }
                            if read == 0 {
                                return Err(seg.corrupt("decoder made no progress"));
                            }
                            lits = &lits[read..];
                        }
                        return Ok(());
                    }
                },
                Rec::Diff { left, .. } => {
                    if self.streams[DIFFS].out.is_empty() {
                        self.fill_diffs(out, seg, left)?;
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX);
                    out.consume(seg, self.streams[DIFFS].out.take(n))?;
                }
                Rec::Literal { left, .. } => {
                    if self.streams[LITS].out.is_empty() {
                        // Decode even without input: the decoder may hold
                        // output back from an earlier call.
                        let (read, written) = self.streams[LITS]
                            .decode(lits, LITS)
                            .map_err(|e| seg.corrupt(e))?;
                        lits = &lits[read..];
                        if read == 0 && written == 0 {
                            if lits.is_empty() {
                                return Ok(());
                            }
                            return Err(seg.corrupt("decoder made no progress"));
                        }
                        continue;
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX);
                    out.consume(seg, self.streams[LITS].out.take(n))?;
                }
            }
        }
    }

    /// Decode diff bytes into the (empty) diff window for a record with
    /// `left` still to come at the old cursor: from the block's diffs chunk
    /// with the codec, or in layout 3 the next run of at most 16 KiB with
    /// the diff model.
    fn fill_diffs<O: OldImage + ?Sized, S: Sink>(
        &mut self,
        out: &mut Output<'_, O, S>,
        seg: &Segment,
        left: u64,
    ) -> Result<(), ApplyError> {
        let h = self.block.heads_len as usize;
        let Some(m) = self.modelled.as_deref_mut() else {
            while self.streams[DIFFS].out.is_empty() {
                let input = &self.buf[h + self.used[1]..];
                let (read, written) = self.streams[DIFFS]
                    .decode(input, DIFFS)
                    .map_err(|e| seg.corrupt(e))?;
                self.used[1] += read;
                if read == 0 && written == 0 {
                    return Err(seg.corrupt("a record needs diff bytes its block does not have"));
                }
            }
            return Ok(());
        };
        let chunk = &self.buf[h..];
        if chunk.is_empty() {
            return Err(seg.corrupt("a record needs diff bytes its block does not have"));
        }
        let n = left.min(BUFFER_LEN as u64) as usize;
        // The record's old range was checked against the old image.
        let pos = seg.old_pos;
        let from = pos.saturating_sub(1);
        let to = (pos + n as u64 + 1).min(out.old_len());
        let around = out.read_base_kept(from, (to - from) as usize)?;
        let w = &mut self.streams[DIFFS].out;
        w.start = 0;
        w.end = n;
        let first = (pos - from) as usize;
        for (j, slot) in w.buf[..n].iter_mut().enumerate() {
            let ctx = OldContext::at(around, first + j, pos + j as u64);
            *slot = m.model.code(&mut m.bits.io(chunk), ctx, 0);
        }
        m.used = true;
        if m.bits.read() > chunk.len() + 3 {
            return Err(seg.corrupt("a record needs diff bytes its block does not have"));
        }
        Ok(())
    }

    /// Length of the next whole record head at the front of the heads
    /// window, decoding more as needed; `None` when the block has no more.
    fn next_head(&mut self, seg: &Segment) -> Result<Option<usize>, ApplyError> {
        if let Some(m) = self.modelled.as_deref_mut() {
            return next_modelled_head(m, &self.buf, &self.block, &mut self.streams[HEADS].out)
                .map_err(|e| seg.corrupt(e));
        }
        loop {
            let avail = self.streams[HEADS].out.avail();
            if !avail.is_empty() {
                match Record::parse_head(avail) {
                    Ok(Some((_, n))) => return Ok(Some(n)),
                    Ok(None) => {}
                    Err(e) => return Err(seg.corrupt(e.to_string())),
                }
            }
            let input = &self.buf[self.used[0]..self.block.heads_len as usize];
            let (read, written) = self.streams[HEADS]
                .decode(input, HEADS)
                .map_err(|e| seg.corrupt(e))?;
            self.used[0] += read;
            if read == 0 && written == 0 {
                return if !input.is_empty() {
                    Err(seg.corrupt("decoder made no progress"))
                } else if self.streams[HEADS].out.is_empty() {
                    Ok(None)
                } else {
                    Err(seg.corrupt("block ends inside a record head"))
                };
            }
        }
    }

    /// The block's literal chunk is in (and [`Self::pump`] has run its
    /// records as far as they go): its records must be done, and its chunks
    /// used up without leaving decoded bytes.
    fn end_block(&mut self, seg: &mut Segment) -> Result<(), ApplyError> {
        if seg.rec != Rec::Head {
            return Err(seg.corrupt("a record needs literal bytes its block does not have"));
        }
        // pump returned at the end of the heads; the diffs and literals
        // must be used up, including anything a decoder still holds.
        let h = self.block.heads_len as usize;
        if let Some(m) = self.modelled.as_deref() {
            // next_head returned None: the heads chunk's records ended (or
            // it is empty), and the decoder must have reached its end.
            if h > 0 && (m.records != Records::Done || m.head_bits.read() < h) {
                return Err(seg.corrupt("record-head bytes after the block's last record"));
            }
            let len = self.block.diffs_len as usize;
            // A chunk the model wrote ends within three bytes of where the
            // decoder stopped reading.
            let unused = if m.used { m.bits.read() < len } else { len > 0 };
            if unused || !self.streams[DIFFS].out.is_empty() {
                return Err(seg.corrupt("diff bytes no record of the block uses"));
            }
        } else {
            loop {
                let input = &self.buf[h + self.used[1]..];
                let (read, written) = self.streams[DIFFS]
                    .decode(input, DIFFS)
                    .map_err(|e| seg.corrupt(e))?;
                self.used[1] += read;
                if written > 0 || !self.streams[DIFFS].out.is_empty() {
                    return Err(seg.corrupt("diff bytes no record of the block uses"));
                }
                if read == 0 {
                    if !input.is_empty() {
                        return Err(seg.corrupt("decoder made no progress"));
                    }
                    break;
                }
            }
        }
        let (_, written) = self.streams[LITS]
            .decode(&[], LITS)
            .map_err(|e| seg.corrupt(e))?;
        if written > 0 || !self.streams[LITS].out.is_empty() {
            return Err(seg.corrupt("literal bytes no record of the block uses"));
        }
        self.part = Part::BlockHead;
        seg.frame_done = self.streams.iter().all(|s| s.ended || !s.started);
        Ok(())
    }
}

/// [`SplitStreams::next_head`] in layout 3: the head model decodes the flag
/// before the block's next record and, if one follows, its head into the
/// (empty) heads window. A block with an empty heads chunk has no records;
/// one whose chunk is not empty has at least one.
fn next_modelled_head(
    m: &mut Modelled,
    buf: &[u8],
    block: &BlockHeader,
    window: &mut Window,
) -> Result<Option<usize>, String> {
    let chunk = &buf[..block.heads_len as usize];
    if chunk.is_empty() || m.records == Records::Done {
        return Ok(None);
    }
    let first = m.records == Records::First;
    let io = &mut m.head_bits.io(chunk);
    if !m.heads.code_more(io, first, false) {
        if first {
            return Err("a record-head chunk without records".into());
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
        return Err("a record head past the end of its chunk".into());
    }
    window.start = 0;
    window.end = n;
    Ok(Some(n))
}
