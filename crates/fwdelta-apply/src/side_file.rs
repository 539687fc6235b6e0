//! The files an apply keeps beside its target (`.NAME.fwdelta-*`): a lock so
//! that one update of a target runs at a time, exclusive creation that never
//! follows a link, and a free-space check before the new image is written.
//!
//! Every side file is opened with `O_NOFOLLOW` and checked to be a regular
//! file owned by this process's effective uid with one link; anything else at
//! a side-file name is refused ([`SideFileError::NotOurs`]), never followed,
//! never removed. A stale regular file of ours (left by a killed run) is
//! removed and created again exclusively (`O_EXCL`, mode 0600).

use crate::atomic_file::sibling;
#[allow(unused_imports)]
use crate::prelude::*;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Suffix of the lock file beside the target.
pub const LOCK: &str = "fwdelta-lock";

/// Why a side file could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SideFileError {
    /// Another process holds the target's lock: it is updating the same
    /// target (an apply to the same output, or an in-place apply of the same
    /// image) right now.
    #[error("another update of {name} is running (it holds {lock})")]
    Busy {
        /// The target's file name.
        name: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// Something other than a regular file of ours is at a side-file name (a
    /// symbolic link, a directory, a file with other hard links or of another
    /// user): refused, left as it is.
    #[error("refusing to use {path}: {why}; remove it if no update is running")]
    NotOurs {
        /// The side file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The target exists and is not a regular file or a symbolic link: a
    /// device node, a FIFO, a socket or a directory. The new image is
    /// written beside the target and renamed over it, which would replace
    /// the node instead of writing into it.
    #[error("refusing to replace {target}: it is a {kind}, not a regular file (the new image is written beside it and renamed over it)")]
    NotAFile {
        /// The target.
        target: PathBuf,
        /// What it is ("block device", "FIFO", ...).
        kind: &'static str,
    },
    /// The target's filesystem has less free space than the new image needs.
    #[error(
        "not enough free space for the new image {target}: {needed} bytes to write, {available} available"
    )]
    NoSpace {
        /// The target.
        target: PathBuf,
        /// Bytes still to write.
        needed: u64,
        /// Bytes free for unprivileged writers on the target's filesystem.
        available: u64,
    },
    /// A system call on a side file failed.
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What was being done ("create", "lock", ...).
        action: &'static str,
        /// The side file.
        path: PathBuf,
        /// The failure.
        error: io::Error,
    },
}

impl SideFileError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SideFileError {
        let path = path.to_path_buf();
        move |error| SideFileError::Io {
            action,
            path,
            error,
        }
    }
}

/// `(device, inode)` of a file: which file a path or descriptor is.
pub(crate) type FileId = (u64, u64);

/// The identity of `meta`.
pub(crate) fn id_of(meta: &fs::Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

/// The identity of the file at `path` itself (a link is not followed), or
/// `None` if nothing is there.
pub(crate) fn id_at(path: &Path) -> io::Result<Option<FileId>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(id_of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// This process's effective uid.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `meta` (of the file at a side-file name, not followed) is not a
/// regular file of ours with one link, or `None` if it is.
fn not_ours(meta: &fs::Metadata) -> Option<String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if !kind.is_file() {
        return Some("it is not a regular file".into());
    }
    if meta.uid() != euid() {
        return Some(format!("it belongs to uid {}, not to us", meta.uid()));
    }
    if meta.nlink() != 1 {
        return Some(format!("it has {} hard links", meta.nlink()));
    }
    None
}

/// What a lock file is, by its metadata (looked up by path or opened).
#[derive(Debug, PartialEq, Eq)]
enum LockFile {
    /// A regular file of ours with one name: lock it.
    Usable,
    /// Its holder removed it between our open and now (it has no name
    /// left): open the path again.
    Removed,
    /// Anything else (a link, another's file, more names): refuse it.
    Refused(String),
}

impl LockFile {
    /// `Ok(true)`: go on with it; `Ok(false)`: look the path up again;
    /// refused as not ours (the file at `path`).
    fn usable(self, path: &Path) -> Result<bool, SideFileError> {
        match self {
            LockFile::Usable => Ok(true),
            LockFile::Removed => Ok(false),
            LockFile::Refused(why) => Err(SideFileError::NotOurs {
                path: path.to_path_buf(),
                why,
            }),
        }
    }
}

fn opened_lock(meta: &fs::Metadata) -> LockFile {
    if meta.file_type().is_file() && meta.uid() == euid() && meta.nlink() == 0 {
        return LockFile::Removed;
    }
    match not_ours(meta) {
        Some(why) => LockFile::Refused(why),
        None => LockFile::Usable,
    }
}

/// Refuse what is at `path` unless it is nothing or a regular file of ours.
pub(crate) fn check_ours(path: &Path) -> Result<(), SideFileError> {
    match fs::symlink_metadata(path) {
        Ok(m) => match not_ours(&m) {
            Some(why) => Err(SideFileError::NotOurs {
                path: path.to_path_buf(),
                why,
            }),
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SideFileError::io("inspect", path)(e)),
    }
}

/// Refuse a target that a rename must not replace: anything but nothing, a
/// regular file or a symbolic link (the link itself is what is replaced).
/// Costs one `lstat`.
pub fn check_replaceable(target: &Path) -> Result<(), SideFileError> {
    use std::os::unix::fs::FileTypeExt;
    let t = match fs::symlink_metadata(target) {
        Ok(m) => m.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SideFileError::io("inspect", target)(e)),
    };
    let kind = if t.is_file() || t.is_symlink() {
        return Ok(());
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_dir() {
        "directory"
    } else {
        "special file"
    };
    Err(SideFileError::NotAFile {
        target: target.to_path_buf(),
        kind,
    })
}

/// Remove a stale side file: nothing there is fine, a regular file of ours
/// is unlinked, anything else is refused and left alone.
pub(crate) fn remove_stale(path: &Path) -> Result<(), SideFileError> {
    check_ours(path)?;
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SideFileError::io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Create `path` exclusively (mode 0600, never through a link), for reading
/// and writing, after removing a stale regular file of ours there.
pub(crate) fn create_exclusive(path: &Path) -> Result<File, SideFileError> {
    remove_stale(path)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(SideFileError::io("create", path))
}

/// Open an existing side file for reading (and writing, if `write`) without
/// following a link, and check that it is a regular file of ours with one
/// link. `Ok(None)` if there is none.
pub(crate) fn open_existing(path: &Path, write: bool) -> Result<Option<File>, SideFileError> {
    let file = match OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SideFileError::NotOurs {
                path: path.to_path_buf(),
                why: "it is a symbolic link".into(),
            })
        }
        Err(e) => return Err(SideFileError::io("open", path)(e)),
    };
    let meta = file
        .metadata()
        .map_err(SideFileError::io("inspect", path))?;
    if let Some(why) = not_ours(&meta) {
        return Err(SideFileError::NotOurs {
            path: path.to_path_buf(),
            why,
        });
    }
    Ok(Some(file))
}

