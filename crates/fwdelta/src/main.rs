//! `fwdelta`: make, apply, inspect and benchmark firmware delta patches.
//!
//! A thin layer over `fwdelta-diff` (generator) and `fwdelta-apply` (applier):
//! argument parsing, file handling, and mapping errors to exit codes.

mod bench;
mod device_cmd;
mod fetch_cmd;
mod input;
mod peak_memory;
mod release_cmd;
mod release_plan;
mod signing_cmd;
mod size;

#[global_allocator]
static ALLOCATOR: peak_memory::Counting = peak_memory::Counting;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fwdelta_apply::{
    Applier, ApplyError, ApplyOptions, AtomicFile, ErrorClass, FileImage, ResumableFile,
    SideFileError, TargetLock,
};
use fwdelta_diff::{CodeMode, DiffError, Options};
use fwdelta_format::reference_rewriter::Arch;
use fwdelta_format::{Codec, Layout};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Exit codes (also listed in the README).
mod exit {
    /// Any other failure: I/O, bad options, generator failure.
    pub const FAILURE: u8 = 1;
    // 2 is clap's usage error.
    /// The patch is malformed, corrupt, truncated or of an unsupported version.
    pub const BAD_PATCH: u8 = 3;
    /// The patch was made for another old image.
    pub const WRONG_OLD_IMAGE: u8 = 4;
    /// The patch exceeds the applier's memory or size limits.
    pub const LIMITS: u8 = 5;
    /// The patch needs a newer fwdelta (format version, flags, codec, layout).
    pub const UNSUPPORTED: u8 = 6;
    /// The patch is not signed by enough keys the device trusts (unsigned,
    /// damaged or forged signature, unknown signer).
    pub const NOT_AUTHENTIC: u8 = 7;
    /// The patch is for another product.
    pub const WRONG_PRODUCT: u8 = 8;
    /// The patch's security counter is below the device's (downgrade).
    pub const DOWNGRADE: u8 = 9;
    /// The patch has expired.
    pub const EXPIRED: u8 = 10;
    /// The patch was already installed (replay).
    pub const REPLAY: u8 = 11;
    /// The device state directory is unusable (missing, damaged, a link, not
    /// writable) or an applied update awaits confirmation.
    pub const DEVICE_STATE: u8 = 12;
    /// Another update of the same device, output or image is running.
    pub const BUSY: u8 = 13;
    /// An in-place update cannot be finished: the image is neither version.
    pub const UPDATE_LOST: u8 = 14;
    /// The output's filesystem has too little free space for the new image.
    pub const NO_SPACE: u8 = 15;
    /// `fetch`: the server could not be reached, or the download broke,
    /// stalled or ran out of time, after every retry.
    pub const NETWORK: u8 = 16;
    /// `fetch`: the server broke HTTP or its own word (a malformed head, a
    /// Content-Range that is not the range asked for, more bytes than
    /// announced, no length, a redirect loop, a redirect to another host).
    pub const SERVER: u8 = 17;
    /// `fetch`: the channel is not trusted (the TLS certificate does not
    /// chain to the pinned authority, plain HTTP not allowed, no pin).
    pub const CHANNEL: u8 = 18;
    /// The manifest is malformed (not JSON of the documented form) or over
    /// its size cap.
    pub const BAD_MANIFEST: u8 = 19;
}

#[derive(Parser)]
#[command(
    name = "fwdelta",
    version,
    about = "Small, safe delta patches for firmware images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a patch that turns OLD into NEW.
    #[command(after_help = "Examples:\n  \
        fwdelta diff v1.bin v2.bin -o v1-v2.fwd\n  \
        fwdelta diff --fast v1.bin v2.bin -o v1-v2.fwd          # several times faster, a little larger\n  \
        fwdelta diff v1.bin v2.bin -o v1-v2.fwd -q --json       # one JSON object on stdout\n  \
        fwdelta diff v1.bin v2.bin -o - | ssh t300 fwdelta apply v1.bin - -o v2.bin")]
    Diff(DiffArgs),
    /// Apply PATCH to OLD, writing the verified new image to -o.
    #[command(after_help = "Examples:\n  \
        fwdelta apply v1.bin v1-v2.fwd -o v2.bin\n  \
        fwdelta apply --resume v1.bin v1-v2.fwd -o v2.bin       # after a kill or power loss\n  \
        fwdelta apply --in-place image.bin v1-v2.fwd            # single-slot flash, journaled\n  \
        curl -s https://updates.example/v1-v2.fwd | fwdelta apply v1.bin - -o v2.bin")]
    Apply(ApplyArgs),
    /// Show what a patch contains (and verify its structure and checksums; an
    /// ordinary patch's last segment has none: applying it verifies it).
    Info(InfoArgs),
    /// Diff and apply every pair in a directory and print a size table.
    Bench(bench::BenchArgs),
    /// Make a signing key pair: NAME.key (secret, 0600) and NAME.pub.
    Keygen(signing_cmd::KeygenArgs),
    /// Sign a patch (binding it to a release statement), or attach a
    /// signature made by an offline signer.
    #[command(
        after_help = "Examples:\n  fwdelta sign update.fwd --key release.key\n  \
        fwdelta sign update.fwd --product acme-t300 --version 4.2 --counter 7   # bind, no key yet\n  \
        fwdelta digest update.fwd -o tosign.bin    # the 32 bytes for an HSM\n  \
        fwdelta sign update.fwd --signature tosign.sig --public hsm.pub"
    )]
    Sign(signing_cmd::SignArgs),
    /// Print the exact bytes a signer signs for a signed-form patch (hex).
    Digest(signing_cmd::DigestArgs),
    /// Terminal state: create a device state directory.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Mark the applied update good after the new firmware booted; only now
    /// is the device's security counter raised.
    Confirm(device_cmd::DeviceArgs),
    /// Forget an applied update the device did not boot into.
    Rollback(device_cmd::DeviceArgs),
    /// Print the device's update history.
    History(device_cmd::HistoryArgs),
    /// Update from a server: read the release manifest at URL, verify it,
    /// stream the patch for OLD over HTTP(S) into the applier, resuming
    /// after cuts, and write the verified new image to -o.
    #[command(after_help = "Examples:\n  \
        fwdelta device pin-server /var/lib/fwdelta --ca server-ca.pem\n  \
        fwdelta fetch --device /var/lib/fwdelta https://updates.example/acme/manifest.json current.bin -o next.bin\n  \
        fwdelta fetch --trust release.pub --allow-http http://127.0.0.1:8080/manifest.json current.bin -o next.bin")]
    Fetch(fetch_cmd::FetchArgs),
    /// Key rotation: make a statement, or add a key to a device by one.
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Make a release: a patch from every old image in the field, a
    /// full-image fallback and a (signed) manifest terminals pick from.
    #[command(after_help = "Example:\n  fwdelta release release.toml -o out/\n  \
        fwdelta apply --manifest out/manifest.json --trust release.pub current.bin -o next.bin\n\n\
        For a distributed engine (Ray, Kubernetes): release plan, run-job, collect.\n\
        The description file and the plan are documented in docs/RELEASE.md.")]
    Release(release_cmd::ReleaseArgs),
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Create a device state directory: product, version, counter, trusted keys.
    #[command(
        after_help = "Example:\n  fwdelta device init /var/lib/fwdelta --product acme-t300 \
        --trust release.pub --version 4.1 --counter 6"
    )]
    Init(device_cmd::InitArgs),
    /// Pin the update server's TLS authority (a PEM certificate: its CA, or
    /// its own self-signed certificate); `fetch` trusts no other.
    PinServer(device_cmd::PinServerArgs),
}

