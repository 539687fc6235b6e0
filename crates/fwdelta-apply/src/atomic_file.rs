//! Write a file so that it appears whole or not at all: bytes go to a temporary
//! file beside the target, which is flushed, fsynced and renamed over the target
//! only by [`AtomicFile::commit`]. Dropped uncommitted, the temporary file is
//! removed, so a failed apply or diff leaves nothing half-written behind.

#[allow(unused_imports)]
use crate::prelude::*;
use crate::sink::Sink;
use crate::IoError;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written atomically. Holds one 16 KiB write buffer.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    out: Option<BufWriter<File>>,
}

/// Longest part of the target's name kept in the temporary file's name, so the
/// temporary name stays within common file-name limits (255 bytes).
const MAX_NAME_IN_TEMP: usize = 120;

/// A hidden file beside `target`: `(.NAME.SUFFIX)` in the same directory, with
/// NAME shortened to [`MAX_NAME_IN_TEMP`] characters.
pub(crate) fn sibling(target: &Path, suffix: &str) -> io::Result<PathBuf> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name"))?
        .to_string_lossy();
    let short: String = name.chars().take(MAX_NAME_IN_TEMP).collect();
    Ok(dir.join(format!(".{short}.{suffix}")))
}

/// fsync the directory holding `path`, making a rename in it durable.
pub(crate) fn sync_dir_of(path: &Path) -> io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    File::open(dir)?.sync_all()
}

/// Flush `out`, fsync its file, and rename `from` to `to`.
pub(crate) fn sync_and_rename(out: BufWriter<File>, from: &Path, to: &Path) -> io::Result<()> {
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    fs::rename(from, to)
}

/// Replace the small file `path` with `bytes` durably: write a temporary
/// sibling (`PATH.tmp`, created exclusively with `O_NOFOLLOW`, mode 0600),
/// fsync it, rename it over `path`, fsync the directory. A symbolic link or
/// another user's file at `PATH.tmp` is refused (an error of kind `Other`
/// wrapping a [`crate::SideFileError`]).
pub(crate) fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        // Never through a link at the temporary name; a stale regular file
        // of ours (a killed run's) is removed first.
        let mut f = crate::side_file::create_exclusive(&tmp).map_err(io::Error::other)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir_of(path)
}

/// Remove `path`; a file that is already gone is fine.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl AtomicFile {
    /// Create a temporary file in the target's directory (`.NAME.fwdelta-PID-N.tmp`,
    /// created exclusively). If the target is a symbolic link, the link itself is
    /// what [`commit`](Self::commit) replaces; any other target that is not a
    /// regular file (a device node, a FIFO) is refused, an error of kind
    /// `Other` wrapping [`crate::SideFileError::NotAFile`].
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        crate::side_file::check_replaceable(target).map_err(io::Error::other)?;
        let pid = std::process::id();
        for n in 0..1000u32 {
            let temp = sibling(target, &format!("fwdelta-{pid}-{n}.tmp"))?;
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(AtomicFile {
                        target: target.to_path_buf(),
                        temp,
                        out: Some(BufWriter::with_capacity(crate::BUFFER_LEN, file)),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary file name",
        ))
    }

    /// Path of the temporary file (for diagnostics and tests).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// The temporary file, e.g. to set its permissions before committing.
    pub fn file(&self) -> Option<&File> {
        self.out.as_ref().map(|w| w.get_ref())
    }

    /// Flush, fsync, rename over the target, then fsync the directory so the
    /// rename itself is durable. On any failure before the rename, the temporary
    /// file is removed and the target is untouched. If only the final directory
    /// sync fails, the new file is already in place and the error says so.
    pub fn commit(mut self) -> io::Result<()> {
        let result = self.finish_and_rename();
        // Whatever happened, the temporary file must not outlive this call.
        self.out = None;
        if result.is_err() {
            let _ = fs::remove_file(&self.temp);
        }
        result?;
        sync_dir_of(&self.target).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the new file is in place but its directory could not be synced: {e}"),
            )
        })
    }

    fn finish_and_rename(&mut self) -> io::Result<()> {
        let out = self.out.take().ok_or(io::ErrorKind::Other)?;
        sync_and_rename(out, &self.temp, &self.target)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.as_mut().ok_or(io::ErrorKind::Other)?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().ok_or(io::ErrorKind::Other)?.flush()
    }
}

impl Sink for AtomicFile {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        Ok(self.write_all(data)?)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Still open means never committed: discard. (`commit` clears `out`
        // and removes the file itself on failure.)
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Bytes written to a file whose writeback is not started yet (a run from
/// `start`), started every [`Writeback::STEP`] bytes: the sync at the next
/// checkpoint or commit then waits for less. Durability still comes from
/// that sync alone.
#[derive(Debug)]
pub(crate) struct Writeback {
    start: u64,
    len: u64,
}

impl Writeback {
    /// Written bytes after which their writeback is started.
    const STEP: u64 = 1 << 20;

    /// Nothing written yet; the first write is expected at `at`.
    pub(crate) fn at(at: u64) -> Self {
        Writeback { start: at, len: 0 }
    }

    /// `len` bytes of `file` at `offset` were written (handed to the
    /// kernel): count them, and start the writeback of the run so far once
    /// it reaches the step. A write elsewhere begins a new run.
    pub(crate) fn wrote(&mut self, file: &File, offset: u64, len: u64) {
        if self.start + self.len != offset {
            *self = Writeback::at(offset);
        }
        self.len += len;
        if self.len >= Self::STEP {
            start_writeback(file, self.start, self.len);
            *self = Writeback::at(offset + len);
        }
    }
}

/// Ask the kernel to start writing `len` bytes of `file` at `offset` back to
/// storage, without waiting (Linux `sync_file_range`, `SYNC_FILE_RANGE_WRITE`;
/// nothing elsewhere): a later `fsync` then waits for less. Durability still
/// comes from that `fsync` alone, so a failure here is ignored.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a valid descriptor for the call's duration; no memory is
        // passed.
        let _ = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of contiguous writes is counted until the step, then started
    /// and begun again; a write elsewhere begins a new run.
    #[test]
    fn writeback_starts_every_step_of_a_contiguous_run() {
        let file = tempfile::tempfile().unwrap();
        let mut w = Writeback::at(0);
        w.wrote(&file, 0, 1000);
        w.wrote(&file, 1000, 24);
        assert_eq!((w.start, w.len), (0, 1024));
        w.wrote(&file, 5000, 10);
        assert_eq!((w.start, w.len), (5000, 10));
        w.wrote(&file, 5010, Writeback::STEP);
        assert_eq!((w.start, w.len), (5010 + Writeback::STEP, 0));
    }

    #[test]
    fn commit_replaces_and_drop_discards() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image.bin");
        fs::write(&target, b"before").unwrap();

        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"half").unwrap();
        let temp = f.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(f);
        assert!(!temp.exists(), "uncommitted temp file must be removed");
        assert_eq!(fs::read(&target).unwrap(), b"before");

        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"after").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"after");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_commit_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target becomes a non-empty directory after the create (which
        // refuses one): the rename must fail.
        let target = dir.path().join("busy");
        let mut f = AtomicFile::create(&target).unwrap();
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"x").unwrap();
        f.write_all(b"data").unwrap();
        let temp = f.temp_path().to_path_buf();
        assert!(f.commit().is_err());
        assert!(!temp.exists(), "temp file left after a failed commit");
        assert_eq!(fs::read(target.join("keep")).unwrap(), b"x");
    }

    #[test]
    fn long_names_fit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("n".repeat(250));
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"ok").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"ok");
    }
}
