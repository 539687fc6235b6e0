//! C interface to the fwdelta applier (`include/fwdelta.h`, generated from
//! this file by cbindgen and checked against it by the tests).
//!
//! Push mode over callbacks: the caller gives an [`fwd_io`] (read old bytes
//! at an offset, write new bytes in order, persist a checkpoint after each
//! verified segment, read back new bytes on a resume) and an arena; then
//! [`fwd_applier_feed`] patch bytes as they arrive and [`fwd_applier_finish`].
//! Every allocation made inside an `fwd_*` call comes from the arena (see
//! [`arena`]); a patch whose header claims more memory than the arena holds
//! after [`FWD_ARENA_OVERHEAD`] is refused with [`FWD_ERR_LIMITS`] before
//! its old image is read. Panics never cross the interface
//! ([`FWD_ERR_INTERNAL`]).
//!
//! The crate installs that routing as Rust's global allocator. A C caller's
//! callbacks allocate with `malloc` and are unaffected; Rust code linking
//! this crate must not allocate through Rust's allocator inside its own
//! callbacks and keep the memory past the call (it would come from the
//! arena, which the caller reuses or frees).
//!
//! In-place updates (single-slot flash): [`in_place::fwd_apply_in_place`]
//! (with the `std` feature, on by default).
//!
//! Without the `std` feature the crate is `#![no_std]`: a static library for
//! bare-metal firmware (e.g. `thumbv7em-none-eabihf`), with the push-mode
//! applier, resume and trust calls, its allocations from the current call's
//! arena (one `fwd_*` call at a time across the program) and a panic handler
//! that spins for the watchdog.
//!
//! Signatures and release rules: [`fwd_applier_trust`] (trusted Ed25519
//! keys, threshold, product, security counter) before the first feed;
//! without it signatures are not checked.

#![allow(non_camel_case_types)]
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod arena;
#[cfg(feature = "std")]
pub mod in_place;

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use arena::{Arena, Enter};
use core::ffi::{c_char, c_int, c_void};
use core::fmt::Write as _;
use core::ptr;
use fwdelta_apply::{
    Applier, ApplyError, ApplyOptions, ErrorClass, IoError, OldImage, Sink, TrustPolicy,
};
use fwdelta_format::{Checkpoint, MemoryModel, SegmentHeader, MAX_IMAGE_LEN};
#[cfg(feature = "std")]
pub use in_place::fwd_in_place_io;

/// Run `f`, a panic caught (`Err`) where unwinding exists (`std`); without
/// `std` a panic stops in [`panic`], so `f` simply runs.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, ()> {
    #[cfg(feature = "std")]
    {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| ())
    }
    #[cfg(not(feature = "std"))]
    {
        Ok(f())
    }
}

/// Without `std` (firmware): a panic, which is a bug (no input causes one;
/// the fuzz targets and hostile-patch tests check), spins here until the
/// device's watchdog resets it. Output is never committed by the applier
/// itself, so the reset resumes from the last checkpoint.
#[cfg(all(not(feature = "std"), not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Success.
pub const FWD_OK: c_int = 0;
/// A callback failed (reading the old image, writing or reading back the
/// new one, persisting a checkpoint).
pub const FWD_ERR_IO: c_int = 1;
/// A null pointer, a missing callback, or a call in the wrong order
/// (feeding after an error or after finish, resuming after feeding).
pub const FWD_ERR_ARGUMENT: c_int = 2;
/// The patch is malformed, corrupt or truncated (or the checkpoint given to
/// resume is damaged or belongs to another patch).
pub const FWD_ERR_BAD_PATCH: c_int = 3;
/// The patch was made for another old image.
pub const FWD_ERR_WRONG_OLD: c_int = 4;
/// The patch needs more memory than the arena holds, or produces a larger
/// image than `max_new_len`; or the arena is below [`FWD_ARENA_MIN`].
pub const FWD_ERR_LIMITS: c_int = 5;
/// The patch uses a format version, flag, layout or codec this build does
/// not read (e.g. a codec compiled out).
pub const FWD_ERR_UNSUPPORTED: c_int = 6;
/// The patch is not authentic: unsigned, or not signed by enough of the
/// keys given to [`fwd_applier_trust`] (damaged, forged, unknown signer).
pub const FWD_ERR_NOT_AUTHENTIC: c_int = 7;
/// The patch is for another product than [`fwd_applier_trust`]'s.
pub const FWD_ERR_WRONG_PRODUCT: c_int = 8;
/// The patch's security counter is below [`fwd_applier_trust`]'s.
pub const FWD_ERR_DOWNGRADE: c_int = 9;
/// The patch's release statement expired before the time given to
/// [`fwd_applier_trust_time`].
pub const FWD_ERR_EXPIRED: c_int = 10;
/// The patch is one of those given to [`fwd_applier_trust_installed`]: a
/// replay of an update already installed.
pub const FWD_ERR_REPLAY: c_int = 11;
/// In place: the journal lost both copies of what it needed while the
/// image was half written, or its record does not match an image that is
/// neither version; the image is neither version (reflash it).
pub const FWD_ERR_UPDATE_LOST: c_int = 14;
/// On a resume: the new-image bytes read back do not match the checkpoint.
/// Start over with [`fwd_applier_new`] and feed the patch from its start.
pub const FWD_ERR_PARTIAL_DAMAGED: c_int = 16;
/// A bug: the applier panicked. The applier is unusable; free it.
pub const FWD_ERR_INTERNAL: c_int = 17;

