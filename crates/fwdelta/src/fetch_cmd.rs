//! `fwdelta fetch`: the terminal as an update client. Reads the release
//! manifest from a server, verifies its signature, picks the patch for the
//! old image (or the full image), and streams the patch over HTTP(S)
//! straight into the push-mode applier: the patch is never stored, only the
//! applier's checkpoint and the new-image bytes since it
//! (`.NAME.fwdelta-partial`, `.NAME.fwdelta-resume` beside the output).
//!
//! A cut, a stall past `--stall-timeout` or an unreachable server is retried
//! with exponential backoff, resuming with `Range: bytes=N-` from the byte
//! after the last one fed (in the same run) or from the last checkpoint's
//! patch offset (a later run, after a kill or power loss), within `--retries`
//! tries without progress and `--deadline` in all. Every run that fails is
//! recorded in the device's history; after `--delta-tries` failed runs of a
//! delta the full image is fetched instead.

use crate::exit_code;
use anyhow::{Context, Result};
use clap::Args;
use fwdelta_apply::{
    Applier, ApplyError, ApplyOptions, FileImage, ResumableFile, SideFileError, TargetLock,
    TrustPolicy,
};
use fwdelta_device::manifest::{self, Manifest, ManifestError, PatchFile, Pick};
use fwdelta_device::DeviceDir;
use fwdelta_fetch::url::Url;
use fwdelta_fetch::{Client, ClientOptions, FetchError, Misbehaviour, Response};
use fwdelta_format::key_file::hex;
use serde_json::{json, Value};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `fwdelta fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// The release manifest's URL (`https://.../manifest.json`; `http://`
    /// only with --allow-http). Its signature is read from `manifest.sig`
    /// beside it, the patches from the same directory.
    pub url: String,
    /// The current image (never modified).
    pub old: PathBuf,
    /// Where to write the new image (replaced only after it verified).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The device state: trusted keys, policy, pinned server authority
    /// and history.
    #[arg(long, required_unless_present = "trust")]
    pub device: Option<PathBuf>,
    /// Without a device: trust manifests and patches signed by this public
    /// key (repeatable).
    #[arg(long, conflicts_with = "device")]
    pub trust: Vec<PathBuf>,
    /// Without a device: the server's TLS authority (PEM) to pin.
    #[arg(long, conflicts_with = "device")]
    pub ca: Option<PathBuf>,
    /// Allow plain `http://` (no TLS) for the manifest and patches.
    #[arg(long)]
    pub allow_http: bool,
    /// Follow redirects to another host than the manifest's.
    #[arg(long)]
    pub allow_other_hosts: bool,
    /// Seconds a read may wait for data before the connection counts as
    /// stalled (and is retried).
    #[arg(long, default_value_t = 30)]
    pub stall_timeout: u64,
    /// Seconds the whole fetch may take, retries included.
    #[arg(long, default_value_t = 3600)]
    pub deadline: u64,
    /// Failed connections in a row (without a byte of progress between
    /// them) before giving up.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
    /// First wait before a retry, in milliseconds; doubles on each failure
    /// in a row, up to 30 s.
    #[arg(long, default_value_t = 500)]
    pub retry_delay_ms: u64,
    /// Failed runs of a delta (recorded in the device history) after which
    /// the full image is fetched instead.
    #[arg(long, default_value_t = 3)]
    pub delta_tries: u32,
    /// Fetch the full image even when there is a delta.
    #[arg(long)]
    pub full_image: bool,
    /// Refuse patches that need more applier memory than this.
    #[arg(long, default_value = "64MiB", value_parser = crate::size::parse_size)]
    pub memory_limit: u64,
    /// Refuse patches that produce a larger image than this.
    #[arg(long, value_parser = crate::size::parse_size)]
    pub max_size: Option<u64>,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary on stdout (bytes downloaded, resumes, ...).
    #[arg(long)]
    pub json: bool,
    /// The time (Unix seconds) to check expiry against instead of the clock's.
    #[arg(long, hide = true)]
    pub now: Option<u64>,
}

