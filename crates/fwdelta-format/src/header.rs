//! The patch header: what the patch turns into what, how the body is coded, and
//! what the applier needs. Parsed in two steps so a streaming reader can learn the
//! header's length from its first [`Header::PREFIX_LEN`] bytes.
//!
//! Wire form (version 7): magic (4), version (1), header_len (varint), flags
//! (varint), coding (1: codec in the low nibble, layout in the high one),
//! window_log (1), old check (8), new hash (32), old_len (varint), new_len −
//! old_len (zig-zag varint), segment_count (varint), apply_memory above the
//! memory model's floor (varint), extensions, header check (8). See
//! `docs/FORMAT.md`.

use crate::address_map::AddressMap;
use crate::error::FormatError;
use crate::memory::MemoryModel;
#[allow(unused_imports)]
use crate::prelude::*;
use crate::reference_rewriter::Arch;
use crate::release::{Release, EXT_RELEASE};
use crate::signature::MAX_SIGNED_SEGMENTS;
use crate::varint;
use crate::{check_of, CHECK_LEN, FORMAT_VERSION, HASH_LEN, LEGACY_MAGIC, MAGIC, MAX_IMAGE_LEN};

/// Compression codec of segment payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Payloads are the record stream itself, uncompressed: for appliers with
    /// less memory than any zstd decoder needs.
    Stored,
    /// Each payload is one magicless zstd frame.
    Zstd,
    /// Each payload is one raw LZMA2 stream (no container, ended by LZMA2's
    /// end marker) whose dictionary is the header's window. Smaller than zstd
    /// on record streams, slower to decode (see [`crate::MemoryModel`]).
    Lzma2,
}

impl Codec {
    /// Wire id.
    pub fn id(self) -> u8 {
        match self {
            Codec::Stored => 0,
            Codec::Zstd => 1,
            Codec::Lzma2 => 2,
        }
    }
    /// Name for humans and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Stored => "stored",
            Codec::Zstd => "zstd",
            Codec::Lzma2 => "lzma2",
        }
    }
    fn from_id(id: u8) -> Result<Self, FormatError> {
        match id {
            0 => Ok(Codec::Stored),
            1 => Ok(Codec::Zstd),
            2 => Ok(Codec::Lzma2),
            other => Err(FormatError::UnknownCodec(other)),
        }
    }
}

/// How a segment's decompressed stream is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Records of (diff length, literal length, seek) each followed by its diff
    /// bytes then its literal bytes, in one stream (see [`crate::record`]).
    Interleaved,
    /// The same records cut into three streams — heads, diff bytes, literal
    /// bytes — each compressed on its own and interleaved in blocks (see
    /// [`crate::split_block`]). Needs a compressed codec; not in-place.
    Split,
    /// As [`Layout::Split`], but the heads stream is coded by the head model
    /// ([`crate::head_model`]) and the diff stream by the diff model
    /// ([`crate::diff_model`]), which predicts each difference byte from the
    /// old bytes under it; literals use the codec. Needs a compressed codec;
    /// not in-place.
    Modelled,
}

impl Layout {
    /// Whether segments hold three streams in blocks ([`Layout::Split`] and
    /// [`Layout::Modelled`]).
    pub fn is_split(self) -> bool {
        self != Layout::Interleaved
    }
}

impl Layout {
    /// Wire id.
    pub fn id(self) -> u8 {
        match self {
            Layout::Interleaved => 1,
            Layout::Split => 2,
            Layout::Modelled => 3,
        }
    }
    /// Name for humans and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Interleaved => "interleaved-records",
            Layout::Split => "split-streams",
            Layout::Modelled => "split-streams-modelled",
        }
    }
    fn from_id(id: u8) -> Result<Self, FormatError> {
        match id {
            1 => Ok(Layout::Interleaved),
            2 => Ok(Layout::Split),
            3 => Ok(Layout::Modelled),
            other => Err(FormatError::UnknownLayout(other)),
        }
    }
}

/// Flag: an in-place patch (see `docs/FORMAT.md`, "In-place patches"). Its
/// header carries [`EXT_IN_PLACE`]; its segments are cells, in apply order.
pub const FLAG_IN_PLACE: u16 = 1;

/// Flag: a signed patch. Its header carries [`EXT_RELEASE`] (what it installs,
/// for which product), a [`crate::signature::SignatureSection`] follows the
/// header, and its segments store no checks of their own (the section's table
/// holds them all). See `docs/FORMAT.md`, "Signed patches".
pub const FLAG_SIGNED: u16 = 2;

/// Flag bits this reader understands. Later features claim other bits and
/// must be refused by readers that predate them.
pub const KNOWN_FLAGS: u16 = FLAG_IN_PLACE | FLAG_SIGNED;

/// Critical header extension of in-place patches: one byte, log2 of the cell
/// size (the applier's scratch buffer).
pub const EXT_IN_PLACE: u16 = 0x8001;

/// Critical header extension of executable-aware patches: the instruction set
/// (one byte, [`Arch::id`]) and the [`AddressMap`] wire form. The applier reads
/// the old image through a [`crate::reference_rewriter::ReferenceRewriter`].
pub const EXT_CODE_REFS: u16 = 0x8002;

/// Critical header extension of patches whose literal runs are stored through
/// the [`crate::literal_filter`] of an instruction set (one byte,
/// [`Arch::id`]).
pub const EXT_LITERAL_FILTER: u16 = 0x8003;

/// Longest extension value (its length is a `u16`).
pub const MAX_EXTENSION_LEN: usize = u16::MAX as usize;

/// What an executable-aware patch predicts: the instruction set and the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRefs {
    /// Instruction set whose references are rewritten.
    pub arch: Arch,
    /// Where old offsets are expected in the new image.
    pub map: AddressMap,
}

impl CodeRefs {
    /// The extension value: arch id, then the map.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.arch.id()];
        self.map.encode(&mut v);
        v
    }

    /// Bytes the extension entry takes in a header: type, length, value.
    pub fn extension_len(&self) -> usize {
        4 + self.encode().len()
    }
}

