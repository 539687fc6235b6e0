//! Server-side fwdelta patch generator.
//!
//! Pipeline, one module per step:
//! 1. [`matcher`]: find an edit script as a list of [`Op`]s covering the new
//!    image: bsdiff's scan ([`match_scan`]) over the old image's
//!    [`suffix_array`].
//! 2. [`segmenter`]: cut the ops into segments of roughly equal compressed cost,
//!    so each segment is independently decodable at ~1% size cost.
//! 3. [`segment_encoder`]: turn each segment into a record stream and compress it
//!    (one LZMA2 or zstd stream, or three split streams in blocks via
//!    `split_encoder`; windows bounded by the applier's memory budget), segments
//!    in parallel.
//! 4. [`container_writer`]: header, then segments with their checks.
//!
//! Work runs on the ambient rayon pool: wrap calls in
//! `rayon::ThreadPool::install` to choose the thread count.
//!
//! Cost: the suffix array of the old image (4 bytes per old byte plus a
//! bucket table of at most 4 MiB: the main memory cost), the op lists (32
//! bytes per match, one list per switch margin), the patches being compared,
//! and one compression context per worker thread.

pub mod address_mapper;
pub mod block_matcher;
pub mod code_detector;
pub mod container_writer;
mod error;
pub mod gram_filter;
pub mod in_place_planner;
pub mod match_scan;
pub mod matcher;
pub mod patch_signer;
pub mod segment_encoder;
pub mod segmenter;
mod split_encoder;
mod stream_encoder;
pub mod suffix_array;

pub use error::DiffError;
pub use matcher::Op;

use fwdelta_format::header::{
    MAX_CELLS, MAX_CELL_LOG, MAX_EXTENSION_LEN, MIN_CELL_LOG, MIN_WINDOW_LOG,
};
use fwdelta_format::reference_rewriter::{Arch, ReferenceRewriter};
use fwdelta_format::{literal_filter, CodeRefs, Codec, Header, Layout, MemoryModel, MAX_IMAGE_LEN};
use rayon::prelude::*;
use std::time::{Duration, Instant};
use suffix_array::SuffixArray;

/// Executable-aware diffing (see `fwdelta_format::reference_rewriter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeMode {
    /// Plain byte-level diff.
    Off,
    /// Detect the instruction set ([`code_detector`]); if the old image looks
    /// like code, also make an executable-aware patch and keep the smaller.
    Auto,
    /// Predict references of this instruction set (and keep the smaller patch).
    Arch(Arch),
}

/// Generator options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Payload codec to use when the budget holds its decoder (below that,
    /// payloads are stored). Default [`Codec::Lzma2`]: on the public corpus
    /// it made patches 5.8-7.6% smaller than zstd; zstd decodes several
    /// times faster, for terminals where apply time matters more than bytes.
    pub codec: Codec,
    /// Compression level, 1..=22, on zstd's scale. Default 19. LZMA2 uses
    /// preset `min(level / 2, 9)`, "extreme" from level 12 (see
    /// [`segment_encoder::lzma_preset`]); from
    /// [`segment_encoder::SEARCH_LEVEL`] (20) it also encodes each segment
    /// with several copy-run thresholds and keeps the smallest (about 2x the
    /// encoding time).
    pub level: i32,
    /// Memory the applier may use (bytes); picks the decoder window and is
    /// written into the header. Default 2 MiB (a 1 MiB window: on the public
    /// corpus a 256 KiB window made some patches 60% larger, and larger windows
    /// gained nothing).
    pub apply_memory: u64,
    /// Target compressed-cost of one segment, in estimated bytes (see
    /// [`segmenter`]). Smaller segments resume and parallelise at a finer grain
    /// but cost more patch bytes. Default 1 MiB: on the public corpus it cost
    /// +0.34% and +0.42% on the two literal-heavy pairs against one segment,
    /// where 256 KiB cost up to +1.81%. Capped at
    /// [`segmenter::MAX_SEGMENT_COST`] (256 MiB), so `u64::MAX` means "as few
    /// segments as the format allows".
    pub segment_cost: u64,
    /// Make an in-place patch with cells of `2^cell_log` bytes (the applier's
    /// scratch size), instead of one for a separate output. Default `None`.
    pub in_place: Option<u8>,
    /// Put every segment boundary on a multiple of this many new bytes (the
    /// target's flash page), so an applier writing whole pages can checkpoint
    /// after any segment. Default 1 (no constraint). In-place cells are
    /// always aligned to their size.
    pub align: u64,
    /// Executable-aware diffing. Default [`CodeMode::Auto`]. Whenever an
    /// executable-aware patch is made, the plain one is made too and the smaller
    /// is kept, so a wrong guess costs time, never size. In-place patches are
    /// always plain.
    pub code: CodeMode,
    /// Body layout. Default `None`, automatic: with LZMA2 and a patch that
    /// is not in-place, the first the budget holds of [`Layout::Modelled`]
    /// (the head and diff models code the heads and diff bytes: on the
    /// public corpus 7-29% smaller patches than split streams, at one
    /// model decision per zero diff byte and nine per other to apply; the
    /// default 4 MiB holds it with a 1 MiB history),
    /// [`Layout::Split`] (heads, diff bytes and literals each compressed on
    /// their own: 1.6-5.2% smaller than one stream) and
    /// [`Layout::Interleaved`]. Small patches (under [`SMALL_PATCH`]) are
    /// made in every layout that fits and the smallest kept, since more
    /// streams cost a few bytes more to frame. With zstd, interleaved.
    pub layout: Option<Layout>,
    /// Store literal runs through the literal filter of the instruction set
    /// the plan detected, when it has one (AArch64, A32, x86-64; see
    /// [`fwdelta_format::literal_filter`]) and the patch has at least
    /// [`MIN_FILTERED_LITERALS`] literal bytes. Default true. Not for in-place
    /// patches.
    pub literal_filter: bool,
    /// Smallest patch the probe decides on alone (the smallest candidate at
    /// the probe level at least this large; new images smaller than it are
    /// not probed). Default [`PROBE_MIN_PATCH`]; `usize::MAX` always makes
    /// every candidate patch in full.
    pub probe_min_patch: usize,
    /// Told each [`Phase`] as the diff enters it (for a progress display);
    /// `None`: nothing is told.
    pub progress: Option<Progress>,
}