/// Largest `manifest.sig` read (one line per key).
const MAX_SIGNATURE_FILE_LEN: u64 = 64 << 10;

/// What a fetch did (for the summary, the JSON and the history).
#[derive(Debug, Default, Clone)]
struct Tally {
    /// Bytes read from the network, heads and TLS records included.
    downloaded: u64,
    /// Connections that broke (or stalled) and were resumed.
    resumes: u32,
    /// Downloads started over (the server's file changed under us).
    restarts: u32,
    /// Patch offset this run continued from (0: from the start).
    resumed_from: u64,
    /// Patch bytes skipped because a server ignored `Range`.
    skipped: u64,
    /// Whether the whole patch's BLAKE3 was checked against the manifest
    /// (not on a run that resumed a checkpoint: the earlier bytes were
    /// checked by the patch's own segment checks, not hashed here).
    patch_hash_checked: bool,
}

/// The patch being fetched.
#[derive(Debug, Clone)]
struct Chosen {
    file: PatchFile,
    full: bool,
    url: Url,
    /// The old image the patch must be made for (its length and BLAKE3):
    /// the terminal's for a delta, the empty image for the full one.
    made_for: (u64, [u8; 32]),
}

/// `fwdelta fetch`.
pub fn cmd_fetch(a: &FetchArgs) -> Result<()> {
    let start = Instant::now();
    let now = a.now.unwrap_or_else(fwdelta_device::unix_now);
    if let Some(dir) = &a.device {
        crate::refuse_output_in_device(&a.output, dir)?;
    }
    crate::refuse_overwrite(&a.output, &[&a.old])?;
    let mut dev = match &a.device {
        Some(dir) => Some(
            DeviceDir::open(dir)
                .with_context(|| format!("cannot use device state {}", dir.display()))?,
        ),
        None => None,
    };
    let base = json!({
        "time": now, "mode": "fetch", "url": a.url,
        "old_version": dev.as_ref().map(|d| d.state().version.clone()),
    });
    let try_no = dev.as_ref().map_or(Ok(1), trailing_failures)? + 1;
    let mut entry = base;
    entry["try"] = try_no.into();
    let mut tally = Tally::default();
    let client = match client(a, dev.as_ref()) {
        Ok(c) => c,
        Err(e) => return Err(record_failure(dev.as_ref(), &mut entry, &tally, e)),
    };
    let result = fetch(a, &client, dev.as_mut(), now, &mut entry, &mut tally, start);
    tally.downloaded = client.downloaded();
    match result {
        Ok(report) => {
            entry["event"] = "applied".into();
            add_tally(&mut entry, &tally);
            entry["bytes_read"] = report.patch_len.into();
            entry["bytes_written"] = report.header.new_len.into();
            entry["duration_ms"] = (start.elapsed().as_millis() as u64).into();
            if let Some(dev) = dev.as_mut() {
                dev.applied(&entry).with_context(|| {
                    "the image is applied but the device state could not record it"
                })?;
            }
            report_success(a, &entry, &report, start);
            Ok(())
        }
        Err(e) => Err(record_failure(dev.as_ref(), &mut entry, &tally, e)),
    }
}

fn add_tally(entry: &mut Value, t: &Tally) {
    entry["bytes_downloaded"] = t.downloaded.into();
    entry["resumes"] = t.resumes.into();
    entry["restarts"] = t.restarts.into();
    entry["resumed_from"] = t.resumed_from.into();
    entry["skipped"] = t.skipped.into();
    entry["patch_blake3_checked"] = t.patch_hash_checked.into();
}

/// Record a failed run in the history (event `refused` for a patch or
/// manifest refused by policy or checks, `fetch-failed` for network and
/// server failures) and return the error.
fn record_failure(
    dev: Option<&DeviceDir>,
    entry: &mut Value,
    t: &Tally,
    e: anyhow::Error,
) -> anyhow::Error {
    let Some(dev) = dev else { return e };
    let code = exit_code(&e);
    entry["event"] = match code {
        crate::exit::NETWORK | crate::exit::SERVER | crate::exit::CHANNEL => "fetch-failed",
        _ => "refused",
    }
    .into();
    add_tally(entry, t);
    entry["reason"] = format!("{e:#}").into();
    entry["exit_code"] = code.into();
    match dev.refused(entry) {
        Ok(()) => e,
        Err(log) => e.context(format!("and the failure could not be recorded: {log}")),
    }
}