#[derive(Subcommand)]
enum TrustCmd {
    /// Trust a new key on a device, by a rotation statement signed by keys it trusts.
    Add(device_cmd::TrustAddArgs),
    /// Make a rotation statement: the new key, signed by itself and by trusted keys.
    Rotate(signing_cmd::RotateArgs),
}

/// Generator options shared by `diff` and `bench`.
#[derive(Args, Clone)]
pub struct GenArgs {
    /// Compression level for the patch body, 1-22 on zstd's scale (lzma2 uses
    /// preset min(level/2, 9), extreme from 12).
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// Fast diff (level 4): one scan at bsdiff's margin, no executable-aware
    /// plan unless --arch names an instruction set, one patch encoded.
    /// Several times faster than the default; patches a few percent larger.
    #[arg(long, conflicts_with = "level")]
    fast: bool,
    /// Payload codec: lzma2 (smallest patches) or zstd (several times faster
    /// to apply, about 6% larger). Budgets too small for either give stored
    /// payloads.
    #[arg(long, default_value = "lzma2", value_parser = parse_codec)]
    codec: Codec,
    /// Memory the applier may use; sets the decoder window, written into the header.
    #[arg(long, default_value = "4MiB", value_parser = size::parse_size)]
    apply_memory: u64,
    /// Target compressed size of one segment (resume/parallel grain).
    #[arg(long, default_value = "1MiB", value_parser = size::parse_size)]
    segment_size: u64,
    /// Put segment boundaries on multiples of SIZE (the device's flash page), so
    /// an applier writing whole pages can checkpoint after any segment.
    #[arg(long, default_value = "1", value_parser = size::parse_size)]
    align: u64,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j')]
    threads: Option<usize>,
    /// Executable-aware diffing: predict the branch, call and literal
    /// references of this instruction set (auto, none, aarch64, arm32, thumb2,
    /// x86-64). `auto` reads the ELF header or scores the image's call density.
    /// The plain patch is made too and the smaller one kept (on large pairs
    /// a fast probe may choose alone when one is clearly smaller).
    #[arg(long, default_value = "auto", value_parser = parse_code_mode)]
    arch: CodeMode,
    /// Body layout: modelled (literals compressed, record heads and diff
    /// bytes coded by models: the diffs by the old bytes under them;
    /// smallest, slower to apply, needs about 3.5 MiB), split (three compressed
    /// streams, needs a budget for three decoders), interleaved (one stream),
    /// or auto (the first of those the budget allows; small patches try all).
    #[arg(long, value_enum, default_value_t = LayoutArg::Auto)]
    layout: LayoutArg,
    /// Do not store new code's call targets as absolute (AArch64 BL and ADRP, A32 BL,
    /// x86-64 E8/E9 rel32 in literal runs; smaller patches, on by default when
    /// --arch names or detects one of those).
    #[arg(long)]
    no_literal_filter: bool,
}

/// `--layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LayoutArg {
    Auto,
    Modelled,
    Split,
    Interleaved,
}

impl LayoutArg {
    /// The generator's choice (`None`: automatic).
    fn layout(self) -> Option<Layout> {
        match self {
            LayoutArg::Auto => None,
            LayoutArg::Modelled => Some(Layout::Modelled),
            LayoutArg::Split => Some(Layout::Split),
            LayoutArg::Interleaved => Some(Layout::Interleaved),
        }
    }
}

/// Parse `--codec`.
fn parse_codec(s: &str) -> Result<Codec, String> {
    [Codec::Lzma2, Codec::Zstd]
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| "expected lzma2 or zstd".to_string())
}

/// Parse `--arch`.
fn parse_code_mode(s: &str) -> Result<CodeMode, String> {
    match s {
        "auto" => Ok(CodeMode::Auto),
        "none" => Ok(CodeMode::Off),
        _ => Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .map(CodeMode::Arch)
            .ok_or_else(|| "expected auto, none, aarch64, arm32, thumb2 or x86-64".to_string()),
    }
}

impl GenArgs {
    fn options(&self) -> Options {
        Options {
            codec: self.codec,
            level: if self.fast {
                fwdelta_diff::FAST_LEVEL
            } else {
                self.level
            },
            apply_memory: self.apply_memory,
            segment_cost: self.segment_size,
            in_place: None,
            align: self.align.max(1),
            code: self.arch,
            layout: self.layout.layout(),
            literal_filter: !self.no_literal_filter,
            ..Options::default()
        }
    }

    fn pool(&self) -> Result<rayon::ThreadPool> {
        let mut b = rayon::ThreadPoolBuilder::new();
        if let Some(n) = self.threads {
            anyhow::ensure!(n >= 1, "--threads must be at least 1");
            b = b.num_threads(n);
        }
        b.build().context("cannot start worker threads")
    }
}