/// Smallest in-place cell (log2): 4 KiB, a common flash page/sector size.
pub const MIN_CELL_LOG: u8 = 12;
/// Largest in-place cell (log2): 16 MiB.
pub const MAX_CELL_LOG: u8 = 24;
/// Most cells an in-place patch may have (the applier keeps one bit per cell).
pub const MAX_CELLS: u64 = 1 << 16;

/// Smallest decoder window the format admits (log2).
pub const MIN_WINDOW_LOG: u8 = 10;
/// Largest decoder window the format admits (log2).
pub const MAX_WINDOW_LOG: u8 = 30;

/// Decoded patch header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Feature flags; a reader refuses bits outside [`KNOWN_FLAGS`].
    pub flags: u16,
    /// Exact length of the old image the patch applies to.
    pub old_len: u64,
    /// First [`CHECK_LEN`] bytes of the old image's BLAKE3: names the base version. It
    /// guards against applying to the wrong image; what the output must be is
    /// fixed by `new_hash`, which is complete.
    pub old_check: [u8; CHECK_LEN],
    /// Exact length of the image the patch produces.
    pub new_len: u64,
    /// BLAKE3 of the produced image.
    pub new_hash: [u8; HASH_LEN],
    /// Payload codec.
    pub codec: Codec,
    /// log2 of the decoder window every payload fits in.
    pub window_log: u8,
    /// Decompressed stream layout.
    pub layout: Layout,
    /// Number of segments in the body.
    pub segment_count: u32,
    /// Bytes of memory the applier needs (decoder and its own buffers, plus the
    /// cell buffer and table of an in-place patch, or the map and rewriter of
    /// an executable-aware one), as computed by
    /// [`MemoryModel::required_for_layout`] and its extras at write time.
    /// Never below [`Self::memory_floor`]: the wire form stores only the
    /// excess over it, so an ordinary patch spends one byte on the claim.
    pub apply_memory: u64,
    /// For in-place patches, log2 of the cell size; `None` otherwise.
    pub cell_log: Option<u8>,
    /// For executable-aware patches, the references the applier predicts.
    pub code_refs: Option<CodeRefs>,
    /// The instruction set whose [`crate::literal_filter`] the literal runs
    /// went through; `None` for literals stored as they are.
    pub literal_filter: Option<Arch>,
    /// For signed patches ([`FLAG_SIGNED`]), what the patch installs and for
    /// which product; `None` for unsigned ones.
    pub release: Option<Release>,
}

impl Header {
    /// Bytes needed to learn the full header length: magic, version and the
    /// header_len varint (at most [`Self::LEN_VARINT_MAX`] bytes).
    pub const PREFIX_LEN: usize = 5 + Self::LEN_VARINT_MAX;
    /// Longest header_len varint: [`Self::MAX_LEN`] fits in three bytes.
    pub const LEN_VARINT_MAX: usize = 3;
    /// Bytes of the fixed-width fields after the flags: coding, window, old
    /// check, new hash.
    const FIXED_LEN: usize = 2 + CHECK_LEN + HASH_LEN;
    /// Length of the shortest possible header: magic, version, one-byte
    /// header_len and flags, the fixed-width fields, four one-byte varints, the
    /// check.
    pub const MIN_LEN: usize = 5 + 1 + 1 + Self::FIXED_LEN + 4 + CHECK_LEN;
    /// Length of the longest header without extensions (flags and four
    /// maximal varints).
    pub const MAX_BASE_LEN: usize =
        5 + Self::LEN_VARINT_MAX + 5 * varint::MAX_VARINT_LEN + Self::FIXED_LEN + CHECK_LEN;
    /// Longest header a patch without an address map may have (4 KiB): only
    /// executable-aware headers are longer.
    pub const PLAIN_MAX_LEN: usize = 4096;
    /// Longest header accepted (bounds the buffer a streaming parser needs):
    /// 4 KiB plus one maximal extension (an executable-aware patch's map).
    pub const MAX_LEN: usize = Self::PLAIN_MAX_LEN + 4 + MAX_EXTENSION_LEN;

