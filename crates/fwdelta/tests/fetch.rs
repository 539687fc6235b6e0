//! `fwdelta fetch` against a real server: nginx on loopback (installed by
//! apt-get when missing, see `common/net.rs`), a link emulator between it
//! and the client, and a scripted liar server for what nginx never does.
//!
//! The bad-link test's size and link are parameters (CI runs a faithful
//! but faster version):
//! `FWDELTA_FETCH_PATCH_KB` (default 1024), `FWDELTA_FETCH_RATE` (bytes/s,
//! default 4000000; 12500 is 100 kbit/s), `FWDELTA_FETCH_LOSS` (default
//! 0.05), `FWDELTA_FETCH_LOSS_DELAY_MS` (what a lost packet costs, default
//! 20; 200 is a typical retransmission timeout), `FWDELTA_FETCH_CUT_KB`
//! (a cut every ~N KiB, default 100); the kill test runs
//! `FWDELTA_KILL_RUNS` times (default 50, as the issue asks).

mod common;
#[path = "common/net.rs"]
mod net;
#[path = "common/release_fixture.rs"]
mod release_fixture;

use net::{answer, Liar, Link, LinkSpec, Nginx};
use release_fixture::{device_history, fwdelta, Run};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EXIT_BAD_PATCH: i32 = 3;
const EXIT_NOT_AUTHENTIC: i32 = 7;
const EXIT_NETWORK: i32 = 16;
const EXIT_SERVER: i32 = 17;
const EXIT_CHANNEL: i32 = 18;
const EXIT_BAD_MANIFEST: i32 = 19;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A release of a 256 KiB old image and a new one with `insert` random
/// (incompressible) bytes spliced in, so the delta is about `insert` bytes;
/// a device state at the old version; the old and new images.
struct Rel {
    dir: tempfile::TempDir,
    delta: String,
    full: String,
    delta_len: u64,
}

