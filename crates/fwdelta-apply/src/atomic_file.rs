//! Write a file so that it appears whole or not at all: bytes go to a temporary
//! file beside the target, which is flushed, fsynced and renamed over the target
//! only by [`AtomicFile::commit`]. Dropped uncommitted, the temporary file is
//! removed, so a failed apply or diff leaves nothing half-written behind.

use crate::sink::Sink;
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

impl AtomicFile {
    /// Create a temporary file in the target's directory (`.NAME.fwdelta-PID-N.tmp`,
    /// created exclusively).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name")
            })?
            .to_string_lossy()
            .into_owned();
        let pid = std::process::id();
        for n in 0..1000u32 {
            let temp = dir.join(format!(".{name}.fwdelta-{pid}-{n}.tmp"));
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

    /// Flush, fsync, rename over the target, then fsync the directory so the
    /// rename itself is durable.
    pub fn commit(mut self) -> io::Result<()> {
        let out = self.out.take().ok_or(io::ErrorKind::Other)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        if let Err(e) = fs::rename(&self.temp, &self.target) {
            let _ = fs::remove_file(&self.temp);
            return Err(e);
        }
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        } else {
            File::open(".")?.sync_all()?;
        }
        Ok(())
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
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