/// Path of the side file `.NAME.SUFFIX` beside `target` (NAME shortened as
/// every side file's is). No I/O.
pub fn side_path(target: &Path, suffix: &str) -> io::Result<PathBuf> {
    sibling(target, suffix)
}

/// Path of the lock file for `target` (`.NAME.fwdelta-lock` beside it). No I/O.
pub fn lock_path(target: &Path) -> io::Result<PathBuf> {
    sibling(target, LOCK)
}

/// Exclusive hold on one target's updates: `flock(LOCK_EX | LOCK_NB)` on
/// `.NAME.fwdelta-lock` beside it. Held until dropped; dropping removes the
/// lock file (if it is still ours) and releases the lock.
///
/// Whoever holds it may create, write and rename the target's other side
/// files; a second holder cannot exist at the same time, across processes.
/// A lock file left by a killed process is simply taken over (`flock` locks
/// die with their process).
#[derive(Debug)]
pub struct TargetLock {
    target: PathBuf,
    path: PathBuf,
    id: FileId,
    // Closing the descriptor releases the lock: it must outlive everything
    // done under the lock, so it is dropped last (after the unlink).
    _file: File,
}

impl TargetLock {
    /// Take the lock of `target` without waiting: [`SideFileError::Busy`] if
    /// another process holds it. Costs an open, an `flock` and two `stat`s.
    pub fn acquire(target: &Path) -> Result<TargetLock, SideFileError> {
        let path = lock_path(target).map_err(SideFileError::io("name", target))?;
        // The previous holder removes the lock file before releasing it; a
        // lock taken on a file that is no longer at the path is taken again
        // on the file that is there.
        for _ in 0..100 {
            // What is at the path now: a lock file its holder is removing
            // this instant (no name left) is looked up again.
            match fs::symlink_metadata(&path) {
                Ok(m) if !opened_lock(&m).usable(&path)? => continue,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SideFileError::io("inspect", &path)(e)),
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| {
                    if e.raw_os_error() == Some(libc::ELOOP) {
                        SideFileError::NotOurs {
                            path: path.clone(),
                            why: "it is a symbolic link".into(),
                        }
                    } else {
                        SideFileError::io("create", &path)(e)
                    }
                })?;
            let meta = file
                .metadata()
                .map_err(SideFileError::io("inspect", &path))?;
            if !opened_lock(&meta).usable(&path)? {
                continue;
            }
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let name = target.file_name().map_or_else(
                        || target.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    );
                    return Err(SideFileError::Busy { name, lock: path });
                }
                return Err(SideFileError::io("lock", &path)(e));
            }
            let id = id_of(&meta);
            if id_at(&path).map_err(SideFileError::io("inspect", &path))? == Some(id) {
                return Ok(TargetLock {
                    target: target.to_path_buf(),
                    path,
                    id,
                    _file: file,
                });
            }
        }
        Err(SideFileError::Io {
            action: "lock",
            path,
            error: io::Error::other("the lock file kept changing"),
        })
    }

    /// The target this lock is for.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Only our own lock file is removed, while the lock is still held;
        // the descriptor (and the lock) goes after this body.
        if matches!(id_at(&self.path), Ok(Some(id)) if id == self.id) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Bytes free for unprivileged writers on the filesystem holding `target`'s
