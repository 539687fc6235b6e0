//! The policy calls of the C API, called from Rust: their order rules and
//! what they do with sizes the caller gets wrong. (The C test program
//! covers what they do to real patches.)

use core::ffi::c_void;
use fwdelta_capi::*;

unsafe extern "C" fn read_old(_: *mut c_void, _: u64, _: *mut u8, _: usize) -> i32 {
    1
}
unsafe extern "C" fn write_new(_: *mut c_void, _: *const u8, _: usize) -> i32 {
    1
}
unsafe extern "C" fn persist(_: *mut c_void, _: *const u8, _: usize) -> i32 {
    1
}
unsafe extern "C" fn read_new(_: *mut c_void, _: u64, _: *mut u8, _: usize) -> i32 {
    1
}

/// An applier in `arena` whose callbacks all fail (nothing is fed here).
fn applier(arena: &mut [u8]) -> *mut fwd_applier {
    let io = fwd_io {
        ctx: core::ptr::null_mut(),
        old_len: 0,
        read_old: Some(read_old),
        write_new: Some(write_new),
        persist: Some(persist),
        read_new: Some(read_new),
    };
    let mut a = core::ptr::null_mut();
    // SAFETY: a live arena and io; `a` is written on success.
    let rc = unsafe { fwd_applier_new(&io, arena.as_mut_ptr().cast(), arena.len(), 0, &mut a) };
    assert_eq!(rc, FWD_OK);
    a
}

fn message(a: *const fwd_applier) -> String {
    // SAFETY: a live applier; the message is NUL-terminated.
    unsafe { std::ffi::CStr::from_ptr(fwd_applier_message(a)) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn time_and_installed_need_trust_first() {
    let mut arena = vec![0u8; FWD_ARENA_MIN];
    let a = applier(&mut arena);
    // SAFETY: a live applier; a null id list of length 0.
    unsafe {
        assert_eq!(fwd_applier_trust_time(a, 1), FWD_ERR_ARGUMENT);
        assert!(
            message(a).contains("fwd_applier_trust first"),
            "{}",
            message(a)
        );
        assert_eq!(
            fwd_applier_trust_installed(a, core::ptr::null(), 0),
            FWD_ERR_ARGUMENT
        );
        let key = [7u8; 32];
        assert_eq!(
            fwd_applier_trust(a, key.as_ptr(), 1, 1, core::ptr::null(), 0),
            FWD_OK
        );
        assert_eq!(fwd_applier_trust_time(a, 1), FWD_OK);
        assert_eq!(fwd_applier_trust_installed(a, core::ptr::null(), 0), FWD_OK);
        // No patch yet: no identity.
        let mut id = [0u8; 32];
        assert_eq!(fwd_applier_patch_id(a, id.as_mut_ptr()), FWD_ERR_ARGUMENT);
        fwd_applier_free(a);
    }
}

/// More installed identities than the arena holds: refused with an error,
/// not an abort (the list is copied into the arena); a null list of a
/// non-zero length is refused too.
#[test]
fn an_installed_list_past_the_arena_is_refused() {
    let mut arena = vec![0u8; FWD_ARENA_MIN];
    let a = applier(&mut arena);
    let ids = vec![1u8; 32 * 8192]; // 256 KiB: twice the arena
    let key = [7u8; 32];
    // SAFETY: a live applier; buffers valid for the lengths given.
    unsafe {
        assert_eq!(
            fwd_applier_trust(a, key.as_ptr(), 1, 1, core::ptr::null(), 0),
            FWD_OK
        );
        assert_eq!(
            fwd_applier_trust_installed(a, ids.as_ptr(), 8192),
            FWD_ERR_ARGUMENT
        );
        assert!(message(a).contains("arena"), "{}", message(a));
        assert_eq!(
            fwd_applier_trust_installed(a, core::ptr::null(), 3),
            FWD_ERR_ARGUMENT
        );
        // A list that fits is taken.
        assert_eq!(fwd_applier_trust_installed(a, ids.as_ptr(), 16), FWD_OK);
        fwd_applier_free(a);
    }
}
