//! The suffix array of the old image and the longest-match search over it.
//!
//! The array is sorted with `libsais` (`i32` indices, so images over
//! [`MAX_PARTITION`] bytes are cut into partitions sorted on their own and
//! searched one after another). A search is a binary search for the new
//! bytes, and on a large image each of its steps is a cache miss or two,
//! which made searching 80% of the match finder's time on a 24 MB
//! executable. So a bucket table on the first three bytes starts each
//! search in a small slice of the array, searches are made in batches whose
//! steps run in lockstep (so their misses overlap), and a comparison skips
//! the prefix the needle is known to share with both ends of the interval.

use crate::gram_filter::GramFilter;
use rayon::prelude::*;
use std::cmp::min;

/// Texts from this size on get a [`GramFilter`] (see
/// [`SuffixArray::may_match`]): below it a search's binary search stays in
/// cache and the filter would only change which short matches bsdiff's scan
/// sees (on the test firmwares, a few bytes either way).
pub const GRAM_FILTER_MIN_TEXT: usize = 1 << 20;

/// Largest partition one sort handles: both sorters index with `i32` and
/// need the text shorter than `i32::MAX`.
pub const MAX_PARTITION: usize = 1 << 30;

/// Partitions needed for a text of `len` bytes (1 up to [`MAX_PARTITION`];
/// each further partition costs some match quality at its edges).
pub fn partitions(len: usize) -> usize {
    len.div_ceil(MAX_PARTITION).max(1)
}

/// The longest match found for a needle: `len` bytes of the text from `pos`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    /// Text offset of the match.
    pub pos: usize,
    /// Bytes matched (0 when nothing matches; `pos` is then any suffix).
    pub len: usize,
}

/// The suffix array of a text, in one or more partitions.
///
/// Cost: 4 bytes per text byte plus a bucket table of 256 KiB to 4 MiB per
/// partition, and from [`GRAM_FILTER_MIN_TEXT`] a [`GramFilter`] (1 byte per
/// text byte); one `libsais` pass and one counting pass per partition
/// (partitions sorted in parallel on the ambient rayon pool, the filter
/// built beside them).
pub struct SuffixArray<'a> {
    text: &'a [u8],
    /// Length of every partition but the last.
    partition_len: usize,
    parts: Vec<Part>,
    filter: Option<GramFilter>,
}

/// One partition's sorted suffixes and their buckets.
///
/// A bucket holds the suffixes whose first three bytes (big-endian) share
/// their top `24 - shift` bits, so buckets are runs of the sorted order and
/// a search only needs to look inside the needle's. Buckets are sized to
/// hold a few suffixes each on average where the table is large enough: on
/// a large text each binary-search step is a cache miss or two, and the
/// table saves the first dozen or more.
struct Part {
    /// Partition-relative suffix offsets in sorted order.
    sa: Vec<i32>,
    /// Bits dropped from the three-byte key: 0 to 8.
    shift: u32,
    /// `first[c]`: how many suffixes sort before the string of bucket `c`'s
    /// lowest key, for `c` in `0..=buckets` (the last is past every string).
    first: Vec<u32>,
}

impl Part {
    fn new(text: &[u8]) -> Part {
        // About two suffixes per bucket, 2^16 to 2^20 buckets (more saved
        // little: on a 24 MB executable 2^24 buckets scanned 6% faster for
        // 60 MB more memory, since most searches land in the big buckets).
        let bits = (usize::BITS - text.len().leading_zeros())
            .saturating_sub(1)
            .clamp(16, 20);
        Self::with_buckets(text, bits)
    }

