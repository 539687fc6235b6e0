//! The terminal's update state: a directory holding what the device trusts
//! and what it installed, and the record of every update it tried.
//!
//! ```text
//! DIR/state.json    product, version, security counter, trusted keys and
//!                   threshold, installed patches, the update in progress or
//!                   awaiting confirmation (replaced whole, with a check)
//! DIR/history.log   append-only update record, one checked line an entry
//! DIR/.lock         flock'd for as long as a command uses the directory
//! DIR/server-ca.pem the update server's pinned TLS authority (optional;
//!                   `fwdelta device pin-server`)
//! ```
//!
//! The security counter is raised only by [`DeviceDir::confirm`], after the
//! new firmware has booted (as Android Verified Boot raises its rollback
//! index), so an update that never boots cannot lock the device out of the
//! version it came from. A key is added to the trust store only through a
//! rotation statement signed by keys the device already trusts
//! ([`DeviceDir::add_trust`]).
//!
//! Every operation is ordered so that a power cut at any byte leaves a state
//! the next run continues from: the history is appended before the state
//! file is replaced, appends of the same event are recorded once, and the
//! state file is replaced atomically.

pub mod history_log;
pub mod manifest;
pub mod safe_file;
pub mod state_file;

use fwdelta_apply::TrustPolicy;
use fwdelta_format::key_rotation::KeyRotation;
use fwdelta_format::signature::{self, KeyId, MAX_SIGNATURES};
use fwdelta_format::Release;
use serde_json::{json, Value};
use state_file::{State, Update, MAX_INSTALLED, MAX_RETIRED_KEYS};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub use history_log::History;

/// Why the device state cannot be used or changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The directory is missing, a link, not a directory or not writable.
    #[error("device state directory {}: {why}", path.display())]
    Unusable {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A state file is damaged or missing.
    #[error("device state is damaged: {0}; restore the state directory (nothing was changed)")]
    Damaged(String),
    /// Another process holds the directory's lock.
    #[error("another update of this device is running (its state directory is locked)")]
    Busy,
    /// An applied update awaits `confirm` or `rollback`.
    #[error("an update to version {version} is awaiting confirmation: run `fwdelta confirm` (or `fwdelta rollback`) first")]
    PendingUpdate {
        /// The version it installed.
        version: String,
    },
    /// `confirm` or `rollback` with no update awaiting it.
    #[error("no update is awaiting confirmation")]
    NothingPending,
    /// A key rotation statement was refused.
    #[error("key rotation refused: {0}")]
    Rotation(&'static str),
    /// `init` was given something unusable.
    #[error("{0}")]
    Init(&'static str),
    /// Reading or writing the state failed.
    #[error("device state I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// What `fwdelta device init` records.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Product id.
    pub product: String,
    /// The version installed now.
    pub version: String,
    /// The security counter now.
    pub counter: u64,
    /// Trusted public keys (at least one).
    pub keys: Vec<[u8; 32]>,
    /// Distinct trusted signatures a patch needs.
    pub threshold: usize,
}

/// An opened (and locked) device state directory.
#[derive(Debug)]
pub struct DeviceDir {
    dir: PathBuf,
    state: State,
    _lock: safe_file::Lock,
}

const STATE: &str = "state.json";
const HISTORY: &str = "history.log";
const LOCK: &str = ".lock";
const SERVER_CA: &str = "server-ca.pem";
/// Largest pinned authority file accepted (PEM text).
pub const MAX_SERVER_CA_LEN: usize = 64 << 10;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_dir(path: &Path) -> Result<(), DeviceError> {
    let unusable = |why| DeviceError::Unusable {
        path: path.to_path_buf(),
        why,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unusable("does not exist")),
        Err(e) => return Err(e.into()),
    };
    if meta.file_type().is_symlink() {
        return Err(unusable("is a symbolic link; refusing to follow it"));
    }
    if !meta.is_dir() {
        return Err(unusable("is not a directory"));
    }
    // Checked from the mode bits, so it holds for root too.
    if meta.permissions().mode() & 0o200 == 0 {
        return Err(unusable("is not writable"));
    }
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(unusable("belongs to another user"));
    }
    Ok(())
}