/// directory (`statvfs`: `f_bavail × f_frsize`). One system call.
pub fn free_space(target: &Path) -> Result<u64, SideFileError> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        SideFileError::io("inspect", dir)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path holds a NUL byte",
        ))
    })?;
    // SAFETY: statvfs writes into a zeroed struct of the type it expects; the
    // path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(SideFileError::io("inspect the filesystem of", dir)(
            io::Error::last_os_error(),
        ));
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuse ([`SideFileError::NoSpace`]) to write `needed` more bytes beside
/// `target` if its filesystem has less free than that. A check, not a
/// reservation: space another writer takes meanwhile still fails the write
/// later (with an I/O error). One system call.
pub fn ensure_free_space(target: &Path, needed: u64) -> Result<(), SideFileError> {
    let available = free_space(target)?;
    if available < needed {
        return Err(SideFileError::NoSpace {
            target: target.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nothing_a_file_or_a_link_may_be_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        for ok in [&dir.path().join("absent"), &file, &link] {
            check_replaceable(ok).unwrap();
        }
        for (path, kind) in [
            (Path::new("/dev/null"), "character device"),
            (dir.path(), "directory"),
        ] {
            match check_replaceable(path) {
                Err(SideFileError::NotAFile { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        // An atomic file's target is checked before its temporary is made.
        let e = crate::AtomicFile::create(Path::new("/dev/null")).unwrap_err();
        assert!(e.to_string().contains("character device"), "{e}");
    }

    #[test]
    fn second_lock_is_busy_and_the_lock_file_goes_with_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image.bin");
        let lock = TargetLock::acquire(&target).unwrap();
        assert!(lock.path().exists());
        assert!(matches!(
            TargetLock::acquire(&target),
            Err(SideFileError::Busy { .. })
        ));
        drop(lock);
        assert!(!dir.path().join(".image.bin.fwdelta-lock").exists());
        let again = TargetLock::acquire(&target).unwrap();
        drop(again);
    }

    /// A lock file its holder removed between another process's open and
    /// its check (the holder finished) is opened again, not refused: the
    /// race `two_concurrent_applies_never_succeed_with_a_wrong_image` caught
    /// in CI ("it has 0 hard links", exit 1). A second name is still refused.
    #[test]
    fn a_lock_file_removed_after_the_open_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".image.bin.fwdelta-lock");
        fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(opened_lock(&file.metadata().unwrap()), LockFile::Usable);
        let second = dir.path().join("second-name");
        fs::hard_link(&path, &second).unwrap();
        assert!(matches!(
            opened_lock(&file.metadata().unwrap()),
            LockFile::Refused(_)
        ));
        fs::remove_file(&second).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!(opened_lock(&file.metadata().unwrap()), LockFile::Removed);
    }

    /// Threads of one process taking and dropping one target's lock as fast
    /// as they can (each open is its own `flock` description, as another
    /// process's would be): every try either holds it alone or is refused
    /// as busy; none is refused for the lock file vanishing under it (the
    /// race 8fc51c6 half fixed: the path lookup before the open saw it too).
    #[test]
    fn racing_lockers_are_busy_or_alone_never_refused() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image.bin");
        let holders = AtomicUsize::new(0);
        let (taken, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..3000 {
                        match TargetLock::acquire(&target) {
                            Ok(lock) => {
                                assert_eq!(holders.fetch_add(1, SeqCst), 0, "two holders");
                                std::thread::yield_now();
                                holders.fetch_sub(1, SeqCst);
                                drop(lock);
                                taken.fetch_add(1, SeqCst);
                            }
                            Err(SideFileError::Busy { .. }) => {
                                busy.fetch_add(1, SeqCst);
                            }
                            Err(e) => panic!("refused: {e}"),
                        }
                    }
                });
            }
        });
        assert_eq!(taken.load(SeqCst) + busy.load(SeqCst), 12_000);
        assert!(taken.load(SeqCst) > 0 && busy.load(SeqCst) > 0);
    }

    #[test]
    fn a_stale_lock_file_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image.bin");
        fs::write(dir.path().join(".image.bin.fwdelta-lock"), b"").unwrap();
        let lock = TargetLock::acquire(&target).unwrap();
        drop(lock);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn links_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join(".x.fwdelta-partial");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(matches!(
            create_exclusive(&link),
            Err(SideFileError::NotOurs { .. })
        ));
        assert!(matches!(
            open_existing(&link, true),
            Err(SideFileError::NotOurs { .. })
        ));
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }
}