/// Failed fetch runs since the last applied or confirmed update (any
/// patch): the number of this run's try is one more.
fn trailing_failures(dev: &DeviceDir) -> Result<u32> {
    let h = dev.history()?;
    Ok(h.entries
        .iter()
        .rev()
        .take_while(|e| !matches!(e["event"].as_str(), Some("applied" | "confirmed")))
        .filter(|e| e["mode"] == "fetch")
        .count() as u32)
}

/// Failed fetch runs of the patch with BLAKE3 `blake3` since the last
/// applied or confirmed update.
fn failed_runs_of(dev: &DeviceDir, blake3: &str) -> Result<u32> {
    let h = dev.history()?;
    Ok(h.entries
        .iter()
        .rev()
        .take_while(|e| !matches!(e["event"].as_str(), Some("applied" | "confirmed")))
        .filter(|e| e["mode"] == "fetch" && e["patch_blake3"] == blake3)
        .count() as u32)
}

/// The HTTP client: TLS pinned to the device's (or `--ca`'s) authority.
fn client(a: &FetchArgs, dev: Option<&DeviceDir>) -> Result<Client> {
    let pem = match (dev, &a.ca) {
        (Some(d), _) => d.server_ca()?,
        (None, Some(p)) => {
            Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
        }
        (None, None) => None,
    };
    let mut opts = ClientOptions::default();
    if let Some(pem) = pem {
        let certs = parse_pem_certificates(&pem)?;
        opts.tls =
            Some(fwdelta_fetch::pinned_tls(&certs).context("cannot use the pinned authority")?);
    }
    opts.allow_plain_http = a.allow_http;
    opts.allow_other_hosts = a.allow_other_hosts;
    opts.stall_timeout = Duration::from_secs(a.stall_timeout.max(1));
    opts.connect_timeout = Duration::from_secs(a.stall_timeout.clamp(1, 30));
    Ok(Client::new(opts))
}

/// The certificates in PEM text (at least one).
pub fn parse_pem_certificates(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("not a PEM certificate file: {e}"))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the PEM text");
    Ok(certs)
}

/// Retries with exponential backoff within a total deadline.
struct Retry {
    failures: u32,
    max: u32,
    first: Duration,
    deadline: Instant,
}

impl Retry {
    /// A try failed with `e`: wait and return `Ok` to try again, or the
    /// error when the tries or the time are used up (or it cannot help).
    fn failed(&mut self, e: FetchError, quiet: bool) -> Result<()> {
        if !e.is_retryable() {
            return Err(e.into());
        }
        self.failures += 1;
        let wait = self
            .first
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(Duration::from_secs(30));
        if self.failures > self.max {
            return Err(anyhow::Error::new(e)
                .context(format!("giving up after {} tries in a row", self.failures)));
        }
        if Instant::now() + wait > self.deadline {
            return Err(anyhow::Error::new(e).context("giving up: the deadline is reached"));
        }
        if !quiet {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprint!("\r\x1b[K"); // over a progress line
            }
            eprintln!(
                "fwdelta: {}; retrying in {:.1}s",
                crate::one_line(&e.to_string()),
                wait.as_secs_f64()
            );
        }
        std::thread::sleep(wait);
        Ok(())
    }

    /// Bytes arrived: the next failure is the first in a row.
    fn progress(&mut self) {
        self.failures = 0;
    }

    fn check_deadline(&self) -> Result<()> {
        anyhow::ensure!(Instant::now() < self.deadline, FetchFailed::Deadline);
        Ok(())
    }
}

/// A one-line progress display, redrawn at most five times a second, only
/// when stderr is a terminal (and neither `-q` nor `--json` was given).
struct Progress<'n> {
    on: bool,
    name: &'n str,
    last: Option<Instant>,
}

