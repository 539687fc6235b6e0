//! A real update server for the fetch tests: `nginx` (installed by
//! `apt-get` if missing; the test fails with apt's output if it cannot)
//! run as a child on a loopback port with its own configuration, prefix,
//! pid and log files; a link emulator (a userspace TCP proxy: rate cap,
//! delays standing in for loss, connection cuts, stalls) between it and the
//! client; and a scripted liar server for the protocol holes nginx never
//! shows.
// Each test crate uses some of them.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `nginx` binary, installed with apt-get (`nginx-light`) when missing.
pub fn nginx_bin() -> PathBuf {
    let bin = apt_installed(&["/usr/sbin/nginx", "/usr/bin/nginx"], "nginx-light");
    // The package's own service is not ours: stop it if apt started it.
    if INSTALLED_NGINX.load(Ordering::Relaxed) {
        let _ = Command::new(&bin).args(["-s", "stop"]).output();
        INSTALLED_NGINX.store(false, Ordering::Relaxed);
    }
    bin
}

/// The `openssl` command (test certificates), installed when missing.
pub fn openssl_bin() -> PathBuf {
    apt_installed(&["/usr/bin/openssl"], "openssl")
}

static INSTALLED_NGINX: AtomicBool = AtomicBool::new(false);

/// The first of `paths` that exists, after `apt-get install -y PACKAGE`
/// (and `apt-get update` if that fails) when none does. Panics with apt's
/// output if it still does not exist: a missing tool fails the test.
fn apt_installed(paths: &[&str], package: &str) -> PathBuf {
    let found = || paths.iter().map(PathBuf::from).find(|p| p.is_file());
    if let Some(p) = found() {
        return p;
    }
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = found() {
        return p;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("the tests need {package} and apt-get cannot run: {e}"))
    };
    let mut log = String::new();
    let install = ["install", "-y", "--no-install-recommends", package];
    for args in [&install[..], &["update"][..], &install[..]] {
        let o = apt(args);
        log.push_str(&String::from_utf8_lossy(&o.stdout));
        log.push_str(&String::from_utf8_lossy(&o.stderr));
        if args[0] == "install" && o.status.success() {
            break;
        }
    }
    if package == "nginx-light" {
        INSTALLED_NGINX.store(true, Ordering::Relaxed);
    }
    found().unwrap_or_else(|| {
        panic!("the tests need {package}; `apt-get install {package}` failed:\n{log}")
    })
}

/// A free loopback port (bound, then released for the caller).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An nginx serving a directory on loopback; killed when dropped.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub prefix: PathBuf,
}