/// Bytes of the arena the applier needs beyond the patch header's memory
/// claim: its own state, hashers, allocator block headers and slack for
/// fragmentation. A patch is accepted if `claim <= arena_len -
/// FWD_ARENA_OVERHEAD`; peak arena use then stays within `claim +
/// FWD_ARENA_OVERHEAD` (tested on real patches of every layout).
pub const FWD_ARENA_OVERHEAD: usize = 64 * 1024;

/// The smallest arena [`fwd_applier_new`] accepts: the overhead plus the
/// smallest claim a patch can make (the applier's 64 KiB of buffers, a
/// stored patch).
pub const FWD_ARENA_MIN: usize = 128 * 1024;
const _: () =
    assert!(FWD_ARENA_MIN as u64 == FWD_ARENA_OVERHEAD as u64 + MemoryModel::APPLIER_BUFFERS);

/// Length of an encoded checkpoint as passed to `persist`.
pub const FWD_CHECKPOINT_LEN: usize = 132;
const _: () = assert!(FWD_CHECKPOINT_LEN == Checkpoint::LEN);

/// Length of the detail message buffer (NUL included).
pub(crate) const MESSAGE_LEN: usize = 256;

/// The caller's I/O callbacks. Each returns 0 on success; anything else
/// fails the apply with [`FWD_ERR_IO`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct fwd_io {
    /// Passed to every callback.
    pub ctx: *mut c_void,
    /// Length of the old image in bytes.
    pub old_len: u64,
    /// Fill `buf[0..len]` with the old image's bytes at `offset` (always
    /// inside `0..old_len`). Required.
    pub read_old: Option<
        unsafe extern "C" fn(ctx: *mut c_void, offset: u64, buf: *mut u8, len: usize) -> c_int,
    >,
    /// Take the next `len` bytes of the new image (in order, at most 16 KiB
    /// at a time). Required.
    pub write_new:
        Option<unsafe extern "C" fn(ctx: *mut c_void, data: *const u8, len: usize) -> c_int>,
    /// A segment was verified: make the new bytes written so far durable,
    /// then store the `len`-byte ([`FWD_CHECKPOINT_LEN`]) checkpoint that
    /// resumes after it. May be null (no resume).
    pub persist:
        Option<unsafe extern "C" fn(ctx: *mut c_void, checkpoint: *const u8, len: usize) -> c_int>,
    /// On a resume: fill `buf[0..len]` with the new image's bytes at
    /// `offset`, as written before the cut (they are hashed and checked
    /// against the checkpoint). Needed only by [`fwd_applier_resume`].
    pub read_new: Option<
        unsafe extern "C" fn(ctx: *mut c_void, offset: u64, buf: *mut u8, len: usize) -> c_int,
    >,
}

/// The old image, read through `read_old`.
struct CallbackImage(fwd_io);

impl OldImage for CallbackImage {
    fn len(&self) -> u64 {
        self.0.old_len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let f = self
            .0
            .read_old
            .ok_or(IoError::new("no read_old callback"))?;
        // SAFETY: the caller's callback, with a live buffer of `buf.len()`.
        match unsafe { f(self.0.ctx, offset, buf.as_mut_ptr(), buf.len()) } {
            0 => Ok(()),
            rc => Err(IoError::code("the read_old callback", rc)),
        }
    }
}

