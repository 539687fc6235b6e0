//! The network side of a terminal update: a small HTTP/1.1 client (plain or
//! TLS through rustls, the server's authority pinned by the caller) that
//! gives byte-exact control of what a resumable download depends on:
//! `Range` requests, `Content-Range` checked against the range asked for,
//! `Content-Length` required and held to, redirects bounded and kept on the
//! original host unless allowed, stalls timed out, every byte read counted.
//!
//! It knows nothing of patches: `fwdelta fetch` (the CLI) streams the body
//! into `fwdelta_apply::Applier` and decides when to resume or give up.
//!
//! ```no_run
//! use fwdelta_fetch::{Client, ClientOptions, url::Url};
//! let mut opts = ClientOptions::default();
//! opts.allow_plain_http = true;
//! let client = Client::new(opts);
//! let url = Url::parse("http://127.0.0.1:8080/release/manifest.json")?;
//! let manifest = client.get(&url, None)?.read_all(16 << 20)?;
//! # Ok::<(), fwdelta_fetch::FetchError>(())
//! ```

pub mod error;
pub mod http;
pub mod url;

pub use error::{FetchError, Misbehaviour};
pub use http::{pinned_tls, Client, ClientOptions, Head, Response};