#[derive(Args)]
struct DiffArgs {
    /// The image terminals have now.
    old: PathBuf,
    /// The image they should have.
    new: PathBuf,
    /// Where to write the patch (written whole or not at all); `-`: stdout.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    gen: GenArgs,
    /// Make a patch that `apply --in-place` uses to rewrite the old image where
    /// it is (single-slot flash), needing only --scratch bytes of buffer.
    #[arg(long)]
    in_place: bool,
    /// In-place cell size: the applier's scratch buffer (a power of two, 4 KiB
    /// to 16 MiB). Larger cells mean fewer forced literals.
    #[arg(long, default_value = "64KiB", value_parser = size::parse_size, requires = "in_place")]
    scratch: Option<u64>,
    #[command(flatten)]
    release: signing_cmd::ReleaseArgs,
    /// Sign the patch with this secret key (repeatable; needs --product,
    /// --version and --counter).
    #[arg(long = "sign", requires = "product")]
    sign: Vec<PathBuf>,
    /// Print nothing on success.
    #[arg(short, long)]
    quiet: bool,
    /// On success, print one JSON object on stdout: the patch's size and
    /// make-up, the images' sizes, times.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct ApplyArgs {
    /// The current image (never modified, except with --in-place).
    old: PathBuf,
    /// The patch (not with --manifest); `-`: read it from stdin.
    #[arg(required_unless_present = "manifest")]
    patch: Option<PathBuf>,
    /// Pick the patch for OLD from a release manifest (`fwdelta release`):
    /// by OLD's BLAKE3, its own patch, or the full image when the manifest
    /// says so or has no entry for it. The patch file's BLAKE3 is checked
    /// against the manifest first; with --trust or --device the manifest's
    /// signature (manifest.sig beside it) must verify too.
    #[arg(long, conflicts_with_all = ["patch", "in_place"])]
    manifest: Option<PathBuf>,
    /// Set for a full-image patch picked from a manifest: apply it to an
    /// empty old image.
    #[arg(skip)]
    from_empty: bool,
    /// Set for a patch picked from a manifest: the new image the manifest
    /// names, checked against the header of the patch as opened for
    /// applying (the file might be swapped after its bytes were checked).
    #[arg(skip)]
    expect_new: Option<[u8; 32]>,
    /// Where to write the new image (replaced only after it verified).
    #[arg(short, long, required_unless_present = "in_place")]
    output: Option<PathBuf>,
    /// Rewrite OLD itself into the new image, for an in-place patch. The patch
    /// and the old image are fully verified, and the result proven by a dry
    /// run, before the first byte of OLD is overwritten. Progress is journaled
    /// beside OLD; an interrupted update by the same patch is always resumed
    /// (`--resume` may be given too).
    #[arg(long, conflicts_with = "output")]
    in_place: bool,
    /// Refuse patches that need more applier memory than this.
    #[arg(long, default_value = "64MiB", value_parser = size::parse_size)]
    memory_limit: u64,
    /// Refuse patches that produce a larger image than this.
    #[arg(long, value_parser = size::parse_size)]
    max_size: Option<u64>,
    /// Continue an apply to the same output that was interrupted (killed, power
    /// lost) from its last durable segment. Without a usable checkpoint it
    /// starts from the beginning.
    #[arg(long)]
    resume: bool,
    /// Decode up to N segments at once (default: all cores), each with its
    /// own decoders: N times the patch's apply memory, within --memory-limit
    /// (fewer threads if it holds fewer). Checkpoints are still taken in
    /// segment order. 1: the streaming applier, one segment after another.
    #[arg(short = 'j', long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Print nothing on success.
    #[arg(short, long)]
    quiet: bool,
    /// On success, print one JSON object on stdout: the new image's size and
    /// BLAKE3, the patch bytes read, the release it installs and who signed it,
    /// the device it was recorded in, the time.
    #[arg(long)]
    json: bool,
    /// After success, print `peak_heap_bytes N` and `peak_rss_bytes N` on stdout.
    #[arg(long, hide = true)]
    print_peak_memory: bool,
    /// Enforce this device's policy (trusted keys, product, security
    /// counter, expiry, replays) and record the update in its history.
    /// Resumes an interrupted update of the same patch by itself.
    #[arg(long)]
    device: Option<PathBuf>,
    /// Without a device: accept only patches signed by this public key
    /// (repeatable; any one suffices).
    #[arg(long, conflicts_with = "device")]
    trust: Vec<PathBuf>,
    /// The time (Unix seconds) to check expiry against instead of the clock's.
    #[arg(long, hide = true)]
    now: Option<u64>,
}

#[derive(Args)]
struct InfoArgs {
    /// The patch.
    patch: PathBuf,
    /// Report whether the signatures verify with this public key (repeatable).
    #[arg(long)]
    trust: Vec<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Diff(a) => cmd_diff(&a),
        Cmd::Apply(a) => cmd_apply(&a),
        Cmd::Info(a) => cmd_info(&a),
        Cmd::Bench(a) => bench::run(&a),
        Cmd::Keygen(a) => signing_cmd::cmd_keygen(&a),
        Cmd::Sign(a) => signing_cmd::cmd_sign(&a),
        Cmd::Digest(a) => signing_cmd::cmd_digest(&a),
        Cmd::Device(DeviceCmd::Init(a)) => device_cmd::cmd_init(&a),
        Cmd::Device(DeviceCmd::PinServer(a)) => device_cmd::cmd_pin_server(&a),
        Cmd::Fetch(a) => fetch_cmd::cmd_fetch(&a),
        Cmd::Confirm(a) => device_cmd::cmd_confirm(&a),
        Cmd::Rollback(a) => device_cmd::cmd_rollback(&a),
        Cmd::History(a) => device_cmd::cmd_history(&a),
        Cmd::Trust(TrustCmd::Add(a)) => device_cmd::cmd_trust_add(&a),
        Cmd::Trust(TrustCmd::Rotate(a)) => signing_cmd::cmd_rotate(&a),
        Cmd::Release(a) => match &a.step {
            Some(step) => release_plan::run(step),
            None => release_cmd::cmd_release(&a),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fwdelta: error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// `text` with every control character (newlines, escape sequences) shown
/// as `\u{..}`: an error is one line, and text from a patch, a manifest, a
/// description file or a file name must not drive the terminal.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// The exit code for `e`: its first cause that has one of its own.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<SideFileError>() {
            return match s {
                SideFileError::Busy { .. } => exit::BUSY,
                SideFileError::NoSpace { .. } => exit::NO_SPACE,
                _ => exit::FAILURE,
            };
        }
        if let Some(a) = cause.downcast_ref::<ApplyError>() {
            return match a.class() {
                ErrorClass::BadPatch => exit::BAD_PATCH,
                ErrorClass::Unsupported => exit::UNSUPPORTED,
                ErrorClass::WrongOldImage => exit::WRONG_OLD_IMAGE,
                ErrorClass::Limits => exit::LIMITS,
                ErrorClass::NotAuthentic => exit::NOT_AUTHENTIC,
                ErrorClass::WrongProduct => exit::WRONG_PRODUCT,
                ErrorClass::Downgrade => exit::DOWNGRADE,
                ErrorClass::Expired => exit::EXPIRED,
                ErrorClass::Replay => exit::REPLAY,
                ErrorClass::UpdateLost => exit::UPDATE_LOST,
                _ => exit::FAILURE,
            };
        }
        if let Some(d) = cause.downcast_ref::<fwdelta_device::DeviceError>() {
            use fwdelta_device::DeviceError as D;
            return match d {
                D::Busy => exit::BUSY,
                D::Unusable { .. } | D::Damaged(_) | D::PendingUpdate { .. } => exit::DEVICE_STATE,
                _ => exit::FAILURE,
            };
        }
        if let Some(m) = cause.downcast_ref::<fwdelta_device::manifest::ManifestError>() {
            use fwdelta_device::manifest::ManifestError as M;
            return match m {
                M::Unsigned(_) | M::NotAuthentic { .. } | M::BadSignatureFile(_) => {
                    exit::NOT_AUTHENTIC
                }
                M::PatchMismatch { .. } | M::WrongNewImage { .. } | M::WrongOldImage { .. } => {
                    exit::BAD_PATCH
                }
                M::NoEntry(_) => exit::WRONG_OLD_IMAGE,
                M::Unsupported(_) => exit::UNSUPPORTED,
                M::Malformed(_) => exit::BAD_MANIFEST,
                _ => exit::FAILURE,
            };
        }
        if let Some(f) = cause.downcast_ref::<fwdelta_fetch::FetchError>() {
            use fwdelta_fetch::FetchError as F;
            return match f {
                F::PinMismatch { .. } | F::PlainHttpRefused { .. } | F::NoPin { .. } => {
                    exit::CHANNEL
                }
                F::Misbehaved { .. } | F::ForeignHost { .. } => exit::SERVER,
                F::NotTheManifests { .. } | F::Changed { .. } => exit::BAD_PATCH,
                F::BadUrl { .. } => exit::FAILURE,
                _ => exit::NETWORK,
            };
        }
        if cause.downcast_ref::<fetch_cmd::FetchFailed>().is_some() {
            return exit::NETWORK;
        }
        if let Some(fwdelta_diff::patch_signer::SignError::Patch(_)) =
            cause.downcast_ref::<fwdelta_diff::patch_signer::SignError>()
        {
            return exit::BAD_PATCH;
        }
    }
    exit::FAILURE
}

