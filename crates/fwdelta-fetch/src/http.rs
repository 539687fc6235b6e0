//! One HTTP/1.1 GET per connection (`Connection: close`), over TCP or
//! rustls, with the checks a resumable download needs done byte-exactly:
//! the status, `Content-Length` (required), `Content-Range` against the
//! range asked for, a body longer than announced, redirects (bounded, loops
//! and other hosts refused by policy).
//!
//! Memory: a 16 KiB read buffer and the response head (at most
//! [`MAX_HEAD_LEN`]) per connection; one connection at a time.

use crate::error::{FetchError, Misbehaviour};
use crate::url::{Scheme, Url};
use rustls::pki_types::ServerName;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest response head accepted (status line and headers).
pub const MAX_HEAD_LEN: usize = 16 << 10;
/// Read buffer per connection.
const BUFFER_LEN: usize = 16 << 10;

/// How a [`Client`] connects and what it allows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// A read or write that waits longer than this fails (a stall).
    pub stall_timeout: Duration,
    /// Connecting to one address may take this long.
    pub connect_timeout: Duration,
    /// Allow `http://` (otherwise only `https://`).
    pub allow_plain_http: bool,
    /// Follow redirects to another host (scheme, host or port).
    pub allow_other_hosts: bool,
    /// Redirects followed per request.
    pub max_redirects: usize,
    /// TLS configuration with the pinned roots (`None`: no `https://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            allow_plain_http: false,
            allow_other_hosts: false,
            max_redirects: 5,
            tls: None,
        }
    }
}

/// A TLS client configuration trusting only `roots` (DER certificates: the
/// pinned authority, or the server's own self-signed certificate), with
/// rustls's ring provider and its safe default protocol versions.
pub fn pinned_tls(
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    // ring's provider is deprecated in rustls 0.23.48 for lacking
    // post-quantum key exchange, which only aws-lc-rs (a cmake build) has;
    // classical X25519/ECDHE is what every supported server speaks today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth(),
    ))
}

/// An HTTP client. Counts every byte it reads from the network
/// ([`Client::downloaded`]), heads and TLS records included.
#[derive(Debug)]
pub struct Client {
    opts: ClientOptions,
    downloaded: Arc<AtomicU64>,
}

/// The parts of a response head a download looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// `Content-Range`, as sent.
    pub content_range: Option<String>,
    /// `ETag`, as sent.
    pub etag: Option<String>,
    /// `Location`, as sent.
    pub location: Option<String>,
    /// `Transfer-Encoding` was given.
    pub transfer_encoding: bool,
}

