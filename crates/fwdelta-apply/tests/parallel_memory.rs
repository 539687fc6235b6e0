//! Regression tests from a review of apply_parallel: its memory beyond "threads x the patch's
//! apply memory". Its own test binary (a counting global allocator; the
//! tests take a lock so nothing else allocates while one measures).
//!
//! parallel_threads lets a patch of up to MAX_PARALLEL_SEGMENTS (65536)
//! segments run two decoders under a memory limit of twice its claim, but the
//! coordinator also keeps, outside any claim, the walk's
//! `Vec<(SegmentHeader, u64)>` (grown by push: reallocation peaks), `ends`
//! and `finished` (about 80 bytes a segment, not the 40 the module doc
//! says), two more copies of the start, the summary and a 64 KiB read-back
//! buffer (parallel_apply.rs:137-188). The streaming applier stays within the
//! same limit; the parallel one exceeds it by megabytes. And apply_parallel
//! walks and keeps every segment even past MAX_PARALLEL_SEGMENTS (when
//! parallel_threads has said "1: stream it"), so its memory grows with the
//! patch.

use fwdelta_apply::{apply, apply_parallel, parallel_threads, ApplyOptions, Sink};
use fwdelta_format::{Checkpoint, Header, SegmentHeader};
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Bytes ever allocated (the work done, not the memory held).
static TOTAL: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            TOTAL.fetch_add(l.size(), Ordering::SeqCst);
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            TOTAL.fetch_add(l.size(), Ordering::SeqCst);
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static A: Counting = Counting;

/// One measurement at a time (the counters are global).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Heap bytes allocated at peak while `f` runs, beyond what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let t = f();
    (t, PEAK.load(Ordering::SeqCst) - before)
}

/// Bytes allocated in all while `f` runs.
fn allocated_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = TOTAL.load(Ordering::SeqCst);
    let t = f();
    (t, TOTAL.load(Ordering::SeqCst) - before)
}

/// Counts checkpoints, keeps nothing.
#[derive(Default)]
struct Count(usize);

impl Sink for Count {
    fn write(&mut self, _: &[u8]) -> Result<(), fwdelta_apply::IoError> {
        Ok(())
    }
    fn segment_done(
        &mut self,
        _: &SegmentHeader,
        _: &Checkpoint,
    ) -> Result<(), fwdelta_apply::IoError> {
        self.0 += 1;
        Ok(())
    }
}

/// A stored-codec patch of `n` one-byte segments (each a one-literal
/// record) making `n` new bytes from a 16-byte old image.
fn many_segments(n: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let old = vec![7u8; 16];
    let new: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
    let patch = fwdelta_testkit::crafted_patch::one_byte_segments(&old, &new, |_| 0);
    (old, new, patch)
}

#[test]
fn review_parallel_apply_stays_within_threads_times_the_claim() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = fwdelta_apply::parallel_apply::MAX_PARALLEL_SEGMENTS as usize;
    let (old, new, patch) = many_segments(n);
    let len = Header::parse_prefix(patch[..8].try_into().unwrap()).unwrap();
    let header = Header::parse(&patch[..len]).unwrap();
    // The least memory limit under which two workers run: parallel_threads
    // counts the coordinator's share too (the patch's start, buffers).
    let with = |limit| ApplyOptions::default().with_memory_limit(limit);
    let (mut lo, mut hi) = (header.apply_memory, 64 * header.apply_memory + (1 << 20));
    assert_eq!(
        parallel_threads(&header, &with(hi), 2),
        2,
        "two decoders fit"
    );
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if parallel_threads(&header, &with(mid), 2) == 2 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let limit = hi;
    let opts = with(limit);

    // The streaming applier, for scale: within the limit.
    let ((), streaming_peak) = peak_during(|| {
        let mut sink = fwdelta_apply::WriteSink(io::sink());
        let (_, _) = apply(&old[..], &patch[..], &mut sink, opts.clone()).unwrap();
    });
    assert!(
        (streaming_peak as u64) <= limit,
        "streaming: {streaming_peak} > limit {limit}"
    );

    let mut pf = tempfile::tempfile().unwrap();
    pf.write_all(&patch).unwrap();
    let out = tempfile::tempfile().unwrap();
    let mut count = Count::default();
    let (report, parallel_peak) =
        peak_during(|| apply_parallel(&old[..], &pf, &out, &mut count, opts.clone(), 2));
    report.unwrap();
    assert_eq!(count.0, n);
    assert_eq!(
        std::fs::read(format!("/proc/self/fd/{}", fd(&out))).unwrap(),
        new
    );
    assert!(
        parallel_peak as u64 <= limit,
        "apply_parallel with 2 threads allocated {parallel_peak} bytes at peak, over the \
         memory limit {limit} (2 x the patch's claim {}); streaming: {streaming_peak}",
        header.apply_memory
    );
}