/// Fewest literal bytes worth the literal filter's 5-byte header extension.
pub const MIN_FILTERED_LITERALS: u64 = 4096;

/// Below this size the automatic layout also tries the interleaved layout
/// (cheap at this size, and on tiny patches the split layout's framing can
/// cost more than it saves).
pub const SMALL_PATCH: usize = 256 * 1024;

/// Above this new-image size (bytes) the automatic layout makes only the
/// first layout the budget allows, whatever the patch size. Each further
/// layout codes every diff byte of the image again: on the corpus's
/// near-identical pairs (P2, P5, P6: 8-19 MB images, patches of 0.3-40 KB)
/// the other layouts made the diff 1.4-2.7x slower and were 11-41% larger
/// than the modelled patch. What they can save, a few bytes of framing,
/// matters on small images, which still try them all.
pub const LAYOUT_TRIAL_MAX_IMAGE: usize = 1 << 20;

/// Patches smaller than this (bytes) are also encoded with stored payloads,
/// and the smaller kept: below a few hundred bytes of records, compression
/// adds more framing than it saves (on the public corpus: a 10 MB pair with
/// three changed bytes, 28 bytes of records, 32 as LZMA2).
pub const STORED_TRIAL: usize = 4096;

impl Default for Options {
    fn default() -> Self {
        Options {
            codec: Codec::Lzma2,
            level: 19,
            apply_memory: 4 << 20,
            segment_cost: 1 << 20,
            in_place: None,
            align: 1,
            code: CodeMode::Auto,
            layout: None,
            literal_filter: true,
            probe_min_patch: PROBE_MIN_PATCH,
            progress: None,
        }
    }
}

/// The stages of [`diff`], in the order it enters them (a plain patch of
/// a small image skips some).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Hashing both images, sorting the old image's suffixes and scanning
    /// the new image for matches.
    Matching,
    /// Predicting the old image's code references and sorting the
    /// prediction, beside a fast trial of the plain candidates.
    Predicting,
    /// Trying the candidate patches at a fast level.
    Probing,
    /// Encoding the chosen candidates in full.
    Encoding,
}

impl Phase {
    /// What the phase does, in a few words.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Matching => "hashing, sorting and matching",
            Phase::Predicting => "predicting code references, sorting again",
            Phase::Probing => "probing candidate patches",
            Phase::Encoding => "encoding",
        }
    }
}

/// A callback [`diff`] tells each [`Phase`] as it enters it, from the
/// thread that called it. Cloning shares the callback.
#[derive(Clone)]
pub struct Progress(std::sync::Arc<dyn Fn(Phase) + Send + Sync>);

