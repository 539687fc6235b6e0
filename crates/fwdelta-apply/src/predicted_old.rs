//! Reads of the old image as an executable-aware patch predicts it: every
//! recognised branch, call or literal load re-targeted through the patch's
//! address map (see `fwdelta_format::reference_rewriter`). The diff bytes of
//! such a patch apply to these predicted bytes.

#[allow(unused_imports)]
use crate::prelude::*;
use crate::source::OldImage;
use crate::IoError;
use fwdelta_format::reference_rewriter::{ReferenceRewriter, CONTEXT};
use fwdelta_format::CodeRefs;

/// Predicting reader. Cost: the map (16 bytes per run), a window of the
/// largest read plus 32 bytes of context, the rewriter's scratch, and for an
/// image that reads ahead 16 KiB of raw bytes; each read costs one pass over
/// its window and an old-image read of it (16 KiB ahead where the image
/// reads ahead, served from there until a read leaves it).
pub(crate) struct Predictor {
    rewriter: ReferenceRewriter,
    window: Vec<u8>,
    raw: RawAhead,
}

/// Raw old bytes read ahead (from an image that reads ahead only), and the
/// range they hold.
struct RawAhead {
    bytes: Vec<u8>,
    at: (u64, u64),
}

/// Raw old bytes a predictor reads at once from an image that reads ahead.
const RAW_AHEAD: usize = 16 * 1024;

impl Predictor {
    /// A predictor for an old image of `old_len` bytes.
    pub(crate) fn new(code: &CodeRefs, old_len: u64) -> Self {
        Predictor {
            rewriter: ReferenceRewriter::new(code.arch, code.map.clone(), old_len),
            window: Vec::new(),
            raw: RawAhead {
                bytes: Vec::new(),
                at: (0, 0),
            },
        }
    }

    /// Fill `buf` with the predicted old bytes at `offset..offset + buf.len()`.
    pub(crate) fn read<O: OldImage + ?Sized>(
        &mut self,
        old: &O,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), IoError> {
        let len = old.len();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= len)
            .ok_or(IoError::new("read past the end of the old image"))?;
        let ws = offset.saturating_sub(CONTEXT);
        let we = end.saturating_add(CONTEXT).min(len);
        let n = (we - ws) as usize;
        if self.window.len() < n {
            // Bounded by the applier's 16 KiB reads plus the context.
            self.window.resize(n, 0);
        }
        let window = &mut self.window[..n];
        self.raw.read(old, ws, window)?;
        self.rewriter.rewrite(window, ws, offset, end);
        let from = (offset - ws) as usize;
        buf.copy_from_slice(&window[from..from + buf.len()]);
        Ok(())
    }
}

impl RawAhead {
    /// The raw old bytes at `at..at + into.len()` (inside the image): from
    /// what was read ahead, else read (ahead, if the image reads ahead).
    fn read<O: OldImage + ?Sized>(
        &mut self,
        old: &O,
        at: u64,
        into: &mut [u8],
    ) -> Result<(), IoError> {
        let end = at + into.len() as u64;
        if !old.read_ahead() || into.len() > RAW_AHEAD {
            return old.read_at(at, into);
        }
        let (hs, he) = self.at;
        if !(hs <= at && end <= he) {
            let to = (at + RAW_AHEAD as u64).min(old.len()).max(end);
            self.bytes.resize(RAW_AHEAD, 0);
            self.at = (0, 0);
            old.read_at(at, &mut self.bytes[..(to - at) as usize])?;
            self.at = (at, to);
        }
        let from = (at - self.at.0) as usize;
        into.copy_from_slice(&self.bytes[from..from + into.len()]);
        Ok(())
    }
}
