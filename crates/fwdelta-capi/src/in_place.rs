//! In-place updates through C: [`fwd_apply_in_place`] rewrites the region
//! holding the old image into the new one (single-slot flash), journaling
//! through the caller's two slots, as `fwdelta apply --in-place` does with
//! files. The callbacks become the applier's `Region`, `Journal` and a
//! seekable patch; the whole apply runs in the caller's arena.

use crate::arena::{Arena, Enter};
use crate::{
    code_of, fwd_trust, guarded, policy_of, set_message, FWD_ARENA_MIN, FWD_ARENA_OVERHEAD,
};
use crate::{FWD_ERR_ARGUMENT, FWD_ERR_INTERNAL, FWD_ERR_LIMITS, FWD_OK};
use core::ffi::{c_int, c_void};
use fwdelta_apply::{apply_in_place_with, ApplyOptions, Journal, Region, MAX_JOURNAL_SLOT_LEN};
use fwdelta_format::MAX_IMAGE_LEN;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

/// The caller's storage for an in-place update. Each callback returns 0 on
/// success; anything else fails the apply with `FWD_ERR_IO` (the journal
/// lets a later call finish it).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct fwd_in_place_io {
    /// Passed to every callback.
    pub ctx: *mut c_void,
    /// The patch's length in bytes.
    pub patch_len: u64,
    /// Fill `buf[0..len]` with the patch's bytes at `offset` (inside
    /// `0..patch_len`; the patch is read twice: verified whole, then applied).
    pub read_patch: Option<
        unsafe extern "C" fn(ctx: *mut c_void, offset: u64, buf: *mut u8, len: usize) -> c_int,
    >,
    /// Store the region's current length (the image's) in `*len`.
    pub region_len: Option<unsafe extern "C" fn(ctx: *mut c_void, len: *mut u64) -> c_int>,
    /// Fill `buf[0..len]` from the region at `offset`.
    pub region_read: Option<
        unsafe extern "C" fn(ctx: *mut c_void, offset: u64, buf: *mut u8, len: usize) -> c_int,
    >,
    /// Write `data[0..len]` to the region at `offset`.
    pub region_write: Option<
        unsafe extern "C" fn(ctx: *mut c_void, offset: u64, data: *const u8, len: usize) -> c_int,
    >,
    /// Make the region `len` bytes long (a fixed partition may ignore it if
    /// `len` fits).
    pub region_set_len: Option<unsafe extern "C" fn(ctx: *mut c_void, len: u64) -> c_int>,
    /// Make everything written to the region durable.
    pub region_sync: Option<unsafe extern "C" fn(ctx: *mut c_void) -> c_int>,
    /// Journal slot `slot` (0 or 1): store its length in `*len` and, if it
    /// is at most `cap`, its bytes in `buf[0..len]` (`buf` is null when
    /// `cap` is 0). An empty or absent slot has length 0. A length no slot
    /// can have (a damaged length field: over a record and a 16 MiB cell) or
    /// one the arena cannot hold is taken as a damaged slot, not read: the
    /// other slot decides.
    pub slot_read: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            slot: c_int,
            buf: *mut u8,
            cap: usize,
            len: *mut usize,
        ) -> c_int,
    >,
    /// Durably replace slot `slot` with `record[0..record_len]` followed by
    /// `cell[0..cell_len]`. A power loss part-way may damage that slot,
    /// never the other.
    pub slot_write: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            slot: c_int,
            record: *const u8,
            record_len: usize,
            cell: *const u8,
            cell_len: usize,
        ) -> c_int,
    >,
    /// Empty both slots (the update finished).
    pub slot_clear: Option<unsafe extern "C" fn(ctx: *mut c_void) -> c_int>,
}

fn failed(what: &str, rc: c_int) -> io::Error {
    io::Error::other(format!("the {what} callback returned {rc}"))
}

fn check(what: &str, rc: c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        rc => Err(failed(what, rc)),
    }
}

/// Every callback, checked present once.
#[derive(Clone, Copy)]
struct Io {
    ctx: *mut c_void,
    patch_len: u64,
    read_patch: unsafe extern "C" fn(*mut c_void, u64, *mut u8, usize) -> c_int,
    region_len: unsafe extern "C" fn(*mut c_void, *mut u64) -> c_int,
    region_read: unsafe extern "C" fn(*mut c_void, u64, *mut u8, usize) -> c_int,
    region_write: unsafe extern "C" fn(*mut c_void, u64, *const u8, usize) -> c_int,
    region_set_len: unsafe extern "C" fn(*mut c_void, u64) -> c_int,
    region_sync: unsafe extern "C" fn(*mut c_void) -> c_int,
    slot_read: unsafe extern "C" fn(*mut c_void, c_int, *mut u8, usize, *mut usize) -> c_int,
    slot_write:
        unsafe extern "C" fn(*mut c_void, c_int, *const u8, usize, *const u8, usize) -> c_int,
    slot_clear: unsafe extern "C" fn(*mut c_void) -> c_int,
}

