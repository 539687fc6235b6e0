//! Flushable stream encoders for every compressed payload (one per stream in
//! the split-streams layout, one per segment in the interleaved one): one compressed
//! stream of the patch's codec (raw LZMA2 or magicless zstd) that can be cut
//! at any point into a chunk whose bytes decode completely on their own
//! (LZMA2 sync flush, zstd block flush), so the applier can interleave the
//! chunks of three streams block by block.
//!
//! Cost: one compression context (LZMA2 at preset 9: about 10x the window),
//! plus the chunk being built.

use crate::error::DiffError;
use crate::segment_encoder::lzma_preset;
use fwdelta_format::{Codec, MemoryModel};
use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};
use std::io::{self, Write};
use zstd::stream::raw::CParameter;
use zstd::zstd_safe::FrameFormat;

/// Output bytes reserved per encoder call.
const OUT_STEP: usize = 64 * 1024;

enum Inner {
    Lzma2(Box<Stream>),
    Zstd(Box<zstd::stream::write::Encoder<'static, Vec<u8>>>),
}

/// A raw LZMA2 encoder as every payload stream uses it: preset from
/// `level` ([`lzma_preset`]), dictionary for `2^window_log`, no position
/// context (record streams have no alignment the model could use: P6 -1.1%,
/// the other pairs +-0.1%).
fn lzma2_encoder(level: i32, window_log: u8) -> Result<Stream, DiffError> {
    let mut opts = LzmaOptions::new_preset(lzma_preset(level))?;
    opts.dict_size(MemoryModel::lzma_dict(window_log) as u32)
        .position_bits(0);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    Ok(Stream::new_raw_encoder(&filters)?)
}

/// A zstd encoder writing magicless frames with window `2^window_log` and
/// nothing the format does not need (checksum, content size, dictionary id).
fn zstd_encoder(
    level: i32,
    window_log: u8,
) -> io::Result<zstd::stream::write::Encoder<'static, Vec<u8>>> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    enc.set_parameter(CParameter::WindowLog(u32::from(window_log)))?;
    enc.set_parameter(CParameter::Format(FrameFormat::Magicless))?;
    enc.include_checksum(false)?;
    enc.include_contentsize(false)?;
    enc.include_dictid(false)?;
    Ok(enc)
}

/// One compressed stream, cut into chunks.
pub(crate) struct StreamEncoder {
    inner: Inner,
    /// Compressed bytes of the chunk being built (LZMA2; zstd keeps them in
    /// its writer).
    out: Vec<u8>,
    /// Whether any input was written: a stream that never gets any is left
    /// out of the patch entirely (all its chunks empty).
    started: bool,
}

impl StreamEncoder {
    /// An encoder for `codec` at `level` with a window of `2^window_log`.
    /// Stored payloads have no streams to split.
    pub(crate) fn new(codec: Codec, level: i32, window_log: u8) -> Result<Self, DiffError> {
        let inner = match codec {
            Codec::Lzma2 => Inner::Lzma2(Box::new(lzma2_encoder(level, window_log)?)),
            Codec::Zstd => Inner::Zstd(Box::new(zstd_encoder(level, window_log)?)),
            Codec::Stored => {
                return Err(DiffError::InvalidOption(
                    "split streams need a compressed codec".into(),
                ))
            }
        };
        Ok(StreamEncoder {
            inner,
            out: Vec::new(),
            started: false,
        })
    }

    /// Compress `data` into the current chunk.
    fn compress(&mut self, mut data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.started = true;
        match &mut self.inner {
            Inner::Zstd(enc) => enc.write_all(data),
            Inner::Lzma2(s) => {
                while !data.is_empty() {
                    self.out.reserve(OUT_STEP);
                    let before = s.total_in();
                    s.process_vec(data, &mut self.out, Action::Run)
                        .map_err(io::Error::other)?;
                    data = &data[(s.total_in() - before) as usize..];
                }
                Ok(())
            }
        }
    }

    /// End the current chunk so that everything written so far decodes from
    /// the chunks cut so far; returns the chunk. Costs a few bytes per cut.
    pub(crate) fn cut(&mut self) -> io::Result<Vec<u8>> {
        if !self.started {
            return Ok(Vec::new());
        }
        self.drive(Action::SyncFlush)
    }

    /// End the stream (its end marker is in the returned last chunk).
    pub(crate) fn finish(&mut self) -> io::Result<Vec<u8>> {
        if !self.started {
            return Ok(Vec::new());
        }
        self.drive(Action::Finish)
    }

    /// A block's chunk: [`Self::finish`] for the stream's `last` block,
    /// else [`Self::cut`].
    pub(crate) fn chunk(&mut self, last: bool) -> io::Result<Vec<u8>> {
        if last {
            self.finish()
        } else {
            self.cut()
        }
    }

    fn drive(&mut self, action: Action) -> io::Result<Vec<u8>> {
        match &mut self.inner {
            Inner::Zstd(enc) => {
                match action {
                    Action::Finish => {
                        enc.do_finish()?;
                    }
                    _ => enc.flush()?,
                }
                Ok(std::mem::take(enc.get_mut()))
            }
            Inner::Lzma2(s) => {
                loop {
                    self.out.reserve(OUT_STEP);
                    let status = s
                        .process_vec(&[], &mut self.out, action)
                        .map_err(io::Error::other)?;
                    if status == Status::StreamEnd {
                        break;
                    }
                }
                Ok(std::mem::take(&mut self.out))
            }
        }
    }
}

/// Writing compresses into the current chunk, so the record writers
/// (`write_diff`) stream straight into a stream. `flush` does nothing: a
/// chunk ends only at [`StreamEncoder::cut`] or [`StreamEncoder::finish`].
impl Write for StreamEncoder {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.compress(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
