//! A file sink that survives power loss: the new image is written to a hidden
//! partial file beside the target, and after every segment the bytes written
//! so far are fsynced and then a checkpoint is atomically replaced beside it.
//! After a crash, [`ResumableFile::load_checkpoint`] and
//! [`ResumableFile::reopen`] continue where the last durable segment ended.
//!
//! Everything happens under the target's [`TargetLock`], so one process at a
//! time writes these files. The partial file is created exclusively (never
//! through a link, mode 0600) and its descriptor is kept from creation to the
//! rename: [`ResumableFile::commit`] renames the path only if it still names
//! that descriptor's file (the bytes that were written and hashed), and
//! checks the target names it afterwards.
//!
//! A clean failure (drop without [`ResumableFile::commit`]) removes both files,
//! so only a killed process or a power loss leaves them behind, and the target
//! itself is replaced only by a successful commit.

use crate::atomic_file::{remove_if_present, replace_durably, sibling, sync_dir_of, Writeback};
#[allow(unused_imports)]
use crate::prelude::*;
use crate::side_file::{self, id_at, id_of, FileId, SideFileError, TargetLock};
use crate::sink::Sink;
use crate::IoError;
use fwdelta_format::{Checkpoint, SegmentHeader};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Suffix of the partial new image beside the target.
const PARTIAL: &str = "fwdelta-partial";
/// Suffix of the checkpoint beside the target.
const STATE: &str = "fwdelta-resume";
/// Suffix of the checkpoint's temporary sibling (see `replace_durably`).
const STATE_TMP: &str = "fwdelta-resume.tmp";

/// A resumable output file. Holds one 16 KiB write buffer.
#[derive(Debug)]
pub struct ResumableFile {
    target: PathBuf,
    partial: PathBuf,
    state: PathBuf,
    /// Identity of the partial file this sink created or reopened.
    id: FileId,
    out: Option<BufWriter<File>>,
    /// Bytes of the partial file so far (written or buffered), how many of
    /// them have reached the file, and the writeback of those.
    written: u64,
    in_file: u64,
    writeback: Writeback,
}

/// Reads a file from its start by offset (`pread`), leaving the descriptor's
/// own position alone: the kept bytes of a reopened partial file, read back
/// through the very descriptor that will append to it.
#[derive(Debug)]
pub struct ReadBack {
    file: File,
    pos: u64,
}

impl Read for ReadBack {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
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

    /// Every side file an apply to `target` may create: the partial file,
    /// the checkpoint, the checkpoint's temporary sibling and the lock (for
    /// callers that refuse an input at one of those names). No I/O.
    pub fn side_paths(target: &Path) -> io::Result<Vec<PathBuf>> {
        [PARTIAL, STATE, STATE_TMP, side_file::LOCK]
            .into_iter()
            .map(|s| sibling(target, s))
            .collect()
    }

    /// Start afresh under `lock`: remove any checkpoint and stale partial file
    /// an earlier run left (regular files of ours only), then create the
    /// partial file exclusively. A link or a foreign file at any side-file
    /// name, and a target that is not a regular file or a link
    /// ([`SideFileError::NotAFile`]), are refused before anything is written.
    pub fn create(lock: &TargetLock) -> Result<ResumableFile, SideFileError> {
        let target = lock.target();
        side_file::check_replaceable(target)?;
        let name = |s| sibling(target, s).map_err(|e| side_io("name", target, e));
        let (partial, state, state_tmp) = (name(PARTIAL)?, name(STATE)?, name(STATE_TMP)?);
        side_file::check_ours(&partial)?;
        side_file::check_ours(&state_tmp)?;
        side_file::remove_stale(&state)?;
        let file = side_file::create_exclusive(&partial)?;
        let id = id_of(
            &file
                .metadata()
                .map_err(|e| side_io("inspect", &partial, e))?,
        );
        Ok(ResumableFile {
            target: target.to_path_buf(),
            partial,
            state,
            id,
            out: Some(BufWriter::with_capacity(crate::BUFFER_LEN, file)),
            written: 0,
            in_file: 0,
            writeback: Writeback::at(0),
        })
    }

    /// The checkpoint an interrupted apply to `lock`'s target left, if there
    /// is one that is intact (a torn or damaged checkpoint, or one of an older
    /// checkpoint version, counts as none). A link or foreign file at the
    /// checkpoint's name is refused. Reads one small file.
    pub fn load_checkpoint(lock: &TargetLock) -> Result<Option<Checkpoint>, SideFileError> {
        let state =
            Self::state_path(lock.target()).map_err(|e| side_io("name", lock.target(), e))?;
        let Some(mut file) = side_file::open_existing(&state, false)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(Checkpoint::LEN);
        Read::by_ref(&mut file)
            .take(Checkpoint::LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| side_io("read", &state, e))?;
        Ok(Checkpoint::decode(&bytes).ok())
    }

