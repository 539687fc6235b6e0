//! `fwdelta keygen`, `sign`, `digest` and `trust rotate`: the release side of
//! signed updates.

use crate::write_atomically;
use anyhow::{Context, Result};
use clap::Args;
use ed25519_dalek::{Signer, SigningKey};
use fwdelta_diff::patch_signer::{self, SignError};
use fwdelta_format::key_file::{encode_public_key, hex, parse_public_key};
use fwdelta_format::key_rotation::KeyRotation;
use fwdelta_format::signature::{KeyId, SignatureEntry};
use fwdelta_format::Release;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The release statement options shared by `diff` and `sign`.
#[derive(Args, Clone, Default)]
pub struct ReleaseArgs {
    /// Product the patch is for (e.g. acme-t300): terminals of another
    /// product refuse it. Makes the patch a signed-form patch.
    #[arg(long, requires_all = ["version", "counter"])]
    pub product: Option<String>,
    /// Version the new image is, shown to people (e.g. 4.2.0).
    #[arg(long = "version", requires = "product")]
    pub version: Option<String>,
    /// Security counter of the new image (only grows): terminals refuse a
    /// patch whose counter is below theirs.
    #[arg(long, requires = "product")]
    pub counter: Option<u64>,
    /// Unix time after which terminals refuse the patch (default: never).
    #[arg(long, requires = "product")]
    pub expires: Option<u64>,
}

impl ReleaseArgs {
    /// The statement, if `--product` was given.
    pub fn release(&self) -> Option<Release> {
        Some(Release {
            product: self.product.clone()?,
            version: self.version.clone()?,
            security_counter: self.counter?,
            expires: self.expires.unwrap_or(0),
        })
    }
}

/// `fwdelta keygen`.
#[derive(Args)]
pub struct KeygenArgs {
    /// Writes NAME.key (secret, mode 0600) and NAME.pub; neither may exist.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `fwdelta sign`.
#[derive(Args)]
pub struct SignArgs {
    /// The patch (rewritten whole, unless -o is given).
    pub patch: PathBuf,
    /// Sign with this secret key file (repeat for more signers).
    #[arg(long = "key")]
    pub keys: Vec<PathBuf>,
    /// Attach a signature made elsewhere (64 bytes, raw or as 128 hex
    /// digits) over the bytes `fwdelta digest` printed; needs --public.
    #[arg(long, requires = "public", conflicts_with = "keys")]
    pub signature: Option<PathBuf>,
    /// The public key file of the --signature's signer (verified first).
    #[arg(long)]
    pub public: Option<PathBuf>,
    #[command(flatten)]
    pub release: ReleaseArgs,
    /// Write the signed patch here instead of over PATCH.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `fwdelta digest`.
#[derive(Args)]
pub struct DigestArgs {
    /// A signed-form patch (made with --product, or by `fwdelta sign` with
    /// a release statement and no key).
    pub patch: PathBuf,
    /// Write the 32 raw bytes to sign to this file instead of printing hex.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `fwdelta trust rotate`.
#[derive(Args)]
pub struct RotateArgs {
    /// The new key's secret key file (it signs the statement too).
    #[arg(long)]
    pub new_key: PathBuf,
    /// A currently trusted key's secret key file (repeat up to the
    /// devices' threshold).
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Public key file of a key devices should stop trusting (repeatable).
    #[arg(long)]
    pub retire: Vec<PathBuf>,
    /// Where to write the statement.
    #[arg(short, long)]
    pub output: PathBuf,
}

fn read_secret(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    patch_signer::parse_secret_key(&text).with_context(|| format!("{}", path.display()))
}

/// Read a public key file.
pub fn read_public(path: &Path) -> Result<[u8; 32]> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_public_key(&text)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("{}", path.display()))
}

/// Create `path` exclusively with `mode` holding `text`, synced.
fn create_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `fwdelta keygen -o NAME`.
pub fn cmd_keygen(a: &KeygenArgs) -> Result<()> {
    let key = patch_signer::generate_key()?;
    let (secret, public) = (
        with_suffix(&a.output, ".key"),
        with_suffix(&a.output, ".pub"),
    );
    anyhow::ensure!(
        !secret.exists() && !public.exists(),
        "{} or {} already exists; refusing to overwrite a key",
        secret.display(),
        public.display()
    );
    create_file(&secret, &patch_signer::encode_secret_key(&key), 0o600)?;
    let pk = key.verifying_key().to_bytes();
    if let Err(e) = create_file(&public, &encode_public_key(&pk), 0o644) {
        let _ = std::fs::remove_file(&secret);
        return Err(e);
    }
    if !a.quiet {
        eprintln!(
            "key {}: secret {} (keep it offline), public {}",
            KeyId::of(&pk),
            secret.display(),
            public.display()
        );
    }
    Ok(())
}

/// Sign `patch` (bytes) as `sign` would: bind to a release, then sign with
/// each key. Shared with `diff --sign`.
pub fn sign_bytes(patch: &[u8], release: Option<&Release>, keys: &[PathBuf]) -> Result<Vec<u8>> {
    let keys: Vec<SigningKey> = keys.iter().map(|k| read_secret(k)).collect::<Result<_>>()?;
    Ok(patch_signer::sign_for_release(patch, release, &keys)?)
}

/// `fwdelta sign PATCH`.
pub fn cmd_sign(a: &SignArgs) -> Result<()> {
    let patch = std::fs::read(&a.patch)
        .with_context(|| format!("cannot read patch {}", a.patch.display()))?;
    let release = a.release.release();
    let context = || format!("cannot sign {}", a.patch.display());
    let signed = match (&a.signature, &a.public) {
        (Some(sig), Some(public)) => {
            let pk = read_public(public)?;
            let sig = read_signature(sig)?;
            let prepared =
                patch_signer::signable(&patch, release.as_ref()).with_context(context)?;
            patch_signer::attach_signature(&prepared, &pk, &sig).with_context(context)?
        }
        _ => sign_bytes(&patch, release.as_ref(), &a.keys).with_context(context)?,
    };
    let out = a.output.as_deref().unwrap_or(&a.patch);
    write_atomically(out, &signed)?;
    if !a.quiet {
        let parts = fwdelta_format::patch_parts::split(&signed)?;
        let n = parts.section.as_ref().map_or(0, |s| s.signatures.len());
        eprintln!(
            "{}: {} bytes, {n} signature(s) ({} bytes more than unsigned)",
            out.display(),
            signed.len(),
            signed.len().saturating_sub(unsigned_len(&signed))
        );
    }
    Ok(())
}

/// Length the patch would have unsigned (for the size report).
pub fn unsigned_len(patch: &[u8]) -> usize {
    let Ok(parts) = fwdelta_format::patch_parts::split(patch) else {
        return patch.len();
    };
    let mut h = parts.header.clone();
    if h.release.is_none() {
        return patch.len();
    }
    h.flags &= !fwdelta_format::header::FLAG_SIGNED;
    h.release = None;
    patch_signer::rebase_memory_claim(&parts.header, &mut h);
    fwdelta_format::patch_parts::reassemble(&h, &parts.segments, &[]).len()
}

/// A signature file: 64 raw bytes, or 128 hex digits (and a newline).
fn read_signature(path: &Path) -> Result<[u8; 64]> {
    let b = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(raw) = <[u8; 64]>::try_from(&b[..]) {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&b);
    let t = text.trim();
    let mut out = [0u8; 64];
    anyhow::ensure!(
        t.len() == 128 && t.is_ascii(),
        "{}: a signature is 64 raw bytes or 128 hex digits",
        path.display()
    );
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
            .with_context(|| format!("{}: not hex", path.display()))?;
    }
    Ok(out)
}