impl<'n> Progress<'n> {
    fn new(a: &FetchArgs, name: &'n str) -> Progress<'n> {
        Progress {
            on: !a.quiet && !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            name,
            last: None,
        }
    }

    fn show(&mut self, done: u64, total: u64, resumes: u32) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        let pct = 100.0 * done as f64 / total.max(1) as f64;
        eprint!(
            "\r\x1b[K{}: {done} of {total} bytes ({pct:.0}%), {resumes} resumes",
            crate::one_line(self.name)
        );
    }

    fn clear(&self) {
        if self.on && self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

/// The fetch ran out of time.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailed {
    /// The deadline passed while data was still arriving.
    #[error("giving up: the deadline is reached")]
    Deadline,
}

/// GET a small file whole (the manifest, its signature), with retries.
/// Returns its bytes and the URL that answered (after redirects).
fn get_small(
    client: &Client,
    url: &Url,
    cap: u64,
    retry: &mut Retry,
    quiet: bool,
) -> Result<(Vec<u8>, Url)> {
    loop {
        let got = client.get(url, None).and_then(|r| {
            r.expect(None, r.announced())?;
            let at = r.url.clone();
            Ok((r.read_all(cap)?, at))
        });
        match got {
            Ok(b) => {
                retry.progress();
                return Ok(b);
            }
            Err(e) => retry.failed(e, quiet)?,
        }
    }
}

fn fetch(
    a: &FetchArgs,
    client: &Client,
    mut dev: Option<&mut DeviceDir>,
    now: u64,
    entry: &mut Value,
    tally: &mut Tally,
    start: Instant,
) -> Result<fwdelta_apply::ApplyReport> {
    let url = Url::parse(&a.url)?;
    let mut retry = Retry {
        failures: 0,
        max: a.retries,
        first: Duration::from_millis(a.retry_delay_ms),
        deadline: start + Duration::from_secs(a.deadline),
    };
    // 1. The manifest and its signature.
    let (keys, threshold) = match dev.as_deref() {
        Some(d) => (d.state().keys.clone(), d.state().threshold),
        None => (crate::release_cmd::trust_keys(&a.trust)?, 1),
    };
    let ctx = || format!("refusing manifest {url}");
    let (bytes, url) = match get_small(
        client,
        &url,
        manifest::MAX_MANIFEST_LEN,
        &mut retry,
        a.quiet,
    ) {
        Err(e) if is_too_large(&e) => {
            return Err(ManifestError::Malformed(format!(
                "over the {} byte cap",
                manifest::MAX_MANIFEST_LEN
            )))
            .with_context(ctx)
        }
        r => r?,
    };
    let sig_url = url.join(&signature_name(&url));
    let sig = match get_small(
        client,
        &sig_url,
        MAX_SIGNATURE_FILE_LEN,
        &mut retry,
        a.quiet,
    ) {
        Ok((s, _)) => s,
        Err(e) if is_status(&e, &[403, 404, 410]) => {
            return Err(ManifestError::Unsigned(sig_url.to_string())).with_context(ctx)
        }
        Err(e) if is_too_large(&e) => {
            return Err(ManifestError::BadSignatureFile(
                "over the signature file cap",
            ))
            .with_context(ctx)
        }
        Err(e) => return Err(e),
    };
    manifest::verify(&bytes, &sig, &keys, threshold).with_context(ctx)?;
    let m = Manifest::parse(&bytes).with_context(ctx)?;

    // 2. The patch for the old image.
    let old_hash = {
        let mut h = blake3::Hasher::new();
        let f = std::fs::File::open(&a.old)
            .with_context(|| format!("cannot open old image {}", a.old.display()))?;
        h.update_reader(f)
            .with_context(|| format!("cannot read old image {}", a.old.display()))?;
        *h.finalize().as_bytes()
    };
    let chosen = choose(a, &m, &old_hash, &url, dev.as_deref())?;
    entry["patch_file"] = chosen.file.file.clone().into();
    entry["patch_blake3"] = hex(&chosen.file.blake3).into();
    entry["patch_bytes"] = chosen.file.bytes.into();
    entry["full_image"] = chosen.full.into();
    entry["new_version"] = m.version.clone().into();

    // 3. Stream it into the applier.
    let mut opts = ApplyOptions::default()
        .with_memory_limit(a.memory_limit)
        .with_max_new_len(a.max_size.unwrap_or(fwdelta_format::MAX_IMAGE_LEN))
        .with_expected_new_image(Some(m.new_blake3));
    let policy = Arc::new(match dev.as_deref() {
        Some(d) => d.policy(now),
        None => {
            let mut p = TrustPolicy::trusting(keys.clone());
            p.now = Some(now);
            p
        }
    });
    opts.policy = Some(policy.clone());
    let old = if chosen.full {
        let dir = a
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        tempfile::tempfile_in(dir).and_then(FileImage::from_file)
    } else {
        FileImage::open(&a.old)
    }
    .with_context(|| format!("cannot open old image {}", a.old.display()))?;
    for side in ResumableFile::side_paths(&a.output)
        .with_context(|| format!("cannot name the files beside {}", a.output.display()))?
    {
        crate::refuse_side_file_is_input(&side, &[&a.old])?;
    }
    let lock = TargetLock::acquire(&a.output)?;
    let mut restarts = 0;
    loop {
        let r = stream(
            a,
            client,
            &chosen,
            &m,
            &old,
            &lock,
            opts.clone(),
            &policy,
            &mut dev,
            entry,
            tally,
            &mut retry,
        );
        match r {
            Err(e)
                if restarts < MAX_RESTARTS
                    && matches!(
                        e.downcast_ref::<FetchError>(),
                        Some(FetchError::Changed { .. })
                    ) =>
            {
                restarts += 1;
                tally.restarts = restarts;
                eprintln!(
                    "fwdelta: {}; starting over",
                    crate::one_line(&e.to_string())
                );
            }
            r => return r,
        }
    }
}

/// Downloads started over in one run because the file changed on the server.
const MAX_RESTARTS: u32 = 2;

fn is_status(e: &anyhow::Error, codes: &[u16]) -> bool {
    matches!(e.downcast_ref::<FetchError>(), Some(FetchError::Status { status, .. }) if codes.contains(status))
}

fn is_too_large(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<FetchError>(),
        Some(FetchError::Misbehaved {
            what: Misbehaviour::TooLarge { .. },
            ..
        })
    )
}