    /// Reopen the partial file under `lock` to continue after `checkpoint`:
    /// it is cut back to the checkpoint's length (bytes of an unfinished
    /// segment are dropped) and new writes append. Also returns a reader over
    /// the kept bytes through the same descriptor, for [`crate::Applier::resume`]
    /// to hash again. A link or foreign file at the partial file's name is
    /// refused ([`SideFileError::NotOurs`]); a missing or short one is an
    /// [`SideFileError::Io`].
    pub fn reopen(
        lock: &TargetLock,
        checkpoint: &Checkpoint,
    ) -> Result<(ResumableFile, ReadBack), SideFileError> {
        let target = lock.target();
        side_file::check_replaceable(target)?;
        let partial = Self::partial_path(target).map_err(|e| side_io("name", target, e))?;
        let state = Self::state_path(target).map_err(|e| side_io("name", target, e))?;
        side_file::check_ours(
            &sibling(target, STATE_TMP).map_err(|e| side_io("name", target, e))?,
        )?;
        let mut file = side_file::open_existing(&partial, true)?
            .ok_or_else(|| side_io("reopen", &partial, io::ErrorKind::NotFound.into()))?;
        let meta = file
            .metadata()
            .map_err(|e| side_io("inspect", &partial, e))?;
        let len = meta.len();
        if len < checkpoint.new_offset {
            return Err(side_io(
                "reuse",
                &partial,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "it has {len} bytes but the checkpoint needs {}",
                        checkpoint.new_offset
                    ),
                ),
            ));
        }
        let io_err = |e| side_io("reuse", &partial, e);
        file.set_len(checkpoint.new_offset).map_err(io_err)?;
        file.seek(SeekFrom::End(0)).map_err(io_err)?;
        let reader = ReadBack {
            file: file.try_clone().map_err(io_err)?,
            pos: 0,
        };
        Ok((
            ResumableFile {
                target: target.to_path_buf(),
                partial,
                state,
                id: id_of(&meta),
                out: Some(BufWriter::with_capacity(crate::BUFFER_LEN, file)),
                written: checkpoint.new_offset,
                in_file: checkpoint.new_offset,
                writeback: Writeback::at(checkpoint.new_offset),
            },
            reader,
        ))
    }

    /// Stop here but keep the partial file and its last checkpoint for a
    /// later [`Self::reopen`] (a download that broke for longer than its
    /// caller waits): unlike a drop, nothing is removed. Bytes written after
    /// the checkpoint are flushed but not synced; the reopen cuts them off.
    pub fn suspend(mut self) {
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
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
    ///
    /// The rename happens only if the partial file's name still names the
    /// file this sink wrote (same device and inode as its descriptor), and
    /// succeeds only if the target names it afterwards: the file put in place
    /// is the one whose bytes were hashed. Costs two `stat`s besides the
    /// syncs and the rename.
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
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        if id_of(&file.metadata()?) != self.id || id_at(&self.partial)? != Some(self.id) {
            return Err(io::Error::other(format!(
                "{} is no longer the file this apply wrote; not renaming it",
                self.partial.display()
            )));
        }
        fs::rename(&self.partial, &self.target)?;
        if id_at(&self.target)? != Some(self.id) {
            return Err(io::Error::other(format!(
                "{} was replaced by another file while it was renamed",
                self.target.display()
            )));
        }
        Ok(())
    }

    fn discard_files(&self) {
        // Only the files this sink wrote: never another process's.
        if matches!(id_at(&self.partial), Ok(Some(id)) if id == self.id) {
            let _ = fs::remove_file(&self.partial);
        }
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
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        let out = self.out.as_mut().ok_or(io::ErrorKind::Other)?;
        out.write_all(data)?;
        self.written += data.len() as u64;
        // What has left the buffer since is in the file now.
        let in_file = self.written - out.buffer().len() as u64;
        if in_file > self.in_file {
            let file = out.get_ref();
            self.writeback
                .wrote(file, self.in_file, in_file - self.in_file);
            self.in_file = in_file;
        }
        Ok(())
    }

    fn segment_done(
        &mut self,
        _segment: &SegmentHeader,
        checkpoint: &Checkpoint,
    ) -> Result<(), IoError> {
        Ok(self.write_checkpoint(checkpoint)?)
    }
}

impl Drop for ResumableFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            self.discard_files();
        }
    }
}

/// A [`SideFileError::Io`] for `path`.
fn side_io(action: &'static str, path: &Path, error: io::Error) -> SideFileError {
    SideFileError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file renamed into place is the one this sink wrote: if another
    /// file was put at the partial file's name (by a process that ignored the
    /// lock), commit refuses and the target stays as it was.
    #[test]
    fn commit_refuses_a_partial_file_swapped_under_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image.bin");
        fs::write(&target, b"before").unwrap();
        let lock = TargetLock::acquire(&target).unwrap();
        let mut sink = ResumableFile::create(&lock).unwrap();
        Sink::write(&mut sink, b"the bytes that were hashed").unwrap();
        let intruder = dir.path().join("intruder");
        fs::write(&intruder, b"other bytes").unwrap();
        let partial = ResumableFile::partial_path(&target).unwrap();
        fs::rename(&intruder, &partial).unwrap();
        let err = sink.commit().unwrap_err();
        assert!(err.to_string().contains("no longer the file"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"before");
        // The intruder's file is not ours to remove.
        assert_eq!(fs::read(&partial).unwrap(), b"other bytes");

        let mut sink = ResumableFile::create(&lock).unwrap();
        Sink::write(&mut sink, b"after").unwrap();
        sink.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"after");
        drop(lock);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A suspended sink leaves its partial file (and a checkpoint, had one
    /// been written) for a later reopen; a dropped one removes it.
    #[test]
    fn suspend_keeps_the_partial_file_and_drop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image.bin");
        let lock = TargetLock::acquire(&target).unwrap();
        let partial = ResumableFile::partial_path(&target).unwrap();
        let mut sink = ResumableFile::create(&lock).unwrap();
        Sink::write(&mut sink, b"kept").unwrap();
        sink.suspend();
        assert_eq!(fs::read(&partial).unwrap(), b"kept");
        let sink = ResumableFile::create(&lock).unwrap();
        drop(sink);
        assert!(!partial.exists());
        assert!(!target.exists());
    }
}
