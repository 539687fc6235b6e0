//! The trailer: an end tag and the hash closing the patch's hash chain (see
//! [`crate::chain`]). It proves the patch arrived whole and unmodified; a later
//! format feature signs this hash.

/// Tag byte opening the trailer.
pub const END_TAG: u8 = b'E';

/// Trailer length: tag and hash.
pub const TRAILER_LEN: usize = 1 + crate::HASH_LEN;