    /// Sort `text` and count it into `2^bits` buckets (`bits` in 16..=24).
    fn with_buckets(text: &[u8], bits: u32) -> Part {
        let sa = sort(text);
        let shift = 24 - bits;
        let mut first = vec![0u32; (1 << bits) + 1];
        for triple in text.windows(3) {
            first[(key(triple) >> shift) as usize + 1] += 1;
        }
        // The one- and two-byte suffixes at the end: zero-padded to three
        // bytes, a short suffix sorts before every string with that padded
        // key and after every string below it. Its padded key's low byte is
        // 0 and at most 8 bits are dropped, so that key is the lowest of its
        // bucket: the suffix sorts before the bucket's strings.
        for p in text.len().saturating_sub(2)..text.len() {
            let mut padded = [0u8; 3];
            padded[..text.len() - p].copy_from_slice(&text[p..]);
            first[(key(&padded) >> shift) as usize] += 1;
        }
        for c in 1..first.len() {
            first[c] += first[c - 1];
        }
        Part { sa, shift, first }
    }

    /// The slice of the sorted order a needle of at least three bytes falls
    /// in: everything before it is less than the needle, everything after it
    /// greater. The whole array for shorter needles.
    fn bracket(&self, needle: &[u8]) -> (usize, usize) {
        if needle.len() < 3 {
            return (0, self.sa.len());
        }
        let c = (key(needle) >> self.shift) as usize;
        (self.first[c] as usize, self.first[c + 1] as usize)
    }
}

/// The sorted suffixes of `text` (shorter than `i32::MAX`): `libsais`, with
/// `divsufsort` (pure Rust, about 1.5-2.6x slower on the public corpus) if
/// `libsais` ever refuses. Both give the same array: a text has one.
fn sort(text: &[u8]) -> Vec<i32> {
    libsais::SuffixArrayConstruction::for_text(text)
        .in_owned_buffer32()
        .single_threaded()
        .run()
        .map(|sorted| sorted.into_vec())
        .unwrap_or_else(|_| {
            let mut sa = vec![0i32; text.len()];
            divsufsort::sort_in_place(text, &mut sa);
            sa
        })
}

/// The first three bytes of `s`, big-endian.
fn key(s: &[u8]) -> u32 {
    u32::from(s[0]) << 16 | u32::from(s[1]) << 8 | u32::from(s[2])
}