/// The new image, written through `write_new`; checkpoints through `persist`.
struct CallbackSink(fwd_io);

impl Sink for CallbackSink {
    fn write(&mut self, data: &[u8]) -> Result<(), IoError> {
        let f = self
            .0
            .write_new
            .ok_or(IoError::new("no write_new callback"))?;
        // SAFETY: the caller's callback, with a live slice.
        match unsafe { f(self.0.ctx, data.as_ptr(), data.len()) } {
            0 => Ok(()),
            rc => Err(IoError::code("the write_new callback", rc)),
        }
    }
    fn segment_done(
        &mut self,
        _segment: &SegmentHeader,
        checkpoint: &Checkpoint,
    ) -> Result<(), IoError> {
        let Some(f) = self.0.persist else {
            return Ok(());
        };
        let bytes = checkpoint.encode();
        // SAFETY: the caller's callback, with a live array.
        match unsafe { f(self.0.ctx, bytes.as_ptr(), bytes.len()) } {
            0 => Ok(()),
            rc => Err(IoError::code("the persist callback", rc)),
        }
    }
}

type Running = Applier<'static, CallbackImage, CallbackSink>;

enum State {
    /// Created; nothing fed yet.
    Idle,
    /// Header or segments under way.
    Running(Box<Running>),
    /// Finished successfully.
    Done,
    /// An error stopped it.
    Failed,
}

/// An applier (opaque). Lives in its arena; free it with [`fwd_applier_free`].
pub struct fwd_applier {
    arena: *mut Arena,
    io: fwd_io,
    /// Owned (from `Box::into_raw`); the running applier borrows it, so it
    /// is freed after `state`.
    old: *mut CallbackImage,
    state: State,
    opts: ApplyOptions,
    /// The accepted header's memory claim (0 before).
    claim: u64,
    /// The accepted patch's identity, when it is signed.
    patch_id: Option<[u8; 32]>,
    /// The last error's detail, NUL-terminated.
    message: [u8; MESSAGE_LEN],
}

impl Drop for fwd_applier {
    fn drop(&mut self) {
        self.state = State::Idle;
        // SAFETY: from Box::into_raw in fwd_applier_new; no borrower is left.
        drop(unsafe { Box::from_raw(self.old) });
    }
}

/// A message writer into a fixed buffer, truncating (at a character
/// boundary) rather than allocating.
struct Fixed<'a> {
    buf: &'a mut [u8; MESSAGE_LEN],
    len: usize,
}

impl core::fmt::Write for Fixed<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for ch in s.chars() {
            let mut b = [0u8; 4];
            let enc = ch.encode_utf8(&mut b).as_bytes();
            if self.len + enc.len() >= MESSAGE_LEN {
                return Ok(());
            }
            self.buf[self.len..self.len + enc.len()].copy_from_slice(enc);
            self.len += enc.len();
        }
        Ok(())
    }
}

pub(crate) fn set_message(buf: &mut [u8; MESSAGE_LEN], args: core::fmt::Arguments<'_>) {
    let mut w = Fixed { buf, len: 0 };
    let _ = w.write_fmt(args);
    let end = w.len;
    buf[end] = 0;
}

/// `count` arrays of 32 bytes (keys, patch identities) from the caller's
/// `ptr` (null only when `count` is 0), copied into the arena.
///
/// # Safety
/// `ptr` valid for `32 * count` bytes.
unsafe fn arrays_of_32(ptr: *const u8, count: usize) -> Result<Vec<[u8; 32]>, &'static str> {
    if ptr.is_null() && count > 0 {
        return Err("null array");
    }
    let len = count.checked_mul(32).ok_or("too many entries")?;
    let raw = match len {
        0 => &[][..],
        // SAFETY: the caller's buffer of `len` bytes, by contract.
        _ => unsafe { core::slice::from_raw_parts(ptr, len) },
    };
    // The caller sizes this, not the patch; still, an arena too small
    // for it is an error, not an abort.
    let mut out = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| "the arena cannot hold that many entries")?;
    out.extend(raw.chunks_exact(32).map(|k| {
        let mut a = [0u8; 32];
        a.copy_from_slice(k);
        a
    }));
    Ok(out)
}

