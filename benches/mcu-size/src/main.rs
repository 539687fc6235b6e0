//! A bare-metal Cortex-M4F program that applies a (stored) patch held in
//! flash to an old image held in flash, writing the new image to a
//! volatile "flash" sink, with the fwdelta applier's no_std core. Built
//! without the `apply` feature it does the same reads and writes without
//! the applier: the difference is the applier's code (see
//! benches/capi/size.py).

#![no_std]
#![no_main]

#[cfg(not(feature = "capi"))]
use core::panic::PanicInfo;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};

#[cfg(not(feature = "capi"))]
#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {}
}

/// Input the linker cannot see through (as if read from flash at run time).
static mut OLD: [u8; 64] = [0; 64];
static mut PATCH: [u8; 64] = [0; 64];
static mut OUT: u8 = 0;

fn input(p: *mut [u8; 64]) -> &'static [u8] {
    // SAFETY: a static only this program touches, on one core.
    unsafe {
        let n = read_volatile(addr_of_mut!(OUT)) as usize % 64;
        &(&(*p))[..n]
    }
}

fn emit(data: &[u8]) {
    for &b in data {
        // SAFETY: as above.
        unsafe { write_volatile(addr_of_mut!(OUT), b) };
    }
}

#[cfg(feature = "apply")]
mod applier {
    extern crate alloc;
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicUsize, Ordering};
    use fwdelta_apply::{Applier, ApplyOptions, IoError, Sink};

    /// A bump allocator over a static heap (frees nothing): the smallest
    /// allocator, so the measured code is the applier's.
    struct Bump;
    const HEAP_LEN: usize = 160 * 1024;
    static mut HEAP: [u8; HEAP_LEN] = [0; HEAP_LEN];
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let start = (NEXT.load(Ordering::Relaxed) + l.align() - 1) & !(l.align() - 1);
            if start + l.size() > HEAP_LEN {
                return core::ptr::null_mut();
            }
            NEXT.store(start + l.size(), Ordering::Relaxed);
            // SAFETY: inside the static heap.
            unsafe { (&raw mut HEAP).cast::<u8>().add(start) }
        }
        unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
    }

    #[global_allocator]
    static A: Bump = Bump;

    struct Flash;
    impl Sink for Flash {
        fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
            super::emit(data);
            Ok(())
        }
    }

    pub fn run(old: &[u8], patch: &[u8]) -> u8 {
        let mut a = Applier::new(old, Flash, ApplyOptions::default());
        match a.feed(patch).and_then(|_| a.finish()) {
            Ok(_) => 0,
            Err(e) => e.class() as u8 + 1,
        }
    }
}

/// The same apply through the C library, as C firmware calls it: the old
/// image read by a callback, the new bytes written by one, in an arena.
#[cfg(feature = "capi")]
mod c_library {
    use core::ffi::{c_int, c_void};
    use fwdelta_capi::*;

    static mut ARENA: [u8; 160 * 1024] = [0; 160 * 1024];

    unsafe extern "C" fn read_old(ctx: *mut c_void, at: u64, buf: *mut u8, len: usize) -> c_int {
        // SAFETY: `ctx` is the old image's slice, `buf` the applier's.
        unsafe {
            let old = &*(ctx as *const &[u8]);
            let Some(src) = old.get(at as usize..at as usize + len) else {
                return -1;
            };
            core::ptr::copy_nonoverlapping(src.as_ptr(), buf, len);
        }
        0
    }

    unsafe extern "C" fn write_new(_: *mut c_void, data: *const u8, len: usize) -> c_int {
        // SAFETY: the applier's buffer of `len` bytes.
        super::emit(unsafe { core::slice::from_raw_parts(data, len) });
        0
    }

    pub fn run(old: &[u8], patch: &[u8]) -> u8 {
        let ctx = &old as *const &[u8] as *mut c_void;
        let io = fwd_io {
            ctx,
            old_len: old.len() as u64,
            read_old: Some(read_old),
            write_new: Some(write_new),
            persist: None,
            read_new: None,
        };
        let mut a = core::ptr::null_mut();
        // SAFETY: valid pointers; the arena is this program's alone.
        unsafe {
            let arena = (&raw mut ARENA).cast::<c_void>();
            let mut rc = fwd_applier_new(&io, arena, 160 * 1024, 0, &mut a);
            if rc == FWD_OK {
                rc = fwd_applier_feed(a, patch.as_ptr(), patch.len());
            }
            if rc == FWD_OK {
                rc = fwd_applier_finish(a);
            }
            fwd_applier_free(a);
            rc as u8
        }
    }
}

#[no_mangle]
pub extern "C" fn _start() -> ! {
    let old = input(&raw mut OLD);
    let patch = input(&raw mut PATCH);
    #[cfg(feature = "apply")]
    let rc = applier::run(old, patch);
    #[cfg(feature = "capi")]
    let rc = c_library::run(old, patch);
    #[cfg(not(any(feature = "apply", feature = "capi")))]
    let rc = {
        emit(old);
        patch.len() as u8
    };
    emit(&[rc]);
    loop {}
}