impl Io {
    fn of(io: &fwd_in_place_io) -> Option<Io> {
        Some(Io {
            ctx: io.ctx,
            patch_len: io.patch_len,
            read_patch: io.read_patch?,
            region_len: io.region_len?,
            region_read: io.region_read?,
            region_write: io.region_write?,
            region_set_len: io.region_set_len?,
            region_sync: io.region_sync?,
            slot_read: io.slot_read?,
            slot_write: io.slot_write?,
            slot_clear: io.slot_clear?,
        })
    }
}

// SAFETY (every callback call below): the caller's callbacks, given live
// buffers of the lengths passed, as `fwd_in_place_io` documents.
impl Region for Io {
    fn len(&self) -> io::Result<u64> {
        let mut len = 0u64;
        check("region_len", unsafe {
            (self.region_len)(self.ctx, &mut len)
        })?;
        Ok(len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check("region_read", unsafe {
            (self.region_read)(self.ctx, offset, buf.as_mut_ptr(), buf.len())
        })
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        check("region_write", unsafe {
            (self.region_write)(self.ctx, offset, data.as_ptr(), data.len())
        })
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        check("region_set_len", unsafe {
            (self.region_set_len)(self.ctx, len)
        })
    }
    fn sync(&self) -> io::Result<()> {
        check("region_sync", unsafe { (self.region_sync)(self.ctx) })
    }
}

impl Journal for Io {
    fn read_slot(&mut self, slot: usize, into: &mut Vec<u8>) -> io::Result<()> {
        let slot = slot as c_int;
        let mut len = 0usize;
        check("slot_read", unsafe {
            (self.slot_read)(self.ctx, slot, core::ptr::null_mut(), 0, &mut len)
        })?;
        into.clear();
        // A length no valid slot has (a damaged length field), or one the
        // arena cannot hold: the slot is damaged. It reads as one byte, from
        // which no record decodes (the other slot decides) but which shows
        // that a journal is there.
        if len as u64 > MAX_JOURNAL_SLOT_LEN || into.try_reserve_exact(len).is_err() {
            into.try_reserve_exact(1)
                .map_err(|_| io::Error::other("no room in the arena to read the journal"))?;
            into.push(0);
            return Ok(());
        }
        into.resize(len, 0);
        if len > 0 {
            let mut got = 0usize;
            check("slot_read", unsafe {
                (self.slot_read)(self.ctx, slot, into.as_mut_ptr(), len, &mut got)
            })?;
            into.truncate(got.min(len));
        }
        Ok(())
    }
    fn write_slot(&mut self, slot: usize, record: &[u8], cell: &[u8]) -> io::Result<()> {
        check("slot_write", unsafe {
            (self.slot_write)(
                self.ctx,
                slot as c_int,
                record.as_ptr(),
                record.len(),
                cell.as_ptr(),
                cell.len(),
            )
        })
    }
    fn clear(&mut self) -> io::Result<()> {
        check("slot_clear", unsafe { (self.slot_clear)(self.ctx) })
    }
}

/// The patch, read by offset.
struct Patch<'a> {
    io: &'a Io,
    at: u64,
}

impl Read for Patch<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.io.patch_len.saturating_sub(self.at)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        check("read_patch", unsafe {
            (self.io.read_patch)(self.io.ctx, self.at, buf.as_mut_ptr(), n)
        })?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Seek for Patch<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let at = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.io.patch_len.checked_add_signed(d),
            SeekFrom::Current(d) => self.at.checked_add_signed(d),
        };
        self.at = at.ok_or(io::ErrorKind::InvalidInput)?;
        Ok(self.at)
    }
}

/// Rewrite the region holding the old image into the new image, in place,
/// from the in-place patch the callbacks read (made with `fwdelta diff
/// --in-place`). Verifies the patch, the old image and a dry run of the
/// result before the first write; journals every cell in the two slots, so
/// after a power loss calling it again (same patch, same slots) finishes
/// the update, once a dry run from the journal's record makes the new image
/// (a journal left beside an image restored since the cut is set aside and
/// the old image updated from the start); an image that already is the new
/// one is success. All
/// allocation comes from `arena[0..arena_len]` (see `fwd_applier_new`);
/// `max_new_len` as there. On failure, a one-line reason is written to
/// `message[0..message_len]` (NUL-terminated; may be null).
/// No policy: signatures are not checked (see
/// [`fwd_apply_in_place_trusted`]).
///
/// Returns `FWD_OK`, or the codes of `fwd_applier_feed`, or
/// `FWD_ERR_UPDATE_LOST` when both journal copies needed are gone while the
/// image is half written (reflash).
///
/// # Safety
/// `io` valid; `arena` writable for `arena_len` bytes; `message` writable
/// for `message_len` bytes or null.
#[no_mangle]
pub unsafe extern "C" fn fwd_apply_in_place(
    io: *const fwd_in_place_io,
    arena: *mut c_void,
    arena_len: usize,
    max_new_len: u64,
    message: *mut u8,
    message_len: usize,
) -> c_int {
    // SAFETY: the caller's contract, passed on; no policy, no identity out.
    unsafe {
        fwd_apply_in_place_trusted(
            io,
            core::ptr::null(),
            arena,
            arena_len,
            max_new_len,
            core::ptr::null_mut(),
            message,
            message_len,
        )
    }
}

