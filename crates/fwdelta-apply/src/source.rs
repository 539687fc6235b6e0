//! Random-read access to the old image. The applier reads it by offset in
//! 16 KiB pieces and never holds it whole.

#[allow(unused_imports)]
use crate::prelude::*;
use crate::IoError;
#[cfg(feature = "std")]
use std::fs::File;
#[cfg(feature = "std")]
use std::io::{self, Seek, SeekFrom};
#[cfg(feature = "std")]
use std::os::unix::fs::{FileExt, FileTypeExt};
#[cfg(feature = "std")]
use std::path::Path;

/// A random-read source for the old image: a byte slice, a file read by offset,
/// or a flash partition behind a driver.
pub trait OldImage {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` with the bytes at `offset..offset + buf.len()`. The applier
    /// only asks for ranges inside `0..len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError>;
    /// Whether the applier may read past what a record needs, up to its
    /// 16 KiB buffer, to serve the next records from one read: worth it
    /// where a read has a fixed cost (a system call, a bus transaction).
    /// Default `false`: only what is needed is read (a view that guards
    /// some ranges, or memory, where a copy is all a read costs). With
    /// `true`, an executable-aware patch's predictor holds 16 KiB more.
    /// Bytes read ahead are never used past the image's end.
    fn read_ahead(&self) -> bool {
        false
    }
}

impl OldImage for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .and_then(|range| self.get(range))
            .ok_or(IoError::new("read past the end of the old image"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl OldImage for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.as_slice().read_at(offset, buf)
    }
}

#[cfg(feature = "std")]
/// An old image in a regular file or a block device (e.g. a flash partition),
/// read with positioned reads (`pread`): no mapping, so the process's resident
/// memory does not grow with the image.
#[derive(Debug)]
pub struct FileImage {
    file: File,
    len: u64,
}

#[cfg(feature = "std")]
impl FileImage {
    /// Open `path` read-only and record its length (for a block device, the
    /// device's size).
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(File::open(path)?)
    }

    /// An old image in `file`, already open (a regular file or a block
    /// device, as for [`FileImage::open`]).
    pub fn from_file(mut file: File) -> io::Result<Self> {
        let kind = file.metadata()?.file_type();
        let len = if kind.is_file() {
            file.metadata()?.len()
        } else if kind.is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        };
        Ok(FileImage { file, len })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(feature = "std")]
impl OldImage for FileImage {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        Ok(self.file.read_exact_at(buf, offset)?)
    }
    /// `true`: a `pread` per record costs more than copying 16 KiB.
    fn read_ahead(&self) -> bool {
        true
    }
}