/// A terminal's update policy, for [`in_place::fwd_apply_in_place_trusted`]
/// (an applier takes the same rules from [`fwd_applier_trust`],
/// [`fwd_applier_trust_time`] and [`fwd_applier_trust_installed`]). Every
/// pointer is read during the call only; what is kept is copied into the
/// arena.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct fwd_trust {
    /// `key_count` trusted Ed25519 public keys of 32 bytes each (null only
    /// when `key_count` is 0). With none, signatures are not checked and
    /// only the release rules below apply.
    pub keys: *const u8,
    /// Number of keys in `keys`.
    pub key_count: usize,
    /// How many distinct trusted keys must have signed (clamped to
    /// 1..=key_count).
    pub threshold: usize,
    /// This terminal's product id, NUL-terminated UTF-8; null: any.
    pub product: *const c_char,
    /// The stored security counter: a patch below it is refused.
    pub min_counter: u64,
    /// The time now, Unix seconds, for expiry; 0 skips the check.
    pub now: u64,
    /// `installed_count` identities of installed patches, 32 bytes each
    /// (null only when `installed_count` is 0): their replays are refused.
    pub installed: *const u8,
    /// Number of identities in `installed`.
    pub installed_count: usize,
}

/// The policy `t` describes, its lists copied into the current arena.
///
/// # Safety
/// `t`'s pointers valid as [`fwd_trust`] describes.
pub(crate) unsafe fn policy_of(t: &fwd_trust) -> Result<TrustPolicy, &'static str> {
    // SAFETY: the caller's buffers of 32 bytes an entry, by contract.
    let keys = unsafe { arrays_of_32(t.keys, t.key_count) }?;
    let installed = unsafe { arrays_of_32(t.installed, t.installed_count) }?;
    let mut policy = TrustPolicy::trusting(keys);
    policy.threshold = match t.key_count {
        0 => 0,
        n => t.threshold.clamp(1, n),
    };
    if !t.product.is_null() {
        // SAFETY: a NUL-terminated string, by contract.
        let name = unsafe { core::ffi::CStr::from_ptr(t.product) };
        let name = name.to_str().map_err(|_| "product is not UTF-8")?;
        policy.product = Some(name.to_owned());
    }
    policy.min_counter = t.min_counter;
    policy.now = (t.now != 0).then_some(t.now);
    policy.installed = installed;
    Ok(policy)
}

/// The C code of an applier error.
pub(crate) fn code_of(e: &ApplyError) -> c_int {
    if matches!(e, ApplyError::PartialOutputDamaged { .. }) {
        return FWD_ERR_PARTIAL_DAMAGED;
    }
    match e.class() {
        ErrorClass::BadPatch => FWD_ERR_BAD_PATCH,
        ErrorClass::Unsupported => FWD_ERR_UNSUPPORTED,
        ErrorClass::WrongOldImage => FWD_ERR_WRONG_OLD,
        ErrorClass::Limits => FWD_ERR_LIMITS,
        ErrorClass::UpdateLost => FWD_ERR_UPDATE_LOST,
        ErrorClass::NotAuthentic => FWD_ERR_NOT_AUTHENTIC,
        ErrorClass::WrongProduct => FWD_ERR_WRONG_PRODUCT,
        ErrorClass::Downgrade => FWD_ERR_DOWNGRADE,
        ErrorClass::Expired => FWD_ERR_EXPIRED,
        ErrorClass::Replay => FWD_ERR_REPLAY,
        _ => FWD_ERR_IO,
    }
}

impl fwd_applier {
    /// Change the policy [`fwd_applier_trust`] set, on a fresh applier.
    fn change_policy(&mut self, change: impl FnOnce(&mut TrustPolicy)) -> c_int {
        if !matches!(self.state, State::Idle) {
            return self.refuse("trust must be set on a fresh applier");
        }
        let Some(policy) = self.opts.policy.as_ref() else {
            return self.refuse("call fwd_applier_trust first");
        };
        let mut policy = TrustPolicy::clone(policy);
        change(&mut policy);
        self.opts = self.opts.clone().with_policy(Some(Arc::new(policy)));
        FWD_OK
    }

    fn fail(&mut self, e: &ApplyError) -> c_int {
        self.state = State::Failed;
        set_message(&mut self.message, format_args!("{e}"));
        code_of(e)
    }