fn cmd_diff(a: &DiffArgs) -> Result<()> {
    let to_stdout = a.output.as_os_str() == "-";
    anyhow::ensure!(
        !(to_stdout && a.json),
        "-o - writes the patch to stdout, where --json would write too: give one of them"
    );
    let old = input::Image::open(&a.old)?;
    let new = input::Image::open(&a.new)?;
    if !to_stdout {
        refuse_overwrite(&a.output, &[&a.old, &a.new])?;
    }
    let mut opts = a.gen.options();
    if a.in_place {
        let scratch = a.scratch.unwrap_or(64 << 10);
        anyhow::ensure!(
            scratch.is_power_of_two(),
            "--scratch must be a power of two, not {scratch}"
        );
        opts.in_place = Some(scratch.trailing_zeros() as u8);
        anyhow::ensure!(
            !matches!(opts.code, CodeMode::Arch(_)),
            "--arch cannot be combined with --in-place (in-place patches are plain)"
        );
    }
    let start = Instant::now();
    let spinner = DiffSpinner::start(a);
    if let Some(s) = &spinner {
        let bar = s.bar.clone();
        opts.progress = Some(fwdelta_diff::Progress::new(move |phase| {
            bar.set_message(phase.describe())
        }));
    }
    let made = a
        .gen
        .pool()?
        .install(|| fwdelta_diff::diff(&old, &new, &opts));
    if let Some(s) = spinner {
        s.stop();
    }
    let patch = made
        .map_err(|e: DiffError| anyhow::Error::new(e))
        .with_context(|| format!("cannot diff {} -> {}", a.old.display(), a.new.display()))?;
    let elapsed = start.elapsed();
    let unsigned_len = patch.bytes.len();
    let bytes = match a.release.release() {
        Some(release) => signing_cmd::sign_bytes(&patch.bytes, Some(&release), &a.sign)
            .context("cannot sign the patch")?,
        None => patch.bytes,
    };
    if to_stdout {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)
            .and_then(|()| out.flush())
            .context("cannot write the patch to stdout")?;
    } else {
        write_atomically(&a.output, &bytes)?;
    }
    if a.json {
        let r = &patch.report;
        let v = serde_json::json!({
            "old": a.old.display().to_string(),
            "new": a.new.display().to_string(),
            "output": a.output.display().to_string(),
            "old_bytes": old.len(),
            "new_bytes": new.len(),
            "patch_bytes": bytes.len(),
            "unsigned_bytes": unsigned_len,
            "signatures": if bytes.len() != unsigned_len { a.sign.len() } else { 0 },
            "codec": r.codec.name(),
            "layout": r.layout.name(),
            "window_log": r.window_log,
            "segments": r.segments,
            "ops": r.ops,
            "diff_bytes": r.diff_bytes,
            "literal_bytes": r.literal_bytes,
            "forced_literal_bytes": r.forced_literal_bytes,
            "code": r.code.map(|(arch, runs)| serde_json::json!({
                "arch": arch.name(), "map_runs": runs,
            })),
            "literal_filter": r.literal_filter.map(|a| a.name()),
            "plain_bytes": r.plain_len,
            "switch_margin": r.switch_margin,
            "probe": r.probe.map(|p| serde_json::json!({
                "candidates": p.candidates, "made": p.made,
            })),
            "match_seconds": r.match_time.as_secs_f64(),
            "encode_seconds": r.encode_time.as_secs_f64(),
            "seconds": elapsed.as_secs_f64(),
        });
        println!("{v}");
    }
    if !a.quiet {
        let pct = if new.is_empty() {
            0.0
        } else {
            100.0 * bytes.len() as f64 / new.len() as f64
        };
        eprintln!(
            "{}: {} bytes ({pct:.2}% of new), {} segments, window 2^{}, {:.2}s",
            a.output.display(),
            bytes.len(),
            patch.report.segments,
            patch.report.window_log,
            elapsed.as_secs_f64()
        );
        if bytes.len() != unsigned_len {
            eprintln!(
                "  signed form: {} bytes more than unsigned ({} signature(s))",
                bytes.len() - unsigned_len,
                a.sign.len()
            );
        }
        if let Some((arch, runs)) = patch.report.code {
            let plain = match patch.report.plain_len {
                Some(plain) => format!("; the plain patch was {plain} bytes"),
                None => String::new(),
            };
            eprintln!(
                "  executable-aware ({}, {runs}-run address map){plain}",
                arch.name()
            );
        }
        if patch.report.switch_margin != fwdelta_diff::matcher::SWITCH_MARGINS[0] {
            eprintln!(
                "  matches switched at a margin of {} bytes (bsdiff's is {})",
                patch.report.switch_margin,
                fwdelta_diff::matcher::SWITCH_MARGINS[0]
            );
        }
        if let Some(p) = patch.report.probe {
            eprintln!(
                "  a fast probe of {} candidate patches made {} in full (the rest were over {}% larger)",
                p.candidates,
                p.made,
                100.0 * fwdelta_diff::PROBE_MARGIN
            );
        }
        if a.in_place {
            eprintln!(
                "  in place: {} new bytes carried as literals because their old bytes are overwritten first",
                patch.report.forced_literal_bytes
            );
        }
    }
    Ok(())
}

