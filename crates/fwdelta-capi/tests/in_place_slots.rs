//! The in-place call of the C API, called from Rust with storage in memory:
//! what it does with journal slots whose reported length is wrong (a length
//! field damaged on flash). A damaged slot must count as damaged, never
//! allocate past the arena or abort the caller.

use core::ffi::c_void;
use fwdelta_capi::in_place::fwd_apply_in_place;
use fwdelta_capi::*;
use fwdelta_diff::{diff, Options};

/// The caller's storage: the patch, the region and two journal slots, and a
/// length slot 0 reports instead of its real one. The callbacks never
/// allocate (as a C caller's would not through Rust's allocator, which
/// routes allocations during a call to the arena): every buffer is made
/// with room to spare by [`Storage::new`].
struct Storage {
    patch: Vec<u8>,
    region: Vec<u8>,
    slots: [Vec<u8>; 2],
    lie: Option<usize>,
    /// Region writes left before the power goes (none: it stays on).
    writes_left: Option<usize>,
}

impl Storage {
    fn new(patch: &[u8], old: &[u8], writes_left: Option<usize>) -> Storage {
        let mut region = Vec::with_capacity(4 * old.len() + (1 << 20));
        region.extend_from_slice(old);
        Storage {
            patch: patch.to_vec(),
            region,
            slots: [Vec::with_capacity(1 << 20), Vec::with_capacity(1 << 20)],
            lie: None,
            writes_left,
        }
    }
}

/// # Safety (all callbacks)
/// `ctx` is the `Storage` the test passed; the buffers are the library's.
unsafe fn storage<'a>(ctx: *mut c_void) -> &'a mut Storage {
    unsafe { &mut *ctx.cast::<Storage>() }
}

/// Copy `from[offset..offset + len]` to `buf`; 1 if that is past its end.
///
/// # Safety
/// `buf` is writable for `len` bytes.
unsafe fn copy_out(from: &[u8], offset: u64, buf: *mut u8, len: usize) -> i32 {
    let Some(src) = from.get(offset as usize..offset as usize + len) else {
        return 1;
    };
    unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), buf, len) };
    0
}