impl Progress {
    /// Wrap `f`.
    pub fn new(f: impl Fn(Phase) + Send + Sync + 'static) -> Self {
        Progress(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

impl Options {
    /// Tell the progress callback, if any, that the diff enters `phase`.
    fn enter(&self, phase: Phase) {
        if let Some(p) = &self.progress {
            (p.0)(phase);
        }
    }
}

impl Options {
    /// Check the options and derive the codec and largest decoder window
    /// (log2) the budget allows: the chosen codec when its smallest decoder
    /// fits, stored payloads below that. Segments whose streams are smaller use smaller
    /// windows.
    pub fn codec(&self) -> Result<(Codec, u8), DiffError> {
        if !(1..=22).contains(&self.level) {
            return Err(DiffError::InvalidOption(format!(
                "compression level {} is outside 1..=22",
                self.level
            )));
        }
        if self.segment_cost == 0 {
            return Err(DiffError::InvalidOption(
                "segment cost must be at least 1".into(),
            ));
        }
        if let Some(cl) = self.in_place {
            if !(MIN_CELL_LOG..=MAX_CELL_LOG).contains(&cl) {
                return Err(DiffError::InvalidOption(format!(
                    "in-place scratch 2^{cl} is outside 4 KiB..=16 MiB"
                )));
            }
        }
        MemoryModel::codec_for_budget(self.codec, self.apply_memory).ok_or(
            DiffError::BudgetTooSmall {
                budget: self.apply_memory,
                minimum: MemoryModel::min_budget(),
            },
        )
    }
}

/// A generated patch and what it took to make it.
#[derive(Debug, Clone)]
pub struct Patch {
    /// The container bytes.
    pub bytes: Vec<u8>,
    /// Statistics.
    pub report: DiffReport,
}

/// Statistics of one diff.
#[derive(Debug, Clone)]
pub struct DiffReport {
    /// Ops in the edit script.
    pub ops: usize,
    /// New bytes produced from old bytes plus a difference.
    pub diff_bytes: u64,
    /// New bytes carried as literals.
    pub literal_bytes: u64,
    /// Segments in the patch.
    pub segments: usize,
    /// In-place patches: new bytes carried as literals because their old bytes
    /// are overwritten before they are needed.
    pub forced_literal_bytes: u64,
    /// Payload codec (zstd, or stored when the budget cannot hold a decoder).
    pub codec: Codec,
    /// Body layout.
    pub layout: Layout,
    /// Decoder window (log2) declared in the header: the largest any segment
    /// needs, at most the budget's.
    pub window_log: u8,
    /// The instruction set whose references the patch predicts, and the runs
    /// of its address map; `None` for a plain patch.
    pub code: Option<(Arch, usize)>,
    /// The instruction set whose literal filter the literals went through.
    pub literal_filter: Option<Arch>,
    /// Size of the plain patch, when an executable-aware one was also made
    /// (whichever is smaller is the patch).
    pub plain_len: Option<usize>,
    /// Set when a fast probe left some candidate patches unmade (see
    /// [`PROBE_MARGIN`]).
    pub probe: Option<Probe>,
    /// The scan's switch margin of the edit script encoded (see
    /// [`matcher::SWITCH_MARGINS`]).
    pub switch_margin: usize,
    /// Time spent hashing and matching.
    pub match_time: Duration,
    /// Time spent segmenting, compressing and writing.
    pub encode_time: Duration,
}

/// The edit script of one old/new pair, before encoding. Lets a caller encode
/// the same matches with different options (as the benchmark does to measure
/// what segmentation costs).
#[derive(Debug, Clone)]
pub struct Plan {
    /// One edit script per switch margin (`matcher::SWITCH_MARGINS`), each
    /// a list of ops covering the new image in order.
    scripts: Vec<Vec<Op>>,
    /// The executable-aware alternative, if one was planned.
    code: Option<CodePlan>,
    /// The instruction set named or detected, if any.
    arch: Option<Arch>,
    old_hash: [u8; 32],
    new_hash: [u8; 32],
    match_time: Duration,
}

/// An executable-aware plan: the references to predict, the old image as
/// predicted, and the matches against it.
#[derive(Debug, Clone)]
struct CodePlan {
    refs: CodeRefs,
    predicted: Vec<u8>,
    /// An edit script per switch margin scanned (all of
    /// `matcher::SWITCH_MARGINS`, or those the plain probe left), with it.
    scripts: Vec<(usize, Vec<Op>)>,
}

/// One patch [`Plan::encode`] may make: an edit script, the image its diff
/// bytes apply to, its options and references, and the switch margin the
/// script was scanned with.
struct Candidate<'a> {
    ops: &'a [Op],
    base: &'a [u8],
    opts: &'a Options,
    refs: Option<&'a CodeRefs>,
    margin: usize,
}

impl Plan {
    /// The edit script at bsdiff's switch margin.
    pub fn ops(&self) -> &[Op] {
        self.scripts.first().map_or(&[], Vec::as_slice)
    }

    /// Hash both images and find matches, plain only. Cost: the suffix array
    /// (4 bytes per old byte) and one pass over each image to hash it.
    pub fn build(old: &[u8], new: &[u8]) -> Result<Plan, DiffError> {
        Self::build_with(old, new, CodeMode::Off)
    }

    /// As [`Self::build`], then, if `code` names or detects an instruction
    /// set: derive the address map from the plain matches, predict the old
    /// image through it and match again. Cost of the second part: a copy of
    /// the old image, one rewrite pass and a second suffix sort and scan.
    pub fn build_with(old: &[u8], new: &[u8], code: CodeMode) -> Result<Plan, DiffError> {
        let rules = MatchRules {
            code,
            margins: &matcher::SWITCH_MARGINS,
            block_path_min_percent: matcher::BLOCK_PATH_MIN_PERCENT,
        };
        Self::build_scanning(old, new, &rules)
    }

    /// The plan [`diff`] makes for `opts`, as [`Self::build_with`] does:
    /// at the fast levels ([`FAST_LEVEL_MAX`]) one switch margin and, with
    /// [`CodeMode::Auto`], no executable-aware plan; none for in-place
    /// patches. For callers that encode one plan several ways (the
    /// benchmark); [`diff`] also overlaps planning with its probe.
    pub fn build_for(old: &[u8], new: &[u8], opts: &Options) -> Result<Plan, DiffError> {
        Self::build_scanning(old, new, &match_rules(opts))
    }

    /// [`Self::build_with`] by the match `rules` given.
    fn build_scanning(old: &[u8], new: &[u8], rules: &MatchRules) -> Result<Plan, DiffError> {
        let margins = rules.margins;
        let mut plan = Self::build_plain(old, new, rules)?;
        let start = Instant::now();
        plan.code = plan.arch.filter(|_| !new.is_empty()).and_then(|arch| {
            let (refs, predicted) = predict(arch, old, new, &plan.scripts[0])?;
            let sa = SuffixArray::new(&predicted);
            let scripts = matcher::find_scripts_in(&sa, new, margins);
            drop(sa);
            Some(CodePlan {
                refs,
                predicted,
                scripts: margins.iter().copied().zip(scripts).collect(),
            })
        });
        plan.match_time += start.elapsed();
        Ok(plan)
    }

    /// Hash both images, find the plain matches at every switch margin and
    /// detect the instruction set (the executable-aware plan is left to the
    /// caller).
    fn build_plain(old: &[u8], new: &[u8], rules: &MatchRules) -> Result<Plan, DiffError> {
        let (code, margins) = (rules.code, rules.margins);
        for (which, len) in [("old", old.len()), ("new", new.len())] {
            if len as u64 > MAX_IMAGE_LEN {
                return Err(DiffError::TooLarge {
                    which,
                    len: len as u64,
                });
            }
        }
        let start = Instant::now();
        // The hashes and the detector read whole images beside the
        // matcher, which leaves a thread idle while it sorts.
        let (((old_hash, new_hash), arch), scripts) = rayon::join(
            || {
                rayon::join(
                    || rayon::join(|| hash(old), || hash(new)),
                    || match code {
                        CodeMode::Off => None,
                        CodeMode::Arch(a) => Some(a),
                        CodeMode::Auto => code_detector::detect(old),
                    },
                )
            },
            || matcher::find_scripts_with(old, new, margins, rules.block_path_min_percent),
        );
        Ok(Plan {
            scripts,
            code: None,
            arch,
            old_hash,
            new_hash,
            match_time: start.elapsed(),
        })
    }

    /// [`Self::build_with`] and [`Self::encode`] as one pipeline, the way
    /// [`diff`] makes a patch: the executable-aware plan's old-image
    /// prediction and suffix sort (mostly one thread) run beside the probe
    /// of the plain candidates, and the aware scan skips the switch margins
    /// whose plain patch the probe found clearly larger (the margins rank
    /// the same way on plain and aware scripts of the corpus). Same patch as
    /// [`Self::build_with`] then [`Self::encode`] unless a margin is skipped.
    fn build_and_encode(old: &[u8], new: &[u8], opts: &Options) -> Result<Patch, DiffError> {
        let rules = match_rules(opts);
        let margins = rules.margins;
        opts.enter(Phase::Matching);
        let mut plan = Self::build_plain(old, new, &rules)?;
        let start = Instant::now();
        let probing = Self::probes(new, opts, plan.scripts.len());
        let plain: Vec<Candidate> = plan.plain_candidates(old, opts).collect();
        let predicted = plan
            .arch
            .filter(|_| opts.in_place.is_none() && !new.is_empty())
            .and_then(|arch| predict(arch, old, new, &plan.scripts[0]));
        if predicted.is_some() {
            opts.enter(Phase::Predicting);
        } else if probing {
            opts.enter(Phase::Probing);
        }
        let (sorted, plain_sizes) = rayon::join(
            || predicted.as_ref().map(|(_, p)| SuffixArray::new(p)),
            || {
                probing
                    .then(|| plan.probe_sizes(&plain, old, new))
                    .transpose()
            },
        );
        let plain_sizes = plain_sizes?;
        let margins: Vec<usize> = match &plain_sizes {
            Some(sizes) => plain
                .iter()
                .zip(probe_keeps(
                    &sizes.iter().map(|&s| (s, false)).collect::<Vec<_>>(),
                    opts.probe_min_patch,
                ))
                .filter(|(_, keep)| *keep)
                .map(|(c, _)| c.margin)
                .collect(),
            None => margins.to_vec(),
        };
        let scripts = sorted.map(|sa| matcher::find_scripts_in(&sa, new, &margins));
        plan.code = predicted
            .zip(scripts)
            .map(|((refs, predicted), scripts)| CodePlan {
                refs,
                predicted,
                scripts: margins.into_iter().zip(scripts).collect(),
            });
        plan.match_time += start.elapsed();
        opts.enter(Phase::Encoding);
        plan.encode_probed(old, new, opts, plain_sizes)
    }

    /// Encode this plan into a patch container: a candidate patch per edit
    /// script (plain, and executable-aware if planned, at each switch
    /// margin), made in parallel, keeping the smallest. On large images at
    /// the default levels the candidates are first made at a fast level and
    /// only those not clearly larger than the smallest are made in full (see
    /// [`PROBE_FROM_LEVEL`]): on the corpus's large executables (P4, P7, A1)
    /// that replaced full encodes by fast ones at about a tenth of the cost.
    /// The executable-aware patch gets the decoder window that fits the
    /// budget once its map and rewriter are paid for; if none does, only the
    /// plain patch is made.
    pub fn encode(&self, old: &[u8], new: &[u8], opts: &Options) -> Result<Patch, DiffError> {
        self.encode_probed(old, new, opts, None)
    }

    /// The candidates of the plain edit scripts, bsdiff's margin first.
    fn plain_candidates<'s>(
        &'s self,
        old: &'s [u8],
        opts: &'s Options,
    ) -> impl Iterator<Item = Candidate<'s>> {
        self.scripts
            .iter()
            .zip(matcher::SWITCH_MARGINS)
            .map(move |(ops, margin)| Candidate {
                ops,
                base: old,
                opts,
                refs: None,
                margin,
            })
    }

