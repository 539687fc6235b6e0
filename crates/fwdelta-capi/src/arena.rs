//! The caller's arena: every byte the applier allocates during an `fwd_*`
//! call comes from the buffer the C caller handed to `fwd_applier_new`.
//!
//! `Arena` is a best-fit allocator over that buffer: 16-byte block headers
//! (size, in use), blocks in address order, free neighbours merged as the
//! search walks past them. It counts the bytes in use (headers and its own
//! bookkeeping included) and their peak. Allocation walks every block, which
//! is cheap here: the applier holds a few dozen blocks, most of them large
//! (decoder windows, 16 KiB buffers).
//!
//! [`Router`] is this crate's global allocator. It is conditional: while an
//! `fwd_*` call runs on a thread (`Enter`), that thread's allocations go to
//! the applier's arena, and a failed one returns null (liblzma and zstd then
//! report "out of memory"; the applier's own buffers are covered by the
//! header's memory claim, which is refused beforehand when it does not fit).
//! Everywhere else, and on other threads, allocation is the system's, so a
//! program (or test) that links this crate but never calls it is unaffected.
//! A block is returned to the arena that holds its address, else to the
//! system. Without the `std` feature (firmware) the current arena is one
//! global, not per thread, and outside an arena allocations come from a
//! 4 KiB static buffer (an entry point without an arena may allocate an
//! error's text), reused once all of it is freed.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;
#[cfg(feature = "std")]
use std::alloc::System;

/// Alignment of every block and of every payload (larger alignments are
/// served by splitting off a leading free block).
const ALIGN: usize = 16;
/// Bytes of a block header.
const HEADER: usize = 16;
/// Smallest block worth splitting off (header plus 16 bytes).
const MIN_BLOCK: usize = 32;

/// A block header: the block's whole size (header included) and whether it
/// is in use.
#[repr(C)]
struct Block {
    size: usize,
    used: usize,
}

/// An arena's bookkeeping, at the start of the caller's buffer.
#[repr(C, align(16))]
pub(crate) struct Arena {
    /// First block's address.
    start: usize,
    /// One past the last block.
    end: usize,
    /// Bytes in use, from the buffer's first byte: this struct, alignment
    /// and every block in use (with its header).
    in_use: usize,
    /// Largest `in_use` so far.
    peak: usize,
}

fn align_up(x: usize, align: usize) -> Option<usize> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

impl Arena {
    /// Set up an arena in the `len` bytes at `buf`. `None` if they cannot
    /// hold the bookkeeping and one block.
    ///
    /// # Safety
    /// `buf..buf + len` must be writable memory that nothing else uses while
    /// the arena does.
    pub(crate) unsafe fn init(buf: *mut u8, len: usize) -> Option<*mut Arena> {
        let base = buf as usize;
        let at = align_up(base, ALIGN)?;
        let start = align_up(at.checked_add(core::mem::size_of::<Arena>())?, ALIGN)?;
        let end = base.checked_add(len)? & !(ALIGN - 1);
        if end < start.checked_add(MIN_BLOCK)? {
            return None;
        }
        let arena = at as *mut Arena;
        // SAFETY: `at..end` lies inside the caller's buffer, aligned.
        unsafe {
            arena.write(Arena {
                start,
                end,
                in_use: start - base,
                peak: start - base,
            });
            (start as *mut Block).write(Block {
                size: end - start,
                used: 0,
            });
        }
        Some(arena)
    }