impl Nginx {
    /// Serve `root` on a free loopback port, with TLS when `tls` gives a
    /// certificate chain and key (PEM files). `extra` is added to the
    /// server block (redirects for the tests).
    pub fn start(root: &Path, prefix: &Path, tls: Option<(&Path, &Path)>, extra: &str) -> Nginx {
        let bin = nginx_bin();
        fs::create_dir_all(prefix.join("logs")).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let listen = match tls {
                Some(_) => format!("127.0.0.1:{port} ssl"),
                None => format!("127.0.0.1:{port}"),
            };
            let ssl = match tls {
                Some((cert, key)) => format!(
                    "ssl_certificate {}; ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
                None => String::new(),
            };
            let p = prefix.display();
            let conf = format!(
                "daemon off; master_process off; worker_processes 1;
pid {p}/nginx.pid; error_log {p}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {p}/logs/access.log;
  client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;
  types {{ application/json json; application/octet-stream fwd sig; }}
  default_type application/octet-stream;
  sendfile on;
  server {{ listen {listen}; server_name localhost; root {}; {ssl} {extra} }}
}}
",
                root.display()
            );
            let conf_path = prefix.join("nginx.conf");
            fs::write(&conf_path, conf).unwrap();
            let mut cmd = Command::new(&bin);
            // SAFETY: prctl only sets this child's parent-death signal: a
            // test process killed before its Drop runs takes nginx with it.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd
                .arg("-p")
                .arg(prefix)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(prefix.join("logs/stderr.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let mut n = Nginx {
                child,
                port,
                prefix: prefix.to_path_buf(),
            };
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = n.child.try_wait() {
                    break; // port taken meanwhile, or bad config: retry or report
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return n;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        panic!(
            "nginx did not start: {}",
            fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the emulated link behaves (server to client; requests pass as they are).
#[derive(Debug, Clone)]
pub struct LinkSpec {
    /// Bytes per second (0: unlimited).
    pub rate: u64,
    /// Probability that a 1460-byte packet is "lost": it is held back for
    /// `loss_delay` (the retransmission timeout a real loss costs TCP).
    pub loss: f64,
    pub loss_delay: Duration,
    /// Added delay before the first byte of each connection.
    pub latency: Duration,
    /// Cut the connection after about this many forwarded bytes (0: never);
    /// each cut's distance is drawn within ±25% of it.
    pub cut_every: u64,
    /// Stall (forward nothing, keep the connection open) once, after this
    /// many bytes in all (0: never).
    pub stall_at: u64,
    pub seed: u64,
}

impl LinkSpec {
    pub fn clean() -> LinkSpec {
        LinkSpec {
            rate: 0,
            loss: 0.0,
            loss_delay: Duration::from_millis(200),
            latency: Duration::ZERO,
            cut_every: 0,
            stall_at: 0,
            seed: 1,
        }
    }
}

/// Counters of a link.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Bytes forwarded to clients.
    pub forwarded: AtomicU64,
    pub connections: AtomicU64,
    pub cuts: AtomicU64,
    pub losses: AtomicU64,
    pub stalls: AtomicU64,
}

/// A userspace link emulator: listens on a loopback port, forwards each
/// connection to `upstream`, shaped by a [`LinkSpec`]. Stops when dropped.
pub struct Link {
    pub port: u16,
    pub stats: Arc<LinkStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    spec: LinkSpec,
    stats: Arc<LinkStats>,
    /// Bytes until the next cut, and the xorshift state.
    next_cut: Mutex<(u64, u64)>,
    stalled: AtomicBool,
    stop: Arc<AtomicBool>,
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

impl Link {
    pub fn start(upstream: u16, spec: LinkSpec) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(LinkStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut rng = spec.seed | 1;
        let first = draw(spec.cut_every, &mut rng);
        let shared = Arc::new(Shared {
            spec,
            stats: stats.clone(),
            next_cut: Mutex::new((first, rng)),
            stalled: AtomicBool::new(false),
            stop: stop.clone(),
        });
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !shared.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let shared = shared.clone();
                        workers.push(std::thread::spawn(move || {
                            let _ = serve(client, upstream, &shared);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Link {
            port,
            stats,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn draw(every: u64, rng: &mut u64) -> u64 {
    if every == 0 {
        return u64::MAX;
    }
    let spread = every / 2;
    every - every / 4 + xorshift(rng) % (spread + 1)
}

fn serve(client: TcpStream, upstream: u16, s: &Shared) -> std::io::Result<()> {
    s.stats.connections.fetch_add(1, Ordering::Relaxed);
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    client.set_nodelay(true)?;
    // Requests pass unshaped.
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    server.set_read_timeout(Some(Duration::from_millis(200)))?;
    let (mut server, mut client) = (server, client);
    std::thread::sleep(s.spec.latency);
    let mut buf = [0u8; 1460];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut rng = s.spec.seed ^ 0x9e37_79b9_7f4a_7c15 ^ s.stats.connections.load(Ordering::Relaxed);
    loop {
        if s.stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match server.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        // A cut: forward up to the cut point, then close both sides.
        let (n, cut) = {
            let mut c = s.next_cut.lock().unwrap();
            if (n as u64) < c.0 {
                c.0 -= n as u64;
                (n, false)
            } else {
                let upto = c.0 as usize;
                let mut r = c.1;
                c.0 = draw(s.spec.cut_every, &mut r);
                c.1 = r;
                (upto, true)
            }
        };
        if s.spec.loss > 0.0 && (xorshift(&mut rng) % 1_000_000) as f64 / 1e6 < s.spec.loss {
            s.stats.losses.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(s.spec.loss_delay);
        }
        let total = s.stats.forwarded.load(Ordering::Relaxed);
        if s.spec.stall_at > 0
            && total >= s.spec.stall_at
            && !s.stalled.swap(true, Ordering::Relaxed)
        {
            // Hold the connection open, silent, until the client gives up.
            s.stats.stalls.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
            let mut one = [0u8; 1];
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until && !s.stop.load(Ordering::Relaxed) {
                match client.peek(&mut one) {
                    Ok(0) => break,
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            break;
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        s.stats.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        if cut {
            s.stats.cuts.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if s.spec.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / s.spec.rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    Ok(())
}

/// A server that answers each request by a script: `respond(path, range)`
/// returns the raw bytes to send (head and body), after which it closes.
pub struct Liar {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Liar {
    pub fn start(respond: impl Fn(&str, Option<u64>) -> Vec<u8> + Send + Sync + 'static) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, reqs) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut c, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match c.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("/").to_string();
                let range = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Range: bytes="))
                    .and_then(|r| r.trim_end_matches('-').parse::<u64>().ok());
                reqs.lock().unwrap().push(format!("{path} {range:?}"));
                let _ = c.write_all(&respond(&path, range));
                let _ = c.shutdown(Shutdown::Both);
            }
        });
        Liar {
            port,
            stop,
            thread: Some(thread),
            requests,
        }
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTTP/1.1 answer: `status`, extra header lines, and `body` with its
/// true length unless `length` says otherwise.
pub fn answer(status: &str, headers: &[String], body: &[u8], length: Option<u64>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        length.unwrap_or(body.len() as u64)
    );
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}
