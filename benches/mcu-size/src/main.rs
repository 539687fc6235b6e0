//! A bare-metal Cortex-M4F program that applies a (stored) patch held in
//! flash to an old image held in flash, writing the new image to a
//! volatile "flash" sink, with the fwdelta applier's no_std core. Built
//! without the `apply` feature it does the same reads and writes without
//! the applier: the difference is the applier's code (see
//! benches/capi/size.py).

#![no_std]
#![no_main]

use core::panic::PanicInfo;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};

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

#[no_mangle]
pub extern "C" fn _start() -> ! {
    let old = input(&raw mut OLD);
    let patch = input(&raw mut PATCH);
    #[cfg(feature = "apply")]
    let rc = applier::run(old, patch);
    #[cfg(not(feature = "apply"))]
    let rc = {
        emit(old);
        patch.len() as u8
    };
    emit(&[rc]);
    loop {}
}