    /// Whether [`Self::encode`] probes `candidates` candidate patches of
    /// `new` with `opts` before making them in full.
    fn probes(new: &[u8], opts: &Options, candidates: usize) -> bool {
        candidates > 1
            && (PROBE_FROM_LEVEL..segment_encoder::SEARCH_LEVEL).contains(&opts.level)
            && new.len() >= opts.probe_min_patch
    }

    /// Each candidate's patch size at [`PROBE_LEVEL`], made in parallel; a
    /// candidate the same as an earlier one gets its size unmade.
    fn probe_sizes(
        &self,
        candidates: &[Candidate],
        old: &[u8],
        new: &[u8],
    ) -> Result<Vec<usize>, DiffError> {
        let firsts = first_of_each(candidates);
        let sizes: Vec<Option<usize>> = candidates
            .par_iter()
            .zip(&firsts)
            .map(|(c, &first)| {
                (first.is_none())
                    .then(|| {
                        self.encode_ops(c, old, new, PROBE_LEVEL, true)
                            .map(|p| p.bytes.len())
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(sizes
            .iter()
            .zip(&firsts)
            .map(|(size, first)| size.or_else(|| first.and_then(|i| sizes[i])).unwrap_or(0))
            .collect())
    }

    /// [`Self::encode`], given the probe sizes of the plain candidates if
    /// they were already made.
    fn encode_probed(
        &self,
        old: &[u8],
        new: &[u8],
        opts: &Options,
        plain_sizes: Option<Vec<usize>>,
    ) -> Result<Patch, DiffError> {
        let aware_opts = self.code.as_ref().and_then(|code| {
            let header_len = Header::MAX_BASE_LEN + code.refs.extension_len();
            let extra =
                MemoryModel::code_refs_extra(header_len as u64, code.refs.map.runs() as u64);
            let o = Options {
                apply_memory: opts.apply_memory.checked_sub(extra)?,
                ..opts.clone()
            };
            (opts.in_place.is_none() && o.codec().is_ok()).then_some((code, o))
        });
        // Every patch worth making: each plain edit script, then each
        // executable-aware one.
        let aware = aware_opts.iter().flat_map(|(code, o)| {
            code.scripts.iter().map(move |(margin, ops)| Candidate {
                ops,
                base: &code.predicted,
                opts: o,
                refs: Some(&code.refs),
                margin: *margin,
            })
        });
        let candidates: Vec<Candidate> = self.plain_candidates(old, opts).chain(aware).collect();
        let make = |c: &Candidate, level: i32| self.encode_ops(c, old, new, level, false);
        let mut keep = vec![true; candidates.len()];
        let mut probe = None;
        if Self::probes(new, opts, candidates.len()) {
            let sizes = match plain_sizes {
                Some(mut sizes) if sizes.len() == self.scripts.len() => {
                    sizes.extend(self.probe_sizes(&candidates[sizes.len()..], old, new)?);
                    sizes
                }
                _ => self.probe_sizes(&candidates, old, new)?,
            };
            let kinds: Vec<(usize, bool)> = sizes
                .iter()
                .zip(&candidates)
                .map(|(&size, c)| (size, c.refs.is_some()))
                .collect();
            keep = probe_keeps(&kinds, opts.probe_min_patch);
            let made = keep.iter().filter(|&&k| k).count();
            if made < candidates.len() {
                probe = Some(Probe {
                    candidates: candidates.len(),
                    made,
                });
            }
        }
        // Margins often give the same script (literal-heavy images): made once.
        for (k, first) in keep.iter_mut().zip(first_of_each(&candidates)) {
            *k &= first.is_none();
        }
        let made = candidates
            .par_iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(c, _)| make(c, opts.level))
            .collect::<Result<Vec<_>, _>>()?;
        let plain_len = made
            .iter()
            .filter(|p| p.report.code.is_none())
            .map(|p| p.bytes.len())
            .min();
        // The first of the smallest: plain before aware, bsdiff's margin first.
        let mut best = made
            .into_iter()
            .reduce(|best, p| {
                if p.bytes.len() < best.bytes.len() {
                    p
                } else {
                    best
                }
            })
            .ok_or_else(|| DiffError::InvalidOption("no patch to make".into()))?;
        if best.report.code.is_some() {
            best.report.plain_len = plain_len;
        }
        best.report.probe = probe;
        Ok(best)
    }

    /// Encode a candidate's ops at `level`; their diff bytes apply to
    /// `c.base` (the old image, or the old image as `c.refs` predicts it).
    /// A `probe` encoding only ranks candidates: with an automatic layout it
    /// makes the split layout alone, never the slower diff model.
    fn encode_ops(
        &self,
        c: &Candidate,
        old: &[u8],
        new: &[u8],
        level: i32,
        probe: bool,
    ) -> Result<Patch, DiffError> {
        let (ops, base, code_refs) = (c.ops, c.base, c.refs);
        let opts = &Options {
            level,
            ..c.opts.clone()
        };
        let (codec, max_window_log) = opts.codec()?;
        let start = Instant::now();
        let (segments, forced_literal_bytes) = match opts.in_place {
            Some(cl) => {
                let cells = (new.len() as u64).div_ceil(1 << cl);
                if cells > MAX_CELLS {
                    return Err(DiffError::InvalidOption(format!(
                        "{cells} in-place cells of 2^{cl} bytes: at most {MAX_CELLS}; use a larger scratch"
                    )));
                }
                let p = in_place_planner::plan(ops, new.len() as u64, cl);
                (p.segments, p.forced_literal_bytes)
            }
            None => {
                let segments = segmenter::split(ops, base, new, opts.segment_cost);
                (segmenter::align_boundaries(segments, opts.align), 0)
            }
        };
        // The window each split layout gets from the budget, if it fits.
        let window_in = |layout: Layout| {
            (codec != Codec::Stored && opts.in_place.is_none())
                .then(|| MemoryModel::window_log_for_budget_in(codec, opts.apply_memory, layout))
                .flatten()
        };
        // The layouts to encode, in order of preference: the first is always
        // made, the others only on small patches, where framing can outweigh
        // what a layout saves (on the corpus's larger patches the first was
        // always the smallest; making all three at `--level max` took P4 to
        // 130 s).
        let interleaved = (Layout::Interleaved, max_window_log);
        let layouts: Vec<(Layout, u8)> = match opts.layout {
            Some(Layout::Interleaved) => vec![interleaved],
            Some(layout) => match window_in(layout) {
                Some(w) => vec![(layout, w)],
                None => {
                    return Err(DiffError::InvalidOption(format!(
                        "the {} layout needs a compressed codec, a patch that is not in-place, \
                         and an apply budget of at least {} bytes",
                        layout.name(),
                        MemoryModel::required_for_layout(codec, MIN_WINDOW_LOG, layout)
                    )))
                }
            },
            // zstd's decoders are larger (a 2 MiB budget leaves its diff
            // stream a 256 KiB window) and zstd is chosen for apply speed:
            // automatic means interleaved for it.
            None if codec != Codec::Lzma2 => vec![interleaved],
            // The probe compares candidates cheaply: LZMA2 diffs at its
            // level rank them as the diff model would, at a tenth of the time.
            None if probe => window_in(Layout::Split)
                .map(|w| (Layout::Split, w.min(PROBE_MAX_WINDOW_LOG)))
                .into_iter()
                .chain([interleaved])
                .take(1)
                .collect(),
            None => [Layout::Modelled, Layout::Split]
                .into_iter()
                .filter_map(|l| window_in(l).map(|w| (l, w)))
                .chain([interleaved])
                .collect(),
        };
        let (diff_bytes, literal_bytes) = ops
            .iter()
            .fold((0, 0), |(d, l), op| (d + op.diff_len, l + op.literal_len));
        let new = &segment_encoder::NewImage {
            bytes: new,
            literal_filter: self
                .arch
                .filter(|&a| literal_filter::supported(a))
                .filter(|_| {
                    opts.literal_filter
                        && opts.in_place.is_none()
                        && literal_bytes >= MIN_FILTERED_LITERALS
                }),
        };
        let images = container_writer::Images {
            old_len: old.len() as u64,
            old_hash: self.old_hash,
            new_len: new.len() as u64,
            new_hash: self.new_hash,
        };
        let encode_in = |codec: Codec, (layout, max_window_log): (Layout, u8)| {
            let encoded = segment_encoder::encode_all(
                &segments,
                base,
                new,
                codec,
                layout,
                opts.level,
                max_window_log,
            )?;
            let window_log = encoded
                .iter()
                .map(|e| e.window_log)
                .max()
                .unwrap_or(MIN_WINDOW_LOG);
            let body = container_writer::Body {
                codec,
                layout,
                cell_log: opts.in_place,
                code_refs,
                literal_filter: new.literal_filter,
            };
            let bytes = container_writer::write(&images, &body, &segments, &encoded)?;
            Ok::<_, DiffError>((bytes, codec, layout, window_log))
        };
        let mut best: Option<(Vec<u8>, Codec, Layout, u8)> = None;
        for &layout in &layouts {
            if best
                .as_ref()
                .is_some_and(|b| b.0.len() >= SMALL_PATCH || new.len() > LAYOUT_TRIAL_MAX_IMAGE)
            {
                break;
            }
            let made = match encode_in(codec, layout) {
                // Rare: blocks the model codes larger than the buffer; the
                // next layout (split) always fits.
                Err(DiffError::ModelledBlockTooLarge) if opts.layout.is_none() => continue,
                made => made?,
            };
            if best.as_ref().is_none_or(|b| made.0.len() < b.0.len()) {
                best = Some(made);
            }
        }
        let mut best = best.ok_or(DiffError::ModelledBlockTooLarge)?;
        // A record stream of a few dozen bytes does not compress: the codec's
        // own framing (LZMA2's chunk header and end marker, zstd's frame
        // header) is then pure overhead, and stored payloads also need the
        // least apply memory. Tried on tiny patches unless split was asked for.
        if best.0.len() < STORED_TRIAL
            && codec != Codec::Stored
            && !opts.layout.is_some_and(Layout::is_split)
        {
            let stored = encode_in(Codec::Stored, (Layout::Interleaved, MIN_WINDOW_LOG))?;
            if stored.0.len() < best.0.len() {
                best = stored;
            }
        }
        let (bytes, codec, layout, window_log) = best;
        Ok(Patch {
            bytes,
            report: DiffReport {
                ops: ops.len(),
                diff_bytes,
                literal_bytes,
                segments: segments.len(),
                forced_literal_bytes,
                codec,
                layout,
                window_log,
                code: code_refs.map(|c| (c.arch, c.map.runs())),
                literal_filter: new.literal_filter,
                plain_len: None,
                probe: None,
                switch_margin: c.margin,
                match_time: self.match_time,
                encode_time: start.elapsed(),
            },
        })
    }
}

/// Levels up to this one are the fast levels (`fwdelta diff --fast` is
/// level 4): [`diff`] scans at bsdiff's switch margin alone and, with
/// [`CodeMode::Auto`], plans no executable-aware patch, so it sorts and
/// scans once and encodes one candidate. On the public corpus that made
/// diffs 1.5-2.7x faster than the default level for patches 0-13% larger,
/// still smaller than HDiffPatch's (lzma2) except on two near-identical
/// pairs, by 162 and 29 bytes.
pub const FAST_LEVEL_MAX: i32 = 5;

/// The level `fwdelta diff --fast` picks: LZMA2 preset 2 (liblzma's fast
/// mode) for the literals.
pub const FAST_LEVEL: i32 = 4;

/// From this level up to [`segment_encoder::SEARCH_LEVEL`] (exclusive), a
/// large pair's candidate patches (plain and executable-aware, at each
/// switch margin) are first made at [`PROBE_LEVEL`], and only those not
/// clearly larger than the smallest are made in full. Below it, full
/// encoding is cheap enough to make them all; `--level max` always makes
/// them all.
pub const PROBE_FROM_LEVEL: i32 = 12;

/// The probe's level: LZMA2 preset 0, about a fifth of the default level's
/// encoding time.
pub const PROBE_LEVEL: i32 = 1;

/// The largest decoder window (log2) the probe's streams get. Each LZMA2
/// encoder's match finder takes about 8 bytes per window byte, three
/// streams a segment, a segment per thread: at 2^20 the probe held 52 MB
/// of match finders (heaptrack) while the executable-aware image was
/// sorted beside it, P7's peak. At 2^17 P7's peak RSS went from 7.6x to
/// 5.9x old + new and P4's from 5.8x to 5.2x, and every patch of the
/// corpus, the tars and the test firmwares came out byte-identical (the
/// probe only ranks candidates; the chosen ones are encoded at the full
/// window).
pub const PROBE_MAX_WINDOW_LOG: u8 = 17;

/// Default [`Options::probe_min_patch`]: the smallest patch (bytes, both
/// probe patches) the probe decides on alone. On smaller patches the
/// probe is too inexact: the aware/plain size ratio at the probe level was
/// 0.2-0.5% below the full level's on the corpus's executable pairs whose
/// patches are 2-4 MB (P4, P7, A1), 1.0% below on A2 (200 KB), 2.7-4% below
/// on the test firmwares (3 KB) and 17% below on a synthetic 8 MiB program
/// with 1 KiB inserted (4 KB patches, where the fast level misses the
/// repeating call displacements the full level finds): the fast level
/// always favours the aware patch, more so the smaller the patch.
pub const PROBE_MIN_PATCH: usize = 1 << 20;

/// The probe leaves a plain candidate unmade when it is at least this
/// fraction larger than the smallest, an executable-aware one (or the other
/// way round) at the probe level; the rest are made in full and the
/// smallest kept. It is the probe's bias measured above (at most 0.5% on
/// large images) plus the margin between candidates of one kind
/// ([`PROBE_SAME_KIND_MARGIN`]). The closest plain/aware call on the corpus
/// (P7: aware 1.0% smaller at the probe level, 0.8% in full) is decided by
/// the probe.
pub const PROBE_MARGIN: f64 = 0.0075;

/// What the probe did: of `candidates` patches (each plain and
/// executable-aware edit script), `made` were made in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Candidate patches probed.
    pub candidates: usize,
    /// Candidates made in full: those not clearly larger than the smallest
    /// at the probe level.
    pub made: usize,
}

/// The probe leaves a candidate unmade when it is at least this fraction
/// larger than the smallest at the probe level and of the same kind (both
/// plain or both executable-aware: they differ only in the switch margin).
/// The probe ranks those without the aware bias: on the corpus's pairs with
/// probed patches (P1, P4, P7) the margin candidates the probe put 0.5-1.0%
/// apart were 0.9-1.1% apart in full, in the same order, while a full encode
/// of each costs about as much as the whole probe.
pub const PROBE_SAME_KIND_MARGIN: f64 = 0.0025;

/// Which candidates to make in full, given their sizes at [`PROBE_LEVEL`]
/// and whether each is executable-aware: all when the smallest is under
/// `min_patch` bytes, else those less than [`PROBE_MARGIN`] larger than the
/// smallest, or [`PROBE_SAME_KIND_MARGIN`] when of its kind.
pub fn probe_keeps(sizes: &[(usize, bool)], min_patch: usize) -> Vec<bool> {
    let Some(&(best, best_aware)) = sizes.iter().min_by_key(|(size, _)| *size) else {
        return Vec::new();
    };
    sizes
        .iter()
        .map(|&(s, aware)| {
            let margin = if aware == best_aware {
                PROBE_SAME_KIND_MARGIN
            } else {
                PROBE_MARGIN
            };
            best < min_patch || (s as f64) * (1.0 - margin) <= best as f64
        })
        .collect()
}

/// For each candidate, the index of an earlier one with the same edit
/// script over the same base (the same patch), if any. Cost: a comparison
/// of the scripts, pairwise (a handful of candidates).
fn first_of_each(candidates: &[Candidate]) -> Vec<Option<usize>> {
    (0..candidates.len())
        .map(|j| {
            let c = &candidates[j];
            (0..j).find(|&i| {
                let e = &candidates[i];
                std::ptr::eq(e.base, c.base)
                    && e.refs.is_some() == c.refs.is_some()
                    && e.ops == c.ops
            })
        })
        .collect()
}

/// The executable-aware alternative's prediction for `arch`: the references
/// to predict (the address map derived from the plain `ops`) and the old
/// image as predicted. `None` when there is nothing to predict (no moved
/// code, or no reference changes), or when the plain `ops` leave fewer than
/// [`AWARE_MIN_DIFFERENCES_PERMILLE`] of the new image as differing bytes.
/// Cost: a pass over the ops' diff ranges, then a copy of the old image and
/// one rewrite pass.
fn predict(arch: Arch, old: &[u8], new: &[u8], ops: &[Op]) -> Option<(CodeRefs, Vec<u8>)> {
    if old.is_empty()
        || segmenter::differing_bytes(ops, old, new)
            .iter()
            .sum::<u64>()
            * 1000
            < new.len() as u64 * AWARE_MIN_DIFFERENCES_PERMILLE
    {
        return None;
    }
    // One byte of the extension holds the arch id.
    let map = address_mapper::build_map_fitting(ops, old.len() as u64, MAX_EXTENSION_LEN - 1);
    if map.is_identity() {
        return None;
    }
    let mut predicted = old.to_vec();
    ReferenceRewriter::new(arch, map.clone(), old.len() as u64).rewrite_image(&mut predicted);
    if predicted == old {
        return None;
    }
    Some((CodeRefs { arch, map }, predicted))
}

/// The executable-aware plan predicts references that changed, and those
/// show up in the plain edit script as differing bytes; below this share of
/// the new image (per mille) no aware plan is made. On the public corpus
/// the aware patch won where they were 55-113 per mille (P4, P7, the test
/// firmwares) and lost where they were 0-6 (P2, P5, P6), where predicting
/// the old image took 40-75% of the diff's time.
pub const AWARE_MIN_DIFFERENCES_PERMILLE: u64 = 10;

/// An estimate of the peak resident memory (bytes) of a process that
/// makes the patch from `old` to a new image of `new_len` bytes with
/// [`diff`] on `threads` worker threads, both images memory-mapped, signs
/// it and applies it back once (`fwdelta release run-job`): what a
/// scheduler should reserve for the job.
///
/// The model is an upper bound fitted to peak RSS measured with
/// `/usr/bin/time -v` on the test pairs and the public corpus (22 KiB to
/// 23 MiB images, 2 threads): measured peaks were 0.43 to 0.94 of the
/// estimate, closest on full images and executables whose
/// executable-aware patch wins, loosest on near-identical pairs, whose
/// small patches need small compression windows (docs/RELEASE.md has the
/// table). Its terms:
/// - 12 MiB for the process itself;
/// - per thread, one compression context: up to 24 MiB (LZMA2's match
///   finder at the largest window), less on small images (8 bytes per new
///   byte);
/// - the old image's suffix array (4 bytes per old byte), its gram filter
///   from [`suffix_array::GRAM_FILTER_MIN_TEXT`] (1 byte per old byte) and
///   the mapped old image;
/// - when executable-aware diffing will run (`code` names an instruction
///   set, or `auto` detects one in `old`, as [`diff`] does), the predicted
///   old image and its own match lists: 2 more bytes per old byte;
/// - the mapped new image, the patch and the applied-back copy: 3 bytes
///   per new byte;
/// - the match scan's memo of searches (see
///   [`match_scan::scan_margins`]): at most 2.125 bytes per new byte,
///   counted as 2.25.
///
/// Cost: with [`CodeMode::Auto`], the detector's pass over `old` per
/// instruction set; otherwise none.
pub fn estimated_peak_memory(old: &[u8], new_len: u64, code: CodeMode, threads: usize) -> u64 {
    const MIB: u64 = 1 << 20;
    let aware = match code {
        CodeMode::Off => false,
        CodeMode::Arch(_) => true,
        CodeMode::Auto => code_detector::detect(old).is_some(),
    };
    let old_len = old.len() as u64;
    let filter = u64::from(old.len() >= suffix_array::GRAM_FILTER_MIN_TEXT);
    let per_old = if aware { 7 } else { 5 } + filter;
    let context = (24 * MIB).min(new_len.saturating_mul(8));
    (12 * MIB)
        .saturating_add((threads.max(1) as u64).saturating_mul(context))
        .saturating_add(old_len.saturating_mul(per_old))
        .saturating_add(new_len.saturating_mul(3))
        .saturating_add(new_len.saturating_mul(9) / 4)
}

#[cfg(test)]
mod estimate_tests {
    use super::*;

    #[test]
    fn the_estimate_grows_with_the_images_threads_and_code() {
        let old = vec![0u8; 1 << 20];
        let plain = estimated_peak_memory(&old, 1 << 20, CodeMode::Off, 1);
        assert_eq!(
            plain,
            (12 << 20) + (8 << 20) + (6 << 20) + (3 << 20) + (9 << 20) / 4
        );
        assert!(estimated_peak_memory(&old, 1 << 20, CodeMode::Off, 2) > plain);
        let aware = estimated_peak_memory(
            &old,
            1 << 20,
            CodeMode::Arch(fwdelta_format::reference_rewriter::Arch::ALL[0]),
            1,
        );
        assert_eq!(aware, plain + (2 << 20));
        // Zeros are no code: auto detects nothing.
        assert_eq!(
            estimated_peak_memory(&old, 1 << 20, CodeMode::Auto, 1),
            plain
        );
        // One compression context is at most 24 MiB.
        let big = estimated_peak_memory(&[], 100 << 20, CodeMode::Off, 1);
        assert_eq!(big, (12 << 20) + (24 << 20) + (300 << 20) + (225 << 20));
    }
}

/// Make a patch turning `old` into `new`. One-shot form of
/// [`Plan::build`] followed by [`Plan::encode`].
pub fn diff(old: &[u8], new: &[u8], opts: &Options) -> Result<Patch, DiffError> {
    opts.codec()?;
    Plan::build_and_encode(old, new, opts)
}

/// How a plan finds its matches (see [`match_rules`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MatchRules {
    /// The instruction-set mode.
    code: CodeMode,
    /// The switch margins scanned.
    margins: &'static [usize],
    /// The block matcher's coverage (percent of new) from which only what
    /// it leaves is sorted and scanned.
    block_path_min_percent: u64,
}

/// The match rules a plan for `opts` uses: no executable-aware plan for
/// in-place patches; at the fast levels ([`FAST_LEVEL_MAX`]) bsdiff's
/// margin alone, no executable-aware plan unless one was named, and the
/// block path from [`matcher::FAST_BLOCK_PATH_MIN_PERCENT`] coverage.
fn match_rules(opts: &Options) -> MatchRules {
    let fast = opts.level <= FAST_LEVEL_MAX;
    let code = match opts.code {
        _ if opts.in_place.is_some() => CodeMode::Off,
        CodeMode::Auto if fast => CodeMode::Off,
        code => code,
    };
    if fast {
        MatchRules {
            code,
            margins: &matcher::SWITCH_MARGINS[..1],
            block_path_min_percent: matcher::FAST_BLOCK_PATH_MIN_PERCENT,
        }
    } else {
        MatchRules {
            code,
            margins: &matcher::SWITCH_MARGINS[..],
            block_path_min_percent: matcher::BLOCK_PATH_MIN_PERCENT,
        }
    }
}

fn hash(data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    if data.len() >= 1 << 20 {
        h.update_rayon(data);
    } else {
        h.update(data);
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[test]
    fn probe_encodes_use_a_small_window() {
        let old: Vec<u8> = (0..1_500_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        // 400 KB of new bytes in the middle: a literal stream whose window
        // the full encode sizes past the probe's cap.
        let mut x = 7u64;
        let fresh: Vec<u8> = (0..400_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        let mut new = old[..700_000].to_vec();
        new.extend_from_slice(&fresh);
        new.extend_from_slice(&old[700_000..]);
        let plan = Plan::build(&old, &new).unwrap();
        let opts = Options::default();
        let c = plan.plain_candidates(&old, &opts).next().unwrap();
        let probe = plan.encode_ops(&c, &old, &new, PROBE_LEVEL, true).unwrap();
        let full = plan.encode_ops(&c, &old, &new, opts.level, false).unwrap();
        assert!(
            probe.report.window_log <= PROBE_MAX_WINDOW_LOG,
            "{}",
            probe.report.window_log
        );
        assert!(
            full.report.window_log > PROBE_MAX_WINDOW_LOG,
            "{}",
            full.report.window_log
        );
    }

    #[test]
    fn fast_levels_take_the_block_path_at_partial_coverage() {
        // Every fourth 1 KiB block of new is the old block after it with a
        // byte changed every 24 bytes: the block matcher covers about 75%
        // of new, between the fast levels' threshold and the default's, and
        // only the full path finds those blocks' source (old bytes a cover
        // uses).
        let old: Vec<u8> = (0..512 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 ^ (i >> 11) as u8)
            .collect();
        let mut new = old.clone();
        for block in (0..new.len() / 1024 - 1).step_by(4) {
            let at = block * 1024;
            new.copy_within(at + 1024..at + 2048, at);
            for i in (at..at + 1024).step_by(24) {
                new[i] = new[i].wrapping_add(0x41);
            }
        }
        let covers = block_matcher::find_covers(&old, &new);
        let covered = covers.iter().map(|c| c.len).sum::<usize>() as u64 * 100;
        let n = new.len() as u64;
        assert!(covered >= n * matcher::FAST_BLOCK_PATH_MIN_PERCENT);
        assert!(covered < n * matcher::BLOCK_PATH_MIN_PERCENT);
        let margins = &matcher::SWITCH_MARGINS[..1];
        let block_path = matcher::find_scripts_around(&old, &new, &covers, margins);
        let full_path = matcher::find_scripts_in(&SuffixArray::new(&old), &new, margins);
        assert_ne!(block_path, full_path, "the two paths must differ here");
        let fast = Options {
            level: FAST_LEVEL,
            ..Options::default()
        };
        assert_eq!(
            Plan::build_for(&old, &new, &fast).unwrap().scripts,
            block_path
        );
        let default = Options::default();
        assert_eq!(
            Plan::build_for(&old, &new, &default).unwrap().scripts[..1],
            full_path[..]
        );
    }

    #[test]
    fn identical_candidates_are_made_once() {
        let (old, predicted) = (vec![1u8; 64], vec![2u8; 64]);
        let opts = Options::default();
        let copy = [Op {
            old_start: 0,
            diff_len: 64,
            literal_len: 0,
        }];
        let literal = [Op::literal(64)];
        let candidate = |ops, base, margin| Candidate {
            ops,
            base,
            opts: &opts,
            refs: None,
            margin,
        };
        let candidates = [
            candidate(&copy, &old, 8),
            candidate(&literal, &old, 3),
            candidate(&copy, &old, 3),
            candidate(&copy, &predicted, 8),
        ];
        assert_eq!(first_of_each(&candidates), [None, None, Some(0), None]);
    }

    #[test]
    fn the_probe_drops_only_clearly_larger_patches() {
        let big = 2 * PROBE_MIN_PATCH;
        // Plain and aware candidates: the wide margin between kinds.
        let mixed = |sizes: &[usize]| {
            let kinds: Vec<(usize, bool)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| (s, i % 2 == 1))
                .collect();
            probe_keeps(&kinds, PROBE_MIN_PATCH)
        };
        assert_eq!(mixed(&[big, big * 98 / 100]), [false, true]);
        assert_eq!(mixed(&[big * 98 / 100, big]), [true, false]);
        assert_eq!(mixed(&[big, big * 995 / 1000]), [true, true]);
        assert_eq!(mixed(&[big, big]), [true, true]);
        // The margin is relative to the smallest patch.
        let edge = (big as f64 / (1.0 - PROBE_MARGIN)) as usize;
        assert_eq!(mixed(&[edge, big]), [true, true]);
        assert_eq!(mixed(&[edge + 1, big]), [false, true]);
        // Candidates of the best one's kind get the narrow margin.
        let same = |sizes: &[usize]| {
            let kinds: Vec<(usize, bool)> = sizes.iter().map(|&s| (s, true)).collect();
            probe_keeps(&kinds, PROBE_MIN_PATCH)
        };
        assert_eq!(same(&[big, big * 995 / 1000]), [false, true]);
        assert_eq!(same(&[big, big * 998 / 1000]), [true, true]);
        let edge = (big as f64 / (1.0 - PROBE_SAME_KIND_MARGIN)) as usize;
        assert_eq!(same(&[edge, big]), [true, true]);
        assert_eq!(same(&[edge + 1, big]), [false, true]);
        // Both at once: the best is aware; one of each kind within 0.6%.
        let four = [
            (big, false),
            (big * 990 / 1000, false),
            (big * 984 / 1000, true),
            (big * 990 / 1000, true),
        ];
        assert_eq!(
            probe_keeps(&four, PROBE_MIN_PATCH),
            [false, true, true, false]
        );
        // Under the size floor every candidate is made.
        assert_eq!(same(&[PROBE_MIN_PATCH - 1, big]), [true, true]);
        assert_eq!(same(&[]), Vec::<bool>::new());
    }
}