    /// Serialise to bytes (with the in-place extension when `cell_log` is set,
    /// the code extension when `code_refs` is, and the literal-filter
    /// extension when `literal_filter` is). Cost: the fields built once, one
    /// more allocation for the whole header.
    /// Panics if the code extension exceeds [`MAX_EXTENSION_LEN`] (writers
    /// size the map to fit, see `fwdelta-diff`'s address mapper) or if
    /// `apply_memory` is below [`Self::memory_floor`], which the wire form
    /// cannot express.
    pub fn encode(&self) -> Vec<u8> {
        let fields = self.fields();
        let len = Self::total_len(fields.len());
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&MAGIC);
        b.push(FORMAT_VERSION);
        varint::put_u64(&mut b, len as u64);
        b.extend_from_slice(&fields);
        let check = check_of(&b);
        b.extend_from_slice(&check);
        debug_assert_eq!(b.len(), len);
        b
    }

    /// Everything between the header_len varint and the check: flags, fixed
    /// fields, varints, extensions.
    fn fields(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::MAX_BASE_LEN);
        varint::put_u64(&mut b, u64::from(self.flags));
        b.push(self.codec.id() | self.layout.id() << 4);
        b.push(self.window_log);
        b.extend_from_slice(&self.old_check);
        b.extend_from_slice(&self.new_hash);
        varint::put_u64(&mut b, self.old_len);
        varint::put_i64(&mut b, self.len_change());
        varint::put_u64(&mut b, u64::from(self.segment_count));
        varint::put_u64(&mut b, self.memory_excess());
        if let Some(cell_log) = self.cell_log {
            b.extend_from_slice(&EXT_IN_PLACE.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.push(cell_log);
        }
        if let Some(code) = &self.code_refs {
            let v = code.encode();
            assert!(v.len() <= MAX_EXTENSION_LEN, "code extension too long");
            b.extend_from_slice(&EXT_CODE_REFS.to_le_bytes());
            b.extend_from_slice(&(v.len() as u16).to_le_bytes());
            b.extend_from_slice(&v);
        }
        if let Some(arch) = self.literal_filter {
            b.extend_from_slice(&EXT_LITERAL_FILTER.to_le_bytes());
            b.extend_from_slice(&1u16.to_le_bytes());
            b.push(arch.id());
        }
        if let Some(release) = &self.release {
            let v = release.encode();
            b.extend_from_slice(&EXT_RELEASE.to_le_bytes());
            b.extend_from_slice(&(v.len() as u16).to_le_bytes());
            b.extend_from_slice(&v);
        }
        b
    }

    /// Validate the first [`Self::PREFIX_LEN`] bytes and return the total header
    /// length they declare. Only the framing is examined here (magic and
    /// length), which every format version from 3 on keeps (the 8-byte magic of
    /// versions 1 and 2 is refused as an old version); the version is read after the
    /// header check in [`Self::parse`], so that damage is never mistaken for a
    /// newer version. Garbage is still refused after 8 bytes.
    pub fn parse_prefix(prefix: &[u8; Self::PREFIX_LEN]) -> Result<usize, FormatError> {
        if prefix[..] == LEGACY_MAGIC {
            return Err(FormatError::LegacyVersion {
                supported: FORMAT_VERSION,
            });
        }
        if prefix[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        // At most three bytes: a varint still open after them is >= 2^21,
        // out of range anyway.
        let len = match varint::get_u64(&prefix[5..]) {
            Ok(Some((len, _))) => u32::try_from(len).unwrap_or(u32::MAX),
            _ => 1 << 21,
        };
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&(len as usize)) {
            return Err(FormatError::BadHeaderLength(len));
        }
        Ok(len as usize)
    }

    /// Parse and validate a whole header (`bytes.len()` must be the length
    /// returned by [`Self::parse_prefix`]). Checks the header check first, then
    /// the version, then every field: flags, sizes, codec, window, layout,
    /// segment count and the memory claim. Cost: one hash over at most 4 KiB,
    /// no allocation.
    pub fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
        let mut prefix = [0u8; Self::PREFIX_LEN];
        prefix.copy_from_slice(
            bytes
                .get(..Self::PREFIX_LEN)
                .ok_or(FormatError::BadHeaderLength(0))?,
        );
        let len = Self::parse_prefix(&prefix)?;
        if bytes.len() != len {
            return Err(FormatError::BadHeaderLength(bytes.len() as u32));
        }
        let (body, check) = bytes.split_at(len - CHECK_LEN);
        if check_of(body) != check {
            return Err(FormatError::HeaderCheck);
        }
        let version = bytes[4];
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let mut r = Fields {
            bytes: body,
            pos: 5,
        };
        r.varint("header_len")?; // read by parse_prefix; may be non-minimal
        let flags = r.varint("flags")?;
        if flags & !u64::from(KNOWN_FLAGS) != 0 {
            return Err(FormatError::UnsupportedFlags(
                flags & !u64::from(KNOWN_FLAGS),
            ));
        }
        let flags = flags as u16;
        let [coding] = r.take::<1>()?;
        let codec = Codec::from_id(coding & 0x0f)?;
        let layout = Layout::from_id(coding >> 4)?;
        let [window_log] = r.take::<1>()?;
        let old_check = r.take::<CHECK_LEN>()?;
        let new_hash = r.take::<HASH_LEN>()?;
        let old_len = r.varint("old_len")?;
        let len_change = r.signed_varint("new_len")?;
        let segment_count = r.varint("segment_count")?;
        let memory_excess = r.varint("apply_memory")?;
        // A u64 plus an i64 always fits i128; sizes are checked below.
        let new_len = i128::from(old_len) + i128::from(len_change);
        let new_len = u64::try_from(new_len).map_err(|_| FormatError::BadField {
            field: "new_len",
            detail: format!("a {old_len}-byte old image cannot change by {len_change}"),
        })?;

        for (which, len) in [("old", old_len), ("new", new_len)] {
            if len > MAX_IMAGE_LEN {
                return Err(FormatError::AbsurdSize {
                    which,
                    len,
                    limit: MAX_IMAGE_LEN,
                });
            }
        }
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&window_log) {
            return Err(FormatError::BadWindow(window_log));
        }
        // Every segment produces at least one byte, so there can be no more
        // segments than new bytes (and none at all for an empty new image).
        if segment_count > new_len
            || (new_len > 0 && segment_count == 0)
            || segment_count > u64::from(u32::MAX)
        {
            return Err(FormatError::BadField {
                field: "segment_count",
                detail: format!("{segment_count} segments cannot produce {new_len} bytes"),
            });
        }
        let segment_count = segment_count as u32;
        let Extensions {
            cell_log,
            code_refs,
            literal_filter,
            release,
        } = check_extensions(&body[r.pos..], old_len)?;
        let signed = flags & FLAG_SIGNED != 0;
        if release.is_some() != signed {
            return Err(FormatError::BadField {
                field: "flags",
                detail: "signed flag and release statement disagree".into(),
            });
        }
        if signed && segment_count > MAX_SIGNED_SEGMENTS {
            return Err(FormatError::BadField {
                field: "segment_count",
                detail: format!(
                    "a signed patch has at most {MAX_SIGNED_SEGMENTS} segments, not {segment_count}"
                ),
            });
        }
        if cell_log.is_some() && (code_refs.is_some() || literal_filter.is_some()) {
            return Err(FormatError::BadField {
                field: "extensions",
                detail: "an in-place patch cannot carry code references or a literal filter".into(),
            });
        }
        if cell_log.is_some() != (flags & FLAG_IN_PLACE != 0) {
            return Err(FormatError::BadField {
                field: "flags",
                detail: "in-place flag and in-place extension disagree".into(),
            });
        }
        if let Some(cl) = cell_log {
            let cells = new_len.div_ceil(1u64 << cl);
            if cells > MAX_CELLS || u64::from(segment_count) != cells {
                return Err(FormatError::BadField {
                    field: "segment_count",
                    detail: format!(
                        "an in-place patch of {new_len} bytes in 2^{cl}-byte cells has {cells} cells \
                         (at most {MAX_CELLS}), not {segment_count} segments"
                    ),
                });
            }
        }
        if layout.is_split() && (codec == Codec::Stored || cell_log.is_some()) {
            return Err(FormatError::BadField {
                field: "layout",
                detail: "split streams need a compressed codec and cannot be in-place".into(),
            });
        }
        let floor = memory_floor(codec, window_log, layout, cell_log, segment_count, signed);
        let apply_memory =
            floor
                .checked_add(memory_excess)
                .ok_or_else(|| FormatError::BadField {
                    field: "apply_memory",
                    detail: format!("claims {memory_excess} bytes above {floor}: more than 2^64"),
                })?;
        // The floor covers everything but an executable-aware patch's map and
        // rewriter, whose size depends on this header's length: that part is
        // in the stored excess and checked here.
        let needed = floor
            + code_refs.as_ref().map_or(0, |c| {
                MemoryModel::code_refs_extra(len as u64, c.map.runs() as u64)
            });
        if apply_memory < needed {
            return Err(FormatError::BadField {
                field: "apply_memory",
                detail: format!(
                    "claims {apply_memory} bytes but its code references need {needed}"
                ),
            });
        }

        Ok(Header {
            flags,
            old_len,
            old_check,
            new_len,
            new_hash,
            codec,
            window_log,
            layout,
            segment_count,
            apply_memory,
            cell_log,
            code_refs,
            literal_filter,
            release,
        })
    }

    /// Length this header occupies when encoded by [`Self::encode`].
    pub fn encoded_len(&self) -> usize {
        Self::total_len(self.fields_len())
    }

    /// Length of a header whose fields (between `header_len` and the check)
    /// take `fields_len` bytes.
    fn total_len(fields_len: usize) -> usize {
        let rest = 5 + fields_len + CHECK_LEN;
        // header_len counts its own varint: 1..=3 bytes.
        let mut n = 1;
        while varint::len_u64((rest + n) as u64) > n {
            n += 1;
        }
        rest + n
    }

    /// `new_len − old_len`, as the header stores it. Both lengths are at most
    /// [`MAX_IMAGE_LEN`] in any header that parses, so the difference fits.
    fn len_change(&self) -> i64 {
        self.new_len.wrapping_sub(self.old_len) as i64
    }

    /// Length of [`Self::fields`], without building it.
    fn fields_len(&self) -> usize {
        varint::len_u64(u64::from(self.flags))
            + 2
            + CHECK_LEN
            + HASH_LEN
            + varint::len_u64(self.old_len)
            + varint::len_i64(self.len_change())
            + varint::len_u64(u64::from(self.segment_count))
            + varint::len_u64(self.memory_excess())
            + if self.cell_log.is_some() { 5 } else { 0 }
            + self.code_refs.as_ref().map_or(0, CodeRefs::extension_len)
            + if self.literal_filter.is_some() { 5 } else { 0 }
            + self.release.as_ref().map_or(0, |r| 4 + r.encoded_len())
    }

    /// An upper bound of [`Self::encoded_len`] whatever `apply_memory` is
    /// (at least [`Self::memory_floor`]): a writer whose memory claim depends
    /// on the header's length (executable-aware patches) sizes the claim with
    /// it.
    pub fn encoded_len_bound(&self) -> usize {
        self.encoded_len() - varint::len_u64(self.memory_excess())
            + varint::MAX_VARINT_LEN
            + (Self::LEN_VARINT_MAX - 1)
    }

    /// The least `apply_memory` this header's codec, window, layout and
    /// in-place cells allow (the memory model's figure, *docs/FORMAT.md*,
    /// *Memory model*); an executable-aware patch claims more, for its map.
    pub fn memory_floor(&self) -> u64 {
        memory_floor(
            self.codec,
            self.window_log,
            self.layout,
            self.cell_log,
            self.segment_count,
            self.is_signed(),
        )
    }

    /// Whether this is a signed patch ([`FLAG_SIGNED`]).
    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// What the wire form stores for `apply_memory`: the excess over
    /// [`Self::memory_floor`] (0 for ordinary patches written by fwdelta).
    fn memory_excess(&self) -> u64 {
        let floor = self.memory_floor();
        assert!(
            self.apply_memory >= floor,
            "apply_memory {} is below the memory model's {floor}",
            self.apply_memory
        );
        self.apply_memory - floor
    }

    /// Whether segment `index` ends with a stored check. Every segment of an
    /// in-place patch does (they are verified before any is written over the
    /// old image); in an ordinary patch every segment but the last does: the
    /// last one is covered by the new image's hash, which is verified at the
    /// very moment its check would be, when its last byte has been produced.
    ///
    /// A signed patch stores no check after any segment: its signature
    /// section's table holds every segment's check, the last one's too.
    pub fn segment_has_check(&self, index: u32) -> bool {
        !self.is_signed()
            && (self.cell_log.is_some() || index.saturating_add(1) < self.segment_count)
    }

    /// Cell size of an in-place patch.
    pub fn cell_len(&self) -> Option<u64> {
        self.cell_log.map(|cl| 1u64 << cl)
    }
}

