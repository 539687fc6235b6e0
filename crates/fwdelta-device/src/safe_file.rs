//! File operations for the state directory that never follow a link and
//! never leave a half-written file: reads refuse anything but a regular
//! file, replacements go through an exclusively created temporary file that
//! is synced and renamed, appends are synced, and a lock file held with
//! `flock` keeps a second updater out.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Most bytes a state or history file may have (a damaged length never
/// makes the reader allocate more).
pub const MAX_FILE_LEN: u64 = 16 << 20;

fn no_follow() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

/// Refuse `meta` unless it is a regular file owned by this process's user.
fn must_be_ours(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} belongs to another user", path.display()),
        ));
    }
    Ok(())
}

/// Read the whole regular file at `path` (a link there is an error), at
/// most [`MAX_FILE_LEN`] bytes.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let f = no_follow().read(true).open(path)?;
    let meta = f.metadata()?;
    must_be_ours(path, &meta)?;
    if meta.len() > MAX_FILE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {MAX_FILE_LEN} bytes", path.display()),
        ));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_FILE_LEN).read_to_end(&mut out)?;
    Ok(out)
}

/// Replace `path` with `bytes` durably: a temporary sibling created
/// exclusively (mode 0600; a stale regular one from a killed run is removed
/// first, never through a link), synced, renamed over `path`, then the
/// directory synced. A crash leaves either the old file or the new one.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    remove_stale(&tmp)?;
    let result = (|| {
        let mut f = no_follow()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(path)
}

/// Create `path` exclusively (mode 0600) holding `bytes`, synced.
pub fn create(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = no_follow()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    sync_dir(path)
}

/// Append `bytes` to the regular file at `path` (created exclusively if it
/// is missing) and sync it. Returns the length the file had before.
pub fn append(path: &Path, bytes: &[u8]) -> io::Result<u64> {
    let f = match no_follow().append(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => no_follow()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?,
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    must_be_ours(path, &meta)?;
    let mut f = f;
    f.write_all(bytes)?;
    f.sync_data()?;
    Ok(meta.len())
}

/// Remove a leftover regular file at `path` (a link is removed as a link,
/// its target untouched; anything else is an error).
fn remove_stale(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_symlink() => fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is in the way and is not a regular file", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// An exclusive `flock` on a lock file, released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Take the lock on `path` (created, mode 0600, never through a link)
    /// without waiting: `Ok(None)` if another process holds it.
    pub fn try_take(path: &Path) -> io::Result<Option<Lock>> {
        let file = no_follow()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        must_be_ours(path, &file.metadata()?)?;
        // SAFETY: the descriptor is open for the duration of the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(Lock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}
