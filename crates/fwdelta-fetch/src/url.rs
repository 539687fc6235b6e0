//! `http://` and `https://` URLs: just what a patch download needs (scheme,
//! host, port, path with query), parsed strictly. No user info, no
//! fragments, no percent-decoding (the path is sent as given).

use crate::error::FetchError;
use std::fmt;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (only when the caller allows it).
    Http,
    /// HTTP over TLS.
    Https,
}

/// A parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or address as written (an IPv6 address without brackets).
    pub host: String,
    /// Port (80 or 443 unless given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Longest URL accepted (bytes).
pub const MAX_URL_LEN: usize = 2048;

impl Url {
    /// Parse `text`. Refuses other schemes, user info, fragments, control
    /// characters and spaces, empty hosts and ports out of range.
    ///
    /// ```
    /// use fwdelta_fetch::url::{Scheme, Url};
    /// let u = Url::parse("https://updates.example:8443/acme/manifest.json").unwrap();
    /// assert_eq!((u.scheme, u.port, u.path.as_str()), (Scheme::Https, 8443, "/acme/manifest.json"));
    /// assert_eq!(u.join("p.fwd").to_string(), "https://updates.example:8443/acme/p.fwd");
    /// assert!(Url::parse("ftp://x/y").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Url, FetchError> {
        let bad = |why: &'static str| FetchError::BadUrl {
            url: text.chars().take(200).collect(),
            why,
        };
        if text.len() > MAX_URL_LEN {
            return Err(bad("too long"));
        }
        if text
            .chars()
            .any(|c| c.is_control() || c == ' ' || !c.is_ascii())
        {
            return Err(bad("control characters, spaces or non-ASCII"));
        }
        let (scheme, rest) = if let Some(r) = text.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (Scheme::Https, r)
        } else {
            return Err(bad("only http:// and https:// URLs are supported"));
        };
        if rest.contains('#') {
            return Err(bad("fragments are not supported"));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(bad("user names and passwords in URLs are not supported"));
        }
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("bad port"))?,
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return Err(bad("bad host"));
        }
        Ok(Url {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// The URL of `name` in the same directory (the last path segment, and
    /// any query, replaced). No I/O.
    pub fn join(&self, name: &str) -> Url {
        let path = self.path.split('?').next().unwrap_or("/");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        Url {
            path: format!("{dir}{name}"),
            ..self.clone()
        }
    }

    /// Resolve a `Location` header against this URL: absolute
    /// (`http[s]://...`) or absolute-path (`/...`) references; relative
    /// ones are resolved in this URL's directory.
    pub fn resolve(&self, location: &str) -> Result<Url, FetchError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Url::parse(location)
        } else if location.starts_with("//") {
            Err(FetchError::BadUrl {
                url: location.chars().take(200).collect(),
                why: "scheme-relative redirects are not supported",
            })
        } else if location.starts_with('/') {
            Url::parse(&format!("{}{location}", self.origin()))
        } else {
            Url::parse(&self.join(location).to_string())
        }
    }

    /// Same scheme, host and port.
    pub fn same_origin(&self, other: &Url) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }

    /// `host` or `host:port` as the `Host` header wants it.
    pub fn host_header(&self) -> String {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        let default = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        match self.port == default {
            true => host,
            false => format!("{host}:{}", self.port),
        }
    }

    fn origin(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}", self.host_header())
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin(), self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let u = Url::parse("http://127.0.0.1:8080/r/manifest.json").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 8080);
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/r/manifest.json");
        let v6 = Url::parse("https://[::1]:9/x").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 9));
        assert_eq!(v6.host_header(), "[::1]:9");
        assert_eq!(Url::parse("https://h").unwrap().path, "/");
        for bad in [
            "file:///etc/passwd",
            "http://user:pw@h/x",
            "http:///x",
            "http://h:0/",
            "http://h:99999/",
            "http://h/a b",
            "http://h/a\r\nX: y",
            "http://h/x#frag",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn joins_and_resolves() {
        let u = Url::parse("http://h:81/a/b/manifest.json?x=1").unwrap();
        assert_eq!(
            u.join("manifest.sig").to_string(),
            "http://h:81/a/b/manifest.sig"
        );
        assert_eq!(u.resolve("/z").unwrap().to_string(), "http://h:81/z");
        assert_eq!(
            u.resolve("c.fwd").unwrap().to_string(),
            "http://h:81/a/b/c.fwd"
        );
        let other = u.resolve("https://o/p").unwrap();
        assert!(!u.same_origin(&other));
        assert!(u.resolve("//evil/x").is_err());
    }
}
