//! Reading ahead ([`OldImage::read_ahead`]): an old image that allows it is
//! read in fewer, larger reads, never outside the image, and gives exactly
//! the new image, on every layout, plain and executable-aware; the file
//! image (which reads ahead) applies the same patches to the same bytes.

use fwdelta_apply::{apply, apply_parallel, ApplyOptions, FileImage, IoError, OldImage};
use fwdelta_diff::{diff, CodeMode, Options};
use fwdelta_format::reference_rewriter::Arch;
use fwdelta_format::Layout;
use std::cell::Cell;
use std::io::Write;

fn testdata(pair: &str, which: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../testdata/{pair}/{which}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// An old image in memory that reads ahead or not, counting its reads and
/// refusing any outside the image.
struct Counted<'a> {
    bytes: &'a [u8],
    ahead: bool,
    reads: Cell<usize>,
}

impl OldImage for Counted<'_> {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.reads.set(self.reads.get() + 1);
        let end = offset + buf.len() as u64;
        assert!(end <= self.len(), "read {offset}..{end} past the image");
        self.bytes.read_at(offset, buf)
    }
    fn read_ahead(&self) -> bool {
        self.ahead
    }
}

#[test]
fn reading_ahead_reads_less_often_and_gives_the_same_image() {
    let (old, new) = (testdata("fw-x86-64", "old"), testdata("fw-x86-64", "new"));
    for layout in [Layout::Interleaved, Layout::Split, Layout::Modelled] {
        for code in [CodeMode::Off, CodeMode::Arch(Arch::X86_64)] {
            let o = Options {
                layout: Some(layout),
                code,
                segment_cost: 400,
                ..Options::default()
            };
            let made = diff(&old, &new, &o).unwrap();
            let patch = made.bytes;
            let what = format!("{layout:?} {code:?}");
            let mut reads = [0usize; 2];
            for (i, ahead) in [false, true].into_iter().enumerate() {
                let img = Counted {
                    bytes: &old,
                    ahead,
                    reads: Cell::new(0),
                };
                let (_, out) = apply(&img, &patch[..], Vec::new(), ApplyOptions::default())
                    .unwrap_or_else(|e| panic!("{what} ahead={ahead}: {e}"));
                assert!(out == new, "{what} ahead={ahead}: wrong image");
                reads[i] = img.reads.get();
            }
            // The old image's check reads it whole either way; the records'
            // reads are what reading ahead folds together.
            assert!(
                reads[1] * 2 <= reads[0],
                "{what}: {} reads reading ahead, {} without",
                reads[1],
                reads[0]
            );

            // The file image, streaming and in parallel.
            let dir = tempfile::tempdir().unwrap();
            let old_path = dir.path().join("old");
            std::fs::write(&old_path, &old).unwrap();
            let file = FileImage::open(&old_path).unwrap();
            assert!(file.read_ahead());
            let (_, out) = apply(&file, &patch[..], Vec::new(), ApplyOptions::default()).unwrap();
            assert!(out == new, "{what}: wrong image from the file");
            let mut pf = tempfile::tempfile().unwrap();
            pf.write_all(&patch).unwrap();
            let out = tempfile::tempfile().unwrap();
            apply_parallel(
                &file,
                &pf,
                &out,
                &mut Vec::new(),
                ApplyOptions::default(),
                2,
            )
            .unwrap_or_else(|e| panic!("{what} parallel: {e}"));
            let got = std::fs::read(format!("/proc/self/fd/{}", {
                use std::os::fd::AsRawFd;
                out.as_raw_fd()
            }))
            .unwrap();
            assert!(got == new, "{what}: wrong image from the parallel apply");
        }
    }
}