/// A spinner on stderr naming the phase a diff is in, shown once the diff
/// has run for `FWDELTA_PROGRESS_AFTER_MS` milliseconds (default 2000), so
/// quick diffs print nothing extra. None when stderr is not a terminal, or
/// with `-q` or `--json`.
struct DiffSpinner {
    bar: indicatif::ProgressBar,
    /// Set when the diff is done: the delayed start then does nothing.
    done: std::sync::Arc<std::sync::Mutex<bool>>,
}

impl DiffSpinner {
    fn start(a: &DiffArgs) -> Option<DiffSpinner> {
        use std::io::IsTerminal;
        if a.quiet || a.json || !std::io::stderr().is_terminal() {
            return None;
        }
        let after = std::env::var("FWDELTA_PROGRESS_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        let bar = indicatif::ProgressBar::hidden();
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} diff: {wide_msg}")
        {
            bar.set_style(style);
        }
        bar.set_message(fwdelta_diff::Phase::Matching.describe());
        let done = std::sync::Arc::new(std::sync::Mutex::new(false));
        let (later, flag) = (bar.clone(), done.clone());
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(after));
            if let Ok(done) = flag.lock() {
                if !*done {
                    later.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    later.enable_steady_tick(std::time::Duration::from_millis(120));
                }
            }
        });
        Some(DiffSpinner { bar, done })
    }

    /// Clear the spinner (if it was shown) before the summary is printed.
    fn stop(self) {
        if let Ok(mut done) = self.done.lock() {
            *done = true;
            self.bar.finish_and_clear();
        }
    }
}

impl ApplyArgs {
    /// How the device history names this apply's mode.
    fn mode(&self) -> &'static str {
        if self.in_place {
            "in-place"
        } else {
            "file"
        }
    }

    /// The patch file (set by the time an apply runs).
    fn patch(&self) -> &Path {
        self.patch.as_deref().unwrap_or(Path::new(""))
    }
}

fn cmd_apply(a: &ApplyArgs) -> Result<()> {
    if a.patch().as_os_str() == "-" {
        anyhow::ensure!(
            a.output.is_some() && a.device.is_none() && !a.in_place && !a.resume,
            "a patch from stdin (-) is applied to -o alone: --device, --in-place and --resume need the patch as a file"
        );
    }
    if let (Some(dir), Some(out)) = (&a.device, &a.output) {
        refuse_output_in_device(out, dir)?;
    }
    if let Some(manifest) = &a.manifest {
        let (keys, threshold) = match &a.device {
            Some(dir) => release_cmd::device_keys(dir)?,
            None => (release_cmd::trust_keys(&a.trust)?, 1),
        };
        if let Some(out) = &a.output {
            refuse_overwrite(out, &[&a.old, manifest, &manifest.with_extension("sig")])?;
        }
        let picked = release_cmd::pick_from_manifest(manifest, &a.old, &keys, threshold, a.quiet);
        let (patch, full, new_blake3) = match (picked, &a.device) {
            (Ok(p), _) => p,
            // A device records every refusal, a manifest's too.
            (Err(e), Some(dir)) => {
                let now = a.now.unwrap_or_else(fwdelta_device::unix_now);
                return Err(device_cmd::record_manifest_refusal(
                    dir,
                    manifest,
                    now,
                    a.mode(),
                    e,
                ));
            }
            (Err(e), None) => return Err(e),
        };
        let mut b = a.clone();
        b.manifest = None;
        b.patch = Some(patch);
        b.from_empty = full;
        b.expect_new = Some(new_blake3);
        return cmd_apply(&b);
    }

    // With --manifest, the applier itself refuses a patch whose header (the
    // one it applies from) names another new image than the manifest's.
    let mut opts = ApplyOptions::default()
        .with_memory_limit(a.memory_limit)
        .with_max_new_len(a.max_size.unwrap_or(fwdelta_format::MAX_IMAGE_LEN))
        .with_expected_new_image(a.expect_new);
    let now = a.now.unwrap_or_else(fwdelta_device::unix_now);
    if !a.trust.is_empty() {
        let keys = a
            .trust
            .iter()
            .map(|p| signing_cmd::read_public(p))
            .collect::<Result<Vec<_>>>()?;
        let mut policy = fwdelta_apply::TrustPolicy::trusting(keys);
        policy.now = Some(now);
        opts.policy = Some(std::sync::Arc::new(policy));
    }
    let start = Instant::now();
    let (target, report) = match &a.device {
        Some(dir) => {
            let mode = a.mode();
            // A device always resumes an interrupted update of the same patch.
            let report = device_cmd::apply_with_device(dir, a.patch(), opts, now, mode, |opts| {
                run_apply(a, opts, true)
            })?;
            (a.output.clone().unwrap_or_else(|| a.old.clone()), report)
        }
        None => (
            a.output.clone().unwrap_or_else(|| a.old.clone()),
            run_apply(a, opts, a.resume)?,
        ),
    };
    report_apply(a, &target, &report, start);
    Ok(())
}