/// A response whose head has been read; the body is read through it.
pub struct Response {
    /// The URL that answered (after redirects).
    pub url: Url,
    /// Its head.
    pub head: Head,
    body: Body,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => match s.read(buf) {
                // A server that closes without close_notify (common, and
                // what a cut looks like) ends the body early: the length
                // check catches a short body either way.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Counts the bytes read from the socket (TLS records included).
struct Counted {
    inner: Stream,
    count: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A response body: at most `Content-Length` bytes.
struct Body {
    conn: BufReader<Counted>,
    left: u64,
    announced: u64,
}

impl Client {
    /// A client with `opts`. No I/O.
    pub fn new(opts: ClientOptions) -> Client {
        Client {
            opts,
            downloaded: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Bytes read from the network so far, over every connection.
    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    /// GET `url` (from byte `from` on with `Range: bytes=from-` when
    /// `from` is not `None`), following redirects as the options allow.
    /// Returns once the head of a non-redirect answer is read; status
    /// codes are left to the caller (see [`Response::expect`]).
    pub fn get(&self, url: &Url, from: Option<u64>) -> Result<Response, FetchError> {
        let mut visited = vec![url.clone()];
        let mut at = url.clone();
        loop {
            let resp = self.get_once(&at, from)?;
            if !matches!(resp.head.status, 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let misbehaved = |what| FetchError::Misbehaved {
                url: at.to_string(),
                what,
            };
            let next = resp
                .head
                .location
                .as_deref()
                .ok_or_else(|| misbehaved(Misbehaviour::BadRedirect))
                .and_then(|l| {
                    at.resolve(l)
                        .map_err(|_| misbehaved(Misbehaviour::BadRedirect))
                })?;
            if visited.contains(&next) {
                return Err(misbehaved(Misbehaviour::RedirectLoop));
            }
            if visited.len() > self.opts.max_redirects {
                return Err(misbehaved(Misbehaviour::TooManyRedirects(
                    self.opts.max_redirects,
                )));
            }
            if !self.opts.allow_other_hosts && !next.same_origin(url) {
                return Err(FetchError::ForeignHost {
                    from: at.to_string(),
                    to: next.to_string(),
                });
            }
            visited.push(next.clone());
            at = next;
        }
    }

    fn connect(&self, url: &Url) -> Result<Stream, FetchError> {
        let name = url.to_string();
        if url.scheme == Scheme::Http && !self.opts.allow_plain_http {
            return Err(FetchError::PlainHttpRefused { url: name });
        }
        let tls = match (url.scheme, &self.opts.tls) {
            (Scheme::Https, None) => return Err(FetchError::NoPin { url: name }),
            (Scheme::Https, Some(t)) => Some(t.clone()),
            (Scheme::Http, _) => None,
        };
        let connect_err = |source| FetchError::Connect {
            url: name.clone(),
            source,
        };
        let addrs = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(connect_err)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        let mut sock = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.opts.connect_timeout) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let sock = sock.ok_or_else(|| connect_err(last))?;
        let io_err = |source| FetchError::Io {
            url: name.clone(),
            source,
        };
        sock.set_read_timeout(Some(self.opts.stall_timeout))
            .map_err(io_err)?;
        sock.set_write_timeout(Some(self.opts.stall_timeout))
            .map_err(io_err)?;
        sock.set_nodelay(true).map_err(io_err)?;
        let Some(tls) = tls else {
            return Ok(Stream::Plain(sock));
        };
        let server = ServerName::try_from(url.host.clone()).map_err(|_| FetchError::BadUrl {
            url: name.clone(),
            why: "the host is not a valid TLS server name",
        })?;
        let conn =
            rustls::ClientConnection::new(tls, server).map_err(|source| FetchError::Tls {
                url: name.clone(),
                source,
            })?;
        let mut s = rustls::StreamOwned::new(conn, sock);
        // The handshake now, so certificate errors are told apart.
        while s.conn.is_handshaking() {
            if let Err(e) = s.conn.complete_io(&mut s.sock) {
                return Err(tls_error(&name, e));
            }
        }
        Ok(Stream::Tls(Box::new(s)))
    }

    fn get_once(&self, url: &Url, from: Option<u64>) -> Result<Response, FetchError> {
        let mut stream = self.connect(url)?;
        let range = match from {
            Some(f) => format!("Range: bytes={f}-\r\n"),
            None => String::new(),
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fwdelta/{}\r\nAccept-Encoding: identity\r\n{range}Connection: close\r\n\r\n",
            url.path,
            url.host_header(),
            env!("CARGO_PKG_VERSION")
        );
        let name = url.to_string();
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(|e| io_or_tls(&name, e))?;
        let mut conn = BufReader::with_capacity(
            BUFFER_LEN,
            Counted {
                inner: stream,
                count: self.downloaded.clone(),
            },
        );
        let head = read_head(&mut conn).map_err(|e| match e {
            HeadError::Io(e) => io_or_tls(&name, e),
            HeadError::Bad(what) => FetchError::Misbehaved {
                url: name.clone(),
                what,
            },
        })?;
        let announced = match head.status {
            // A redirect's or an error's body is not read.
            301 | 302 | 303 | 307 | 308 => 0,
            s if !(200..300).contains(&s) => 0,
            _ => head.content_length.unwrap_or(0),
        };
        Ok(Response {
            url: url.clone(),
            head,
            body: Body {
                conn,
                left: announced,
                announced,
            },
        })
    }
}

/// An I/O error from a TLS stream may carry rustls's error: a certificate
/// problem is a pin mismatch, anything else a TLS failure.
fn tls_error(url: &str, e: io::Error) -> FetchError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(
            r @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)),
        ) => FetchError::PinMismatch {
            url: url.to_string(),
            source: r.clone(),
        },
        Some(r) => FetchError::Tls {
            url: url.to_string(),
            source: r.clone(),
        },
        None => FetchError::Io {
            url: url.to_string(),
            source: e,
        },
    }
}

fn io_or_tls(url: &str, e: io::Error) -> FetchError {
    tls_error(url, e)
}

enum HeadError {
    Io(io::Error),
    Bad(Misbehaviour),
}

/// Read and parse a response head (through the blank line).
fn read_head<R: BufRead>(r: &mut R) -> Result<Head, HeadError> {
    let mut total = 0usize;
    let mut line = Vec::new();
    let mut next_line = |r: &mut R, line: &mut Vec<u8>| -> Result<(), HeadError> {
        line.clear();
        let n = r
            .take((MAX_HEAD_LEN - total + 1) as u64)
            .read_until(b'\n', line)
            .map_err(HeadError::Io)?;
        total += n;
        if total > MAX_HEAD_LEN {
            return Err(HeadError::Bad(Misbehaviour::HeadTooLarge(MAX_HEAD_LEN)));
        }
        if n == 0 || !line.ends_with(b"\n") {
            return Err(HeadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside the response head",
            )));
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(())
    };
    next_line(r, &mut line)?;
    let status_line = std::str::from_utf8(&line)
        .map_err(|_| HeadError::Bad(Misbehaviour::BadHead("status line is not text")))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(HeadError::Bad(Misbehaviour::BadHead("not HTTP/1.x")));
    }
    let status = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(HeadError::Bad(Misbehaviour::BadHead("bad status code")))?;
    let mut head = Head {
        status,
        ..Head::default()
    };
    loop {
        next_line(r, &mut line)?;
        if line.is_empty() {
            break;
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| HeadError::Bad(Misbehaviour::BadHead("a header is not text")))?;
        let (name, value) = text
            .split_once(':')
            .ok_or(HeadError::Bad(Misbehaviour::BadHead(
                "a header without ':'",
            )))?;
        let value = value.trim().to_string();
        let once = |slot: &mut Option<String>| match slot {
            Some(v) if *v != value => Err(HeadError::Bad(Misbehaviour::BadHead(
                "a header repeated with another value",
            ))),
            _ => {
                *slot = Some(value.clone());
                Ok(())
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or(HeadError::Bad(Misbehaviour::BadHead("bad Content-Length")))?;
                if head.content_length.is_some_and(|c| c != n) {
                    return Err(HeadError::Bad(Misbehaviour::BadHead(
                        "two different Content-Length headers",
                    )));
                }
                head.content_length = Some(n);
            }
            "content-range" => once(&mut head.content_range)?,
            "etag" => once(&mut head.etag)?,
            "location" => once(&mut head.location)?,
            "transfer-encoding" => head.transfer_encoding = true,
            _ => {}
        }
    }
    Ok(head)
}

