//! Where the new image goes. The applier pushes bytes in order, in pieces of at
//! most 16 KiB, and says when each segment is complete.

use fwdelta_format::{Checkpoint, SegmentHeader};
use std::io::{self, Write};

/// Receiver of the new image, in order.
pub trait Sink {
    /// Take the next bytes of the new image.
    fn write(&mut self, data: &[u8]) -> io::Result<()>;

    /// Called after a segment's bytes were all written and verified (by its
    /// check; the last segment, which has none, by the new image's hash), with
    /// the checkpoint that resumes after it. A sink that supports resume
    /// makes the bytes written so far durable, then persists `checkpoint`
    /// (see [`crate::ResumableFile`]). Default: nothing.
    fn segment_done(&mut self, segment: &SegmentHeader, checkpoint: &Checkpoint) -> io::Result<()> {
        let _ = (segment, checkpoint);
        Ok(())
    }
}

impl Sink for Vec<u8> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        (**self).write(data)
    }
    fn segment_done(&mut self, segment: &SegmentHeader, checkpoint: &Checkpoint) -> io::Result<()> {
        (**self).segment_done(segment, checkpoint)
    }
}

/// Adapts any [`Write`] into a [`Sink`].
#[derive(Debug)]
pub struct WriteSink<W: Write>(pub W);

impl<W: Write> Sink for WriteSink<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data)
    }
}