/// Apply as `a` says (to a file, or in place), with `opts`; `resume`: pick
/// up a checkpoint left beside the output.
fn run_apply(
    a: &ApplyArgs,
    opts: ApplyOptions,
    resume: bool,
) -> Result<fwdelta_apply::ApplyReport> {
    let Some(output) = a.output.as_deref() else {
        return cmd_apply_in_place(a, opts);
    };
    let old = if a.from_empty {
        // An unnamed empty file beside the output: nothing to leave behind.
        let dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        tempfile::tempfile_in(dir).and_then(FileImage::from_file)
    } else {
        open_old_image(&a.old)
    }
    .with_context(|| format!("cannot open old image {}", a.old.display()))?;
    let mut patch = if a.patch().as_os_str() == "-" {
        patch_from_stdin(output)?
    } else {
        File::open(a.patch())
            .with_context(|| format!("cannot open patch {}", a.patch().display()))?
    };
    if let Some(expected) = a.expect_new {
        check_new_image(&mut patch, a.patch(), &expected)?;
    }
    let inputs: [&Path; 2] = [&a.old, a.patch()];
    refuse_overwrite(output, &inputs)?;
    let side = ResumableFile::side_paths(output)
        .with_context(|| format!("cannot name the files beside {}", output.display()))?;
    for path in &side {
        refuse_side_file_is_input(path, &inputs)?;
    }
    // Held until this function returns: every side file below is created,
    // written and renamed under it, and dropped (removing the lock file) last.
    let lock = TargetLock::acquire(output)?;
    let context = || format!("cannot apply {}", a.patch().display());
    let resumed = if resume {
        resume_applier(a, &lock, &old, &mut patch, opts.clone())?
    } else {
        None
    };
    // Before a byte of the new image is written (or, on a resume, any more).
    let kept = resumed.as_ref().map_or(0, |r| r.produced());
    // Read once, for the free-space check and the thread count.
    let header = read_header_at_start(a, &patch)?;
    ensure_room(output, header.as_ref(), kept, &opts)?;
    let applier = match resumed {
        Some(applier) => applier,
        None => {
            let mut sink = ResumableFile::create(&lock)?;
            // The new version of a file keeps the old one's permission bits.
            let meta = match a.from_empty {
                // A full image picked from a manifest: keep OLD's bits.
                true => std::fs::metadata(&a.old),
                false => old.file().metadata(),
            };
            if let (Some(f), Ok(meta)) = (sink.file(), meta) {
                if meta.is_file() {
                    f.set_permissions(meta.permissions()).with_context(|| {
                        format!("cannot set permissions beside {}", output.display())
                    })?;
                }
            }
            let threads = apply_threads(a, &patch, header.as_ref(), &opts);
            if threads > 1 {
                let out = sink
                    .file()
                    .ok_or_else(|| anyhow::anyhow!("the partial file is closed"))?
                    .try_clone()
                    .with_context(|| format!("cannot write beside {}", output.display()))?;
                let report =
                    fwdelta_apply::apply_parallel(&old, &patch, &out, &mut sink, opts, threads)
                        .with_context(context)?;
                drop(out);
                sink.commit()
                    .with_context(|| format!("cannot write {}", output.display()))?;
                drop(lock);
                return Ok(report);
            }
            Applier::new(&old, sink, opts)
        }
    };
    let (report, sink) = applier.finish_from(&mut patch).with_context(context)?;
    sink.commit()
        .with_context(|| format!("cannot write {}", output.display()))?;
    drop(lock);
    Ok(report)
}

/// Open an old image for reading by offset: a regular file or a block
/// device, nothing else. `O_NONBLOCK`, so that a FIFO at the path is refused
/// instead of blocking the open until a writer comes (reads of files and
/// block devices ignore the flag).
pub(crate) fn open_old_image(path: &Path) -> std::io::Result<FileImage> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(FileImage::from_file)
}

/// How many segments of `patch` to decode at once: `-j` (default: the
/// machine's cores), as many as the patch has segments and `opts`'
/// memory limit holds decoders for, and 1 unless the patch is a regular
/// file (the parallel applier reads it by offset). `header`: the patch's,
/// if it parses (1 if not: the streaming applier refuses it).
fn apply_threads(
    a: &ApplyArgs,
    patch: &File,
    header: Option<&fwdelta_format::Header>,
    opts: &ApplyOptions,
) -> usize {
    let wanted = match a.threads {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    match header {
        Some(h) if wanted > 1 && patch.metadata().is_ok_and(|m| m.is_file()) => {
            fwdelta_apply::parallel_threads(h, opts, wanted)
        }
        _ => 1,
    }
}

/// The header at the start of `patch` (read by offset), if it parses.
fn read_header_at_start(a: &ApplyArgs, patch: &File) -> Result<Option<fwdelta_format::Header>> {
    use fwdelta_format::Header;
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; Header::MAX_LEN];
    let mut got = 0;
    while got < bytes.len() {
        match patch.read_at(&mut bytes[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read patch {}", a.patch().display()))
            }
        }
    }
    Ok(bytes
        .get(..Header::PREFIX_LEN)
        .and_then(|p| <[u8; Header::PREFIX_LEN]>::try_from(p).ok())
        .and_then(|p| Header::parse_prefix(&p).ok())
        .and_then(|len| bytes.get(..len))
        .and_then(|h| Header::parse(h).ok()))
}

/// Refuse, before a byte of the new image is written, a patch whose new image
/// does not fit in the output filesystem's free space (`kept` bytes of it are
/// already there, on a resume), given the patch's `header`. Costs one
/// `statvfs`. A header that does not parse (`None`), or that exceeds
/// `--max-size`, is left for the applier to refuse with its own error.
fn ensure_room(
    output: &Path,
    header: Option<&fwdelta_format::Header>,
    kept: u64,
    opts: &ApplyOptions,
) -> Result<()> {
    let Some(header) = header else {
        return Ok(());
    };
    if header.new_len > opts.max_new_len {
        return Ok(());
    }
    fwdelta_apply::side_file::ensure_free_space(output, header.new_len.saturating_sub(kept))?;
    Ok(())
}

/// `apply --in-place`: rewrite the old image file itself, under its lock.
fn cmd_apply_in_place(a: &ApplyArgs, opts: ApplyOptions) -> Result<fwdelta_apply::ApplyReport> {
    refuse_overwrite(&a.old, &[a.patch()])?;
    for suffix in [fwdelta_apply::side_file::LOCK, "fwdelta-inplace.tmp"] {
        let side = fwdelta_apply::side_file::side_path(&a.old, suffix)
            .with_context(|| format!("cannot name the files beside {}", a.old.display()))?;
        refuse_side_file_is_input(&side, &[&a.old, a.patch()])?;
    }
    let lock = TargetLock::acquire(&a.old)?;
    let region = fwdelta_apply::FileRegion::open(&a.old)
        .with_context(|| format!("cannot open {} for in-place update", a.old.display()))?;
    let patch = File::open(a.patch())
        .with_context(|| format!("cannot open patch {}", a.patch().display()))?;
    // Segment headers are read a byte at a time, four passes over the patch.
    let patch = BufReader::with_capacity(fwdelta_apply::BUFFER_LEN, patch);
    let mut journal = fwdelta_apply::FileJournal::beside(&a.old)
        .with_context(|| format!("cannot place a journal beside {}", a.old.display()))?;
    let report = fwdelta_apply::apply_in_place_with(&region, patch, opts, &mut journal)
        .with_context(|| format!("cannot apply {} in place", a.patch().display()))?;
    drop(journal);
    drop(lock);
    if report.already_applied && !a.quiet {
        eprintln!("{}: already the new image; nothing to do", a.old.display());
    }
    Ok(report)
}