/// `fwdelta digest PATCH`.
pub fn cmd_digest(a: &DigestArgs) -> Result<()> {
    let patch = std::fs::read(&a.patch)
        .with_context(|| format!("cannot read patch {}", a.patch.display()))?;
    let message = patch_signer::signing_message(&patch).map_err(|e| match e {
        SignError::NotSigned => anyhow::anyhow!(
            "{} is not in signed form: make it with --product/--version/--counter, or run \
             `fwdelta sign PATCH --product ... --version ... --counter ...` without a key",
            a.patch.display()
        ),
        e => anyhow::Error::new(e),
    })?;
    match &a.output {
        Some(out) => write_atomically(out, &message)?,
        None => println!("{}", hex(&message)),
    }
    Ok(())
}

/// `fwdelta trust rotate`.
pub fn cmd_rotate(a: &RotateArgs) -> Result<()> {
    let new_key = read_secret(&a.new_key)?;
    let retire = a
        .retire
        .iter()
        .map(|p| read_public(p).map(|k| KeyId::of(&k)))
        .collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(retire.len() <= 8, "at most 8 keys can be retired at once");
    let mut rot = KeyRotation {
        new_key: new_key.verifying_key().to_bytes(),
        retire,
        signatures: Vec::new(),
    };
    let message = rot.message();
    let mut signers = vec![new_key];
    for k in &a.keys {
        signers.push(read_secret(k)?);
    }
    anyhow::ensure!(signers.len() <= 8, "at most 8 signatures");
    for k in &signers {
        rot.signatures.push(SignatureEntry {
            key_id: KeyId::of(k.verifying_key().as_bytes()),
            signature: k.sign(&message).to_bytes(),
        });
    }
    write_atomically(&a.output, &rot.encode())
}
