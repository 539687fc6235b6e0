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
/// largest read plus 32 bytes of context, and the rewriter's scratch; each
/// read costs one old-image read of the window and one pass over it.
pub(crate) struct Predictor {
    rewriter: ReferenceRewriter,
    window: Vec<u8>,
}

impl Predictor {
    /// A predictor for an old image of `old_len` bytes.
    pub(crate) fn new(code: &CodeRefs, old_len: u64) -> Self {
        Predictor {
            rewriter: ReferenceRewriter::new(code.arch, code.map.clone(), old_len),
            window: Vec::new(),
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
        old.read_at(ws, window)?;
        self.rewriter.rewrite(window, ws, offset, end);
        let from = (offset - ws) as usize;
        buf.copy_from_slice(&window[from..from + buf.len()]);
        Ok(())
    }
}
