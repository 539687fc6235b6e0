//! A file sink that survives power loss: the new image is written to a hidden
//! partial file beside the target, and after every segment the bytes written
//! so far are fsynced and then a checkpoint is atomically replaced beside it.
//! After a crash, [`ResumableFile::load_checkpoint`] and
//! [`ResumableFile::reopen`] continue where the last durable segment ended.
//!
//! A clean failure (drop without [`ResumableFile::commit`]) removes both files,
//! so only a killed process or a power loss leaves them behind, and the target
//! itself is replaced only by a successful commit.

use crate::atomic_file::{
    remove_if_present, replace_durably, sibling, sync_and_rename, sync_dir_of,
};
use crate::sink::Sink;
use fwdelta_format::{Checkpoint, SegmentHeader};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Suffix of the partial new image beside the target.
const PARTIAL: &str = "fwdelta-partial";
/// Suffix of the checkpoint beside the target.
const STATE: &str = "fwdelta-resume";

/// A resumable output file. Holds one 16 KiB write buffer.
#[derive(Debug)]
pub struct ResumableFile {
    target: PathBuf,
    partial: PathBuf,
    state: PathBuf,
    out: Option<BufWriter<File>>,
}

impl ResumableFile {
    /// Path of the partial file for `target`.
    pub fn partial_path(target: &Path) -> io::Result<PathBuf> {
        sibling(target, PARTIAL)
    }

    /// Path of the checkpoint file for `target`.
    pub fn state_path(target: &Path) -> io::Result<PathBuf> {
        sibling(target, STATE)
    }

    /// Start afresh: create (or truncate) the partial file and remove any
    /// checkpoint left by an earlier run.
    pub fn create(target: &Path) -> io::Result<ResumableFile> {
        let partial = Self::partial_path(target)?;
        let state = Self::state_path(target)?;
        remove_if_present(&state)?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)?;
        Ok(ResumableFile {
            target: target.to_path_buf(),
            partial,
            state,
            out: Some(BufWriter::with_capacity(crate::BUFFER_LEN, file)),
        })
    }

    /// The checkpoint an interrupted apply to `target` left, if there is one
    /// that is intact (a torn or damaged checkpoint counts as none).
    pub fn load_checkpoint(target: &Path) -> io::Result<Option<Checkpoint>> {
        let state = Self::state_path(target)?;
        let bytes = match fs::read(&state) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Checkpoint::decode(&bytes).ok())
    }

    /// Reopen the partial file to continue after `checkpoint`: it is cut back
    /// to the checkpoint's length (bytes of an unfinished segment are dropped)
    /// and new writes append. Also returns a reader over the kept bytes, for
    /// [`crate::Applier::resume`] to hash again.
    pub fn reopen(target: &Path, checkpoint: &Checkpoint) -> io::Result<(ResumableFile, File)> {
        let partial = Self::partial_path(target)?;
        let state = Self::state_path(target)?;
        let mut file = OpenOptions::new().read(true).write(true).open(&partial)?;
        let len = file.metadata()?.len();
        if len < checkpoint.new_offset {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "partial file has {len} bytes but the checkpoint needs {}",
                    checkpoint.new_offset
                ),
            ));
        }
        file.set_len(checkpoint.new_offset)?;
        file.seek(SeekFrom::End(0))?;
        let reader = File::open(&partial)?;
        Ok((
            ResumableFile {
                target: target.to_path_buf(),
                partial,
                state,
                out: Some(BufWriter::with_capacity(crate::BUFFER_LEN, file)),
            },
            reader,
        ))
    }

    /// The partial file, e.g. to set its permissions.
    pub fn file(&self) -> Option<&File> {
        self.out.as_ref().map(|w| w.get_ref())
    }

    /// Flush and fsync the partial file, remove the checkpoint, rename the
    /// partial file over the target, and fsync the directory.
    ///
    /// The checkpoint goes first (and the directory is synced), then the
    /// rename: once the target exists nothing is left beside it, and a crash
    /// in between leaves only a partial file that the next run replaces.
    pub fn commit(mut self) -> io::Result<()> {
        let result = self.finish_and_rename();
        self.out = None;
        if result.is_err() {
            self.discard_files();
        }
        result?;
        sync_dir_of(&self.target)
    }

    fn finish_and_rename(&mut self) -> io::Result<()> {
        let out = self.out.take().ok_or(io::ErrorKind::Other)?;
        remove_if_present(&self.state)?;
        sync_dir_of(&self.state)?;
        sync_and_rename(out, &self.partial, &self.target)
    }

    fn discard_files(&self) {
        let _ = fs::remove_file(&self.partial);
        let _ = fs::remove_file(&self.state);
    }

    fn write_checkpoint(&mut self, checkpoint: &Checkpoint) -> io::Result<()> {
        let out = self.out.as_mut().ok_or(io::ErrorKind::Other)?;
        out.flush()?;
        // The data must be durable before a checkpoint claims it.
        out.get_ref().sync_data()?;
        replace_durably(&self.state, &checkpoint.encode())
    }
}

impl Sink for ResumableFile {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out
            .as_mut()
            .ok_or(io::ErrorKind::Other)?
            .write_all(data)
    }

    fn segment_done(
        &mut self,
        _segment: &SegmentHeader,
        checkpoint: &Checkpoint,
    ) -> io::Result<()> {
        self.write_checkpoint(checkpoint)
    }
}

impl Drop for ResumableFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            self.discard_files();
        }
    }
}
