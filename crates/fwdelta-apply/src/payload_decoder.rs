//! The payload decoder: turns one segment's compressed payload into its record
//! stream, for each compressed codec the format knows (raw LZMA2, magicless
//! zstd), never with a larger window than the header declares.
//!
//! Memory: one decoder, as [`fwdelta_format::MemoryModel::required_for`]
//! counts it (the window plus a fixed part). Stored payloads need no decoder.

use crate::error::ApplyError;
use fwdelta_format::header::Header;
use fwdelta_format::{Codec, MemoryModel};
use liblzma::stream::{Filters, LzmaOptions, Status, Stream};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::FrameFormat;

/// What one [`PayloadDecoder::run`] call did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Input bytes consumed.
    pub read: usize,
    /// Output bytes written.
    pub written: usize,
    /// The payload's stream ended (zstd frame end, LZMA2 end marker).
    pub done: bool,
}

/// A decoder for one patch's payloads, reset between segments.
pub(crate) enum PayloadDecoder {
    /// Magicless zstd frames with a bounded window.
    Zstd(Box<Decoder<'static>>),
    /// Raw LZMA2 streams with the header's dictionary.
    Lzma2 {
        /// The liblzma stream; rebuilt by [`PayloadDecoder::reset`].
        stream: Box<Stream>,
        /// Dictionary size, from the header's window.
        dict: u32,
    },
}

impl PayloadDecoder {
    /// The decoder for `header`'s payloads, or `None` for stored payloads.
    /// Allocates the decoder's window (LZMA2 allocates its dictionary here).
    pub(crate) fn for_header(header: &Header) -> Result<Option<Self>, ApplyError> {
        match header.codec {
            Codec::Stored => Ok(None),
            Codec::Zstd => {
                let mut dec = Decoder::new().map_err(|e| ApplyError::Decoder(e.to_string()))?;
                dec.set_parameter(DParameter::Format(FrameFormat::Magicless))
                    .and_then(|_| {
                        dec.set_parameter(DParameter::WindowLogMax(u32::from(header.window_log)))
                    })
                    .map_err(|e| ApplyError::Decoder(e.to_string()))?;
                Ok(Some(PayloadDecoder::Zstd(Box::new(dec))))
            }
            Codec::Lzma2 => {
                // The header parser bounds window_log to the format's range,
                // so the dictionary fits a u32.
                let dict = u32::try_from(MemoryModel::lzma_dict(header.window_log))
                    .map_err(|_| ApplyError::Decoder("LZMA2 dictionary over 4 GiB".into()))?;
                Ok(Some(PayloadDecoder::Lzma2 {
                    stream: Box::new(lzma_decoder(dict)?),
                    dict,
                }))
            }
        }
    }

    /// Make the decoder ready for the next segment's payload.
    pub(crate) fn reset(&mut self) -> Result<(), ApplyError> {
        match self {
            PayloadDecoder::Zstd(dec) => dec
                .reinit()
                .map_err(|e| ApplyError::Decoder(format!("reset failed: {e}"))),
            PayloadDecoder::Lzma2 { stream, .. } if stream.total_in() == 0 => Ok(()),
            PayloadDecoder::Lzma2 { stream, dict } => {
                // A raw LZMA2 decoder cannot be rewound. Swap in a minimal
                // one first, so two full dictionaries are never held at once.
                **stream = lzma_decoder(1 << MemoryModel::LZMA_MIN_DICT_LOG)?;
                **stream = lzma_decoder(*dict)?;
                Ok(())
            }
        }
    }

    /// Decode from `input` into `output` until one of them is used up or the
    /// payload's stream ends. An error is a one-line reason the payload is
    /// corrupt.
    pub(crate) fn run(&mut self, input: &[u8], output: &mut [u8]) -> Result<Progress, String> {
        match self {
            PayloadDecoder::Zstd(dec) => {
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(output);
                let hint = dec
                    .run(&mut inb, &mut outb)
                    .map_err(|e| format!("decompression failed: {e}"))?;
                Ok(Progress {
                    read: inb.pos(),
                    written: outb.pos(),
                    done: hint == 0,
                })
            }
            PayloadDecoder::Lzma2 { stream, .. } => {
                let (in0, out0) = (stream.total_in(), stream.total_out());
                let status = stream
                    .process(input, output, liblzma::stream::Action::Run)
                    .map_err(|e| format!("LZMA2 decompression failed: {e:?}"))?;
                Ok(Progress {
                    read: (stream.total_in() - in0) as usize,
                    written: (stream.total_out() - out0) as usize,
                    done: status == Status::StreamEnd,
                })
            }
        }
    }
}

/// A raw LZMA2 decoder with a `dict`-byte dictionary. The stream's own
/// property bytes choose lc/lp/pb; liblzma refuses values LZMA2 forbids.
fn lzma_decoder(dict: u32) -> Result<Stream, ApplyError> {
    let mut opts = LzmaOptions::new();
    opts.dict_size(dict);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    Stream::new_raw_decoder(&filters).map_err(|e| ApplyError::Decoder(format!("LZMA2: {e:?}")))
}