fn fd(f: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    f.as_raw_fd()
}

/// Past MAX_PARALLEL_SEGMENTS parallel_threads says 1 ("applied by the
/// streaming applier", parallel_apply.rs:41-42), but apply_parallel itself
/// still walks and keeps every segment's head: its memory grows with the
/// patch (here 4 x 65536 one-byte segments under a limit of one claim).
#[test]
fn review_parallel_apply_past_max_segments_is_not_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = 4 * fwdelta_apply::parallel_apply::MAX_PARALLEL_SEGMENTS as usize;
    let (old, new, patch) = many_segments(n);
    let len = Header::parse_prefix(patch[..8].try_into().unwrap()).unwrap();
    let header = Header::parse(&patch[..len]).unwrap();
    let limit = header.apply_memory;
    let opts = ApplyOptions::default().with_memory_limit(limit);
    assert_eq!(parallel_threads(&header, &opts, 2), 1);
    let mut pf = tempfile::tempfile().unwrap();
    pf.write_all(&patch).unwrap();
    let out = tempfile::tempfile().unwrap();
    let mut count = Count::default();
    let (report, peak) =
        peak_during(|| apply_parallel(&old[..], &pf, &out, &mut count, opts.clone(), 2));
    report.unwrap();
    assert_eq!(
        std::fs::read(format!("/proc/self/fd/{}", fd(&out))).unwrap(),
        new
    );
    assert!(
        peak as u64 <= limit,
        "apply_parallel of {n} segments allocated {peak} bytes at peak with one decoder, \
         over the memory limit {limit}"
    );
}

/// Every worker segment starts with Applier::for_segment, which parses the
/// whole start again (start_from_slice: header and, in a signed patch, the
/// signature section, 8 bytes a segment) and allocates fresh buffers and
/// decoders: per segment, not per thread (parallel_apply.rs:259,
/// applier.rs:242-250). A signed patch of 65536 segments (the most a signed
/// patch may have; no policy needed for the section to be parsed) so costs
/// 65536 parses of a 512 KiB section: work quadratic in the segment count,
/// where the streaming applier parses it once. Measured as bytes allocated
/// in all (not time): parallel over 100x streaming.
#[test]
fn review_parallel_apply_work_is_linear_in_segments() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = fwdelta_apply::parallel_apply::MAX_PARALLEL_SEGMENTS as usize;
    let (old, new, patch) = many_segments(n);
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let signed = fwdelta_diff::patch_signer::sign_for_release(
        &patch,
        Some(&fwdelta_format::Release {
            product: "t".into(),
            version: "1".into(),
            security_counter: 1,
            expires: 0,
        }),
        std::slice::from_ref(&key),
    )
    .unwrap();
    let opts = ApplyOptions::default();
    let ((), streaming) = allocated_during(|| {
        let mut sink = fwdelta_apply::WriteSink(io::sink());
        apply(&old[..], &signed[..], &mut sink, opts.clone()).unwrap();
    });
    let mut pf = tempfile::tempfile().unwrap();
    pf.write_all(&signed).unwrap();
    let out = tempfile::tempfile().unwrap();
    let mut count = Count::default();
    let (report, parallel) =
        allocated_during(|| apply_parallel(&old[..], &pf, &out, &mut count, opts.clone(), 2));
    report.unwrap();
    assert_eq!(
        std::fs::read(format!("/proc/self/fd/{}", fd(&out))).unwrap(),
        new
    );
    assert!(
        parallel <= 100 * streaming,
        "signed, {n} segments: apply_parallel allocated {parallel} bytes in all, \
         the streaming applier {streaming}"
    );
}
