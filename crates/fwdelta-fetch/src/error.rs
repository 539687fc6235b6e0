//! Why a download failed, sorted by what the caller should do about it:
//! retry ([`FetchError::is_retryable`]), refuse the server
//! ([`FetchError::Misbehaved`]), refuse the channel ([`FetchError::PinMismatch`],
//! [`FetchError::PlainHttpRefused`]).

use std::io;
use thiserror::Error;

/// A download failure.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL cannot be used.
    #[error("bad URL {url}: {why}")]
    BadUrl {
        /// The URL (at most 200 characters of it).
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// An `http://` URL (or a redirect to one) where only TLS is allowed.
    #[error(
        "{url}: plain HTTP is not allowed (only trusted channels; pass --allow-http to permit it)"
    )]
    PlainHttpRefused {
        /// The URL.
        url: String,
    },
    /// An `https://` URL but no pinned certificate authority to check it.
    #[error("{url}: no server certificate authority is pinned in the device state (fwdelta device pin-server)")]
    NoPin {
        /// The URL.
        url: String,
    },
    /// The server could not be reached (name lookup, connect, connect timeout).
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// The socket error.
        source: io::Error,
    },
    /// The connection broke, stalled past the timeout or ended early.
    #[error("{url}: connection lost: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The socket error.
        source: io::Error,
    },
    /// The TLS handshake failed for another reason than the certificate.
    #[error("{url}: TLS failed: {source}")]
    Tls {
        /// The URL.
        url: String,
        /// rustls's error.
        source: rustls::Error,
    },
    /// The server's certificate does not chain to the pinned authority (or
    /// does not name the host).
    #[error("{url}: the server's TLS certificate does not match the pinned authority: {source}")]
    PinMismatch {
        /// The URL.
        url: String,
        /// rustls's verdict.
        source: rustls::Error,
    },
    /// The server answered with an error status.
    #[error("{url}: the server answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The server broke the protocol or its own announcement.
    #[error("{url}: the server misbehaved: {what}")]
    Misbehaved {
        /// The URL.
        url: String,
        /// What it did.
        what: Misbehaviour,
    },
    /// A redirect to another host, which the policy forbids.
    #[error("{from}: redirected to another host ({to}); refused by policy")]
    ForeignHost {
        /// The URL that redirected.
        from: String,
        /// Where it pointed.
        to: String,
    },
    /// The file changed on the server during the download (its `ETag`
    /// differs from the first answer's): what was applied must be dropped.
    #[error("{url}: the file changed on the server during the download (ETag {was} became {now})")]
    Changed {
        /// The URL.
        url: String,
        /// The first answer's ETag.
        was: String,
        /// This answer's.
        now: String,
    },
    /// The server's file is not the one the manifest names (another length,
    /// or its ETag changed past the allowed restarts).
    #[error("{url}: the server's file is not the one the manifest names: {what}")]
    NotTheManifests {
        /// The URL.
        url: String,
        /// How it differs.
        what: String,
    },
}

/// Ways a server can break HTTP or its own word.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Misbehaviour {
    /// The response head is not HTTP/1.x (or a header is malformed).
    #[error("malformed response head ({0})")]
    BadHead(&'static str),
    /// The response head is longer than the cap.
    #[error("response head over {0} bytes")]
    HeadTooLarge(usize),
    /// A body without `Content-Length` (chunked, or close-delimited).
    #[error("no Content-Length (chunked or close-delimited bodies are not accepted)")]
    NoLength,
    /// More body bytes than `Content-Length` announced.
    #[error("more bytes than the {announced} announced")]
    TooLong {
        /// The announced length.
        announced: u64,
    },
    /// A body larger than the caller's cap.
    #[error("a body of {len} bytes, over the cap of {cap}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// A `206` whose `Content-Range` is not the range asked for.
    #[error("Content-Range {got:?} does not match the request (bytes {from}- of {total})")]
    BadContentRange {
        /// The header as sent (None: missing).
        got: Option<String>,
        /// First byte asked for.
        from: u64,
        /// Total length expected.
        total: u64,
    },
    /// A `206` answer to a request without `Range`.
    #[error("a partial answer (206) to a request for the whole file")]
    UnaskedPartial,
    /// A redirect back to a URL already visited.
    #[error("redirect loop")]
    RedirectLoop,
    /// Too many redirects in a row.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// A redirect without a usable `Location`.
    #[error("a redirect without a usable Location")]
    BadRedirect,
}

impl FetchError {
    /// Whether trying again later may succeed: a lost or stalled
    /// connection, an unreachable server, a TLS failure other than the
    /// certificate, a 5xx, 408 or 429 status.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Connect { .. } | FetchError::Io { .. } | FetchError::Tls { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            _ => false,
        }
    }
}