/// [`fwd_apply_in_place`] under the terminal's policy `trust` (null: none):
/// a patch not signed by enough trusted keys, another product's, one below
/// the security counter, an expired one or a replay is refused with the
/// codes of `fwd_applier_trust` and its companions, after reading only the
/// patch's header and signature section, before the region is read or
/// written (an expired one after reading the journal and the region, which
/// tell whether an update of it was cut mid-way, and before any write). Expiry is judged when an update begins: the call that finishes
/// an interrupted update (its journal names this patch, and the region is
/// in the state the journal records) does not refuse it as expired, and
/// checks every other rule again; an expired patch over the intact old
/// image is refused whatever the journal says. On success a signed
/// patch's identity (what `fwd_applier_patch_id` gives) is written to
/// `patch_id[0..32]` (if not null; 32 zero bytes for an unsigned patch):
/// record it as installed. On failure `patch_id` is left as it was.
///
/// # Safety
/// As [`fwd_apply_in_place`]; `trust` null or valid as `fwd_trust`
/// describes; `patch_id` null or writable for 32 bytes.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn fwd_apply_in_place_trusted(
    io: *const fwd_in_place_io,
    trust: *const fwd_trust,
    arena: *mut c_void,
    arena_len: usize,
    max_new_len: u64,
    patch_id: *mut u8,
    message: *mut u8,
    message_len: usize,
) -> c_int {
    let mut text = [0u8; crate::MESSAGE_LEN];
    let mut id = [0u8; 32];
    // SAFETY: `trust` null or valid, by contract.
    let trust = unsafe { trust.as_ref() };
    let rc = apply(io, trust, arena, arena_len, max_new_len, &mut id, &mut text);
    if rc == FWD_OK && !patch_id.is_null() {
        // SAFETY: the caller's 32-byte buffer.
        unsafe { core::ptr::copy_nonoverlapping(id.as_ptr(), patch_id, 32) };
    }
    if !message.is_null() && message_len > 0 {
        let n = text
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(0)
            .min(message_len - 1);
        // SAFETY: the caller's buffer of `message_len` bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(text.as_ptr(), message, n);
            *message.add(n) = 0;
        }
    }
    rc
}

fn apply(
    io: *const fwd_in_place_io,
    trust: Option<&fwd_trust>,
    arena: *mut c_void,
    arena_len: usize,
    max_new_len: u64,
    id: &mut [u8; 32],
    text: &mut [u8; crate::MESSAGE_LEN],
) -> c_int {
    if io.is_null() || arena.is_null() {
        return FWD_ERR_ARGUMENT;
    }
    // SAFETY: checked non-null; the caller's contract.
    let Some(mut io) = Io::of(unsafe { &*io }) else {
        set_message(text, format_args!("a callback is missing"));
        return FWD_ERR_ARGUMENT;
    };
    if arena_len < FWD_ARENA_MIN {
        return FWD_ERR_LIMITS;
    }
    // SAFETY: the caller's buffer, ours for this call.
    let Some(a): Option<*mut Arena> = (unsafe { Arena::init(arena.cast(), arena_len) }) else {
        return FWD_ERR_LIMITS;
    };
    let _enter = Enter::new(a);
    // SAFETY: the caller's policy, valid by contract.
    let policy = match trust.map(|t| unsafe { policy_of(t) }).transpose() {
        Ok(policy) => policy.map(Arc::new),
        Err(why) => {
            set_message(text, format_args!("{why}"));
            return FWD_ERR_ARGUMENT;
        }
    };
    let ran = guarded(|| {
        let opts = ApplyOptions::default()
            .with_memory_limit((arena_len - FWD_ARENA_OVERHEAD) as u64)
            .with_max_new_len(match max_new_len {
                0 => MAX_IMAGE_LEN,
                n => n,
            })
            .with_policy(policy);
        let region = io;
        let patch = Patch { io: &region, at: 0 };
        apply_in_place_with(&region, patch, opts, &mut io)
    });
    match ran {
        Ok(Ok(report)) => {
            *id = report.verdict.message.unwrap_or_default();
            FWD_OK
        }
        Ok(Err(e)) => {
            set_message(text, format_args!("{e}"));
            code_of(&e)
        }
        Err(_) => {
            set_message(text, format_args!("internal error (panic)"));
            FWD_ERR_INTERNAL
        }
    }
}