impl<'a> SuffixArray<'a> {
    /// Sort the suffixes of `text`, with a gram filter from
    /// [`GRAM_FILTER_MIN_TEXT`] bytes.
    pub fn new(text: &'a [u8]) -> SuffixArray<'a> {
        Self::with_filter(text, text.len() >= GRAM_FILTER_MIN_TEXT)
    }

    /// Sort the suffixes of `text`, with a gram filter if `filter`.
    pub fn with_filter(text: &'a [u8], filter: bool) -> SuffixArray<'a> {
        let partition_len = text.len() / partitions(text.len()) + 1;
        let (mut sa, filter) = rayon::join(
            || Self::with_partition_len(text, partition_len),
            || filter.then(|| GramFilter::new(text)),
        );
        sa.filter = filter;
        sa
    }

    /// Sort `text` in partitions of `partition_len` bytes (tests use small
    /// ones; real texts need [`MAX_PARTITION`]-sized ones only past 1 GiB).
    fn with_partition_len(text: &'a [u8], partition_len: usize) -> SuffixArray<'a> {
        let parts = if text.is_empty() {
            Vec::new()
        } else {
            text.par_chunks(partition_len).map(Part::new).collect()
        };
        SuffixArray {
            text,
            partition_len,
            parts,
            filter: None,
        }
    }

    /// False only if no match of `needle` in the text can be [`GRAM`] bytes
    /// or longer (its first [`GRAM`] bytes occur nowhere); always true
    /// without a filter. Cost: two bit reads.
    ///
    /// [`GRAM`]: crate::gram_filter::GRAM
    #[inline]
    pub fn may_match(&self, needle: &[u8]) -> bool {
        self.filter.as_ref().is_none_or(|f| f.may_match(needle))
    }

    /// The text the array indexes.
    pub fn text(&self) -> &'a [u8] {
        self.text
    }

    /// The longest prefix of `needle` that occurs in the text. Among equally
    /// long matches the one found is the one bsdiff's binary search finds:
    /// of the two suffixes around the needle's place in the sorted order,
    /// the upper one unless the lower one is strictly longer; of the
    /// partitions, the first unless a later one is strictly longer. A match
    /// that reaches the end of its partition is extended into the next.
    ///
    /// Cost per partition: a bucket lookup, a binary search within the
    /// needle's bucket (a few steps, each a cache miss or two on a large
    /// text) and about `found.len` byte comparisons.
    pub fn longest_match(&self, needle: &[u8]) -> Found {
        let mut found = [Found::default()];
        self.longest_matches(&[needle], &mut found);
        found[0]
    }

    /// [`Self::longest_match`] for up to [`BATCH`] needles at once, into
    /// `found` (one per needle; extra needles or slots are left alone). The
    /// binary searches run in lockstep, so their cache misses overlap: on a
    /// large text a batch of 8 costs about as much wall time as two or three
    /// single searches.
    pub fn longest_matches(&self, needles: &[&[u8]], found: &mut [Found]) {
        let n = needles.len().min(found.len()).min(BATCH);
        let (needles, found) = (&needles[..n], &mut found[..n]);
        for (i, part) in self.parts.iter().enumerate() {
            let base = i * self.partition_len;
            let text = &self.text[base..min(base + self.partition_len, self.text.len())];
            let mut here = [Found::default(); BATCH];
            search(text, part, needles, &mut here[..n]);
            for ((best, mut f), needle) in found.iter_mut().zip(here).zip(needles) {
                if f.pos + f.len == text.len() {
                    f.len = common_prefix_len(&self.text[base + f.pos..], needle);
                }
                f.pos += base;
                if i == 0 || f.len > best.len {
                    *best = f;
                }
            }
        }
    }
}

/// Most needles [`SuffixArray::longest_matches`] takes at once.
pub const BATCH: usize = 4;

/// Longest matches in one partition: find each needle's place in the sorted
/// suffixes, then take the longer of its two neighbours (the upper on a
/// tie). The needles' binary searches run in lockstep: each round first
/// loads one suffix-array entry per unfinished search, then compares, so the
/// loads of a round are independent and their misses overlap.
fn search(text: &[u8], part: &Part, needles: &[&[u8]], found: &mut [Found]) {
    let sa = &part.sa;
    let lcp = |k: usize, needle: &[u8]| common_prefix_len(&text[sa[k] as usize..], needle);
    if sa.len() < 2 {
        for (f, needle) in found.iter_mut().zip(needles) {
            *f = match sa.len() {
                0 => Found::default(),
                _ => Found {
                    pos: sa[0] as usize,
                    len: lcp(0, needle),
                },
            };
        }
        return;
    }
    // Per needle: the interval `lo..hi` still to search (suffixes before it
    // are less than the needle, those from `hi` on not less) and the bytes
    // the needle shares with the suffixes just outside it, `sa[lo - 1]` and
    // `sa[hi]` (0 if unknown). Every suffix inside shares at least the
    // smaller of the two, so a comparison starts there.
    let mut lo = [0usize; BATCH];
    let mut hi = [0usize; BATCH];
    let (mut lo_lcp, mut hi_lcp) = ([0usize; BATCH], [0usize; BATCH]);
    for (i, needle) in needles.iter().enumerate() {
        (lo[i], hi[i]) = part.bracket(needle);
    }
    let mut at = [0usize; BATCH];
    loop {
        let mut searching = false;
        for i in 0..needles.len() {
            if lo[i] < hi[i] {
                at[i] = sa[lo[i] + (hi[i] - lo[i]) / 2] as usize;
                searching = true;
            }
        }
        if !searching {
            break;
        }
        for (i, needle) in needles.iter().enumerate() {
            if lo[i] >= hi[i] {
                continue;
            }
            let s = &text[at[i]..];
            let from = min(lo_lcp[i], hi_lcp[i]);
            let shared = from + common_prefix_len(&s[from.min(s.len())..], &needle[from..]);
            // Equal up to `shared`; a needle that is a prefix of the suffix
            // is not greater.
            let greater = match (needle.get(shared), s.get(shared)) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(n), Some(t)) => n > t,
            };
            let mid = lo[i] + (hi[i] - lo[i]) / 2;
            if greater {
                lo[i] = mid + 1;
                lo_lcp[i] = shared;
            } else {
                hi[i] = mid;
                hi_lcp[i] = shared;
            }
        }
    }
    for (i, (f, needle)) in found.iter_mut().zip(needles).enumerate() {
        // `lo[i]` is the first suffix not less than the needle.
        let upper = lo[i].clamp(1, sa.len() - 1);
        let (below, above) = (lcp(upper - 1, needle), lcp(upper, needle));
        *f = if below > above {
            Found {
                pos: sa[upper - 1] as usize,
                len: below,
            }
        } else {
            Found {
                pos: sa[upper] as usize,
                len: above,
            }
        };
    }
}