impl DeviceDir {
    /// Create the state directory `dir` (it must not exist, or be empty)
    /// with `opts`, and an empty history.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<(), DeviceError> {
        for k in &opts.keys {
            if !signature::is_valid_public_key(k) {
                return Err(DeviceError::Init(
                    "a trusted key is not a valid Ed25519 key",
                ));
            }
        }
        if opts.keys.is_empty() {
            return Err(DeviceError::Init("a device needs at least one trusted key"));
        }
        if opts.threshold == 0 || opts.threshold > opts.keys.len().min(MAX_SIGNATURES) {
            return Err(DeviceError::Init(
                "the threshold must be between 1 and the number of trusted keys",
            ));
        }
        Release {
            product: opts.product.clone(),
            version: opts.version.clone(),
            security_counter: opts.counter,
            expires: 0,
        }
        .validate()
        .map_err(|_| {
            DeviceError::Init(
                "product ids are 1-64 ASCII letters, digits, '.', '_' or '-'; versions 1-64 printable ASCII",
            )
        })?;
        match fs::symlink_metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode_0700().create(dir)?
            }
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {
                if fs::read_dir(dir)?.next().is_some() {
                    return Err(DeviceError::Init(
                        "the state directory exists and is not empty",
                    ));
                }
            }
            Ok(_) => {
                return Err(DeviceError::Init(
                    "the state directory path is taken by a non-directory",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        check_dir(dir)?;
        let state = State {
            product: opts.product.clone(),
            version: opts.version.clone(),
            counter: opts.counter,
            threshold: opts.threshold,
            keys: opts.keys.clone(),
            retired: Vec::new(),
            installed: Vec::new(),
            in_progress: None,
            pending: None,
        };
        safe_file::create(&dir.join(STATE), &state.encode())?;
        safe_file::create(&dir.join(HISTORY), b"")?;
        Ok(())
    }

    /// Open and lock `dir`: refused if it is a link, not a directory, not
    /// writable, locked by another process ([`DeviceError::Busy`]) or its
    /// state file is missing or damaged. Nothing is written.
    pub fn open(dir: &Path) -> Result<DeviceDir, DeviceError> {
        check_dir(dir)?;
        let lock = safe_file::Lock::try_take(&dir.join(LOCK))?.ok_or(DeviceError::Busy)?;
        let bytes = safe_file::read(&dir.join(STATE)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DeviceError::Damaged("state.json is missing".into()),
            _ => DeviceError::Damaged(format!("state.json cannot be read: {e}")),
        })?;
        let state = State::decode(&bytes)?;
        Ok(DeviceDir {
            dir: dir.to_path_buf(),
            state,
            _lock: lock,
        })
    }

    /// The state as loaded (and as changed by this handle).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The history (torn or damaged lines skipped and counted).
    pub fn history(&self) -> Result<History, DeviceError> {
        Ok(history_log::read(&self.dir.join(HISTORY))?)
    }

    /// The policy a patch must meet now: trusted keys and threshold, this
    /// product, the stored counter, expiry at `now`, no replay of an
    /// installed patch.
    pub fn policy(&self, now: u64) -> TrustPolicy {
        let mut p = TrustPolicy::trusting(self.state.keys.clone());
        p.threshold = self.state.threshold;
        p.product = Some(self.state.product.clone());
        p.min_counter = self.state.counter;
        p.now = Some(now);
        p.installed = self.state.installed.clone();
        p
    }

    fn save(&mut self, state: State) -> Result<(), DeviceError> {
        safe_file::replace(&self.dir.join(STATE), &state.encode())?;
        self.state = state;
        Ok(())
    }

    fn log(&self, entry: &Value) -> Result<(), DeviceError> {
        Ok(history_log::append(&self.dir.join(HISTORY), entry)?)
    }

    /// Record that `update` is starting (or restarting after a cut: its
    /// attempt count grows). Refused while another update awaits
    /// confirmation; the same one may run again (it produces the same image).
    /// Returns the attempt number.
    pub fn begin(&mut self, update: &Update) -> Result<u32, DeviceError> {
        if let Some(p) = &self.state.pending {
            if p.patch != update.patch {
                return Err(DeviceError::PendingUpdate {
                    version: p.version.clone(),
                });
            }
        }
        let attempts = match &self.state.in_progress {
            Some(u) if u.patch == update.patch => u.attempts.saturating_add(1),
            _ => 1,
        };
        let mut s = self.state.clone();
        s.in_progress = Some(Update {
            attempts,
            ..update.clone()
        });
        self.save(s)?;
        Ok(attempts)
    }

    /// The pinned TLS authority of the update server (PEM text), if one was
    /// pinned. Reads one small file (at most [`MAX_SERVER_CA_LEN`] bytes;
    /// a larger one counts as damaged).
    pub fn server_ca(&self) -> Result<Option<Vec<u8>>, DeviceError> {
        match safe_file::read(&self.dir.join(SERVER_CA)) {
            Ok(b) if b.len() <= MAX_SERVER_CA_LEN => Ok(Some(b)),
            Ok(_) => Err(DeviceError::Damaged(format!(
                "{SERVER_CA} is over {MAX_SERVER_CA_LEN} bytes"
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DeviceError::Damaged(format!(
                "{SERVER_CA} cannot be read: {e}"
            ))),
        }
    }

    /// Pin `pem` (the caller has checked it holds certificates) as the
    /// update server's TLS authority, replacing any earlier pin atomically,
    /// and record it in the history with its BLAKE3.
    pub fn pin_server_ca(&mut self, pem: &[u8], now: u64) -> Result<(), DeviceError> {
        if pem.len() > MAX_SERVER_CA_LEN {
            return Err(DeviceError::Init("the authority file is too large"));
        }
        self.log(&json!({
            "time": now, "event": "server-pinned",
            "server_ca_blake3": blake3::hash(pem).to_hex().to_string(),
        }))?;
        safe_file::replace(&self.dir.join(SERVER_CA), pem)?;
        Ok(())
    }

    /// Record a refused or failed update (the state is not changed).
    pub fn refused(&self, entry: &Value) -> Result<(), DeviceError> {
        self.log(entry)
    }

    /// Record that the update begun with [`Self::begin`] is applied: append
    /// `entry` to the history, then mark the update as awaiting
    /// confirmation. The counter is not raised here.
    pub fn applied(&mut self, entry: &Value) -> Result<(), DeviceError> {
        match self.state.in_progress.clone() {
            Some(u) => self.applied_as(&u, entry),
            None => self.log(entry),
        }
    }

    /// [`Self::applied`] for `update`, which may not be the update begun:
    /// what the applier verified is what awaits confirmation (its version
    /// and counter are the ones `confirm` installs), whatever the caller
    /// planned from an earlier read of the patch.
    pub fn applied_as(&mut self, update: &Update, entry: &Value) -> Result<(), DeviceError> {
        self.log(entry)?;
        let mut s = self.state.clone();
        let begun = s.in_progress.take();
        let attempts = match begun {
            Some(b) if b.patch == update.patch => b.attempts,
            _ => 1,
        };
        s.pending = Some(Update {
            attempts,
            ..update.clone()
        });
        self.save(s)
    }

    /// The new firmware booted: make its version current, raise the security
    /// counter to its counter, remember it as installed. Returns the update.
    pub fn confirm(&mut self, now: u64) -> Result<Update, DeviceError> {
        let p = self
            .state
            .pending
            .clone()
            .ok_or(DeviceError::NothingPending)?;
        self.log(&json!({
            "time": now, "event": "confirmed", "patch": p.patch,
            "old_version": self.state.version, "new_version": p.version,
            "security_counter": p.counter,
        }))?;
        let mut s = self.state.clone();
        s.version = p.version.clone();
        s.counter = s.counter.max(p.counter);
        if let Some(m) = parse_hash(&p.patch) {
            s.installed.push(m);
            let excess = s.installed.len().saturating_sub(MAX_INSTALLED);
            s.installed.drain(..excess);
        }
        s.pending = None;
        self.save(s)?;
        Ok(p)
    }

    /// The new firmware did not boot and the device went back: forget the
    /// pending update without raising anything.
    pub fn rollback(&mut self, now: u64) -> Result<Update, DeviceError> {
        let p = self
            .state
            .pending
            .clone()
            .ok_or(DeviceError::NothingPending)?;
        self.log(&json!({
            "time": now, "event": "rolled-back", "patch": p.patch,
            "version": self.state.version, "abandoned_version": p.version,
        }))?;
        let mut s = self.state.clone();
        s.pending = None;
        self.save(s)?;
        Ok(p)
    }

    /// Accept a key rotation statement: it must be signed by the new key
    /// itself and by at least the threshold of keys trusted now; then the
    /// new key is trusted and the retired ones are not (never below the
    /// threshold). Returns the new key's id.
    pub fn add_trust(&mut self, statement: &[u8], now: u64) -> Result<KeyId, DeviceError> {
        let rot = KeyRotation::decode(statement)
            .map_err(|_| DeviceError::Rotation("the statement is malformed"))?;
        let message = rot.message();
        let new_id = KeyId::of(&rot.new_key);
        let verifies = |key: &[u8; 32]| {
            let id = KeyId::of(key);
            rot.signatures
                .iter()
                .any(|s| s.key_id == id && signature::verify(key, &message, &s.signature))
        };
        if !verifies(&rot.new_key) {
            return Err(DeviceError::Rotation(
                "the new key did not sign it (proof that its holder agreed)",
            ));
        }
        let trusted = self
            .state
            .keys
            .iter()
            .filter(|k| **k != rot.new_key && verifies(k))
            .count();
        if trusted < self.state.threshold {
            return Err(DeviceError::Rotation(
                "not signed by enough keys this device trusts",
            ));
        }
        if self.state.keys.contains(&rot.new_key) {
            return Err(DeviceError::Rotation("the new key is already trusted"));
        }
        if self.state.retired.contains(&new_id) || rot.retire.contains(&new_id) {
            // An old statement replayed (its signers may still be trusted):
            // revocation is for good.
            return Err(DeviceError::Rotation(
                "the new key was retired on this device and is never trusted again",
            ));
        }
        let mut s = self.state.clone();
        s.keys.retain(|k| !rot.retire.contains(&KeyId::of(k)));
        s.keys.push(rot.new_key);
        for id in &rot.retire {
            if !s.retired.contains(id) {
                s.retired.push(*id);
            }
        }
        if s.retired.len() > MAX_RETIRED_KEYS {
            return Err(DeviceError::Rotation(
                "the device's list of retired keys is full",
            ));
        }
        if s.keys.len() < s.threshold || s.keys.len() > 4 * MAX_SIGNATURES {
            return Err(DeviceError::Rotation(
                "the trust store would hold fewer keys than the threshold, or too many",
            ));
        }
        self.log(&json!({
            "time": now, "event": "trust-added", "key_id": new_id.to_string(),
            "retired": rot.retire.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        }))?;
        self.save(s)?;
        Ok(new_id)
    }
}

/// 64 hex digits as 32 bytes.
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    fwdelta_format::key_file::parse_tagged(format!("x {hex}").as_bytes(), "x")
}

trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl Mode0700 for fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        use std::os::unix::fs::DirBuilderExt;
        self.mode(0o700)
    }
}