    fn refuse(&mut self, why: &str) -> c_int {
        set_message(&mut self.message, format_args!("{why}"));
        FWD_ERR_ARGUMENT
    }

    fn old(&self) -> &'static CallbackImage {
        // SAFETY: `old` lives until the applier is dropped, after `state`
        // (see Drop), so no running applier outlives it.
        unsafe { &*self.old }
    }
}

/// Run `f` on the applier at `a` inside its arena, panics caught.
fn with_applier(a: *mut fwd_applier, f: impl FnOnce(&mut fwd_applier) -> c_int) -> c_int {
    if a.is_null() {
        return FWD_ERR_ARGUMENT;
    }
    // SAFETY: a non-null handle from fwd_applier_new, used by one thread.
    let app = unsafe { &mut *a };
    let _enter = Enter::new(app.arena);
    match guarded(|| f(&mut *app)) {
        Ok(rc) => rc,
        Err(_) => {
            app.state = State::Failed;
            set_message(&mut app.message, format_args!("internal error (panic)"));
            FWD_ERR_INTERNAL
        }
    }
}

/// Create an applier in the caller's arena `arena[0..arena_len]` (any
/// alignment; it must stay valid and untouched until [`fwd_applier_free`]).
/// `io` is copied. `max_new_len` refuses patches producing a larger image
/// (0: the format's limit, 1 TiB). On success `*out` is the applier.
/// Use an applier from one thread at a time: during each `fwd_*` call the
/// calling thread's allocations come from this arena; other threads'
/// allocations are not affected.
///
/// Allocates its state from the arena (its buffers at the first feed);
/// fails with [`FWD_ERR_LIMITS`] if `arena_len` is below [`FWD_ARENA_MIN`],
/// with [`FWD_ERR_ARGUMENT`] on a null pointer or missing
/// `read_old`/`write_new`.
///
/// # Safety
/// `io` and `out` must be valid pointers and `arena` point to `arena_len`
/// writable bytes; the callbacks must behave as [`fwd_io`] describes.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_new(
    io: *const fwd_io,
    arena: *mut c_void,
    arena_len: usize,
    max_new_len: u64,
    out: *mut *mut fwd_applier,
) -> c_int {
    if io.is_null() || arena.is_null() || out.is_null() {
        return FWD_ERR_ARGUMENT;
    }
    // SAFETY: checked non-null; the caller's contract.
    let (io, out) = unsafe { (*io, &mut *out) };
    *out = ptr::null_mut();
    if io.read_old.is_none() || io.write_new.is_none() {
        return FWD_ERR_ARGUMENT;
    }
    if arena_len < FWD_ARENA_MIN {
        return FWD_ERR_LIMITS;
    }
    // SAFETY: the caller's buffer, exclusively ours until fwd_applier_free.
    let Some(a) = (unsafe { Arena::init(arena.cast(), arena_len) }) else {
        return FWD_ERR_LIMITS;
    };
    let _enter = Enter::new(a);
    let made = guarded(|| {
        let opts = ApplyOptions::default()
            .with_memory_limit((arena_len - FWD_ARENA_OVERHEAD) as u64)
            .with_max_new_len(match max_new_len {
                0 => MAX_IMAGE_LEN,
                n => n,
            });
        Box::into_raw(Box::new(fwd_applier {
            arena: a,
            io,
            old: Box::into_raw(Box::new(CallbackImage(io))),
            state: State::Idle,
            opts,
            claim: 0,
            patch_id: None,
            message: [0; MESSAGE_LEN],
        }))
    });
    match made {
        Ok(p) => {
            *out = p;
            FWD_OK
        }
        Err(_) => FWD_ERR_INTERNAL,
    }
}

