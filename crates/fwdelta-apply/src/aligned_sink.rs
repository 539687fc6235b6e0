//! A sink for flash that programs whole, aligned blocks (4-byte words, 256-byte
//! pages, ...). Bytes are gathered into one block buffer and handed to a
//! [`BlockWriter`] only as full blocks at aligned offsets; the last block of
//! the image is padded with a fill byte (0xFF, erased NOR flash, by default).
//!
//! Checkpoints: a block can be programmed only once, so a segment may end only
//! on a block boundary (make the patch with `fwdelta diff --align BLOCK`),
//! except the last, which ends with the image. At each aligned segment end the
//! sink asks the writer to make the blocks durable and passes the checkpoint on
//! for it to persist; after an unaligned one it persists nothing and refuses
//! any further data.

#[allow(unused_imports)]
use crate::prelude::*;
use crate::sink::Sink;
use crate::IoError;
use fwdelta_format::{Checkpoint, SegmentHeader};
use std::io;

/// Flash (or anything) that is written in whole blocks.
pub trait BlockWriter {
    /// Program `block` (exactly the sink's block length) at `offset`, a
    /// multiple of the block length.
    fn write_block(&mut self, offset: u64, block: &[u8]) -> io::Result<()>;
    /// Make every block written so far durable.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Persist a checkpoint (after [`Self::flush`]). Default: none kept.
    fn persist(&mut self, checkpoint: &Checkpoint) -> io::Result<()> {
        let _ = checkpoint;
        Ok(())
    }
}

/// See the module documentation. Holds one block buffer.
#[derive(Debug)]
pub struct AlignedSink<W: BlockWriter> {
    writer: W,
    block: Vec<u8>,
    filled: usize,
    offset: u64,
    fill: u8,
    /// Set after a segment ended inside a block: only the image's end may.
    unaligned_end: Option<String>,
}

impl<W: BlockWriter> AlignedSink<W> {
    /// A sink writing `block_len`-byte blocks to `writer`, starting at
    /// `offset` (a multiple of `block_len`; non-zero when resuming).
    pub fn new(writer: W, block_len: usize, offset: u64) -> io::Result<AlignedSink<W>> {
        if block_len == 0 || offset % block_len as u64 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset must be block-aligned",
            ));
        }
        Ok(AlignedSink {
            writer,
            block: vec![0; block_len],
            filled: 0,
            offset,
            fill: 0xFF,
            unaligned_end: None,
        })
    }

    /// Use `fill` to pad the final block (default 0xFF).
    pub fn with_fill(mut self, fill: u8) -> Self {
        self.fill = fill;
        self
    }

    /// Pad and write the last partial block, flush, and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.filled > 0 {
            let fill = self.fill;
            self.block[self.filled..].iter_mut().for_each(|b| *b = fill);
            self.writer.write_block(self.offset, &self.block)?;
            self.filled = 0;
        }
        self.writer.flush()?;
        Ok(self.writer)
    }
}

impl<W: BlockWriter> Sink for AlignedSink<W> {
    fn write(&mut self, mut data: &[u8]) -> Result<(), IoError> {
        if let Some(msg) = &self.unaligned_end {
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone()).into());
        }
        let len = self.block.len();
        while !data.is_empty() {
            let n = (len - self.filled).min(data.len());
            self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == len {
                self.writer.write_block(self.offset, &self.block)?;
                self.offset += len as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    fn segment_done(
        &mut self,
        segment: &SegmentHeader,
        checkpoint: &Checkpoint,
    ) -> Result<(), IoError> {
        self.writer.flush()?;
        if self.filled != 0 {
            self.unaligned_end = Some(format!(
                "segment {} ends at {}, not on a {}-byte block boundary: make the patch with --align {}",
                segment.index,
                segment.new_offset + segment.new_len,
                self.block.len(),
                self.block.len()
            ));
            return Ok(());
        }
        Ok(self.writer.persist(checkpoint)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Blocks {
        writes: Vec<(u64, Vec<u8>)>,
        persisted: Vec<Checkpoint>,
    }

    impl BlockWriter for &mut Blocks {
        fn write_block(&mut self, offset: u64, block: &[u8]) -> io::Result<()> {
            self.writes.push((offset, block.to_vec()));
            Ok(())
        }
        fn persist(&mut self, cp: &Checkpoint) -> io::Result<()> {
            self.persisted.push(*cp);
            Ok(())
        }
    }

    #[test]
    fn writes_whole_aligned_blocks_and_pads_the_last() {
        let mut blocks = Blocks::default();
        let mut s = AlignedSink::new(&mut blocks, 4, 0).unwrap();
        s.write(&[1, 2, 3]).unwrap();
        s.write(&[4, 5, 6, 7, 8, 9]).unwrap();
        s.finish().unwrap();
        assert_eq!(
            blocks.writes,
            vec![
                (0, vec![1, 2, 3, 4]),
                (4, vec![5, 6, 7, 8]),
                (8, vec![9, 0xFF, 0xFF, 0xFF])
            ]
        );
        assert!(AlignedSink::new(&mut blocks, 4, 6).is_err());
    }
}
