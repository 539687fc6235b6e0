//! The interleaved layout (layout 1) as a [`RecordSource`]: one stream per
//! segment — each record's head, then its difference bytes, then its
//! literal bytes — stored as it is or compressed as one frame.
//!
//! Memory: the payload decoder (bounded by the header's window) and one
//! 16 KiB window of decoded bytes; a stored payload is read in place, with
//! no copy. Passes: one over the payload.

use crate::payload_decoder::PayloadDecoder;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::record_interpreter::{Head, OldRun, RecordSource, SegmentFault};
use crate::BUFFER_LEN;
use fwdelta_format::record::{Record, MAX_HEAD_LEN};

/// The decoded bytes of the stream not yet used: `buf[start..end]`.
struct Window {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The interleaved stream of one segment at a time (reset between them).
pub(crate) struct StreamSource {
    /// `None` for stored payloads.
    decoder: Option<PayloadDecoder>,
    window: Window,
    /// The last decode filled the window: the decoder may hold more output.
    maybe_more: bool,
    /// The bytes of a record head cut by a chunk or window boundary.
    head: [u8; MAX_HEAD_LEN],
    head_len: usize,
    /// The compressed frame has ended (stored: the payload has).
    frame_done: bool,
}

impl StreamSource {
    /// A source decoding with `decoder` (`None`: a stored payload).
    pub(crate) fn new(decoder: Option<PayloadDecoder>) -> StreamSource {
        let len = if decoder.is_some() { BUFFER_LEN } else { 0 };
        StreamSource {
            decoder,
            window: Window {
                buf: vec![0; len],
                start: 0,
                end: 0,
            },
            maybe_more: false,
            head: [0; MAX_HEAD_LEN],
            head_len: 0,
            frame_done: false,
        }
    }

    /// Ready for the next segment's payload.
    pub(crate) fn reset(&mut self) -> Result<(), crate::ApplyError> {
        if let Some(dec) = self.decoder.as_mut() {
            dec.reset()?;
        }
        self.window.start = 0;
        self.window.end = 0;
        self.maybe_more = false;
        self.head_len = 0;
        self.frame_done = false;
        Ok(())
    }

    /// The source with the payload bytes `input` to draw on; `last` when
    /// they end the payload.
    pub(crate) fn fed<'s, 'i>(&'s mut self, input: &'i [u8], last: bool) -> Fed<'s, 'i> {
        Fed {
            src: self,
            input,
            last,
        }
    }

    /// Whether the payload may end here: the frame is complete.
    pub(crate) fn frame_done(&self) -> bool {
        self.frame_done
    }

    /// Whether a record head was cut short.
    pub(crate) fn partial_head(&self) -> bool {
        self.head_len > 0 || self.window.start < self.window.end
    }
}

/// A [`StreamSource`] with a chunk of payload to decode (the glue between
/// the bytes that arrived and the interpreter).
pub(crate) struct Fed<'s, 'i> {
    src: &'s mut StreamSource,
    input: &'i [u8],
    last: bool,
}

impl Fed<'_, '_> {
    /// After a run of the interpreter: the chunk must be used up (the
    /// interpreter stops only when the source has nothing left to give);
    /// a stored payload's last chunk ends its frame.
    pub(crate) fn done(self) -> Result<(), SegmentFault> {
        if !self.input.is_empty() {
            return Err(if self.src.frame_done {
                SegmentFault::AfterFrame
            } else {
                SegmentFault::NoProgress
            });
        }
        if self.src.decoder.is_none() && self.last {
            self.src.frame_done = true;
        }
        Ok(())
    }

    /// The decoded (or stored) bytes available now, decoding more when the
    /// window is empty. Empty when more input is needed.
    fn avail(&mut self) -> Result<&[u8], SegmentFault> {
        if self.src.decoder.is_none() {
            return Ok(self.input);
        }
        if self.src.window.start == self.src.window.end {
            self.fill()?;
        }
        let w = &self.src.window;
        Ok(&w.buf[w.start..w.end])
    }

    /// Use `n` of the available bytes.
    fn take(&mut self, n: usize) {
        if self.src.decoder.is_none() {
            self.input = &self.input[n..];
        } else {
            self.src.window.start += n;
        }
    }

    /// Refill the (empty) window from the input. Returns whether anything
    /// was decoded.
    fn fill(&mut self) -> Result<bool, SegmentFault> {
        let src = &mut *self.src;
        let Some(dec) = src.decoder.as_mut() else {
            return Ok(false);
        };
        loop {
            if src.frame_done {
                if !self.input.is_empty() {
                    return Err(SegmentFault::AfterFrame);
                }
                return Ok(false);
            }
            if self.input.is_empty() && !src.maybe_more {
                return Ok(false);
            }
            let step = dec
                .run(self.input, &mut src.window.buf)
                .map_err(SegmentFault::Decode)?;
            self.input = &self.input[step.read..];
            src.window.start = 0;
            src.window.end = step.written;
            src.maybe_more = step.written == src.window.buf.len();
            if step.done {
                src.frame_done = true;
            }
            if step.written > 0 {
                return Ok(true);
            }
            if step.read == 0 && !self.input.is_empty() {
                return Err(SegmentFault::NoProgress);
            }
        }
    }
}

impl RecordSource for Fed<'_, '_> {
    fn next_head(&mut self) -> Result<Head, SegmentFault> {
        loop {
            let before = self.src.head_len;
            let mut head = self.src.head;
            let take = {
                let avail = self.avail()?;
                if avail.is_empty() {
                    return Ok(if before > 0 {
                        Head::Partial
                    } else {
                        Head::Nothing
                    });
                }
                let take = (MAX_HEAD_LEN - before).min(avail.len());
                head[before..before + take].copy_from_slice(&avail[..take]);
                take
            };
            match Record::parse_head(&head[..before + take]).map_err(SegmentFault::Format)? {
                Some((rec, used)) => {
                    self.take(used - before);
                    self.src.head_len = 0;
                    return Ok(Head::Record(rec));
                }
                None => {
                    // `take` filled what was free; a full buffer always
                    // parses or errors.
                    self.src.head = head;
                    self.src.head_len = before + take;
                    self.take(take);
                }
            }
        }
    }

    fn diffs(&mut self, old: &OldRun<'_>, new: &mut [u8]) -> Result<usize, SegmentFault> {
        let avail = self.avail()?;
        let n = avail.len().min(new.len()).min(old.len);
        for ((o, d), out) in old.run()[..n].iter().zip(&avail[..n]).zip(&mut new[..n]) {
            *out = o.wrapping_add(*d);
        }
        self.take(n);
        Ok(n)
    }

    fn literals(&mut self, max: usize) -> Result<&[u8], SegmentFault> {
        if self.src.decoder.is_none() {
            let n = self.input.len().min(max);
            let (lits, rest) = self.input.split_at(n);
            self.input = rest;
            return Ok(lits);
        }
        if self.src.window.start == self.src.window.end {
            self.fill()?;
        }
        let w = &mut self.src.window;
        let n = (w.end - w.start).min(max);
        let start = w.start;
        w.start += n;
        Ok(&w.buf[start..start + n])
    }
}