/// Check the patch against a device policy before anything else is read:
/// at least `threshold` (0 counts as 1) of the `key_count` trusted Ed25519
/// public keys at `keys` (32 bytes each) must have signed it
/// ([`FWD_ERR_NOT_AUTHENTIC`]; an unsigned patch too, when `key_count` > 0),
/// its product must be `product` (NUL-terminated; null: any;
/// [`FWD_ERR_WRONG_PRODUCT`]) and its security counter at least
/// `min_counter` ([`FWD_ERR_DOWNGRADE`]). Call it on a fresh applier,
/// before [`fwd_applier_resume`] or the first feed. Expiry and replays are
/// checked when [`fwd_applier_trust_time`] and
/// [`fwd_applier_trust_installed`] are called after it.
///
/// # Safety
/// `a` from [`fwd_applier_new`]; `keys` valid for `32 * key_count` bytes;
/// `product` null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_trust(
    a: *mut fwd_applier,
    keys: *const u8,
    key_count: usize,
    threshold: usize,
    product: *const c_char,
    min_counter: u64,
) -> c_int {
    with_applier(a, |app| {
        if !matches!(app.state, State::Idle) {
            return app.refuse("trust must be set on a fresh applier");
        }
        let trust = fwd_trust {
            keys,
            key_count,
            threshold,
            product,
            min_counter,
            now: 0,
            installed: core::ptr::null(),
            installed_count: 0,
        };
        // SAFETY: the caller's keys and product, by contract.
        let policy = match unsafe { policy_of(&trust) } {
            Ok(p) => p,
            Err(why) => return app.refuse(why),
        };
        app.opts = app.opts.clone().with_policy(Some(Arc::new(policy)));
        FWD_OK
    })
}

/// Also refuse patches whose release statement expired before `now`
/// (Unix seconds: the terminal's trusted clock), with [`FWD_ERR_EXPIRED`]
/// before anything else is read. Call it after [`fwd_applier_trust`], on a
/// fresh applier. Expiry is judged when an update begins: when resuming
/// one begun before the expiry ([`fwd_applier_resume`]), pass the time it
/// began or leave this out, or the resume is refused and the update lost
/// (the old image is still whole; `fwd_apply_in_place_trusted` finishes
/// its own interrupted updates by itself).
///
/// # Safety
/// `a` from [`fwd_applier_new`].
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_trust_time(a: *mut fwd_applier, now: u64) -> c_int {
    with_applier(a, |app| app.change_policy(|policy| policy.now = Some(now)))
}

/// Also refuse the patches this terminal already installed, with
/// [`FWD_ERR_REPLAY`] before anything else is read: `ids` holds `count`
/// patch identities of 32 bytes each, as [`fwd_applier_patch_id`] gave them
/// after each installed update. They are copied into the arena. Call it
/// after [`fwd_applier_trust`], on a fresh applier.
///
/// # Safety
/// `a` from [`fwd_applier_new`]; `ids` valid for `32 * count` bytes.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_trust_installed(
    a: *mut fwd_applier,
    ids: *const u8,
    count: usize,
) -> c_int {
    with_applier(a, |app| {
        // SAFETY: the caller's buffer of 32 * count bytes, by contract.
        let installed = match unsafe { arrays_of_32(ids, count) } {
            Ok(ids) => ids,
            Err(why) => return app.refuse(why),
        };
        app.change_policy(|policy| policy.installed = installed)
    })
}

/// Store the accepted patch's identity in `out[0..32]`: the signed message
/// its signatures cover. A terminal records it after the update is
/// installed and passes it to [`fwd_applier_trust_installed`] from then on.
/// [`FWD_ERR_ARGUMENT`] before the header was accepted or for an unsigned
/// patch (it has no identity).
///
/// # Safety
/// `a` from [`fwd_applier_new`]; `out` valid for 32 bytes.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_patch_id(a: *mut fwd_applier, out: *mut u8) -> c_int {
    with_applier(a, |app| {
        if out.is_null() {
            return app.refuse("null out");
        }
        let Some(id) = app.patch_id else {
            return app.refuse(
                "no patch identity: the header is not accepted yet, or the patch is unsigned",
            );
        };
        // SAFETY: the caller's 32-byte buffer.
        unsafe { core::ptr::copy_nonoverlapping(id.as_ptr(), out, 32) };
        FWD_OK
    })
}