/// `manifest.json` → `manifest.sig` (the last path segment's extension
/// replaced, as `apply --manifest` finds the file beside it).
fn signature_name(url: &Url) -> String {
    let path = url.path.split('?').next().unwrap_or("");
    let name = path.rsplit('/').next().unwrap_or("");
    Path::new(name)
        .with_extension("sig")
        .to_string_lossy()
        .into_owned()
}

fn choose(
    a: &FetchArgs,
    m: &Manifest,
    old_hash: &[u8; 32],
    url: &Url,
    dev: Option<&DeviceDir>,
) -> Result<Chosen> {
    let short = &hex(old_hash)[..16];
    let full = |why: &str| -> Result<Chosen> {
        let f = m.full_image.clone().ok_or_else(|| {
            ManifestError::NoEntry(format!("{} (BLAKE3 {short}...)", a.old.display()))
        })?;
        eprintln!("fwdelta: {why}; fetching the full image {}", f.file);
        Ok(Chosen {
            url: url.join(&f.file),
            file: f,
            full: true,
            made_for: (0, *blake3::hash(b"").as_bytes()),
        })
    };
    match m.pick(old_hash) {
        Pick::Delta(e, p) => {
            if a.full_image {
                return full("--full-image given");
            }
            let failed = match dev {
                Some(d) => failed_runs_of(d, &hex(&p.blake3))?,
                None => 0,
            };
            if failed >= a.delta_tries && m.full_image.is_some() {
                return full(&format!(
                    "the delta {} failed {failed} times (--delta-tries {})",
                    p.file, a.delta_tries
                ));
            }
            if !a.quiet {
                eprintln!(
                    "fwdelta: manifest: {} is version {}; fetching {} ({} bytes)",
                    a.old.display(),
                    e.version,
                    p.file,
                    p.bytes
                );
            }
            Ok(Chosen {
                url: url.join(&p.file),
                file: p.clone(),
                full: false,
                made_for: (e.len, *old_hash),
            })
        }
        Pick::FullOverShare(e, _) => full(&format!(
            "version {}'s delta was left out as too large",
            e.version
        )),
        Pick::FullNoEntry(_) => full(&format!(
            "the manifest has no entry for {} (BLAKE3 {short}...)",
            a.old.display()
        )),
        Pick::Nothing => {
            Err(ManifestError::NoEntry(format!("{} (BLAKE3 {short}...)", a.old.display())).into())
        }
    }
}