impl Response {
    /// Check that this answer carries bytes `from..total` of a `total`-byte
    /// file (the whole file when `from` is `None`) and return how many
    /// leading bytes to skip: a `200` to a range request means the server
    /// ignored `Range` and sends the whole file, so the first `from` are
    /// skipped. A `206` must have exactly `Content-Range: bytes
    /// from-(total-1)/total` and the matching length. Another total length
    /// is [`FetchError::NotTheManifests`]; a bad range or a missing length
    /// [`FetchError::Misbehaved`]; other statuses [`FetchError::Status`].
    pub fn expect(&self, from: Option<u64>, total: u64) -> Result<u64, FetchError> {
        let url = self.url.to_string();
        let misbehaved = |what| FetchError::Misbehaved {
            url: url.clone(),
            what,
        };
        let h = &self.head;
        if !matches!(h.status, 200 | 206) {
            return Err(FetchError::Status {
                url: url.clone(),
                status: h.status,
            });
        }
        if h.transfer_encoding {
            return Err(misbehaved(Misbehaviour::NoLength));
        }
        let len = h
            .content_length
            .ok_or_else(|| misbehaved(Misbehaviour::NoLength))?;
        let not_ours = |got: u64| FetchError::NotTheManifests {
            url: url.clone(),
            what: format!("{got} bytes, the manifest says {total}"),
        };
        match (h.status, from) {
            (200, f) => {
                if len != total {
                    return Err(not_ours(len));
                }
                Ok(f.unwrap_or(0))
            }
            (_, None) => Err(misbehaved(Misbehaviour::UnaskedPartial)),
            (_, Some(f)) => {
                let bad = || {
                    misbehaved(Misbehaviour::BadContentRange {
                        got: h.content_range.clone(),
                        from: f,
                        total,
                    })
                };
                let cr = h.content_range.as_deref().ok_or_else(bad)?;
                let (start, end, size) = parse_content_range(cr).ok_or_else(bad)?;
                if size != total {
                    return Err(not_ours(size));
                }
                if start != f || end.checked_add(1) != Some(total) || len != total - f {
                    return Err(bad());
                }
                Ok(0)
            }
        }
    }

    /// The number of body bytes announced (0 for redirects and errors).
    pub fn announced(&self) -> u64 {
        self.body.announced
    }