fn report_apply(a: &ApplyArgs, output: &Path, report: &fwdelta_apply::ApplyReport, start: Instant) {
    if a.json {
        let v = serde_json::json!({
            "output": output.display().to_string(),
            "patch": a.patch().display().to_string(),
            "patch_bytes": report.patch_len,
            "new_bytes": report.header.new_len,
            "new_blake3": hex(&report.header.new_hash),
            "in_place": a.in_place,
            "already_applied": report.already_applied,
            "full_image": a.from_empty,
            "release": report.verdict.release.as_ref().map(release_json),
            "signed_by": report.verdict.signed_by.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            "patch_id": report.verdict.message.map(|m| hex(&m)),
            "device": a.device.as_ref().map(|d| d.display().to_string()),
            "seconds": start.elapsed().as_secs_f64(),
        });
        println!("{v}");
    }
    if a.print_peak_memory {
        println!("peak_heap_bytes {}", peak_memory::peak_heap());
        println!("peak_rss_bytes {}", peak_memory::peak_rss().unwrap_or(0));
    }
    if !a.quiet {
        eprintln!(
            "{}: {} bytes verified (BLAKE3 {}), {:.2}s",
            output.display(),
            report.header.new_len,
            short_hex(&report.header.new_hash),
            start.elapsed().as_secs_f64()
        );
        if let Some(r) = &report.verdict.release {
            let by = if report.verdict.signed_by.is_empty() {
                "signatures not checked: no trusted key given".to_string()
            } else {
                let ids: Vec<String> = report
                    .verdict
                    .signed_by
                    .iter()
                    .map(|k| k.to_string())
                    .collect();
                format!("signed by {}", ids.join(", "))
            };
            eprintln!(
                "  {} version {} (security counter {}), {by}",
                r.product, r.version, r.security_counter
            );
        }
        if let Some(dir) = &a.device {
            eprintln!(
                "  recorded in {}; run `fwdelta confirm --device {}` once it has booted",
                dir.display(),
                dir.display()
            );
        }
    }
}