/// The memory model's figure for a patch with these fields: the decoders or
/// models of `layout` at `window_log`, the applier's buffers and, for an
/// in-place patch of `cells` cells of `2^cell_log` bytes, its cell buffer and
/// cell table.
/// A signed patch's signature section is held too.
fn memory_floor(
    codec: Codec,
    window_log: u8,
    layout: Layout,
    cell_log: Option<u8>,
    cells: u32,
    signed: bool,
) -> u64 {
    MemoryModel::required_for_layout(codec, window_log, layout)
        + cell_log.map_or(0, |cl| MemoryModel::in_place_extra(cl, u64::from(cells)))
        + if signed {
            MemoryModel::signed_extra(u64::from(cells))
        } else {
            0
        }
}

/// What the extension area holds.
#[derive(Debug, Default, PartialEq, Eq)]
struct Extensions {
    cell_log: Option<u8>,
    code_refs: Option<CodeRefs>,
    literal_filter: Option<Arch>,
    release: Option<Release>,
}

/// The value of a one-byte extension (`field` names it in errors), refused
/// if it is not one byte long or was `seen` before.
fn one_byte(field: &'static str, value: &[u8], seen: bool) -> Result<u8, FormatError> {
    match value {
        [b] if !seen => Ok(*b),
        _ => Err(FormatError::BadField {
            field,
            detail: "must appear once, one byte long".into(),
        }),
    }
}