    /// Read the whole body (at most `cap` bytes, refused from the
    /// announcement when it is larger), checking nothing follows it.
    pub fn read_all(mut self, cap: u64) -> Result<Vec<u8>, FetchError> {
        if self.body.announced > cap {
            return Err(FetchError::Misbehaved {
                url: self.url.to_string(),
                what: Misbehaviour::TooLarge {
                    len: self.body.announced,
                    cap,
                },
            });
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = self.read_body(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    /// Read body bytes into `buf`; `Ok(0)` once all announced bytes were
    /// read and the server sent nothing more. A body that ends early is
    /// [`FetchError::Io`] (retry from where it broke); one that goes on past
    /// its announced length is [`Misbehaviour::TooLong`].
    pub fn read_body(&mut self, buf: &mut [u8]) -> Result<usize, FetchError> {
        let url = || self.url.to_string();
        let b = &mut self.body;
        if b.left == 0 {
            // With `Connection: close` the server ends here; a byte more is
            // a lie about the length. (A quiet, open connection is given up.)
            let mut one = [0u8; 1];
            let _ = b
                .conn
                .get_ref()
                .inner
                .set_timeout(Some(Duration::from_millis(500)));
            return match b.conn.read(&mut one) {
                Ok(0) => Ok(0),
                Ok(_) => Err(FetchError::Misbehaved {
                    url: url(),
                    what: Misbehaviour::TooLong {
                        announced: b.announced,
                    },
                }),
                Err(_) => Ok(0),
            };
        }
        let want = buf.len().min(b.left.min(usize::MAX as u64) as usize);
        loop {
            match b.conn.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(FetchError::Io {
                        url: url(),
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the body ended after {} of {} bytes",
                                b.announced - b.left,
                                b.announced
                            ),
                        ),
                    })
                }
                Ok(n) => {
                    b.left -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_or_tls(&url(), e)),
            }
        }
    }
}

impl Stream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.sock.set_read_timeout(t),
        }
    }
}

/// `bytes START-END/TOTAL` (no `*`, no other unit).
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end, total) = (num(start)?, num(end)?, num(total)?);
    (start <= end && end < total).then_some((start, end, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, Misbehaviour> {
        read_head(&mut io::Cursor::new(text.as_bytes().to_vec())).map_err(|e| match e {
            HeadError::Bad(m) => m,
            HeadError::Io(e) => panic!("io: {e}"),
        })
    }

    fn response(h: Head) -> Response {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        Response {
            url: Url::parse("http://h/p").unwrap(),
            head: h,
            body: Body {
                conn: BufReader::new(Counted {
                    inner: Stream::Plain(sock),
                    count: Arc::default(),
                }),
                left: 0,
                announced: 0,
            },
        }
    }

    #[test]
    fn heads_parse_and_bad_heads_are_refused() {
        let h = head("HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 90-99/100\r\nETag: \"x\"\r\n\r\n").unwrap();
        assert_eq!(h.status, 206);
        assert_eq!(h.content_length, Some(10));
        assert_eq!(h.content_range.as_deref(), Some("bytes 90-99/100"));
        assert!(head("SSH-2.0\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 2000 x\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD_LEN));
        assert_eq!(head(&long), Err(Misbehaviour::HeadTooLarge(MAX_HEAD_LEN)));
    }

    #[test]
    fn content_range_must_be_exactly_the_range_asked_for() {
        let h = |status, len, cr: Option<&str>| Head {
            status,
            content_length: len,
            content_range: cr.map(str::to_string),
            ..Head::default()
        };
        assert_eq!(
            response(h(206, Some(10), Some("bytes 90-99/100")))
                .expect(Some(90), 100)
                .unwrap(),
            0
        );
        // The server ignored Range: skip what we have.
        assert_eq!(
            response(h(200, Some(100), None))
                .expect(Some(90), 100)
                .unwrap(),
            90
        );
        for (status, len, cr) in [
            (206, Some(10), Some("bytes 80-89/100")),
            (206, Some(10), Some("bytes 90-98/100")),
            (206, Some(11), Some("bytes 90-99/100")),
            (206, Some(10), None),
            (206, Some(10), Some("bytes */100")),
            (206, Some(10), Some("items 90-99/100")),
            (206, None, Some("bytes 90-99/100")),
        ] {
            let e = response(h(status, len, cr))
                .expect(Some(90), 100)
                .unwrap_err();
            assert!(matches!(e, FetchError::Misbehaved { .. }), "{cr:?}: {e}");
        }
        let other = response(h(206, Some(10), Some("bytes 90-99/200"))).expect(Some(90), 100);
        assert!(matches!(other, Err(FetchError::NotTheManifests { .. })));
        let other = response(h(200, Some(99), None)).expect(None, 100);
        assert!(matches!(other, Err(FetchError::NotTheManifests { .. })));
        let unasked = response(h(206, Some(10), Some("bytes 90-99/100"))).expect(None, 100);
        assert!(matches!(unasked, Err(FetchError::Misbehaved { .. })));
        let status = response(h(503, Some(0), None))
            .expect(None, 100)
            .unwrap_err();
        assert!(status.is_retryable());
    }
}