    /// Largest number of bytes in use at once, from the start of the
    /// caller's buffer.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    fn contains(&self, p: *mut u8) -> bool {
        (p as usize) >= self.start && (p as usize) < self.end
    }

    /// Padding before a block's payload for `align` (0, or a free block of
    /// at least MIN_BLOCK bytes).
    fn lead_for(block: usize, align: usize) -> Option<usize> {
        if align <= ALIGN {
            return Some(0);
        }
        let payload = align_up(block.checked_add(HEADER)?, align)?;
        let mut lead = payload - HEADER - block;
        if lead != 0 && lead < MIN_BLOCK {
            lead += align;
        }
        Some(lead)
    }

    /// # Safety
    /// The arena was set up by [`Arena::init`] and its buffer is still live.
    unsafe fn alloc(&mut self, layout: Layout) -> *mut u8 {
        let Some(size) = align_up(layout.size().max(1), ALIGN).and_then(|s| s.checked_add(HEADER))
        else {
            return ptr::null_mut();
        };
        let mut best: Option<(usize, usize, usize)> = None;
        let mut b = self.start;
        // SAFETY (whole walk): blocks tile start..end, each header written by
        // init, alloc or free.
        unsafe {
            while b < self.end {
                let blk = b as *mut Block;
                if (*blk).used == 0 {
                    loop {
                        let next = b + (*blk).size;
                        if next >= self.end || (*(next as *mut Block)).used != 0 {
                            break;
                        }
                        (*blk).size += (*(next as *mut Block)).size;
                    }
                    let bsize = (*blk).size;
                    if let Some(lead) = Self::lead_for(b, layout.align()) {
                        let fits = lead.checked_add(size).is_some_and(|n| n <= bsize);
                        if fits && best.is_none_or(|(_, _, s)| bsize < s) {
                            best = Some((b, lead, bsize));
                        }
                    }
                }
                b += (*blk).size;
            }
            let Some((mut b, lead, mut bsize)) = best else {
                return ptr::null_mut();
            };
            if lead > 0 {
                (b as *mut Block).write(Block {
                    size: lead,
                    used: 0,
                });
                b += lead;
                bsize -= lead;
            }
            let rest = bsize - size;
            let taken = if rest >= MIN_BLOCK {
                ((b + size) as *mut Block).write(Block {
                    size: rest,
                    used: 0,
                });
                size
            } else {
                bsize
            };
            (b as *mut Block).write(Block {
                size: taken,
                used: 1,
            });
            self.in_use += taken;
            self.peak = self.peak.max(self.in_use);
            (b + HEADER) as *mut u8
        }
    }

    /// # Safety
    /// `p` was returned by [`Arena::alloc`] of this arena and not freed.
    unsafe fn free(&mut self, p: *mut u8) {
        // SAFETY: `p` is a payload of this arena, its header just before it.
        unsafe {
            let blk = (p as usize - HEADER) as *mut Block;
            (*blk).used = 0;
            self.in_use -= (*blk).size;
            let next = blk as usize + (*blk).size;
            if next < self.end && (*(next as *mut Block)).used == 0 {
                (*blk).size += (*(next as *mut Block)).size;
            }
        }
    }
}

#[cfg(feature = "std")]
std::thread_local! {
    /// The arena of the `fwd_*` call running on this thread, if any.
    static CURRENT: core::cell::Cell<*mut Arena> =
        const { core::cell::Cell::new(ptr::null_mut()) };
}

/// Without `std` (firmware, one applier call at a time): the arena of the
/// `fwd_*` call running, if any.
#[cfg(not(feature = "std"))]
static CURRENT: core::sync::atomic::AtomicPtr<Arena> =
    core::sync::atomic::AtomicPtr::new(ptr::null_mut());

fn current() -> *mut Arena {
    #[cfg(feature = "std")]
    {
        CURRENT
            .try_with(core::cell::Cell::get)
            .unwrap_or(ptr::null_mut())
    }
    #[cfg(not(feature = "std"))]
    {
        CURRENT.load(core::sync::atomic::Ordering::Relaxed)
    }
}

/// Make `arena` the current one; returns the previous.
fn set_current(arena: *mut Arena) -> *mut Arena {
    #[cfg(feature = "std")]
    {
        CURRENT.with(|c| c.replace(arena))
    }
    #[cfg(not(feature = "std"))]
    {
        CURRENT.swap(arena, core::sync::atomic::Ordering::Relaxed)
    }
}

/// While alive, this thread allocates from `arena` (restores the previous
/// one when dropped).
pub(crate) struct Enter {
    prev: *mut Arena,
}

impl Enter {
    pub(crate) fn new(arena: *mut Arena) -> Enter {
        Enter {
            prev: set_current(arena),
        }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        set_current(self.prev);
    }
}

/// The global allocator: the current arena inside an `fwd_*` call; outside
/// one, the system's with `std`, and nothing without it (firmware allocates
/// through Rust only inside the calls; see the module documentation).
pub struct Router;

/// Where allocations go outside an arena: the system's with `std`; without
/// it a small static buffer, for the few bytes an entry point that takes no
/// arena may allocate (an error's text in `fwd_checkpoint_offsets`), reused
/// once everything in it is freed. A request it cannot hold fails (null).
struct Outside;

/// Bytes of the no_std fallback buffer.
#[cfg(not(feature = "std"))]
const OUTSIDE_LEN: usize = 4096;

#[cfg(not(feature = "std"))]
#[repr(C, align(16))]
struct OutsideBuf(core::cell::UnsafeCell<[u8; OUTSIDE_LEN]>);

// SAFETY: handed out in disjoint pieces, one `fwd_*` call at a time (the
// no_std library's documented rule).
#[cfg(not(feature = "std"))]
unsafe impl Sync for OutsideBuf {}

#[cfg(not(feature = "std"))]
static OUTSIDE: OutsideBuf = OutsideBuf(core::cell::UnsafeCell::new([0; OUTSIDE_LEN]));
/// Bytes of [`OUTSIDE`] handed out so far, and blocks not yet freed.
#[cfg(not(feature = "std"))]
static OUTSIDE_USED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
#[cfg(not(feature = "std"))]
static OUTSIDE_LIVE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

impl Outside {
    #[cfg(not(feature = "std"))]
    fn base() -> usize {
        OUTSIDE.0.get() as usize
    }