/// Walk the extension area: entries of (type u16, length u16, value). Types with
/// the high bit set are critical and refused when unknown; others are skipped.
/// Returns the in-place cell size (log2) if [`EXT_IN_PLACE`] is present, the
/// code references if [`EXT_CODE_REFS`] is (its map validated against an old
/// image of `old_len` bytes), and the literal filter's instruction set if
/// [`EXT_LITERAL_FILTER`] is (one that has a filter).
fn check_extensions(mut area: &[u8], old_len: u64) -> Result<Extensions, FormatError> {
    let mut cell_log = None;
    let mut code_refs = None;
    let mut literal_filter = None;
    let mut release = None;
    while !area.is_empty() {
        if area.len() < 4 {
            return Err(FormatError::BadField {
                field: "extensions",
                detail: "truncated extension entry".into(),
            });
        }
        let ty = u16::from_le_bytes([area[0], area[1]]);
        let len = usize::from(u16::from_le_bytes([area[2], area[3]]));
        let value = area.get(4..4 + len).ok_or_else(|| FormatError::BadField {
            field: "extensions",
            detail: format!("extension {ty:#06x} runs past the header"),
        })?;
        match ty {
            EXT_IN_PLACE => {
                const FIELD: &str = "in-place extension";
                let cl = one_byte(FIELD, value, cell_log.is_some())?;
                if !(MIN_CELL_LOG..=MAX_CELL_LOG).contains(&cl) {
                    return Err(FormatError::BadField {
                        field: FIELD,
                        detail: format!("cell size 2^{cl} is out of range"),
                    });
                }
                cell_log = Some(cl);
            }
            EXT_CODE_REFS => {
                if code_refs.is_some() || value.is_empty() {
                    return Err(FormatError::BadField {
                        field: "code extension",
                        detail: "must appear once, with an instruction set".into(),
                    });
                }
                code_refs = Some(CodeRefs {
                    arch: Arch::from_id(value[0])?,
                    map: AddressMap::decode(&value[1..], old_len)?,
                });
            }
            EXT_LITERAL_FILTER => {
                const FIELD: &str = "literal filter extension";
                let arch = Arch::from_id(one_byte(FIELD, value, literal_filter.is_some())?)?;
                if !crate::literal_filter::supported(arch) {
                    return Err(FormatError::BadField {
                        field: FIELD,
                        detail: format!("{} has no literal filter", arch.name()),
                    });
                }
                literal_filter = Some(arch);
            }
            EXT_RELEASE => {
                if release.is_some() {
                    return Err(FormatError::BadField {
                        field: "release statement",
                        detail: "must appear once".into(),
                    });
                }
                release = Some(Release::decode(value)?);
            }
            t if t & 0x8000 != 0 => return Err(FormatError::UnknownCriticalExtension(t)),
            _ => {}
        }
        area = &area[4 + len..];
    }
    Ok(Extensions {
        cell_log,
        code_refs,
        literal_filter,
        release,
    })
}