/// Continue an apply cut after a persisted checkpoint, instead of feeding
/// from the patch's start. Call it on a fresh applier, before any feed.
/// `patch_start` holds the patch's first bytes: at least its header and
/// signature section (the patch's first `patch_offset` bytes, see
/// [`fwd_checkpoint_offsets`], always suffice); `checkpoint` is the last one
/// `persist` stored. The old image is verified again and the new image's
/// first `new_offset` bytes are read back through `read_new` and checked.
/// Then feed the patch from `patch_offset` on; `write_new` continues at
/// `new_offset`.
///
/// Errors: [`FWD_ERR_BAD_PATCH`] (damaged checkpoint, or another patch's),
/// [`FWD_ERR_PARTIAL_DAMAGED`] (start over), [`FWD_ERR_WRONG_OLD`], and those
/// of [`fwd_applier_feed`].
///
/// # Safety
/// `a` from [`fwd_applier_new`]; the two buffers valid for their lengths.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_resume(
    a: *mut fwd_applier,
    patch_start: *const u8,
    patch_start_len: usize,
    checkpoint: *const u8,
    checkpoint_len: usize,
) -> c_int {
    with_applier(a, |app| {
        if patch_start.is_null() || checkpoint.is_null() || app.io.read_new.is_none() {
            return app.refuse("resume needs the patch start, a checkpoint and read_new");
        }
        if !matches!(app.state, State::Idle) {
            return app.refuse("resume must come first, on a fresh applier");
        }
        // SAFETY: the caller's buffers, valid for their lengths.
        let (start, cp) = unsafe {
            (
                core::slice::from_raw_parts(patch_start, patch_start_len),
                core::slice::from_raw_parts(checkpoint, checkpoint_len),
            )
        };
        let cp = match Checkpoint::decode(cp) {
            Ok(cp) => cp,
            Err(e) => return app.fail(&ApplyError::from(e)),
        };
        let (io, mut at) = (app.io, 0u64);
        let read_back = |buf: &mut [u8]| {
            let f = io.read_new.ok_or(IoError::new("no read_new callback"))?;
            // SAFETY: the caller's callback, with a live buffer.
            match unsafe { f(io.ctx, at, buf.as_mut_ptr(), buf.len()) } {
                0 => {
                    at += buf.len() as u64;
                    Ok(buf.len())
                }
                rc => Err(IoError::code("the read_new callback", rc)),
            }
        };
        let sink = CallbackSink(app.io);
        let opts = app.opts.clone();
        match Applier::resume_with(app.old(), sink, opts, start, &cp, read_back) {
            Ok(run) => {
                app.claim = run.header().map_or(0, |h| h.apply_memory);
                app.patch_id = run.verdict().and_then(|v| v.message);
                app.state = State::Running(Box::new(run));
                FWD_OK
            }
            Err(e) => app.fail(&e),
        }
    })
}

/// Consume the next `len` patch bytes (any split). Returns once they are
/// processed: the new bytes they produce have gone to `write_new`, and
/// `persist` was called for every segment they completed. After an error
/// the applier is stopped; [`fwd_applier_message`] says why, and the new
/// bytes already written must be discarded (or resumed from the last
/// checkpoint, when the error was a cut or a callback failure).
///
/// # Safety
/// `a` from [`fwd_applier_new`]; `data` valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_feed(
    a: *mut fwd_applier,
    data: *const u8,
    len: usize,
) -> c_int {
    with_applier(a, |app| {
        if data.is_null() && len > 0 {
            return app.refuse("null data");
        }
        let data = match len {
            0 => &[][..],
            // SAFETY: the caller's buffer, valid for `len`.
            _ => unsafe { core::slice::from_raw_parts(data, len) },
        };
        if matches!(app.state, State::Idle) {
            let run = Applier::new(app.old(), CallbackSink(app.io), app.opts.clone());
            app.state = State::Running(Box::new(run));
        }
        let State::Running(run) = &mut app.state else {
            return app.refuse("feed after an error or after finish");
        };
        let fed = run.feed(data);
        if let Some(h) = run.header() {
            app.claim = h.apply_memory;
        }
        if let Some(v) = run.verdict() {
            app.patch_id = v.message;
        }
        match fed {
            Ok(()) => FWD_OK,
            Err(e) => app.fail(&e),
        }
    })
}

/// The patch has been fed whole: check that it ended where it should and
/// that the new image hashes to what its header says. [`FWD_OK`] means every
/// new byte written is verified.
///
/// # Safety
/// `a` from [`fwd_applier_new`].
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_finish(a: *mut fwd_applier) -> c_int {
    with_applier(a, |app| {
        let run = match core::mem::replace(&mut app.state, State::Failed) {
            State::Running(run) => run,
            State::Idle => Box::new(Applier::new(
                app.old(),
                CallbackSink(app.io),
                app.opts.clone(),
            )),
            other => {
                app.state = other;
                return app.refuse("finish after an error or a second time");
            }
        };
        match run.finish() {
            Ok(_) => {
                app.state = State::Done;
                FWD_OK
            }
            Err(e) => app.fail(&e),
        }
    })
}