impl Rel {
    fn new(insert: usize, seed: u64) -> Rel {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["fleet", "build"] {
            fs::create_dir(p.join(d)).unwrap();
        }
        let mut rng = fwdelta_testkit::XorShift::new(seed);
        let noise: Vec<u8> = (0..insert).map(|_| rng.next_u64() as u8).collect();
        common::stress_pair(
            p,
            ("fleet/1.0.0.bin", "build/2.0.0.bin"),
            256 << 10,
            seed,
            64,
            100 << 10,
            noise,
        );
        fwdelta([
            OsStr::new("keygen"),
            OsStr::new("-q"),
            OsStr::new("-o"),
            p.join("rel").as_os_str(),
        ])
        .ok();
        fwdelta([
            OsStr::new("keygen"),
            OsStr::new("-q"),
            OsStr::new("-o"),
            p.join("other").as_os_str(),
        ])
        .ok();
        fs::write(
            p.join("release.toml"),
            "product = \"acme-t300\"\nversion = \"2.0.0\"\nsecurity_counter = 2\n\
             new_image = \"build/2.0.0.bin\"\nkeys = [\"rel.key\"]\nold_dir = \"fleet\"\n\
             max_share = 0.99\n[diff]\ncodec = \"zstd\"\nlevel = 3\nsegment_size = \"64KiB\"\n",
        )
        .unwrap();
        let run = fwdelta([
            OsStr::new("release"),
            p.join("release.toml").as_os_str(),
            OsStr::new("-o"),
            p.join("www").as_os_str(),
            OsStr::new("-q"),
        ])
        .ok();
        drop(run);
        let m: Value =
            serde_json::from_slice(&fs::read(p.join("www/manifest.json")).unwrap()).unwrap();
        let entry = m["old_images"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap();
        let delta = entry["patch"]["file"]
            .as_str()
            .expect("a delta")
            .to_string();
        let r = Rel {
            delta_len: entry["patch"]["bytes"].as_u64().unwrap(),
            delta,
            full: m["full_image"]["file"].as_str().unwrap().to_string(),
            dir,
        };
        r.device("dev", "rel.pub");
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn device(&self, name: &str, key: &str) {
        fwdelta([
            OsStr::new("device"),
            OsStr::new("init"),
            self.path(name).as_os_str(),
            OsStr::new("--product"),
            OsStr::new("acme-t300"),
            OsStr::new("--version"),
            OsStr::new("1.0.0"),
            OsStr::new("--counter"),
            OsStr::new("1"),
            OsStr::new("--trust"),
            self.path(key).as_os_str(),
        ])
        .ok();
    }

    /// A copy of the release directory under `name`, for a test to damage.
    fn copy_www(&self, name: &str) -> PathBuf {
        let to = self.path(name);
        fs::create_dir(&to).unwrap();
        for e in fs::read_dir(self.path("www")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    }

    fn nginx(&self, root: &str, tls: Option<(&Path, &Path)>, extra: &str) -> Nginx {
        let prefix = self.path(&format!("nginx-{root}"));
        Nginx::start(&self.path(root), &prefix, tls, extra)
    }

    /// `fwdelta fetch --device DEV --allow-http URL old -o out` plus `extra`.
    fn fetch(&self, dev: &str, url: &str, out: &str, extra: &[&str]) -> Run {
        fwdelta(self.fetch_args(dev, url, out, extra))
    }

    fn fetch_args(&self, dev: &str, url: &str, out: &str, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            vec!["fetch".into(), "--device".into(), self.path(dev).into()];
        args.extend(extra.iter().map(OsString::from));
        args.push(url.into());
        args.push(self.path("fleet/1.0.0.bin").into());
        args.push("-o".into());
        args.push(self.path(out).into());
        args
    }

    fn new_image(&self) -> Vec<u8> {
        fs::read(self.path("build/2.0.0.bin")).unwrap()
    }

    fn history(&self, dev: &str) -> Vec<Value> {
        device_history(&self.path(dev))
    }

    /// Nothing was written beside `out`: no output, no side file.
    fn nothing_written(&self, out: &str) {
        assert!(!self.path(out).exists(), "{out} was written");
        assert_eq!(
            common::hidden_files_but_stale_locks(self.dir.path()),
            Vec::<String>::new()
        );
    }
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}/{path}")
}

fn json_of(run: &Run) -> Value {
    serde_json::from_str(run.stdout.lines().last().expect("--json output")).unwrap()
}

/// The bad link, scaled by the environment: the download ends
/// exact, resumed after every cut and a stall, having downloaded at most
/// 110% of the patch.
#[test]
fn a_patch_over_a_bad_link_ends_exact_within_110_percent() {
    let kb: usize = env_or("FWDELTA_FETCH_PATCH_KB", 1024);
    let rel = Rel::new(kb << 10, 7);
    let server = rel.nginx("www", None, "");
    let spec = LinkSpec {
        rate: env_or("FWDELTA_FETCH_RATE", 4_000_000),
        loss: env_or("FWDELTA_FETCH_LOSS", 0.05),
        loss_delay: Duration::from_millis(env_or("FWDELTA_FETCH_LOSS_DELAY_MS", 20)),
        latency: Duration::from_millis(20),
        cut_every: env_or::<u64>("FWDELTA_FETCH_CUT_KB", 100) << 10,
        stall_at: rel.delta_len / 2,
        seed: 11,
    };
    let link = Link::start(server.port, spec.clone());
    let start = Instant::now();
    let run = rel
        .fetch(
            "dev",
            &url(link.port, "manifest.json"),
            "out.bin",
            &[
                "--allow-http",
                "--json",
                "--stall-timeout",
                "2",
                "--retry-delay-ms",
                "50",
                "--retries",
                "20",
            ],
        )
        .ok();
    let wall = start.elapsed();
    assert_eq!(fs::read(rel.path("out.bin")).unwrap(), rel.new_image());
    let v = json_of(&run);
    let downloaded = v["bytes_downloaded"].as_u64().unwrap();
    let cuts = link.stats.cuts.load(std::sync::atomic::Ordering::Relaxed);
    let ratio = downloaded as f64 / rel.delta_len as f64;
    eprintln!(
        "bad link: patch {} bytes, downloaded {downloaded} ({ratio:.4}), {cuts} cuts, {} stalls, {} losses, {} resumes, {} connections, {:.1}s, rate {} B/s",
        rel.delta_len,
        link.stats.stalls.load(std::sync::atomic::Ordering::Relaxed),
        link.stats.losses.load(std::sync::atomic::Ordering::Relaxed),
        v["resumes"],
        link.stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        wall.as_secs_f64(),
        spec.rate
    );
    assert!(
        cuts >= 3,
        "the link should have cut at least 3 times: {cuts}"
    );
    assert_eq!(
        link.stats.stalls.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(v["resumes"].as_u64().unwrap() > cuts, "{v}");
    assert!(
        ratio <= 1.10,
        "downloaded {downloaded} for a {}-byte patch",
        rel.delta_len
    );
    assert_eq!(v["patch_blake3_checked"], true);
    let h = rel.history("dev");
    let last = h.last().unwrap();
    assert_eq!(last["event"], "applied");
    assert_eq!(last["full_image"], false);
    assert_eq!(last["bytes_downloaded"].as_u64(), Some(downloaded));
}

/// A damaged patch (its header, or a byte in its body) and a foreign one
/// (another release's patch under the delta's name) are refused with exit
/// 3; nothing is left beside the output; each try is in the history; after
/// three failed tries of the delta the next run fetches the full image.
#[test]
fn damaged_or_foreign_patches_are_refused_then_the_full_image_is_used() {
    let rel = Rel::new(200 << 10, 3);
    let www = rel.copy_www("bad");
    let server = rel.nginx("bad", None, "");
    let u = url(server.port, "manifest.json");
    let good = fs::read(www.join(&rel.delta)).unwrap();
    let damaged = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x40;
        fs::write(www.join(&rel.delta), b).unwrap();
    };
    // The header: refused before the partial file exists.
    damaged(12);
    let run = rel
        .fetch("dev", &u, "out.bin", &["--allow-http"])
        .error(EXIT_BAD_PATCH);
    rel.nothing_written("out.bin");
    assert!(
        run.stderr.contains("refusing") || run.stderr.contains("patch"),
        "{}",
        run.stderr
    );
    // The body: refused by its checks; the partial output is removed.
    damaged(good.len() / 2);
    rel.fetch("dev", &u, "out.bin", &["--allow-http"])
        .error(EXIT_BAD_PATCH);
    rel.nothing_written("out.bin");
    // Another file (another length) under the delta's name.
    fs::write(www.join(&rel.delta), &good[..good.len() - 100]).unwrap();
    let run = rel
        .fetch("dev", &u, "out.bin", &["--allow-http"])
        .error(EXIT_BAD_PATCH);
    assert!(
        run.stderr.contains("not the one the manifest names"),
        "{}",
        run.stderr
    );
    rel.nothing_written("out.bin");
    // Another release's patch, cut or padded to the manifest's length: its
    // header names another new image, refused before the partial file exists.
    let other = Rel::new(100 << 10, 3);
    let mut foreign = fs::read(other.path("www").join(&other.delta)).unwrap();
    foreign.resize(good.len(), 0);
    fs::write(www.join(&rel.delta), &foreign).unwrap();
    // (--delta-tries 9: the three failures so far would pick the full image)
    let run = rel
        .fetch(
            "dev",
            &u,
            "out.bin",
            &["--allow-http", "--delta-tries", "9"],
        )
        .error(EXIT_BAD_PATCH);
    assert!(
        run.stderr
            .contains("makes another image than the manifest's"),
        "{}",
        run.stderr
    );
    rel.nothing_written("out.bin");
    let h = rel.history("dev");
    let tries: Vec<&Value> = h
        .iter()
        .filter(|e| e["patch_file"] == rel.delta.as_str())
        .collect();
    assert_eq!(tries.len(), 4, "{h:?}");
    for (i, e) in tries.iter().enumerate() {
        assert_eq!(e["event"], "refused");
        assert_eq!(e["exit_code"], EXIT_BAD_PATCH);
        assert_eq!(e["try"], i + 1);
    }
    // Three failed tries (four here): the full image now.
    let run = rel
        .fetch("dev", &u, "out.bin", &["--allow-http", "--json"])
        .ok();
    assert!(
        run.stderr.contains("fetching the full image"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read(rel.path("out.bin")).unwrap(), rel.new_image());
    let v = json_of(&run);
    assert_eq!(v["full_image"], true);
    assert_eq!(v["patch_file"], rel.full.as_str());
}

/// Review of issue 19: a server that sends, under the delta's name, a
/// genuine patch to the same new image from another old image (here the
/// release's own full-image patch, cut or padded to the delta's length)
/// was reported as exit 4, "wrong old image", blaming the terminal's image,
/// which is the one the manifest lists. The patch is not the one the
/// manifest names: exit 3, refused from its header, nothing written.
#[test]
fn a_patch_for_another_old_image_under_the_deltas_name_is_a_bad_patch() {
    let rel = Rel::new(200 << 10, 5);
    let www = rel.copy_www("swapped");
    let server = rel.nginx("swapped", None, "");
    let u = url(server.port, "manifest.json");
    let mut full = fs::read(www.join(&rel.full)).unwrap();
    full.resize(rel.delta_len as usize, 0);
    fs::write(www.join(&rel.delta), &full).unwrap();
    let run = rel
        .fetch("dev", &u, "out.bin", &["--allow-http"])
        .error(EXIT_BAD_PATCH);
    assert!(
        run.stderr.contains("made for another old image"),
        "{}",
        run.stderr
    );
    rel.nothing_written("out.bin");
    let h = rel.history("dev");
    let last = h.last().unwrap();
    assert_eq!(last["event"], "refused", "{last}");
    assert_eq!(last["exit_code"], EXIT_BAD_PATCH, "{last}");
}

/// Manifests refused: changed after signing, its signature missing, too
/// large, signed by a key the device does not trust; each with its exit
/// code, nothing written, a history entry.
#[test]
fn bad_manifests_are_refused_with_nothing_written() {
    let rel = Rel::new(64 << 10, 5);
    rel.device("dev-other", "other.pub");
    let www = rel.copy_www("bad");
    let server = rel.nginx("bad", None, "");
    let u = url(server.port, "manifest.json");
    let good = fs::read(www.join("manifest.json")).unwrap();
    let mut changed = good.clone();
    changed.insert(1, b' ');
    fs::write(www.join("manifest.json"), &changed).unwrap();
    let run = rel
        .fetch("dev", &u, "out.bin", &["--allow-http"])
        .error(EXIT_NOT_AUTHENTIC);
    assert!(
        run.stderr.contains("not signed by a trusted key"),
        "{}",
        run.stderr
    );
    rel.nothing_written("out.bin");

    fs::write(www.join("manifest.json"), b"this is not json").unwrap();
    rel.fetch("dev", &u, "out.bin", &["--allow-http"])
        .error(EXIT_NOT_AUTHENTIC);

    fs::write(www.join("manifest.json"), &good).unwrap();
    fs::remove_file(www.join("manifest.sig")).unwrap();
    let run = rel
        .fetch("dev", &u, "out.bin", &["--allow-http"])
        .error(EXIT_NOT_AUTHENTIC);
    assert!(run.stderr.contains("not signed"), "{}", run.stderr);
    fs::copy(rel.path("www/manifest.sig"), www.join("manifest.sig")).unwrap();

    // Signed by a key this device does not trust.
    rel.fetch("dev-other", &u, "out.bin", &["--allow-http"])
        .error(EXIT_NOT_AUTHENTIC);

    // Over the 16 MiB cap: refused from its Content-Length.
    fs::write(www.join("big.json"), vec![b' '; (16 << 20) + 1]).unwrap();
    let run = rel
        .fetch(
            "dev",
            &url(server.port, "big.json"),
            "out.bin",
            &["--allow-http"],
        )
        .error(EXIT_BAD_MANIFEST);
    assert!(run.stderr.contains("cap"), "{}", run.stderr);
    rel.nothing_written("out.bin");

    let h = rel.history("dev");
    let codes: Vec<i64> = h.iter().filter_map(|e| e["exit_code"].as_i64()).collect();
    assert_eq!(codes, [7, 7, 7, 19], "{h:?}");
    assert_eq!(rel.history("dev-other").last().unwrap()["exit_code"], 7);
}

/// Channel and server policy: plain HTTP only when allowed, a redirect
/// loop, a redirect to another host.
#[test]
fn plain_http_redirect_loops_and_foreign_hosts_are_refused() {
    let rel = Rel::new(16 << 10, 9);
    let server = rel.nginx(
        "www",
        None,
        "location = /loop/manifest.json { return 302 /loop/again.json; }
         location = /loop/again.json { return 302 /loop/manifest.json; }
         location = /away/manifest.json { return 302 http://127.0.0.2:1/manifest.json; }
         location = /here/manifest.json { return 301 /manifest.json; }",
    );
    let run = rel
        .fetch("dev", &url(server.port, "manifest.json"), "out.bin", &[])
        .error(EXIT_CHANNEL);
    assert!(
        run.stderr.contains("plain HTTP is not allowed"),
        "{}",
        run.stderr
    );
    let run = rel
        .fetch(
            "dev",
            &url(server.port, "loop/manifest.json"),
            "out.bin",
            &["--allow-http"],
        )
        .error(EXIT_SERVER);
    assert!(run.stderr.contains("redirect loop"), "{}", run.stderr);
    let run = rel
        .fetch(
            "dev",
            &url(server.port, "away/manifest.json"),
            "out.bin",
            &["--allow-http"],
        )
        .error(EXIT_SERVER);
    assert!(run.stderr.contains("another host"), "{}", run.stderr);
    rel.nothing_written("out.bin");
    // A redirect on the same host is followed.
    rel.fetch(
        "dev",
        &url(server.port, "here/manifest.json"),
        "out.bin",
        &["--allow-http"],
    )
    .ok();
    assert_eq!(fs::read(rel.path("out.bin")).unwrap(), rel.new_image());
    let h = rel.history("dev");
    let codes: Vec<Option<i64>> = h.iter().map(|e| e["exit_code"].as_i64()).collect();
    let want = [EXIT_CHANNEL, EXIT_SERVER, EXIT_SERVER].map(|c| Some(c as i64));
    assert_eq!(codes[..3], want);
}

/// What the release directory's files are, for the liar server.
fn www_files(rel: &Rel) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(rel.path("www"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                format!("/{}", e.file_name().to_string_lossy()),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A liar serving the release, whose patch answers come from `patch`.
fn liar(
    rel: &Rel,
    patch: impl Fn(&[u8], Option<u64>, usize) -> Vec<u8> + Send + Sync + 'static,
) -> Liar {
    let files = www_files(rel);
    let delta = format!("/{}", rel.delta);
    let count = std::sync::atomic::AtomicUsize::new(0);
    Liar::start(move |path, range| match files.get(path) {
        Some(b) if path == delta => patch(
            b,
            range,
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ),
        Some(b) => answer("200 OK", &[], b, None),
        None => answer("404 Not Found", &[], b"", None),
    })
}

/// A server that lies: more bytes than announced, a Content-Range that is
/// not the range asked for: exit 17, nothing written. One that ignores
/// Range: handled (the resent prefix skipped). One whose file changes
/// (ETag) mid-download: started over, ends exact.
#[test]
fn lying_servers_are_refused_and_range_ignoring_ones_handled() {
    let rel = Rel::new(128 << 10, 13);
    let fast = ["--allow-http", "--retry-delay-ms", "10", "--json"];

    let over = liar(&rel, |b, _, _| {
        let mut body = b.to_vec();
        body.extend_from_slice(b"and some more");
        answer("200 OK", &[], &body, Some(b.len() as u64))
    });
    let run = rel
        .fetch("dev", &url(over.port, "manifest.json"), "out.bin", &fast)
        .error(EXIT_SERVER);
    assert!(run.stderr.contains("more bytes than"), "{}", run.stderr);
    rel.nothing_written("out.bin");

    // The first answer breaks off half way; the resume is answered with
    // another range than asked for.
    let shifted = liar(&rel, |b, range, _| match range {
        None => answer("200 OK", &[], &b[..b.len() / 2], Some(b.len() as u64)),
        Some(f) => {
            let f = f as usize - 1;
            let cr = format!("Content-Range: bytes {f}-{}/{}", b.len() - 1, b.len());
            answer("206 Partial Content", &[cr], &b[f..], None)
        }
    });
    let run = rel
        .fetch("dev", &url(shifted.port, "manifest.json"), "out.bin", &fast)
        .error(EXIT_SERVER);
    assert!(run.stderr.contains("Content-Range"), "{}", run.stderr);
    rel.nothing_written("out.bin");

    // Ignores Range: sends the whole file again, which is skipped up to
    // where the first answer broke off.
    let ignoring = liar(&rel, |b, range, _| match range {
        None => answer("200 OK", &[], &b[..b.len() / 2], Some(b.len() as u64)),
        Some(_) => answer("200 OK", &[], b, None),
    });
    let run = rel
        .fetch(
            "dev",
            &url(ignoring.port, "manifest.json"),
            "out.bin",
            &fast,
        )
        .ok();
    assert_eq!(fs::read(rel.path("out.bin")).unwrap(), rel.new_image());
    let v = json_of(&run);
    assert!(v["skipped"].as_u64().unwrap() > 0, "{v}");
    fs::remove_file(rel.path("out.bin")).unwrap();

    // The file's ETag changes on the resume: start over, end exact.
    rel.device("dev2", "rel.pub");
    let changing = liar(&rel, |b, range, n| {
        let etag = format!("ETag: \"v{}\"", (n >= 1) as u8);
        match range {
            None if n == 0 => answer("200 OK", &[etag], &b[..b.len() / 2], Some(b.len() as u64)),
            None => answer("200 OK", &[etag], b, None),
            Some(f) => {
                let f = f as usize;
                let cr = format!("Content-Range: bytes {f}-{}/{}", b.len() - 1, b.len());
                answer("206 Partial Content", &[cr, etag], &b[f..], None)
            }
        }
    });
    let run = rel
        .fetch(
            "dev2",
            &url(changing.port, "manifest.json"),
            "out.bin",
            &fast,
        )
        .ok();
    assert_eq!(fs::read(rel.path("out.bin")).unwrap(), rel.new_image());
    assert_eq!(json_of(&run)["restarts"], 1);
}

/// An unreachable server: retried with backoff, then exit 16, recorded.
#[test]
fn an_unreachable_server_gives_up_after_its_retries() {
    let rel = Rel::new(16 << 10, 17);
    let port = net::free_port();
    let start = Instant::now();
    let run = rel
        .fetch(
            "dev",
            &url(port, "manifest.json"),
            "out.bin",
            &["--allow-http", "--retries", "3", "--retry-delay-ms", "20"],
        )
        .error(EXIT_NETWORK);
    assert!(
        run.stderr.contains("giving up after 4 tries"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("retrying in").count(),
        3,
        "{}",
        run.stderr
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    // The deadline ends it before the retries would.
    let start = Instant::now();
    let run = rel
        .fetch(
            "dev",
            &url(port, "manifest.json"),
            "out.bin",
            &[
                "--allow-http",
                "--retries",
                "100",
                "--retry-delay-ms",
                "300",
                "--deadline",
                "2",
            ],
        )
        .error(EXIT_NETWORK);
    assert!(
        run.stderr.contains("the deadline is reached"),
        "{}",
        run.stderr
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    let h = rel.history("dev");
    let last: Vec<&Value> = h.iter().rev().take(2).collect();
    for e in last {
        assert_eq!(e["event"], "fetch-failed");
        assert_eq!(e["exit_code"], EXIT_NETWORK);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(net::openssl_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}-server.key"),
            "-out",
            &format!("{name}-server.csr"),
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}-server.csr"),
            "-CA",
            &format!("{name}-ca.pem"),
            "-CAkey",
            &format!("{name}-ca.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}-server.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// TLS: the device pins its server's CA; a server whose certificate does
/// not chain to the pin is refused (exit 18) before a request is sent.
#[test]
fn tls_with_the_pinned_authority_only() {
    let rel = Rel::new(32 << 10, 19);
    let certs = rel.path("certs");
    fs::create_dir(&certs).unwrap();
    make_ca(&certs, "good");
    make_ca(&certs, "evil");
    let server = rel.nginx(
        "www",
        Some((
            &certs.join("good-server.pem"),
            &certs.join("good-server.key"),
        )),
        "",
    );
    let https = format!("https://127.0.0.1:{}/manifest.json", server.port);
    // No pin: refused.
    let run = rel.fetch("dev", &https, "out.bin", &[]).error(EXIT_CHANNEL);
    assert!(
        run.stderr
            .contains("no server certificate authority is pinned"),
        "{}",
        run.stderr
    );
    // Pinned to another CA: refused.
    rel.device("dev-evil", "rel.pub");
    fwdelta([
        OsStr::new("device"),
        OsStr::new("pin-server"),
        rel.path("dev-evil").as_os_str(),
        OsStr::new("--ca"),
        certs.join("evil-ca.pem").as_os_str(),
    ])
    .ok();
    let run = rel
        .fetch("dev-evil", &https, "out.bin", &[])
        .error(EXIT_CHANNEL);
    assert!(
        run.stderr.contains("does not match the pinned authority"),
        "{}",
        run.stderr
    );
    rel.nothing_written("out.bin");
    assert_eq!(
        rel.history("dev-evil").last().unwrap()["exit_code"],
        EXIT_CHANNEL
    );
    // Pinned to its CA: updated.
    fwdelta([
        OsStr::new("device"),
        OsStr::new("pin-server"),
        rel.path("dev").as_os_str(),
        OsStr::new("--ca"),
        certs.join("good-ca.pem").as_os_str(),
    ])
    .ok();
    rel.fetch("dev", &https, "out.bin", &[]).ok();
    assert_eq!(fs::read(rel.path("out.bin")).unwrap(), rel.new_image());
    // Not a certificate: refused by pin-server.
    let run = fwdelta([
        OsStr::new("device"),
        OsStr::new("pin-server"),
        rel.path("dev").as_os_str(),
        OsStr::new("--ca"),
        rel.path("rel.pub").as_os_str(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
}

/// SIGKILL of the client at random moments: every rerun ends exact, and
/// reruns resume from the checkpoint instead of starting over.
#[test]
fn sigkill_at_random_moments_always_ends_exact_on_rerun() {
    let runs = common::kill_runs_or(50);
    let rel = Rel::new(768 << 10, 23);
    let server = rel.nginx("www", None, "");
    let link = Link::start(
        server.port,
        LinkSpec {
            rate: 2_000_000,
            ..LinkSpec::clean()
        },
    );
    let u = url(link.port, "manifest.json");
    let new = rel.new_image();
    let mut rng = fwdelta_testkit::XorShift::new(99);
    let mut resumed = 0;
    for i in 0..runs {
        let dev = format!("dev-kill-{i}");
        rel.device(&dev, "rel.pub");
        let _ = fs::remove_file(rel.path("out.bin"));
        let args = rel.fetch_args(&dev, &u, "out.bin", &["--allow-http", "-q"]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let after = Duration::from_millis(30 + rng.next_u64() % 500);
        std::thread::sleep(after);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let mut extra = vec!["--allow-http", "--json", "-q"];
        extra.push("--retry-delay-ms");
        extra.push("10");
        let run = rel.fetch(&dev, &u, "out.bin", &extra);
        // A kill after the rename but before the history entry leaves an
        // update the rerun finds in progress: it reapplies, same image.
        assert_eq!(
            run.code, 0,
            "run {i} (killed after {after:?}): {}",
            run.stderr
        );
        assert_eq!(fs::read(rel.path("out.bin")).unwrap(), new, "run {i}");
        if json_of(&run)["resumed_from"].as_u64().unwrap() > 0 {
            resumed += 1;
        }
        assert_eq!(
            common::hidden_files_but_stale_locks(rel.dir.path()),
            Vec::<String>::new(),
            "run {i}"
        );
    }
    eprintln!("kill runs: {runs}, reruns that resumed from a checkpoint: {resumed}");
    if runs >= 5 {
        assert!(
            resumed > 0,
            "no rerun resumed from a checkpoint in {runs} runs"
        );
    }
}

/// The download figures of the benchmark: bytes that crossed the link per
/// update, for the delta and the full image, on a clean link, with cuts
/// (resumed in the run), and killed half way and rerun (resumed from the
/// checkpoint). Printed as a Markdown table by
/// `cargo test -p fwdelta --test fetch bandwidth -- --nocapture`.
#[test]
fn bandwidth_per_update_delta_resumed_and_full_image() {
    use std::sync::atomic::Ordering::Relaxed;
    let rel = Rel::new(1024 << 10, 29);
    let server = rel.nginx("www", None, "");
    let m: Value =
        serde_json::from_slice(&fs::read(rel.path("www/manifest.json")).unwrap()).unwrap();
    let full_len = m["full_image"]["bytes"].as_u64().unwrap();
    let cut = 100u64 << 10;
    let mut rows = Vec::new();
    let mut row = |name: &str, full: bool, cut_every: u64, kill: bool| {
        let link = Link::start(
            server.port,
            LinkSpec {
                rate: 4_000_000,
                cut_every,
                seed: 31,
                ..LinkSpec::clean()
            },
        );
        let dev = format!("dev-bw-{}", rows.len());
        rel.device(&dev, "rel.pub");
        let _ = fs::remove_file(rel.path("out.bin"));
        let u = url(link.port, "manifest.json");
        let mut extra = vec![
            "--allow-http",
            "-q",
            "--retry-delay-ms",
            "10",
            "--retries",
            "30",
        ];
        if full {
            extra.push("--full-image");
        }
        let patch = if full { full_len } else { rel.delta_len };
        if kill {
            let mut child = Command::new(env!("CARGO_BIN_EXE_fwdelta"))
                .args(rel.fetch_args(&dev, &u, "out.bin", &extra))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            while link.stats.forwarded.load(Relaxed) < patch / 2 {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        rel.fetch(&dev, &u, "out.bin", &extra).ok();
        assert_eq!(
            fs::read(rel.path("out.bin")).unwrap(),
            rel.new_image(),
            "{name}"
        );
        let wire = link.stats.forwarded.load(Relaxed);
        rows.push((name.to_string(), patch, wire, link.stats.cuts.load(Relaxed)));
    };
    row("delta, clean link", false, 0, false);
    row("delta, cut every ~100 KiB, resumed", false, cut, false);
    row("delta, SIGKILL half way, rerun resumes", false, 0, true);
    row("full image, clean link", true, 0, false);
    row("full image, cut every ~100 KiB, resumed", true, cut, false);
    eprintln!("| update | patch bytes | bytes over the link | / patch | / full image | cuts |");
    eprintln!("|---|---:|---:|---:|---:|---:|");
    for (name, patch, wire, cuts) in &rows {
        eprintln!(
            "| {name} | {patch} | {wire} | {:.4} | {:.4} | {cuts} |",
            *wire as f64 / *patch as f64,
            *wire as f64 / full_len as f64
        );
    }
    eprintln!(
        "| delta or full image, cut every ~100 KiB, no resume | | never completes: every try is cut before the end | | | |"
    );
    for (name, patch, wire, _) in &rows {
        assert!(
            *wire as f64 <= 1.10 * *patch as f64,
            "{name}: {wire} for {patch}"
        );
        assert!(
            *wire >= *patch,
            "{name}: fewer bytes than the patch crossed the link"
        );
    }
    // The delta is the point: it costs less than the full image even resumed.
    assert!(rows[1].2 < rows[3].2 && rows[2].2 < rows[3].2);
}
