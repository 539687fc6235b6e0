//! The error of the applier's own I/O traits ([`crate::OldImage`],
//! [`crate::Sink`]): a platform error kept whole under `std`, a static
//! reason or a driver's error code without it.

#[allow(unused_imports)]
use crate::prelude::*;
use core::fmt;

/// Why reading the old image or writing the new one failed.
///
/// With the `std` feature, any [`std::io::Error`] converts into it (so `?`
/// works in implementations over files) and back. Without it, a flash
/// driver reports a static reason ([`IoError::new`]) or its own error code
/// ([`IoError::code`]). Costs no allocation of its own.
#[derive(Debug)]
pub struct IoError(Repr);

#[derive(Debug)]
enum Repr {
    Reason(&'static str),
    Code(&'static str, i32),
    Short(&'static str, u64, u64),
    #[cfg(feature = "std")]
    Std(std::io::Error),
}

impl IoError {
    /// An error described by `reason` (e.g. "flash write failed").
    pub const fn new(reason: &'static str) -> IoError {
        IoError(Repr::Reason(reason))
    }

    /// An error code `code` returned by `what` (e.g. a driver call or a C
    /// callback).
    pub const fn code(what: &'static str, code: i32) -> IoError {
        IoError(Repr::Code(what, code))
    }

    /// Only `got` of the `wanted` bytes of `what` could be read back.
    pub const fn short(what: &'static str, got: u64, wanted: u64) -> IoError {
        IoError(Repr::Short(what, got, wanted))
    }

    /// The platform error inside, if it is one.
    #[cfg(feature = "std")]
    pub fn as_io(&self) -> Option<&std::io::Error> {
        match &self.0 {
            Repr::Std(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Reason(r) => f.write_str(r),
            Repr::Code(what, code) => write!(f, "{what} returned {code}"),
            Repr::Short(what, got, wanted) => {
                write!(
                    f,
                    "{what}: only {got} of the {wanted} bytes could be read back"
                )
            }
            #[cfg(feature = "std")]
            Repr::Std(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for IoError {}

#[cfg(feature = "std")]
impl From<std::io::Error> for IoError {
    fn from(e: std::io::Error) -> IoError {
        IoError(Repr::Std(e))
    }
}

#[cfg(feature = "std")]
impl From<std::io::ErrorKind> for IoError {
    fn from(k: std::io::ErrorKind) -> IoError {
        IoError(Repr::Std(k.into()))
    }
}

#[cfg(feature = "std")]
impl From<IoError> for std::io::Error {
    fn from(e: IoError) -> std::io::Error {
        match e.0 {
            Repr::Std(e) => e,
            other => std::io::Error::other(IoError(other).to_string()),
        }
    }
}