/// The last error's detail (one line, NUL-terminated, empty if none),
/// valid until the next call on `a`.
///
/// # Safety
/// `a` from [`fwd_applier_new`] or null.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_message(a: *const fwd_applier) -> *const c_char {
    if a.is_null() {
        return c"null applier".as_ptr();
    }
    // SAFETY: a live handle.
    unsafe { (*a).message.as_ptr().cast() }
}

/// The memory the patch's header claims (0 until the header was read).
///
/// # Safety
/// `a` from [`fwd_applier_new`] or null.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_claim(a: *const fwd_applier) -> u64 {
    if a.is_null() {
        return 0;
    }
    // SAFETY: a live handle.
    unsafe { (*a).claim }
}

/// The most arena bytes in use at once so far (bookkeeping included).
///
/// # Safety
/// `a` from [`fwd_applier_new`] or null.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_arena_peak(a: *const fwd_applier) -> usize {
    if a.is_null() {
        return 0;
    }
    // SAFETY: a live handle whose arena lives as long.
    unsafe { (*(*a).arena).peak() }
}

/// Free the applier (its arena can then be reused). Null is ignored.
///
/// # Safety
/// `a` from [`fwd_applier_new`], not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn fwd_applier_free(a: *mut fwd_applier) {
    if a.is_null() {
        return;
    }
    // SAFETY: a live handle, allocated in its own arena.
    let arena = unsafe { (*a).arena };
    let _enter = Enter::new(arena);
    // SAFETY: from Box::into_raw in fwd_applier_new.
    let _ = guarded(|| drop(unsafe { Box::from_raw(a) }));
}

/// Where a checkpoint resumes: the patch offset to feed from and the new
/// image's length at that point. [`FWD_ERR_BAD_PATCH`] if it is damaged.
///
/// # Safety
/// `checkpoint` valid for `len` bytes; the out pointers valid.
#[no_mangle]
pub unsafe extern "C" fn fwd_checkpoint_offsets(
    checkpoint: *const u8,
    len: usize,
    patch_offset: *mut u64,
    new_offset: *mut u64,
) -> c_int {
    if checkpoint.is_null() || patch_offset.is_null() || new_offset.is_null() {
        return FWD_ERR_ARGUMENT;
    }
    // SAFETY: the caller's buffer.
    let b = unsafe { core::slice::from_raw_parts(checkpoint, len) };
    match Checkpoint::decode(b) {
        Ok(cp) => {
            // SAFETY: checked non-null.
            unsafe {
                *patch_offset = cp.patch_offset;
                *new_offset = cp.new_offset;
            }
            FWD_OK
        }
        Err(_) => FWD_ERR_BAD_PATCH,
    }
}

/// A static, NUL-terminated name for an `FWD_*` code.
#[no_mangle]
pub extern "C" fn fwd_strerror(code: c_int) -> *const c_char {
    let s = match code {
        FWD_OK => c"success",
        FWD_ERR_IO => c"a callback failed (I/O)",
        FWD_ERR_ARGUMENT => c"invalid argument or call order",
        FWD_ERR_BAD_PATCH => c"the patch is invalid, corrupt or truncated",
        FWD_ERR_WRONG_OLD => c"the patch was made for another old image",
        FWD_ERR_LIMITS => c"the patch exceeds the applier's limits (arena, max_new_len)",
        FWD_ERR_UNSUPPORTED => {
            c"the patch uses a version, layout or codec this build does not read"
        }
        FWD_ERR_NOT_AUTHENTIC => c"the patch is not signed by enough trusted keys",
        FWD_ERR_WRONG_PRODUCT => c"the patch is for another product",
        FWD_ERR_DOWNGRADE => c"downgrade: the patch's security counter is below the device's",
        FWD_ERR_UPDATE_LOST => c"the in-place update cannot go on: the image is neither version",
        FWD_ERR_PARTIAL_DAMAGED => {
            c"the partial new image does not match its checkpoint: start over"
        }
        FWD_ERR_INTERNAL => c"internal error",
        _ => c"unknown error code",
    };
    s.as_ptr()
}