/// Bytes `a` and `b` share at their start, compared eight at a time.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    let n = min(a.len(), b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (x, y) = (word(x), word(y));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..]
        .iter()
        .zip(&b[i..])
        .take_while(|(x, y)| x == y)
        .count()
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest match by brute force: its length, and every position with it.
    fn brute(text: &[u8], needle: &[u8]) -> (usize, Vec<usize>) {
        let lens: Vec<usize> = (0..text.len())
            .map(|p| common_prefix_len(&text[p..], needle))
            .collect();
        let best = lens.iter().copied().max().unwrap_or(0);
        let at = (0..text.len()).filter(|&p| lens[p] == best).collect();
        (best, at)
    }

    #[test]
    fn prefix_len_counts_across_words() {
        let a = b"0123456789abcdefXYZ";
        for cut in 0..a.len() {
            let mut b = a.to_vec();
            b[cut] ^= 1;
            assert_eq!(common_prefix_len(a, &b), cut);
            assert_eq!(common_prefix_len(&a[..cut], a), cut);
        }
        assert_eq!(common_prefix_len(a, a), a.len());
        assert_eq!(common_prefix_len(b"", a), 0);
    }

    /// bsdiff's search as `bidiff` has it: halve the whole array comparing
    /// full needles, then take the longer of the last two (the upper on a
    /// tie).
    fn bsdiff_search(text: &[u8], sa: &[i32], needle: &[u8]) -> Found {
        let suffix = |k: usize| &text[sa[k] as usize..];
        let (mut lo, mut hi) = (0, sa.len() - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo).div_ceil(2);
            if needle > suffix(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (x, y) = (
            common_prefix_len(suffix(lo), needle),
            common_prefix_len(suffix(hi), needle),
        );
        if x > y {
            Found {
                pos: sa[lo] as usize,
                len: x,
            }
        } else {
            Found {
                pos: sa[hi] as usize,
                len: y,
            }
        }
    }

    #[test]
    fn picks_the_same_match_as_bsdiff_among_equals() {
        // Few distinct bytes and a skewed alphabet: many equal-length ties,
        // needles below, between and above every suffix, and the one-byte
        // last suffix inside a bucket.
        for text in [
            b"abracadabra-abracadabra-cadabra-zzz".to_vec(),
            (0..3000u32)
                .map(|i| [0u8, 0, 1, 255, 7][(i as usize * 31 + (i as usize >> 4)) % 5])
                .collect(),
            b"ba".to_vec(),
            b"\x00\xff\x00".to_vec(),
        ] {
            let mut needles: Vec<Vec<u8>> = vec![
                vec![],
                vec![0],
                vec![255, 255, 255],
                b"a".to_vec(),
                b"zzzz".to_vec(),
            ];
            for start in (0..text.len()).step_by(7) {
                for len in [1, 2, 3, 5, 12] {
                    let end = (start + len).min(text.len());
                    needles.push(text[start..end].to_vec());
                    let mut changed = text[start..end].to_vec();
                    *changed.last_mut().unwrap() ^= 1;
                    needles.push(changed);
                }
            }
            for bits in [16, 19, 24] {
                let part = Part::with_buckets(&text, bits);
                for needle in &needles {
                    let mut found = [Found::default()];
                    search(&text, &part, &[needle], &mut found);
                    assert_eq!(
                        found[0],
                        bsdiff_search(&text, &part.sa, needle),
                        "{bits}-bit buckets, text {:?} needle {needle:?}",
                        &text[..text.len().min(20)]
                    );
                }
            }
        }
    }

    #[test]
    fn a_batch_finds_what_single_searches_find() {
        let text: Vec<u8> = (0..20_000u32)
            .map(|i| [1u8, 2, 2, 3, 0xe8][(i as usize * 13 + (i as usize >> 5)) % 5])
            .collect();
        let sa = SuffixArray::with_partition_len(&text, 7_000);
        let needles: Vec<&[u8]> = (0..text.len()).step_by(101).map(|p| &text[p..]).collect();
        for batch in needles.chunks(BATCH) {
            let mut found = [Found { pos: 9, len: 9 }; BATCH];
            sa.longest_matches(batch, &mut found);
            for (k, needle) in batch.iter().enumerate() {
                assert_eq!(found[k], sa.longest_match(needle));
            }
            // Slots past the needles are left alone.
            assert!(found[batch.len()..]
                .iter()
                .all(|f| *f == Found { pos: 9, len: 9 }));
        }
    }

    #[test]
    fn finds_the_longest_match_anywhere() {
        // A repetitive text, so many suffixes share long prefixes.
        let text: Vec<u8> = (0..5000u32)
            .map(|i| b"abcab"[(i as usize * 7 + (i as usize / 97)) % 5])
            .collect();
        let sa = SuffixArray::new(&text);
        for start in (0..4990).step_by(37) {
            for len in [1, 3, 9, 40, 200] {
                let mut needle = text[start..(start + len).min(text.len())].to_vec();
                needle.extend_from_slice(b"zz");
                let found = sa.longest_match(&needle);
                let (best, at) = brute(&text, &needle);
                assert_eq!(found.len, best, "needle at {start} len {len}");
                assert!(at.contains(&found.pos));
            }
        }
        // No byte in common, and a needle longer than the text.
        assert_eq!(sa.longest_match(b"q").len, 0);
        let mut long = text.clone();
        long.push(b'a');
        let found = sa.longest_match(&long);
        assert_eq!((found.pos, found.len), (0, text.len()));
    }

    #[test]
    fn tiny_texts() {
        let sa = SuffixArray::new(b"");
        assert_eq!(sa.longest_match(b"abc"), Found { pos: 0, len: 0 });
        let sa = SuffixArray::new(b"x");
        assert_eq!(sa.longest_match(b"xy"), Found { pos: 0, len: 1 });
        let sa = SuffixArray::new(b"xy");
        assert_eq!(sa.longest_match(b"y"), Found { pos: 1, len: 1 });
        assert_eq!(sa.longest_match(b"").len, 0);
    }

    #[test]
    fn matches_reaching_a_partition_end_extend_into_the_next() {
        let text = b"xxabcdefyyabcdzz";
        let sa = SuffixArray::with_partition_len(text, 6);
        assert_eq!(sa.parts.len(), 3);
        // "abcdef" starts in partition 0 ("xxabcd") and ends in partition 1.
        assert_eq!(sa.longest_match(b"abcdefg"), Found { pos: 2, len: 6 });
        // Equally long in two partitions: the first is kept.
        assert_eq!(sa.longest_match(b"abcdq"), Found { pos: 2, len: 4 });
        // Only in the last partition.
        assert_eq!(sa.longest_match(b"dzz"), Found { pos: 13, len: 3 });
    }

    #[test]
    fn partitions_keep_divsufsort_in_range() {
        assert_eq!(partitions(0), 1);
        assert_eq!(partitions(1 << 30), 1);
        assert_eq!(partitions((1 << 30) + 1), 2);
        assert_eq!(partitions(5 << 30), 5);
        for len in [(1usize << 31) - 1, 1 << 31, 3 << 31, 1 << 40] {
            assert!(len / partitions(len) + 1 < i32::MAX as usize);
        }
    }
}