/// Set up an applier that continues from the checkpoint beside the output,
/// with `patch` positioned at the checkpoint. `None` if there is no checkpoint,
/// it belongs to another patch, or the partial output is missing, short or
/// damaged (then the apply starts over, saying why on stderr).
fn resume_applier<'o>(
    a: &ApplyArgs,
    lock: &TargetLock,
    old: &'o FileImage,
    patch: &mut File,
    opts: ApplyOptions,
) -> Result<Option<Applier<'o, FileImage, ResumableFile>>> {
    use std::io::{Seek, SeekFrom};
    let Some(checkpoint) = ResumableFile::load_checkpoint(lock)? else {
        return Ok(None);
    };
    let header = match fwdelta_apply::inspect::read_patch_start(patch) {
        Ok((_, mut bytes, section, _)) => {
            if let Some(s) = section {
                bytes.extend_from_slice(&s.encode());
            }
            bytes
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read patch {}", a.patch().display()))
        }
    };
    patch.seek(SeekFrom::Start(0))?;
    let (sink, produced) = match ResumableFile::reopen(lock, &checkpoint) {
        Ok(pair) => pair,
        Err(e @ SideFileError::Io { .. }) => {
            eprintln!("fwdelta: starting over: cannot reuse the partial output ({e})");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    match Applier::resume(old, sink, opts, &header, &checkpoint, produced) {
        Ok(applier) => {
            patch
                .seek(SeekFrom::Start(checkpoint.patch_offset))
                .with_context(|| format!("cannot read patch {}", a.patch().display()))?;
            Ok(Some(applier))
        }
        Err(ApplyError::Format(fwdelta_format::FormatError::BadField {
            field: "checkpoint",
            detail,
        })) => {
            eprintln!("fwdelta: starting over: the checkpoint does not fit this patch ({detail})");
            Ok(None)
        }
        Err(ApplyError::PartialOutputDamaged { len }) => {
            eprintln!(
                "fwdelta: partial output damaged, starting over (its first {len} bytes do not match their checkpoint)"
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("cannot resume applying {}", a.patch().display())),
    }
}

fn cmd_info(a: &InfoArgs) -> Result<()> {
    let f =
        File::open(&a.patch).with_context(|| format!("cannot open patch {}", a.patch.display()))?;
    let info = fwdelta_apply::inspect(BufReader::with_capacity(fwdelta_apply::BUFFER_LEN, f))
        .with_context(|| format!("cannot read {}", a.patch.display()))?;
    let h = &info.header;
    let keys = a
        .trust
        .iter()
        .map(|p| signing_cmd::read_public(p))
        .collect::<Result<Vec<_>>>()?;
    // Which signatures verify with the given keys (none given: unchecked).
    let verdict = fwdelta_apply::TrustPolicy::trusting(keys).check(
        h,
        &info.header_bytes,
        info.section.as_ref(),
    );
    let signatures: Vec<serde_json::Value> = info
        .section
        .iter()
        .flat_map(|s| &s.signatures)
        .map(|s| {
            let verified = match &verdict {
                _ if a.trust.is_empty() => None,
                Ok(v) => Some(v.signed_by.contains(&s.key_id)),
                Err(_) => Some(false),
            };
            serde_json::json!({ "key_id": s.key_id.to_string(), "verified": verified })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if a.json {
        let segments: Vec<_> = info
            .segments
            .iter()
            .map(|s| {
                serde_json::json!({
                    "index": s.index, "new_offset": s.new_offset, "new_len": s.new_len,
                    "old_start": s.old_start, "payload_len": s.payload_len,
                })
            })
            .collect();
        let v = serde_json::json!({
            "format_version": fwdelta_format::FORMAT_VERSION,
            "flags": h.flags,
            "patch_len": info.patch_len,
            "header_len": info.header_len,
            "old": { "len": h.old_len, "blake3_prefix": hex(&h.old_check) },
            "new": { "len": h.new_len, "blake3": hex(&h.new_hash) },
            "codec": h.codec.name(),
            "window_log": h.window_log,
            "layout": h.layout.name(),
            "apply_memory": h.apply_memory,
            "code": h.code_refs.as_ref().map(|c| serde_json::json!({
                "arch": c.arch.name(), "map_runs": c.map.runs(),
            })),
            "literal_filter": h.literal_filter.map(|a| a.name()),
            "in_place_cell_log": h.cell_log,
            "release": h.release.as_ref().map(release_json),
            "signed_message": info.section.as_ref().map(|s| hex(&s.message(&info.header_bytes))),
            "signatures": signatures,
            "trusted": (!a.trust.is_empty()).then(|| verdict.is_ok()),
            "segments": segments,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "fwdelta patch, format version {}, {} bytes",
        fwdelta_format::FORMAT_VERSION,
        info.patch_len
    )?;
    writeln!(
        out,
        "  old image     {:>12} bytes  blake3 {}...",
        h.old_len,
        hex(&h.old_check)
    )?;
    writeln!(
        out,
        "  new image     {:>12} bytes  blake3 {}",
        h.new_len,
        hex(&h.new_hash)
    )?;
    writeln!(
        out,
        "  codec         {}, window 2^{} ({}), layout {}",
        h.codec.name(),
        h.window_log,
        size::human(1 << h.window_log),
        h.layout.name()
    )?;
    writeln!(
        out,
        "  apply memory  {} bytes ({})",
        h.apply_memory,
        size::human(h.apply_memory)
    )?;
    if let Some(c) = &h.code_refs {
        writeln!(
            out,
            "  code          {} references predicted through a {}-run address map",
            c.arch.name(),
            c.map.runs()
        )?;
    }
    if let Some(arch) = h.literal_filter {
        writeln!(
            out,
            "  literals      {} branch targets stored absolute",
            arch.name()
        )?;
    }
    if let Some(r) = &h.release {
        writeln!(
            out,
            "  release       product {}, version {}, security counter {}, {}",
            r.product,
            r.version,
            r.security_counter,
            if r.expires == 0 {
                "never expires".to_string()
            } else {
                format!("expires at Unix time {}", r.expires)
            }
        )?;
        for s in &signatures {
            let state = match s["verified"].as_bool() {
                None => "not checked (give --trust KEY.pub)",
                Some(true) => "verifies",
                Some(false) => "does NOT verify with a trusted key",
            };
            writeln!(
                out,
                "  signature     key {}: {state}",
                s["key_id"].as_str().unwrap_or("?")
            )?;
        }
        if signatures.is_empty() {
            writeln!(
                out,
                "  signature     none yet (signed form: `fwdelta digest` prints what to sign)"
            )?;
        }
    }
    writeln!(
        out,
        "  body          segments: {}, after a {}-byte header",
        info.segments.len(),
        info.header_len
    )?;
    if !info.segments.is_empty() {
        writeln!(
            out,
            "  {:>7} {:>12} {:>12} {:>12} {:>10}",
            "segment", "new offset", "new len", "old start", "payload"
        )?;
        for s in &info.segments {
            writeln!(
                out,
                "  {:>7} {:>12} {:>12} {:>12} {:>10}",
                s.index, s.new_offset, s.new_len, s.old_start, s.payload_len
            )?;
        }
    }
    Ok(())
}

/// Write `bytes` to `path` whole or not at all.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)
        .with_context(|| format!("cannot create a temporary file beside {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.commit()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The patch `apply OLD -` reads from stdin, copied whole into an unnamed
/// file in `output`'s directory (`O_TMPFILE`: nothing is left behind, not
/// even after a kill) so that it can be read at any offset, as a patch file
/// is: its start for the free-space check, its segments for parallel apply.
fn patch_from_stdin(output: &Path) -> Result<File> {
    use std::io::{Seek, SeekFrom};
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut f = tempfile::tempfile_in(dir)
        .with_context(|| format!("cannot hold the patch from stdin in {}", dir.display()))?;
    std::io::copy(&mut std::io::stdin().lock(), &mut f)
        .context("cannot read the patch from stdin")?;
    f.seek(SeekFrom::Start(0))
        .context("cannot read the patch from stdin")?;
    Ok(f)
}

/// Refuse a side file (partial output, checkpoint, lock) whose name is one of
/// the inputs (by device and inode, the name itself, not where a link at it
/// points: links there are refused when the file is opened). One `lstat` per
/// input.
fn refuse_side_file_is_input(side: &Path, inputs: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(at) = std::fs::symlink_metadata(side) else {
        return Ok(());
    };
    for input in inputs {
        if let Ok(m) = std::fs::metadata(input) {
            anyhow::ensure!(
                m.dev() != at.dev() || m.ino() != at.ino(),
                "{} is the same file as input {}; refusing to use it",
                side.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Refuse an output path that is one of the inputs (by device and inode, so
/// links and different spellings are caught).
/// Refuse a patch (`file`, opened for applying) whose header names another
/// new image than `expected` (the manifest's). The header is read from the
/// same open file the applier then reads, rewound, so a file swapped after
/// the manifest check cannot slip through; the applier's final hash check
/// then ties the output to that header.
fn check_new_image(file: &mut File, path: &Path, expected: &[u8; 32]) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let name = || path.display().to_string();
    let (header, ..) = fwdelta_apply::inspect::read_patch_start(file)
        .with_context(|| format!("cannot apply {}", name()))?;
    file.seek(SeekFrom::Start(0))
        .with_context(|| format!("cannot read patch {}", name()))?;
    if header.new_hash != *expected {
        return Err(fwdelta_device::manifest::ManifestError::WrongNewImage {
            file: name(),
            expected: hex(expected),
            actual: hex(&header.new_hash),
        }
        .into());
    }
    Ok(())
}

/// Refuse an output inside the device state directory `dir`: writing the
/// new image over the state file or the history would destroy the record
/// the update is about to go into.
fn refuse_output_in_device(output: &Path, dir: &Path) -> Result<()> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(()); // the device layer reports a missing directory
    };
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(parent) = std::fs::canonicalize(parent) {
        anyhow::ensure!(
            !parent.starts_with(&dir),
            "output {} is inside the device state directory {}; refusing to write it",
            output.display(),
            dir.display()
        );
    }
    Ok(())
}

fn refuse_overwrite(output: &Path, inputs: &[&Path]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = std::fs::metadata(output) else {
        return Ok(());
    };
    for input in inputs {
        if let Ok(m) = std::fs::metadata(input) {
            anyhow::ensure!(
                m.dev() != out.dev() || m.ino() != out.ino(),
                "output {} is the same file as input {}; refusing to overwrite it",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// A release statement as `info --json` and `apply --json` print it
/// (`expires` null when it never expires).
fn release_json(r: &fwdelta_format::release::Release) -> serde_json::Value {
    serde_json::json!({
        "product": r.product, "version": r.version,
        "security_counter": r.security_counter,
        "expires": (r.expires != 0).then_some(r.expires),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn short_hex(bytes: &[u8]) -> String {
    hex(&bytes[..8.min(bytes.len())])
}