/// Little-endian field reader over a buffer whose length was already checked.
struct Fields<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Fields<'_> {
    /// The next `N` bytes, which must lie inside the header body.
    fn take<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        let src = self
            .bytes
            .get(self.pos..self.pos + N)
            .ok_or(FormatError::BadField {
                field: "fixed fields",
                detail: "run past the header".into(),
            })?;
        out.copy_from_slice(src);
        self.pos += N;
        Ok(out)
    }
    /// The next zig-zag varint, which must end inside the header body.
    fn signed_varint(&mut self, field: &'static str) -> Result<i64, FormatError> {
        Ok(varint::unzigzag(self.varint(field)?))
    }
    /// The next varint, which must end inside the header body.
    fn varint(&mut self, field: &'static str) -> Result<u64, FormatError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        match varint::get_u64(rest) {
            Ok(Some((v, n))) => {
                self.pos += n;
                Ok(v)
            }
            _ => Err(FormatError::BadField {
                field,
                detail: "malformed or runs past the header".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            flags: 0,
            old_len: 1000,
            old_check: [1; CHECK_LEN],
            new_len: 2000,
            new_hash: [2; 32],
            codec: Codec::Zstd,
            window_log: 19,
            layout: Layout::Interleaved,
            segment_count: 3,
            apply_memory: MemoryModel::required(19),
            cell_log: None,
            code_refs: None,
            literal_filter: None,
            release: None,
        }
    }

    #[test]
    fn in_place_round_trip_and_consistency() {
        let mut h = sample();
        h.flags = FLAG_IN_PLACE;
        h.cell_log = Some(12);
        h.new_len = 3 * 4096 - 5;
        h.apply_memory = MemoryModel::required(19) + MemoryModel::in_place_extra(12, 3);
        let bytes = h.encode();
        assert_eq!(bytes.len(), h.encoded_len());
        assert_eq!(reparse(&bytes).unwrap(), h);
        // wrong cell count
        let mut bad = h.clone();
        bad.segment_count = 2;
        assert!(reparse(&bad.encode()).is_err());
        // flag without extension, extension without flag
        let mut bad = h.clone();
        bad.flags = 0;
        assert!(reparse(&bad.encode()).is_err());
        let mut bad = h.clone();
        bad.cell_log = None;
        assert!(reparse(&bad.encode()).is_err());
        // the memory floor counts the cell buffer and the cell table: a
        // patch that claims just the floor stores no excess
        assert_eq!(
            h.memory_floor(),
            MemoryModel::required(19) + MemoryModel::in_place_extra(12, 3)
        );
        assert_eq!(bytes[excess_at(&h)], 0, "excess over the floor");
        // cell size out of range
        let mut bad = h;
        bad.cell_log = Some(30);
        bad.apply_memory = bad.memory_floor();
        assert!(reparse(&bad.encode()).is_err());
    }

    fn reparse(bytes: &[u8]) -> Result<Header, FormatError> {
        let mut prefix = [0u8; Header::PREFIX_LEN];
        prefix.copy_from_slice(&bytes[..Header::PREFIX_LEN]);
        let len = Header::parse_prefix(&prefix)?;
        Header::parse(&bytes[..len])
    }

    /// A header around `fields` (everything between header_len and the check),
    /// with a correct length and check: for testing field validation
    /// separately from corruption detection.
    fn frame(fields: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(FORMAT_VERSION);
        let len = 5 + 1 + fields.len() + CHECK_LEN;
        assert!(len < 128, "test headers keep a one-byte header_len");
        b.push(len as u8);
        b.extend_from_slice(fields);
        let c = check_of(&b);
        b.extend_from_slice(&c);
        b
    }

    /// Offsets in the sample header (one-byte header_len and flags).
    const FLAGS_AT: usize = 6;
    const CODING_AT: usize = 7;
    const WINDOW_AT: usize = 8;
    const VARINTS_AT: usize = 9 + CHECK_LEN + HASH_LEN;

    /// Rewrite a field and re-seal the header check, to test field validation
    /// separately from corruption detection.
    fn with_field(offset: usize, value: &[u8]) -> Vec<u8> {
        let mut b = sample().encode();
        b[offset..offset + value.len()].copy_from_slice(value);
        let n = b.len() - CHECK_LEN;
        let check = check_of(&b[..n]);
        b[n..].copy_from_slice(&check);
        b
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let bytes = h.encode();
        assert_eq!(bytes.len(), h.encoded_len());
        assert_eq!(reparse(&bytes).unwrap(), h);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                let mut prefix = [0u8; Header::PREFIX_LEN];
                prefix.copy_from_slice(&b[..Header::PREFIX_LEN]);
                match Header::parse_prefix(&prefix) {
                    Err(_) => continue,
                    Ok(len) if len != b.len() => continue,
                    Ok(_) => assert!(Header::parse(&b).is_err(), "flip at {i} accepted"),
                }
            }
        }
    }

    #[test]
    fn refuses_other_version() {
        // damaged: the check fails first
        let mut b = sample().encode();
        b[4] = FORMAT_VERSION + 1;
        assert_eq!(reparse(&b), Err(FormatError::HeaderCheck));
        // intact, but older or newer
        for v in [2u8, FORMAT_VERSION - 1, FORMAT_VERSION + 1] {
            let b = with_field(4, &[v]);
            assert_eq!(
                reparse(&b),
                Err(FormatError::UnsupportedVersion {
                    found: v,
                    supported: FORMAT_VERSION
                })
            );
        }
    }

    #[test]
    fn refuses_unknown_flags() {
        let b = with_field(FLAGS_AT, &[4]);
        assert_eq!(reparse(&b), Err(FormatError::UnsupportedFlags(4)));
        // the signed flag without a release statement, and the reverse
        let b = with_field(FLAGS_AT, &[2]);
        assert!(matches!(
            reparse(&b),
            Err(FormatError::BadField { field: "flags", .. })
        ));
        let mut unsigned_with_release = sample();
        unsigned_with_release.release = Some(crate::Release {
            product: "acme".into(),
            version: "1".into(),
            security_counter: 1,
            expires: 0,
        });
        assert!(matches!(
            reparse(&unsigned_with_release.encode()),
            Err(FormatError::BadField { field: "flags", .. })
        ));
        // a flags varint past 16 bits is refused as unknown bits, not truncated
        let mut fields = sample().fields();
        fields.splice(0..1, [0x81, 0x80, 0x04]);
        assert_eq!(
            reparse(&frame(&fields)),
            Err(FormatError::UnsupportedFlags(0x1_0000))
        );
    }

    #[test]
    fn refuses_absurd_sizes() {
        let mut h = sample();
        h.new_len = MAX_IMAGE_LEN + 1;
        assert!(matches!(
            reparse(&h.encode()),
            Err(FormatError::AbsurdSize { which: "new", .. })
        ));
        let mut h = sample();
        h.old_len = MAX_IMAGE_LEN + 1;
        let b = h.encode();
        assert!(matches!(
            reparse(&b),
            Err(FormatError::AbsurdSize { which: "old", .. })
        ));
        // a new image smaller than nothing: old_len 1000 shrinking by 1001
        let mut fields = sample().fields();
        let at = VARINTS_AT - 6 + 2;
        assert_eq!(&fields[at..at + 2], &[0xd0, 0x0f], "zig-zag 1000");
        fields.splice(at..at + 2, [0xd1, 0x0f]);
        assert!(matches!(
            reparse(&frame(&fields)),
            Err(FormatError::BadField {
                field: "new_len",
                ..
            })
        ));
    }

    #[test]
    fn new_len_is_stored_as_the_change() {
        for (old_len, new_len) in [(2000, 1000), (0, 5), (7, 0), (MAX_IMAGE_LEN, 1)] {
            let mut h = sample();
            h.old_len = old_len;
            h.new_len = new_len;
            h.segment_count = 1.min(new_len as u32);
            let b = h.encode();
            assert_eq!(b.len(), h.encoded_len());
            assert_eq!(reparse(&b), Ok(h), "{old_len} -> {new_len}");
        }
        // equal lengths cost one byte
        let mut h = sample();
        h.new_len = h.old_len;
        assert_eq!(h.encoded_len(), sample().encoded_len() - 1);
    }

    #[test]
    fn refuses_bad_codec_window_layout_and_counts() {
        assert_eq!(
            reparse(&with_field(CODING_AT, &[0x19])),
            Err(FormatError::UnknownCodec(9))
        );
        assert_eq!(
            reparse(&with_field(WINDOW_AT, &[40])),
            Err(FormatError::BadWindow(40))
        );
        assert_eq!(
            reparse(&with_field(CODING_AT, &[0x71])),
            Err(FormatError::UnknownLayout(7))
        );
        let mut h = sample();
        h.segment_count = 5000;
        assert!(matches!(
            reparse(&h.encode()),
            Err(FormatError::BadField {
                field: "segment_count",
                ..
            })
        ));
        // the claim is stored above the floor: an excess that takes it past
        // 2^64 is refused, the largest that does not is read as it is
        let h = sample();
        let over = with_memory_excess(&h, u64::MAX - h.memory_floor() + 1);
        assert!(matches!(
            reparse(&over),
            Err(FormatError::BadField {
                field: "apply_memory",
                ..
            })
        ));
        let most = with_memory_excess(&h, u64::MAX - h.memory_floor());
        assert_eq!(reparse(&most).map(|h| h.apply_memory), Ok(u64::MAX));
    }

    /// `h`'s encoding with `excess` stored as its memory claim's excess over
    /// the floor (which [`Header::encode`] cannot be made to write past 2^64).
    fn with_memory_excess(h: &Header, excess: u64) -> Vec<u8> {
        let mut fields = h.fields();
        // `fields` starts after magic, version and a one-byte header_len
        let at = excess_at(h) - 6;
        let old = varint::len_u64(h.memory_excess());
        let mut v = Vec::new();
        varint::put_u64(&mut v, excess);
        fields.splice(at..at + old, v);
        frame(&fields)
    }

    /// Offset of the memory claim's varint in `h`'s encoding (with a
    /// one-byte header_len).
    fn excess_at(h: &Header) -> usize {
        VARINTS_AT
            + varint::len_u64(h.old_len)
            + varint::len_i64(h.len_change())
            + varint::len_u64(u64::from(h.segment_count))
    }

    #[test]
    fn varints_must_end_inside_the_header() {
        // Cut the fields right after the fixed-width ones: the varints run
        // into the check, or past it; the fixed fields themselves cut short.
        let fields = sample().fields();
        for cut in [VARINTS_AT - 6 + 2, 20, 0] {
            let mut f = fields[..cut].to_vec();
            if let Some(last) = f.last_mut() {
                *last |= 0x80;
            }
            // pad to the minimum length with continuation bytes
            while 5 + 1 + f.len() + CHECK_LEN < Header::MIN_LEN {
                f.push(0x80);
            }
            let b = frame(&f);
            assert!(
                matches!(
                    Header::parse(&b),
                    Err(FormatError::BadField { .. }) | Err(FormatError::UnsupportedFlags(_))
                ),
                "cut at {cut}: {:?}",
                Header::parse(&b)
            );
        }
    }

    #[test]
    fn compact_header_is_small() {
        // The fixed cost every patch pays: magic, version, header_len, flags,
        // coding and window bytes, the old image's 8-byte check, its full new
        // hash, four varints (2 + 2 + 1 + 1 here: a claim of exactly the
        // memory model's figure stores no excess), the 8-byte header check.
        let h = sample();
        assert_eq!(h.encode().len(), 4 + 1 + 1 + 1 + 2 + 8 + 32 + 6 + 8);
        assert!(h.encoded_len_bound() >= h.encoded_len());
        let mut big = h.clone();
        big.apply_memory = u64::MAX;
        assert!(h.encoded_len_bound() >= big.encoded_len());
    }

    #[test]
    fn header_len_counts_its_own_varint_at_the_boundaries() {
        // Code maps of growing size and memory claims of every varint length
        // sweep the encoded length across 128 and 16,384, where header_len's
        // own varint grows a byte: every header must parse back, and its
        // length must be what encoded_len said.
        let mut seen = alloc::collections::BTreeSet::new();
        for runs in (1u64..40).chain(5_400..5_500) {
            let pairs: Vec<(u64, i64)> = (0..runs).map(|i| (i * 1000, (i % 3) as i64)).collect();
            for mem_bits in (28..64).step_by(7) {
                let mut h = sample();
                h.old_len = runs * 1000;
                h.code_refs = Some(CodeRefs {
                    arch: Arch::Thumb2,
                    map: AddressMap::from_runs(&pairs, h.old_len).unwrap(),
                });
                h.apply_memory = 1u64 << mem_bits;
                let b = h.encode();
                assert_eq!(b.len(), h.encoded_len());
                assert!(b.len() <= h.encoded_len_bound());
                assert_eq!(reparse(&b), Ok(h));
                seen.insert(b.len());
            }
        }
        for len in [126, 127, 129, 130, 16_382, 16_383, 16_385, 16_386] {
            assert!(seen.contains(&len), "no header of {len} bytes was tried");
        }
    }

    #[test]
    fn header_len_varint_lengths() {
        // 1..=3 bytes: a code map makes the header long enough for 2 and 3.
        for runs in [1u64, 40, 6000] {
            let pairs: Vec<(u64, i64)> = (0..runs).map(|i| (i * 100_000, i as i64)).collect();
            let mut h = sample();
            h.old_len = runs * 100_000;
            h.code_refs = Some(CodeRefs {
                arch: Arch::Thumb2,
                map: AddressMap::from_runs(&pairs, h.old_len).unwrap(),
            });
            h.apply_memory = u64::MAX >> 1;
            let b = h.encode();
            assert_eq!(b.len(), h.encoded_len());
            assert!(b.len() <= h.encoded_len_bound());
            assert_eq!(reparse(&b), Ok(h));
        }
    }

    #[test]
    fn refuses_bad_header_length() {
        let prefix = |len: &[u8]| {
            let mut p = [0u8; Header::PREFIX_LEN];
            p[..4].copy_from_slice(&MAGIC);
            p[4] = FORMAT_VERSION;
            p[5..5 + len.len()].copy_from_slice(len);
            Header::parse_prefix(&p)
        };
        assert_eq!(
            prefix(&[0xa0, 0x8d, 0x06]),
            Err(FormatError::BadHeaderLength(100_000))
        );
        assert_eq!(prefix(&[10]), Err(FormatError::BadHeaderLength(10)));
        assert!(prefix(&[0x80, 0x80, 0x80]).is_err(), "four-byte varint");
        assert_eq!(prefix(&[65]), Ok(65));
        // the 8-byte magic of versions 1 and 2 is an old version, not damage
        assert_eq!(
            Header::parse_prefix(&crate::LEGACY_MAGIC),
            Err(FormatError::LegacyVersion {
                supported: FORMAT_VERSION
            })
        );
        // a non-minimal length varint is read as what it says
        let h = sample();
        let mut b = MAGIC.to_vec();
        b.push(FORMAT_VERSION);
        let len = h.encoded_len() + 1;
        b.extend_from_slice(&[len as u8 | 0x80, 0]);
        b.extend_from_slice(&h.fields());
        let c = check_of(&b);
        b.extend_from_slice(&c);
        assert_eq!(reparse(&b), Ok(h));
    }

    fn with_code() -> Header {
        let map = AddressMap::from_runs(&[(0, 0), (400, 16)], 1000).unwrap();
        let mut h = sample();
        h.code_refs = Some(CodeRefs {
            arch: Arch::Thumb2,
            map,
        });
        h.apply_memory += MemoryModel::code_refs_extra(h.encoded_len_bound() as u64, 2);
        h
    }

    #[test]
    fn code_refs_round_trip_and_are_checked() {
        let h = with_code();
        let b = h.encode();
        assert_eq!(b.len(), h.encoded_len());
        assert_eq!(Header::parse(&b), Ok(h.clone()));

        // the claim must cover the map and the rewriter
        let mut cheap = h.clone();
        cheap.apply_memory = MemoryModel::required(19);
        assert!(matches!(
            Header::parse(&cheap.encode()),
            Err(FormatError::BadField {
                field: "apply_memory",
                ..
            })
        ));

        // never together with in-place cells
        let mut both = h.clone();
        both.flags = FLAG_IN_PLACE;
        both.cell_log = Some(12);
        both.new_len = 4096 * 3;
        both.apply_memory += 1 << 20;
        assert!(matches!(
            Header::parse(&both.encode()),
            Err(FormatError::BadField {
                field: "extensions",
                ..
            })
        ));

        // a map run past the old image
        let mut short = h.clone();
        short.old_len = 300;
        assert!(matches!(
            Header::parse(&short.encode()),
            Err(FormatError::BadField {
                field: "address map",
                ..
            })
        ));

        // twice
        let mut f = h.fields();
        let ext_len = h.code_refs.as_ref().unwrap().extension_len();
        let ext = f[f.len() - ext_len..].to_vec();
        f.extend_from_slice(&ext);
        assert!(matches!(
            Header::parse(&frame(&f)),
            Err(FormatError::BadField {
                field: "code extension",
                ..
            })
        ));
    }

    #[test]
    fn literal_filter_round_trips_and_is_not_in_place() {
        let mut h = sample();
        h.literal_filter = Some(Arch::Aarch64);
        let b = h.encode();
        assert_eq!(b.len(), sample().encoded_len() + 5);
        assert_eq!(reparse(&b), Ok(h.clone()));
        h.flags = FLAG_IN_PLACE;
        h.cell_log = Some(12);
        h.new_len = 3 * 4096;
        h.apply_memory += 1 << 20;
        assert!(matches!(
            reparse(&h.encode()),
            Err(FormatError::BadField {
                field: "extensions",
                ..
            })
        ));
    }

    #[test]
    fn extensions_skip_unknown_and_refuse_critical() {
        let ext = |b: &[u8]| check_extensions(b, 1000);
        assert_eq!(ext(&[0x01, 0x00, 2, 0, 9, 9]), Ok(Extensions::default()));
        assert_eq!(
            ext(&[0x01, 0x80, 1, 0, 14]),
            Ok(Extensions {
                cell_log: Some(14),
                ..Extensions::default()
            })
        );
        assert_eq!(
            ext(&[0x03, 0x80, 1, 0, 1]),
            Ok(Extensions {
                literal_filter: Some(Arch::Aarch64),
                ..Extensions::default()
            })
        );
        // an instruction set without a filter, an unknown one, twice, too long
        assert!(ext(&[0x03, 0x80, 1, 0, 3]).is_err());
        assert!(ext(&[0x03, 0x80, 1, 0, 9]).is_err());
        assert!(ext(&[0x03, 0x80, 1, 0, 1, 0x03, 0x80, 1, 0, 1]).is_err());
        assert!(ext(&[0x03, 0x80, 2, 0, 1, 1]).is_err());
        assert!(ext(&[0x01, 0x80, 1, 0, 14, 0x01, 0x80, 1, 0, 14]).is_err());
        assert_eq!(
            ext(&[0x05, 0x80, 0, 0]),
            Err(FormatError::UnknownCriticalExtension(0x8005))
        );
        // a release statement: once, well formed
        assert!(ext(&[0x04, 0x80, 0, 0]).is_err());
        let release = [0x04, 0x80, 6, 0, 1, b'p', 1, b'1', 7, 0];
        assert_eq!(
            ext(&release).map(|e| e.release.map(|r| r.security_counter)),
            Ok(Some(7))
        );
        assert!(ext(&[&release[..], &release[..]].concat()).is_err());
        assert!(ext(&[0x02, 0x80, 0, 0]).is_err());
        assert!(ext(&[0x01, 0x00, 9, 0, 1]).is_err());
        assert!(ext(&[0x01]).is_err());
    }
}