/// Reads a response body, keeping the bytes it hands out (the patch's
/// start) and the network error that ended it, if one did.
struct Recorder<'r> {
    resp: &'r mut Response,
    seen: Vec<u8>,
    error: Option<FetchError>,
}

impl Read for Recorder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.resp.read_body(buf) {
            Ok(n) => {
                self.seen.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                self.error = Some(e);
                Err(io::Error::other("network"))
            }
        }
    }
}

/// The patch's start as read from a response.
struct Start {
    header: fwdelta_format::Header,
    /// The header's bytes (what the signatures sign, with the section).
    header_bytes: Vec<u8>,
    /// Header and signature section bytes, as `Applier::resume` wants them.
    start_bytes: Vec<u8>,
    section: Option<fwdelta_format::signature::SignatureSection>,
    /// The bytes read (the first `body_start` of the patch).
    seen: Vec<u8>,
}

/// Read the patch's header and signature section from `resp`: a network
/// error is returned as such (retry); anything else means the patch is bad.
fn read_start(resp: &mut Response) -> Result<std::result::Result<Start, FetchError>> {
    let mut r = Recorder {
        resp,
        seen: Vec::new(),
        error: None,
    };
    match fwdelta_apply::inspect::read_patch_start(&mut r) {
        Ok((header, header_bytes, section, _)) => {
            let mut start_bytes = header_bytes.clone();
            if let Some(s) = &section {
                start_bytes.extend_from_slice(&s.encode());
            }
            Ok(Ok(Start {
                header,
                header_bytes,
                start_bytes,
                section,
                seen: r.seen,
            }))
        }
        Err(_) if r.error.is_some() => {
            Ok(Err(r.error.take().unwrap_or_else(|| FetchError::BadUrl {
                url: String::new(),
                why: "unreachable",
            })))
        }
        Err(e) => Err(anyhow::Error::new(e).context("refusing the patch")),
    }
}

