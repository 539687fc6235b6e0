//! Where the new image goes. The applier pushes bytes in order, in pieces of at
//! most 16 KiB, and says when each segment is complete.

#[allow(unused_imports)]
use crate::prelude::*;
use crate::IoError;
use fwdelta_format::{Checkpoint, SegmentHeader};

/// Receiver of the new image, in order.
pub trait Sink {
    /// Take the next bytes of the new image.
    fn write(&mut self, data: &[u8]) -> Result<(), IoError>;

    /// Called after a segment's bytes were all written and verified (by its
    /// check; the last segment, which has none, by the new image's hash), with
    /// the checkpoint that resumes after it. A sink that supports resume
    /// makes the bytes written so far durable, then persists `checkpoint`
    /// (see [`crate::ResumableFile`], under `std`). Default: nothing.
    fn segment_done(
        &mut self,
        segment: &SegmentHeader,
        checkpoint: &Checkpoint,
    ) -> Result<(), IoError> {
        let _ = (segment, checkpoint);
        Ok(())
    }
}

impl Sink for Vec<u8> {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        self.extend_from_slice(data);
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        (**self).write(data)
    }
    fn segment_done(
        &mut self,
        segment: &SegmentHeader,
        checkpoint: &Checkpoint,
    ) -> Result<(), IoError> {
        (**self).segment_done(segment, checkpoint)
    }
}

/// Adapts any [`std::io::Write`] into a [`Sink`].
#[cfg(feature = "std")]
#[derive(Debug)]
pub struct WriteSink<W: std::io::Write>(pub W);

#[cfg(feature = "std")]
impl<W: std::io::Write> Sink for WriteSink<W> {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        Ok(self.0.write_all(data)?)
    }
}