    /// Whether `p` came from the fallback buffer.
    #[cfg(not(feature = "std"))]
    fn holds(p: *mut u8) -> bool {
        (Self::base()..Self::base() + OUTSIDE_LEN).contains(&(p as usize))
    }

    unsafe fn alloc(layout: Layout) -> *mut u8 {
        #[cfg(feature = "std")]
        // SAFETY: forwarded contract.
        return unsafe { System.alloc(layout) };
        #[cfg(not(feature = "std"))]
        {
            use core::sync::atomic::Ordering::Relaxed;
            let used = OUTSIDE_USED.load(Relaxed);
            let start = (Self::base() + used).next_multiple_of(layout.align()) - Self::base();
            match start.checked_add(layout.size()) {
                Some(end) if end <= OUTSIDE_LEN => {
                    OUTSIDE_USED.store(end, Relaxed);
                    OUTSIDE_LIVE.fetch_add(1, Relaxed);
                    (Self::base() + start) as *mut u8
                }
                _ => ptr::null_mut(),
            }
        }
    }

    unsafe fn dealloc(p: *mut u8, layout: Layout) {
        #[cfg(feature = "std")]
        // SAFETY: forwarded contract: `p` came from `System`.
        unsafe {
            System.dealloc(p, layout)
        };
        #[cfg(not(feature = "std"))]
        {
            use core::sync::atomic::Ordering::Relaxed;
            let _ = layout;
            if Self::holds(p) && OUTSIDE_LIVE.fetch_sub(1, Relaxed) == 1 {
                OUTSIDE_USED.store(0, Relaxed);
            }
        }
    }

    unsafe fn realloc(p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        #[cfg(feature = "std")]
        // SAFETY: forwarded contract: `p` came from `System`.
        return unsafe { System.realloc(p, layout, new_size) };
        #[cfg(not(feature = "std"))]
        // SAFETY: a new block, then the old one's bytes, then the old freed.
        unsafe {
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return ptr::null_mut();
            };
            let q = Self::alloc(new_layout);
            if !q.is_null() {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                Self::dealloc(p, layout);
            }
            q
        }
    }
}

// SAFETY: arena blocks are handed out once and returned to the arena that
// contains them; everything else is the system allocator's. An arena is
// used by one thread at a time (the C API's documented rule).
unsafe impl GlobalAlloc for Router {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let a = current();
        if a.is_null() {
            // SAFETY: forwarded contract.
            unsafe { Outside::alloc(layout) }
        } else {
            // SAFETY: the current arena is live for the call that set it.
            unsafe { (*a).alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let a = current();
        // SAFETY: a block inside the current arena came from it; any other
        // block came from outside (see `realloc`).
        unsafe {
            if !a.is_null() && (*a).contains(p) {
                (*a).free(p)
            } else {
                Outside::dealloc(p, layout)
            }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let a = current();
        // SAFETY: a block stays with the allocator that made it.
        unsafe {
            if a.is_null() || !(*a).contains(p) {
                return Outside::realloc(p, layout, new_size);
            }
            let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                return ptr::null_mut();
            };
            let q = (*a).alloc(new_layout);
            if !q.is_null() {
                ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                (*a).free(p);
            }
            q
        }
    }
}

#[global_allocator]
static ROUTER: Router = Router;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reused_counted_and_refused_when_full() {
        let mut buf = vec![0u8; 4096];
        let a = unsafe { Arena::init(buf.as_mut_ptr(), buf.len()) }.expect("arena");
        let a = unsafe { &mut *a };
        let base = a.in_use;
        let l = Layout::from_size_align(1000, 8).unwrap();
        let p1 = unsafe { a.alloc(l) };
        let p2 = unsafe { a.alloc(l) };
        assert!(!p1.is_null() && !p2.is_null() && p1 != p2);
        assert_eq!(p1 as usize % 16, 0);
        assert_eq!(a.in_use, base + 2 * (1008 + HEADER));
        // Too big for what is left: refused, nothing changes.
        let big = Layout::from_size_align(3000, 8).unwrap();
        assert!(unsafe { a.alloc(big) }.is_null());
        unsafe { a.free(p1) };
        unsafe { a.free(p2) };
        assert_eq!(a.in_use, base);
        // Freed neighbours merge: the big block fits now.
        let p3 = unsafe { a.alloc(big) };
        assert!(!p3.is_null());
        let over = Layout::from_size_align(64, 256).unwrap();
        let p4 = unsafe { a.alloc(over) };
        assert!(!p4.is_null());
        assert_eq!(p4 as usize % 256, 0);
        let both = a.in_use;
        assert!(both >= base + 3008 + 64 + 2 * HEADER);
        unsafe { a.free(p3) };
        unsafe { a.free(p4) };
        assert_eq!(a.in_use, base);
        assert_eq!(a.peak, both);
    }

    #[test]
    fn a_buffer_too_small_is_refused() {
        let mut buf = [0u8; 48];
        assert!(unsafe { Arena::init(buf.as_mut_ptr(), buf.len()) }.is_none());
    }
}