/// A patch request: GET from `from`, check the answer is the manifest's
/// file at that offset, and skip what a server that ignored `Range` resent.
fn open_at(
    client: &Client,
    c: &Chosen,
    from: u64,
    etag: &mut Option<String>,
    tally: &mut Tally,
) -> std::result::Result<Response, FetchError> {
    let ask = (from > 0).then_some(from);
    let mut resp = client.get(&c.url, ask)?;
    let mut skip = resp.expect(ask, c.file.bytes)?;
    match (&*etag, &resp.head.etag) {
        (Some(was), Some(now)) if was != now => {
            return Err(FetchError::Changed {
                url: c.url.to_string(),
                was: was.clone(),
                now: now.clone(),
            })
        }
        (None, Some(now)) => *etag = Some(now.clone()),
        _ => {}
    }
    tally.skipped += skip;
    let mut buf = vec![0u8; 16 << 10];
    while skip > 0 {
        let n = (skip.min(buf.len() as u64)) as usize;
        let got = resp.read_body(&mut buf[..n])?;
        skip -= got as u64;
    }
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
fn stream(
    a: &FetchArgs,
    client: &Client,
    c: &Chosen,
    m: &Manifest,
    old: &FileImage,
    lock: &TargetLock,
    opts: ApplyOptions,
    policy: &TrustPolicy,
    dev: &mut Option<&mut DeviceDir>,
    entry: &mut Value,
    tally: &mut Tally,
    retry: &mut Retry,
) -> Result<fwdelta_apply::ApplyReport> {
    let total = c.file.bytes;
    let mut etag = None;
    let checkpoint = ResumableFile::load_checkpoint(lock)?;
    // The patch's start, from a request for the whole patch: a fresh run
    // reads on; a run that resumes a checkpoint closes it after the
    // header and asks for the rest from the checkpoint.
    let (start, resp) = loop {
        let got = client.get(&c.url, None).and_then(|r| {
            r.expect(None, total)?;
            if let Some(t) = &r.head.etag {
                etag = Some(t.clone());
            }
            Ok(r)
        });
        let mut r = match got {
            Ok(r) => r,
            Err(e) => {
                retry.failed(e, a.quiet)?;
                continue;
            }
        };
        match read_start(&mut r)? {
            Ok(s) => break (s, r),
            Err(e) => retry.failed(e, a.quiet)?,
        }
    };
    retry.progress();
    // Refused before a byte of the image is written: another release's
    // patch, or one the policy refuses.
    let header = &start.header;
    if header.new_hash != m.new_blake3 {
        return Err(ManifestError::WrongNewImage {
            file: c.file.file.clone(),
            expected: hex(&m.new_blake3),
            actual: hex(&header.new_hash),
        }
        .into());
    }
    // A patch to the right image from another old image is a server's
    // fault, not the terminal's image's: it is not the patch the manifest
    // names for this old image.
    let (old_len, old_hash) = c.made_for;
    let old_check = fwdelta_format::truncate_check(&blake3::Hash::from(old_hash));
    if header.old_len != old_len || header.old_check != old_check {
        return Err(ManifestError::WrongOldImage {
            file: c.file.file.clone(),
            expected: hex(&old_check),
            actual: hex(&header.old_check),
        }
        .into());
    }
    let verdict = policy
        .check(header, &start.header_bytes, start.section.as_ref())
        .with_context(|| format!("refusing {}", c.file.file))?;
    entry["key_ids"] = verdict
        .signed_by
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .into();
    if let Some(d) = dev.as_deref_mut() {
        let update = crate::device_cmd::update_of(header, &verdict)?;
        d.begin(&update)?;
        entry["patch"] = update.patch.into();
        entry["security_counter"] = update.counter.into();
    }

    // Continue a checkpoint of this patch, or start afresh.
    let mut resumed = None;
    if let Some(cp) = &checkpoint {
        match ResumableFile::reopen(lock, cp) {
            Ok((sink, produced)) => {
                match Applier::resume(old, sink, opts.clone(), &start.start_bytes, cp, produced) {
                    Ok(ap) => resumed = Some((ap, cp.patch_offset)),
                    Err(ApplyError::PartialOutputDamaged { .. })
                    | Err(ApplyError::Format(fwdelta_format::FormatError::BadField {
                        field: "checkpoint",
                        ..
                    })) => {
                        eprintln!("fwdelta: starting over: the kept partial output or checkpoint does not fit this patch");
                    }
                    Err(e) => return Err(e).context("cannot resume"),
                }
            }
            Err(e @ SideFileError::Io { .. }) => {
                eprintln!("fwdelta: starting over: cannot reuse the partial output ({e})");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let kept = resumed.as_ref().map_or(0, |(ap, _)| ap.produced());
    if header.new_len <= opts.max_new_len {
        fwdelta_apply::side_file::ensure_free_space(
            &a.output,
            header.new_len.saturating_sub(kept),
        )?;
    }
    let (mut applier, mut offset, mut hasher) = match resumed {
        Some((ap, at)) => {
            tally.resumed_from = at;
            if !a.quiet {
                eprintln!("fwdelta: resuming {} at byte {at} of {total}", c.file.file);
            }
            (ap, at, None)
        }
        None => {
            let sink = ResumableFile::create(lock)?;
            if let (Some(f), Ok(meta)) = (sink.file(), std::fs::metadata(&a.old)) {
                if meta.is_file() {
                    f.set_permissions(meta.permissions()).with_context(|| {
                        format!("cannot set permissions beside {}", a.output.display())
                    })?;
                }
            }
            let mut ap = Applier::new(old, sink, opts.clone());
            ap.feed(&start.seen)
                .with_context(|| format!("cannot apply {}", c.file.file))?;
            let mut h = blake3::Hasher::new();
            h.update(&start.seen);
            (ap, start.seen.len() as u64, Some(h))
        }
    };
    // A resumed run continues on a new connection from its checkpoint.
    let mut current = match tally.resumed_from {
        0 => Some(resp),
        _ => {
            drop(resp);
            None
        }
    };
    let mut buf = vec![0u8; 16 << 10];
    let mut progress = Progress::new(a, &c.file.file);
    let outcome: Result<()> = (|| {
        loop {
            retry.check_deadline()?;
            if offset == total && current.is_none() {
                // Resumed from a checkpoint at the patch's end: nothing to ask.
                return Ok(());
            }
            let r = match current.as_mut() {
                Some(r) => r,
                None => match open_at(client, c, offset, &mut etag, tally) {
                    Ok(r) => current.insert(r),
                    Err(e) => {
                        retry.failed(e, a.quiet)?;
                        continue;
                    }
                },
            };
            if offset == total {
                // Nothing may follow the announced bytes.
                r.read_body(&mut buf[..1])?;
                return Ok(());
            }
            match r.read_body(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    applier
                        .feed(&buf[..n])
                        .with_context(|| format!("cannot apply {}", c.file.file))?;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&buf[..n]);
                    }
                    offset += n as u64;
                    retry.progress();
                    progress.show(offset, total, tally.resumes);
                }
                Err(e) => {
                    current = None;
                    tally.resumes += 1;
                    retry.failed(e, a.quiet)?;
                }
            }
        }
    })();
    progress.clear();
    drop(current);
    if let Err(e) = outcome {
        // A network failure keeps what is applied (to its last
        // checkpoint) for the next run; a refused patch or a server that
        // broke its word leaves nothing.
        let keep = e
            .downcast_ref::<FetchError>()
            .is_some_and(FetchError::is_retryable)
            || e.downcast_ref::<FetchFailed>().is_some();
        if keep {
            applier.into_sink().suspend();
        }
        return Err(e);
    }
    let (report, sink) = applier
        .finish()
        .with_context(|| format!("cannot apply {}", c.file.file))?;
    if let Some(h) = hasher {
        tally.patch_hash_checked = true;
        let got = *h.finalize().as_bytes();
        if got != c.file.blake3 {
            // `sink` is dropped: the partial file and checkpoint go.
            return Err(ManifestError::PatchMismatch {
                file: c.file.file.clone(),
                expected: hex(&c.file.blake3),
                actual: hex(&got),
            }
            .into());
        }
    }
    sink.commit()
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    Ok(report)
}

fn report_success(
    a: &FetchArgs,
    entry: &Value,
    report: &fwdelta_apply::ApplyReport,
    start: Instant,
) {
    if a.json {
        let mut v = entry.clone();
        v["seconds"] = start.elapsed().as_secs_f64().into();
        v["new_blake3"] = hex(&report.header.new_hash).into();
        println!("{v}");
    }
    if !a.quiet {
        eprintln!(
            "{}: {} bytes verified (BLAKE3 {}), {} bytes downloaded for a {}-byte patch, {} resumes, {:.2}s",
            a.output.display(),
            report.header.new_len,
            &hex(&report.header.new_hash)[..16],
            entry["bytes_downloaded"],
            entry["patch_bytes"],
            entry["resumes"],
            start.elapsed().as_secs_f64()
        );
        if let Some(dir) = &a.device {
            eprintln!(
                "  recorded in {}; run `fwdelta confirm --device {}` once it has booted",
                dir.display(),
                dir.display()
            );
        }
    }
}
