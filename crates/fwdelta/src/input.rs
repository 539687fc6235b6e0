//! Opening input images for the generator: memory-mapped, read-only.

use anyhow::{Context, Result};
use memmap2::Mmap;
use std::fs::File;
use std::ops::Deref;
use std::path::Path;

/// A read-only input image, memory-mapped (or empty).
pub struct Image {
    map: Option<Mmap>,
}

impl Image {
    /// The empty image (the old image of a full-image patch).
    pub fn empty() -> Image {
        Image { map: None }
    }

    /// Map `path`. The file must not be modified while mapped; release
    /// pipelines diff build outputs that are no longer being written.
    pub fn open(path: &Path) -> Result<Image> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
        if meta.len() == 0 {
            return Ok(Image { map: None });
        }
        // SAFETY: read-only mapping of a regular file; see the doc comment on
        // concurrent modification.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        Ok(Image { map: Some(map) })
    }
}

impl Deref for Image {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