unsafe extern "C" fn read_patch(ctx: *mut c_void, offset: u64, buf: *mut u8, len: usize) -> i32 {
    unsafe { copy_out(&storage(ctx).patch, offset, buf, len) }
}
unsafe extern "C" fn region_len(ctx: *mut c_void, len: *mut u64) -> i32 {
    unsafe { *len = storage(ctx).region.len() as u64 };
    0
}
unsafe extern "C" fn region_read(ctx: *mut c_void, offset: u64, buf: *mut u8, len: usize) -> i32 {
    unsafe { copy_out(&storage(ctx).region, offset, buf, len) }
}
unsafe extern "C" fn region_write(
    ctx: *mut c_void,
    offset: u64,
    data: *const u8,
    len: usize,
) -> i32 {
    let s = unsafe { storage(ctx) };
    match &mut s.writes_left {
        Some(0) => return 1,
        Some(n) => *n -= 1,
        None => {}
    }
    let data = unsafe { core::slice::from_raw_parts(data, len) };
    let end = offset as usize + len;
    if s.region.capacity() < end {
        return 1;
    }
    if s.region.len() < end {
        s.region.resize(end, 0);
    }
    s.region[offset as usize..end].copy_from_slice(data);
    0
}
unsafe extern "C" fn region_set_len(ctx: *mut c_void, len: u64) -> i32 {
    let s = unsafe { storage(ctx) };
    if s.region.capacity() < len as usize {
        return 1;
    }
    s.region.resize(len as usize, 0);
    0
}
unsafe extern "C" fn region_sync(_: *mut c_void) -> i32 {
    0
}
unsafe extern "C" fn slot_read(
    ctx: *mut c_void,
    slot: i32,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> i32 {
    let s = unsafe { storage(ctx) };
    let bytes = &s.slots[slot as usize];
    let reported = match (slot, s.lie) {
        (0, Some(l)) => l,
        _ => bytes.len(),
    };
    unsafe { *len = reported };
    if reported <= cap && !buf.is_null() {
        // A lying length past the real bytes reads as 0xFF (erased flash).
        for i in 0..reported {
            let b = bytes.get(i).copied().unwrap_or(0xFF);
            unsafe { *buf.add(i) = b };
        }
    }
    0
}
unsafe extern "C" fn slot_write(
    ctx: *mut c_void,
    slot: i32,
    record: *const u8,
    record_len: usize,
    cell: *const u8,
    cell_len: usize,
) -> i32 {
    let s = unsafe { storage(ctx) };
    let to = &mut s.slots[slot as usize];
    if to.capacity() < record_len + cell_len {
        return 1;
    }
    to.clear();
    to.extend_from_slice(unsafe { core::slice::from_raw_parts(record, record_len) });
    if cell_len > 0 {
        to.extend_from_slice(unsafe { core::slice::from_raw_parts(cell, cell_len) });
    }
    0
}
unsafe extern "C" fn slot_clear(ctx: *mut c_void) -> i32 {
    let s = unsafe { storage(ctx) };
    s.slots.iter_mut().for_each(Vec::clear);
    0
}

fn testdata(which: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../testdata/fw-cortex-m4/{which}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Run `fwd_apply_in_place` on `s` with an arena of `arena_len` bytes;
/// returns the code and the message.
fn apply(s: &mut Storage, arena_len: usize) -> (i32, String) {
    let io = fwd_in_place_io {
        ctx: (s as *mut Storage).cast(),
        patch_len: s.patch.len() as u64,
        read_patch: Some(read_patch),
        region_len: Some(region_len),
        region_read: Some(region_read),
        region_write: Some(region_write),
        region_set_len: Some(region_set_len),
        region_sync: Some(region_sync),
        slot_read: Some(slot_read),
        slot_write: Some(slot_write),
        slot_clear: Some(slot_clear),
    };
    let mut arena = vec![0u8; arena_len];
    let mut msg = [0u8; 512];
    // SAFETY: live io, arena and message buffers.
    let rc = unsafe {
        fwd_apply_in_place(
            &io,
            arena.as_mut_ptr().cast(),
            arena.len(),
            0,
            msg.as_mut_ptr(),
            msg.len(),
        )
    };
    let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
    (rc, String::from_utf8_lossy(&msg[..end]).into_owned())
}

#[test]
fn a_slot_reporting_a_damaged_length_counts_as_damaged() {
    let (old, new) = (testdata("old"), testdata("new"));
    let opts = Options {
        in_place: Some(12),
        ..Options::default()
    };
    let patch = diff(&old, &new, &opts).unwrap().bytes;
    const ARENA: usize = 8 << 20;
    for lie in [
        1_000,
        ARENA + 1,
        16 << 20,
        100_000_000,
        usize::MAX / 2,
        usize::MAX,
    ] {
        // Nothing under way: the damaged slot is set aside, the update runs.
        let mut s = Storage::new(&patch, &old, None);
        s.lie = Some(lie);
        let (rc, msg) = apply(&mut s, ARENA);
        assert_eq!(rc, FWD_OK, "slot 0 claims {lie} bytes: {msg}");
        assert!(s.region == new, "slot 0 claims {lie} bytes: wrong image");

        // Cut after two cells, then slot 0's length damaged: slot 1 holds
        // the same record, and the update is finished from it.
        let mut s = Storage::new(&patch, &old, Some(2));
        let (rc, _) = apply(&mut s, ARENA);
        assert_eq!(rc, FWD_ERR_IO);
        assert!(s.region != old && s.region != new, "not cut mid-way");
        s.lie = Some(lie);
        s.writes_left = None;
        let (rc, msg) = apply(&mut s, ARENA);
        assert_eq!(rc, FWD_OK, "cut, slot 0 claims {lie} bytes: {msg}");
        assert!(
            s.region == new,
            "cut, slot 0 claims {lie} bytes: wrong image"
        );
    }
}
