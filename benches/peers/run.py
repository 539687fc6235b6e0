#!/usr/bin/env python3
"""Side-by-side benchmark of fwdelta against other binary-delta tools.

Usage (from anywhere; default paths are relative to the repository root):

    python3 benches/peers/run.py [--corpus DIR] [--out DIR] [--pairs P1,P2] [--tools a,b]

For every corpus pair DIR/<pair>/{old,new} and every tool (fwdelta, fwdelta-max and each
peer found on PATH) it makes a patch, applies it, and compares the result with the new
image byte for byte. Each diff and apply runs alone under `/usr/bin/time -f '%e %M'`
(wall seconds, peak RSS in KiB). Writes peers.md, peers.json and peers.svg to the output
directory (default target/peers/) and prints the Markdown.

Exit status: 0 if every tool's patch applied back to the exact new image; 1 if any result
was a MISMATCH or any diff/apply FAILED, or if the run could not start (unknown --pairs or
--tools, no corpus); 2 on command-line syntax errors (argparse).

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TIME = "/usr/bin/time"
# Peer figures measured by the team on the same corpus, for tools that do not install from
# the registries (HDiffPatch's hdiffz): read, never run.
REFERENCE = REPO.parent / "shared" / "reference" / "peers-public.md"
REFERENCE_TOOLS = ("hdiffz-zstd", "hdiffz-lzma2")
MiB = 1 << 20


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    family: str  # what --tools also accepts, e.g. "zstd" selects zstd-19 and zstd-22
    programs: tuple[str, ...]  # must all be on PATH (fwdelta: the repo binary instead)
    diff: list[str]  # placeholders: {O} old, {N} new, {P} patch, {R} result, {B} xdelta3 -B, {FW}
    apply: list[str]
    install: str
    is_peer: bool = True
    color: str = "#888888"


TOOLS = [
    Tool("fwdelta", "fwdelta", (),
         ["{FW}", "diff", "{O}", "{N}", "-o", "{P}"],
         ["{FW}", "apply", "{O}", "{P}", "-o", "{R}"],
         "cargo build --release -p fwdelta", is_peer=False, color="#c0392b"),
    Tool("fwdelta-max", "fwdelta", (),
         ["{FW}", "diff", "--level", "22", "{O}", "{N}", "-o", "{P}"],
         ["{FW}", "apply", "{O}", "{P}", "-o", "{R}"],
         "cargo build --release -p fwdelta", is_peer=False, color="#f1948a"),
    # The default patch as a terminal takes it: bound to a product, version and security
    # counter and signed (Ed25519) with a key made for the run; applied with that key trusted.
    Tool("fwdelta-signed", "fwdelta", (),
         ["{FW}", "diff", "{O}", "{N}", "-o", "{P}", "--product", "acme-t300",
          "--version", "4.2.0", "--counter", "42", "--sign", "{K}"],
         ["{FW}", "apply", "{O}", "{P}", "-o", "{R}", "--trust", "{KP}"],
         "cargo build --release -p fwdelta", is_peer=False, color="#7b241c"),
    # The layout a release engineer picks when apply time matters more than bytes
    # (`--layout split`: LZMA2 streams, no diff model).
    Tool("fwdelta-split", "fwdelta", (),
         ["{FW}", "diff", "--layout", "split", "{O}", "{N}", "-o", "{P}"],
         ["{FW}", "apply", "{O}", "{P}", "-o", "{R}"],
         "cargo build --release -p fwdelta", is_peer=False, color="#e6b0aa"),
    # The fast level (`--fast`, level 4): one switch margin, no auto-detected executable-aware
    # plan, the block path from 50% block coverage (issue 20's "at least as fast as HDiffPatch").
    Tool("fwdelta-fast", "fwdelta", (),
         ["{FW}", "diff", "--fast", "{O}", "{N}", "-o", "{P}"],
         ["{FW}", "apply", "{O}", "{P}", "-o", "{R}"],
         "cargo build --release -p fwdelta", is_peer=False, color="#d98880"),
    Tool("bsdiff", "bsdiff", ("bsdiff", "bspatch"),
         ["bsdiff", "{O}", "{N}", "{P}"],
         ["bspatch", "{O}", "{R}", "{P}"],
         "apt-get install bsdiff", color="#1f77b4"),
    Tool("xdelta3", "xdelta3", ("xdelta3",),
         ["xdelta3", "-e", "-9", "-S", "djw", "-B", "{B}", "-f", "-s", "{O}", "{N}", "{P}"],
         ["xdelta3", "-d", "-B", "{B}", "-f", "-s", "{O}", "{P}", "{R}"],
         "apt-get install xdelta3", color="#2ca02c"),
    # --long=27 is a 128 MiB window: enough for old images up to 128 MiB. Larger ones would
    # need a larger --long on both sides; this harness always uses 27 (see README).
    Tool("zstd-19", "zstd", ("zstd",),
         ["zstd", "-19", "--long=27", "--patch-from={O}", "{N}", "-o", "{P}"],
         ["zstd", "-d", "--long=27", "--patch-from={O}", "{P}", "-o", "{R}"],
         "apt-get install zstd", color="#7d3c98"),
    Tool("zstd-22", "zstd", ("zstd",),
         ["zstd", "--ultra", "-22", "--long=27", "--patch-from={O}", "{N}", "-o", "{P}"],
         ["zstd", "-d", "--long=27", "--patch-from={O}", "{P}", "-o", "{R}"],
         "apt-get install zstd", color="#bb8fce"),
    # detools' hdiffpatch algorithm only exists with the hdiffpatch patch type
    # ("Bad algorithm (hdiffpatch) and patch type (sequential) combination" otherwise).
    Tool("detools-hdiffpatch", "detools", ("detools",),
         ["detools", "create_patch", "--compression", "lzma", "--patch-type", "hdiffpatch",
          "--algorithm", "hdiffpatch", "{O}", "{N}", "{P}"],
         ["detools", "apply_patch", "{O}", "{P}", "{R}"],
         "pip install detools", color="#a0522d"),
    # HDiffPatch with the reference's commands, when hdiffz and hpatchz are on PATH. They are
    # not packaged: build them from HDiffPatch's public source outside this repository.
    Tool("hdiffpatch-lzma2", "hdiffpatch", ("hdiffz", "hpatchz"),
         ["hdiffz", "-m-6", "-SD", "-c-lzma2-9-16m", "-d", "-f", "-p-2", "{O}", "{N}", "{P}"],
         ["hpatchz", "-s-4m", "-f", "{O}", "{P}", "{R}"],
         "not packaged: build hdiffz and hpatchz from HDiffPatch's public source "
         "(github.com/sisong/HDiffPatch) outside the repository and put them on PATH",
         color="#17becf"),
    Tool("hdiffpatch-zstd", "hdiffpatch", ("hdiffz", "hpatchz"),
         ["hdiffz", "-m-6", "-SD", "-c-zstd-21-24", "-d", "-f", "-p-2", "{O}", "{N}", "{P}"],
         ["hpatchz", "-s-4m", "-f", "{O}", "{P}", "{R}"],
         "not packaged: build hdiffz and hpatchz from HDiffPatch's public source "
         "(github.com/sisong/HDiffPatch) outside the repository and put them on PATH",
         color="#9edae5"),
    Tool("detools-bsdiff", "detools", ("detools",),
         ["detools", "create_patch", "--compression", "lzma", "--algorithm", "bsdiff",
          "{O}", "{N}", "{P}"],
         ["detools", "apply_patch", "{O}", "{P}", "{R}"],
         "pip install detools", color="#e0b084"),
]
BY_NAME = {t.name: t for t in TOOLS}
DETACHED_SIGNATURE = 64  # bytes of one Ed25519 signature


def xdelta_window(old_size: int) -> int:
    """Old size rounded up to a power of two, at least 1 MiB."""
    b = MiB
    while b < old_size:
        b <<= 1
    return b


def tool_version(tool: Tool, fw: Path | None) -> str:
    probes = {
        "fwdelta": [str(fw), "--version"] if fw else None,
        "xdelta3": ["xdelta3", "-V"],
        "zstd": ["zstd", "-V"],
        "detools": ["detools", "--version"],
        "bsdiff": ["dpkg-query", "-W", "-f", "${Version}", "bsdiff"],
        "hdiffpatch": ["hdiffz", "-v"],
    }
    cmd = probes.get(tool.family)
    if not cmd:
        return "?"
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return "?"
    line = first_line(p.stdout) or first_line(p.stderr)
    if tool.family == "bsdiff" and p.returncode == 0 and line:
        return f"bsdiff {line} (Debian package)"
    m = re.search(r"\bv?(\d+(?:\.\d+)+[\w.+~-]*)", line)
    return f"{tool.family} {m.group(1)}" if m else (line or "?")


# --------------------------------------------------------------------------- helpers


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def same_bytes(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(MiB), fb.read(MiB)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def warm(path: Path) -> None:
    """Read a file once so the first tool does not pay for a cold page cache."""
    with open(path, "rb") as f:
        while f.read(8 * MiB):
            pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(cmd: list[str], work: Path, tag: str, timeout: float | None) -> dict:
    """Run cmd alone under /usr/bin/time -f '%e %M'; return rc, wall_s, rss_kib, error."""
    tfile, so, se = work / f"{tag}.time", work / f"{tag}.out", work / f"{tag}.err"
    for f in (tfile, so, se):
        f.unlink(missing_ok=True)
    t0 = time.perf_counter()
    timed_out = False
    with open(so, "wb") as out, open(se, "wb") as err:
        p = subprocess.Popen([TIME, "-f", "%e %M", "-o", str(tfile), *cmd],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)  # the tool is time's child: kill the group
            rc = p.wait()
    wall_py = time.perf_counter() - t0
    res: dict = {"rc": rc, "wall_s": None, "rss_kib": None, "wall_s_python": round(wall_py, 4)}
    # time -o writes e.g. "Command exited with non-zero status 1" before the format line
    lines = [ln for ln in read_text(tfile).splitlines() if ln.strip()]
    if lines:
        parts = lines[-1].split()
        try:
            res["wall_s"], res["rss_kib"] = float(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            pass
    if timed_out:
        res["error"] = f"timed out after {timeout:g} s"
    elif rc != 0:
        res["error"] = (first_line(read_text(se)) or first_line(read_text(so))
                        or f"exit status {rc}")
    return res


# --------------------------------------------------------------------------- corpus


def build_corpus(corpus: Path) -> None:
    """Run benches/peers/corpus-public.sh, which builds $CORPUS_ROOT/public."""
    script = HERE / "corpus-public.sh"
    env = dict(os.environ)
    if corpus.name == "public":
        env["CORPUS_ROOT"] = str(corpus.parent)
        tmp_root = None
    else:  # build into a scratch root beside it, then move public/ into place
        corpus.parent.mkdir(parents=True, exist_ok=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=".corpus-build.", dir=corpus.parent))
        env["CORPUS_ROOT"] = str(tmp_root)
        env.setdefault("CACHE", str(corpus.parent / ".cache"))
    log(f"corpus {corpus} does not exist: building it with "
        f"CORPUS_ROOT={env['CORPUS_ROOT']} bash {script}")
    rc = subprocess.run(["bash", str(script)], env=env).returncode
    if rc != 0:
        sys.exit(f"run.py: {script} failed with exit status {rc}")
    if tmp_root is not None:
        (tmp_root / "public").rename(corpus)
        shutil.rmtree(tmp_root, ignore_errors=True)


def read_reference(path: Path) -> dict[str, dict]:
    """Patch sizes of REFERENCE_TOOLS per pair from the reference's "Patch bytes" table:
    {pair: {"new_bytes": n, tool: bytes, ...}}. Empty if the file or table is missing."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out: dict[str, dict] = {}
    head: list[str] | None = None
    in_table = False
    for line in text.splitlines():
        if line.startswith("## "):
            in_table = line.strip() == "## Patch bytes"
            head = None
            continue
        if not in_table:
            continue
        if not line.startswith("|"):
            if out:  # the first table after the heading is the one
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if head is None:
            head = cells
            continue
        if set(cells[0]) <= set("-: "):
            continue
        row = dict(zip(head, cells))
        entry = {"new_bytes": parse_int(row.get("new bytes", ""))}
        entry.update({t: n for t in REFERENCE_TOOLS if (n := parse_int(row.get(t, "")))})
        out[cells[0]] = entry
    return out


def parse_int(s: str) -> int | None:
    """A number as the reference writes it ("1,510,190"), or None."""
    return int(s.replace(",", "")) if re.fullmatch(r"[0-9,]+", s) else None


def find_pairs(corpus: Path, wanted: list[str] | None) -> list[str]:
    pairs = sorted(p.name for p in corpus.iterdir()
                   if p.is_dir() and (p / "old").is_file() and (p / "new").is_file())
    if not wanted:
        return pairs
    chosen = []
    for w in wanted:
        hits = [p for p in pairs if p == w or p.split("-", 1)[0] == w]
        if not hits:
            sys.exit(f"run.py: no pair {w!r} in {corpus} (have: {', '.join(pairs)})")
        chosen += [h for h in hits if h not in chosen]
    return [p for p in pairs if p in chosen]


def select_tools(spec: str | None) -> list[Tool]:
    if not spec:
        return list(TOOLS)
    names: set[str] = set()
    for w in (s.strip() for s in spec.split(",") if s.strip()):
        hits = [t.name for t in TOOLS if w in (t.name, t.family)]
        if not hits:
            sys.exit(f"run.py: unknown tool {w!r} (tools: {', '.join(BY_NAME)}; "
                     f"families: {', '.join(dict.fromkeys(t.family for t in TOOLS))})")
        names.update(hits)
    return [t for t in TOOLS if t.name in names]


def find_fwdelta(path: Path, is_default: bool) -> tuple[Path | None, str]:
    if not path.is_file() and is_default:
        log("fwdelta binary missing: cargo build --release -p fwdelta")
        r = subprocess.run(["cargo", "build", "--release", "-p", "fwdelta"], cwd=REPO)
        if r.returncode != 0:
            return None, "cargo build --release -p fwdelta (the build failed)"
    if not path.is_file():
        return None, f"cargo build --release -p fwdelta (no binary at {path})"
    return path, ""


# --------------------------------------------------------------------------- formatting


def fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_pct(x: float) -> str:
    return f"{x:.3g}%" if x >= 0.001 else f"{x:.2g}%"


def fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:#.3g}".rstrip(".") + "×"


def fmt_mib(kib: int | None) -> str:
    if kib is None:
        return "?"
    m = kib / 1024
    return f"{m:.0f} MiB" if m >= 10 else f"{m:.1f} MiB"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def short(s: str, n: int = 90) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


# --------------------------------------------------------------------------- analysis


def smallest(sizes: dict[str, int]) -> str | None:
    """The name with the smallest size (ties: the first name in sort order)."""
    return min(sizes, key=lambda n: (sizes[n], n)) if sizes else None


def analyse(report: dict) -> None:
    """Fill in best peer, ratios and geometric means (in place)."""
    tools = [t for t in report["tools"] if t["installed"]]
    for pr in report["pairs"]:
        res = pr["results"]
        new = pr["new_bytes"]
        ok = {n: r for n, r in res.items() if r["status"] == "ok"}
        peers = {n: r["patch_bytes"] for n, r in ok.items() if BY_NAME[n].is_peer}
        best = smallest(peers)
        pr["best_peer"] = best
        pr["best_peer_bytes"] = peers.get(best) if best else None
        for n, r in res.items():
            if r.get("patch_bytes") is not None:
                r["pct_of_new"] = 100.0 * r["patch_bytes"] / new if new else None
            r["ratio_to_best_peer"] = (r["patch_bytes"] / pr["best_peer_bytes"]
                                       if n in ok and pr["best_peer_bytes"] else None)
        fw = res.get("fwdelta", {})
        for stage in ("diff", "apply"):
            base = fw.get(stage, {}).get("wall_s") if fw.get("status") == "ok" else None
            for n, r in res.items():
                m = r.get(stage)
                if m and m.get("wall_s") is not None and r.get(f"{stage}_ok"):
                    m["ratio_to_fwdelta"] = (m["wall_s"] / base) if base else None
        pr["fwdelta_over_best_peer"] = res.get("fwdelta", {}).get("ratio_to_best_peer")
        pr["fwdelta_max_over_best_peer"] = res.get("fwdelta-max", {}).get("ratio_to_best_peer")
        pr["fwdelta_signed_over_best_peer"] = (res.get("fwdelta-signed", {})
                                               .get("ratio_to_best_peer"))
        # Like for like: the best peer's patch with a bare detached Ed25519 signature beside it
        # (64 bytes; no product, version, counter or key id, so a lower bound on what a peer's
        # signed update costs).
        sb = ok.get("fwdelta-signed", {}).get("patch_bytes")
        pr["fwdelta_signed_over_best_peer_plus_sig"] = (
            sb / (pr["best_peer_bytes"] + DETACHED_SIGNATURE)
            if sb and pr["best_peer_bytes"] else None)
        # The bar the issue sets: every peer run here and the reference's HDiffPatch figures.
        refs = pr.get("reference", {})
        bars = dict(peers, **refs)
        bar = smallest(bars)
        pr["best_incl_reference"] = bar
        pr["best_incl_reference_bytes"] = bars.get(bar) if bar else None
        fwb = ok.get("fwdelta", {}).get("patch_bytes")
        pr["fwdelta_over_best_incl_reference"] = (fwb / bars[bar] if fwb and bar and refs
                                                  else None)
    gm: dict = {}
    for t in tools:
        n = t["name"]
        size = [pr["results"][n]["ratio_to_best_peer"] for pr in report["pairs"]
                if n in pr["results"] and pr["results"][n].get("ratio_to_best_peer")]
        g = {"size_ratio_to_best_peer": geomean(size), "pairs": len(size)}
        for stage in ("diff", "apply"):
            xs = [pr["results"][n][stage].get("ratio_to_fwdelta") for pr in report["pairs"]
                  if n in pr["results"] and pr["results"][n].get(stage)]
            xs = [x for x in xs if x]
            g[f"{stage}_time_ratio_to_fwdelta"] = geomean(xs)
            g[f"{stage}_pairs"] = len(xs)
        gm[n] = g
    report["geomean"] = gm
    incl = [pr["fwdelta_over_best_incl_reference"] for pr in report["pairs"]
            if pr.get("fwdelta_over_best_incl_reference")]
    report["headline"] = {
        "fwdelta_over_best_incl_reference_geomean": geomean(incl),
        "reference_pairs": len(incl),
        "fwdelta_over_best_peer_geomean": gm.get("fwdelta", {}).get("size_ratio_to_best_peer"),
        "fwdelta_max_over_best_peer_geomean":
            gm.get("fwdelta-max", {}).get("size_ratio_to_best_peer"),
        "pairs": gm.get("fwdelta", {}).get("pairs", 0),
        "fwdelta_signed_over_best_peer_geomean":
            gm.get("fwdelta-signed", {}).get("size_ratio_to_best_peer"),
        "fwdelta_signed_over_best_peer_plus_sig_geomean": geomean(
            [pr["fwdelta_signed_over_best_peer_plus_sig"] for pr in report["pairs"]
             if pr.get("fwdelta_signed_over_best_peer_plus_sig")]),
    }


def size_cell(r: dict, best: bool) -> str:
    st = r["status"]
    if st == "FAILED":
        return md_cell(f"FAILED ({r['stage']}): {short(r['error'])}")
    if st == "MISMATCH":
        return f"MISMATCH (patch {fmt_int(r.get('patch_bytes'))} B)"
    s = f"{fmt_int(r['patch_bytes'])} ({fmt_pct(r['pct_of_new'])}, {fmt_ratio(r['ratio_to_best_peer'])})"
    return f"**{s}**" if best else s


def time_cell(r: dict, stage: str) -> str:
    m = r.get(stage)
    if not m:
        return "—"
    if not r.get(f"{stage}_ok"):
        if r["status"] == "FAILED" and r["stage"] == stage:
            w = f" after {m['wall_s']:.2f} s" if m.get("wall_s") is not None else ""
            return f"FAILED{w}"
        return "—"
    s = f"{m['wall_s']:.2f} s · {fmt_mib(m['rss_kib'])}"
    if m.get("ratio_to_fwdelta") is not None:
        s += f" · {fmt_ratio(m['ratio_to_fwdelta'])}"
    if r["status"] == "MISMATCH" and stage == "apply":
        s += " (MISMATCH)"
    return s


def render_md(report: dict) -> str:
    tools = [t for t in report["tools"] if t["installed"]]
    names = [t["name"] for t in tools]
    meta = report["meta"]
    L: list[str] = []
    L.append("# fwdelta vs. peers: patch size, time and memory")
    L.append("")
    L.append(f"Corpus `{meta['corpus']}` ({plural(len(report['pairs']), 'pair')}), run {meta['started']} "
             f"on {meta['cpu']} ({meta['cores']} cores, load {meta['load_at_start']} at start), "
             f"{meta['duration_s']:.0f} s in all.  ")
    L.append(f"fwdelta: {meta['fwdelta_version']} (`{meta['fwdelta_binary']}`, sha256 "
             f"{meta['fwdelta_sha256'][:12]}, git {meta['git']}).  ")
    L.append("Each diff and apply ran alone under `/usr/bin/time -f '%e %M'`; every applied "
             "result was compared byte for byte with the new image.")
    L.append("")
    h = report["headline"]
    if h["fwdelta_over_best_peer_geomean"]:
        s = (f"**Headline: fwdelta / best peer, geometric mean over {plural(h['pairs'], 'pair')} = "
             f"{h['fwdelta_over_best_peer_geomean']:.3f}**")
        if h["fwdelta_max_over_best_peer_geomean"]:
            s += f" (fwdelta-max: {h['fwdelta_max_over_best_peer_geomean']:.3f})"
        L.append(s + ". Below 1 means fwdelta's patch is smaller than every peer's.")
        L.append("")
    if h.get("fwdelta_signed_over_best_peer_geomean"):
        L.append(f"**Signed (fwdelta-signed, what a terminal takes): "
                 f"{h['fwdelta_signed_over_best_peer_geomean']:.3f}** of the best peer's unsigned "
                 f"patch; {h['fwdelta_signed_over_best_peer_plus_sig_geomean']:.3f} of the best "
                 f"peer's patch with a bare {DETACHED_SIGNATURE}-byte detached signature beside it.")
        L.append("")
    if h.get("fwdelta_over_best_incl_reference_geomean"):
        L.append(f"**Against the best of those peers and HDiffPatch's figures from the reference "
                 f"(`{meta.get('reference', '?')}`, not run here), geometric mean over "
                 f"{plural(h['reference_pairs'], 'pair')} = "
                 f"{h['fwdelta_over_best_incl_reference_geomean']:.3f}**: see *Against the "
                 "reference*.")
        L.append("")

    has_max = "fwdelta-max" in names
    L.append("## Patch size")
    L.append("")
    L.append("Cell: patch bytes (% of the new image, ratio to the smallest peer patch). "
             "**Bold**: smallest peer on that pair.")
    L.append("")
    head = ["pair", "new bytes", *names, "best peer", "fwdelta / best peer"]
    if has_max:
        head.append("fwdelta-max / best peer")
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for pr in report["pairs"]:
        row = [pr["name"], fmt_int(pr["new_bytes"])]
        for n in names:
            r = pr["results"].get(n)
            row.append(size_cell(r, n == pr["best_peer"]) if r else "—")
        row.append(pr["best_peer"] or "—")
        f = pr["fwdelta_over_best_peer"]
        row.append(f"**{f:.3f}**" if f else "—")
        if has_max:
            f = pr["fwdelta_max_over_best_peer"]
            row.append(f"{f:.3f}" if f else "—")
        L.append("| " + " | ".join(row) + " |")
    gm = report["geomean"]
    row = ["**geometric mean**", ""]
    for n in names:
        g = gm[n]
        v = g["size_ratio_to_best_peer"]
        row.append("—" if v is None else f"{v:.3f}×"
                   + ("" if g["pairs"] == len(report["pairs"]) else f" ({plural(g['pairs'], 'pair')})"))
    row.append("")
    v = h["fwdelta_over_best_peer_geomean"]
    row.append(f"**{v:.3f}**" if v else "—")
    if has_max:
        v = h["fwdelta_max_over_best_peer_geomean"]
        row.append(f"{v:.3f}" if v else "—")
    L.append("| " + " | ".join(row) + " |")
    L.append("")

    if any(pr.get("reference") for pr in report["pairs"]):
        L.append("## Against the reference")
        L.append("")
        L.append("HDiffPatch (`hdiffz`) is not packaged in the registries; its patch sizes on "
                 "this corpus come from the reference file named above (same pair only if its "
                 "new image has the same size). The issue's bar is the smallest of these and "
                 "every peer run here.")
        L.append("")
        L.append("| pair | fwdelta | " + " | ".join(f"{t} (ref.)" for t in REFERENCE_TOOLS)
                 + " | best peer run here | bar | fwdelta / bar |")
        L.append("|---|" + "|".join(["---:"] * (len(REFERENCE_TOOLS) + 4)) + "|")
        for pr in report["pairs"]:
            ref = pr.get("reference", {})
            fwr = pr["results"].get("fwdelta", {})
            cells = [pr["name"], fmt_int(fwr.get("patch_bytes"))]
            cells += [fmt_int(ref.get(t)) for t in REFERENCE_TOOLS]
            cells.append(f"{fmt_int(pr['best_peer_bytes'])} ({pr['best_peer']})"
                         if pr["best_peer"] else "—")
            cells.append(pr.get("best_incl_reference") or "—")
            f = pr.get("fwdelta_over_best_incl_reference")
            cells.append(f"**{f:.3f}**" if f else "—")
            L.append("| " + " | ".join(cells) + " |")
        v = h.get("fwdelta_over_best_incl_reference_geomean")
        L.append("| **geometric mean** | " + " | " * (len(REFERENCE_TOOLS) + 3)
                 + (f"**{v:.3f}**" if v else "—") + " |")
        L.append("")

    for stage, title in (("diff", "Diff"), ("apply", "Apply")):
        L.append(f"## {title}: wall time and peak RSS")
        L.append("")
        L.append("Cell: wall seconds · peak RSS · time ratio to fwdelta on the same pair "
                 "(single run on a noisy machine: compare the ratios).")
        L.append("")
        L.append("| pair | " + " | ".join(names) + " |")
        L.append("|---|" + "|".join(["---:"] * len(names)) + "|")
        for pr in report["pairs"]:
            cells = [time_cell(pr["results"][n], stage) if n in pr["results"] else "—"
                     for n in names]
            L.append(f"| {pr['name']} | " + " | ".join(cells) + " |")
        cells = []
        for n in names:
            v = gm[n][f"{stage}_time_ratio_to_fwdelta"]
            cells.append("—" if v is None else f"{fmt_ratio(v)} fwdelta")
        L.append("| **geometric mean** | " + " | ".join(cells) + " |")
        L.append("")

    problems = []
    for t in report["tools"]:
        if not t["installed"]:
            problems.append(f"- {t['name']}: not installed: {t['install']}")
    for pr in report["pairs"]:
        for n, r in pr["results"].items():
            if r["status"] == "FAILED":
                problems.append(f"- {pr['name']} / {n}: FAILED ({r['stage']}): "
                                f"{md_cell(r['error'])}")
            elif r["status"] == "MISMATCH":
                problems.append(f"- {pr['name']} / {n}: MISMATCH: the applied result differs "
                                "from the new image")
    if problems:
        L.append("## Not installed, failures, mismatches")
        L.append("")
        L += problems
        L.append("")

    L.append("## Tools")
    L.append("")
    L.append("| tool | version | diff | apply |")
    L.append("|---|---|---|---|")
    for t in report["tools"]:
        ver = t["version"] if t["installed"] else f"not installed: {t['install']}"
        L.append(f"| {t['name']} | {md_cell(ver)} | `{' '.join(t['diff'])}` | "
                 f"`{' '.join(t['apply'])}` |")
    L.append("")
    L.append("`{O}` old image, `{N}` new image, `{P}` patch, `{R}` applied result; "
             "`{B}` (xdelta3 `-B`) = old size rounded up to a power of two, at least 1 MiB. "
             "zstd always gets `--long=27` (128 MiB window): old images larger than 128 MiB "
             "would need a larger `--long` on both sides. fwdelta uses all cores (its "
             "default `-j`); the peers run with their defaults (single-threaded).")
    L.append("")
    return "\n".join(L)


# --------------------------------------------------------------------------- SVG


def render_svg(report: dict) -> str:
    tools = [t for t in report["tools"] if t["installed"]]
    missing = [t for t in report["tools"] if not t["installed"]]
    pairs = report["pairs"]
    vals = [r["pct_of_new"] for pr in pairs for r in pr["results"].values()
            if r["status"] == "ok" and r.get("pct_of_new")]
    e_lo = min([-3] + [math.floor(math.log10(v)) for v in vals])
    e_hi = max([2] + [math.ceil(math.log10(v)) for v in vals])

    nb, bw, gap_in, gap_grp = max(1, len(tools)), 11, 1, 26
    group_w = nb * bw + (nb - 1) * gap_in
    left, top, plot_h, bottom = 84, 58, 360, 84
    plot_w = max(560, max(1, len(pairs)) * (group_w + gap_grp))
    gap_grp = plot_w / max(1, len(pairs)) - group_w  # spread few groups over the width
    legend_x = left + plot_w + 24
    W = legend_x + 210
    H = top + plot_h + bottom
    base_y = top + plot_h

    def y(v: float) -> float:
        v = max(v, 10.0 ** e_lo)
        return top + plot_h * (1 - (math.log10(v) - e_lo) / (e_hi - e_lo))

    o: list[str] = []
    o.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Arial, sans-serif" '
             f'font-size="11">')
    o.append(f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>')
    o.append(f'<text x="{left}" y="22" font-size="15" font-weight="bold">Patch size as % of '
             f'the new image, per corpus pair and tool (log scale; lower is better)</text>')
    o.append(f'<text x="{left}" y="40" fill="#555">Number above each group: fwdelta / best '
             f'peer. F = failed, M = mismatch (no bar).</text>')
    # grid and y ticks
    for e in range(e_lo, e_hi + 1):
        yy = y(10.0 ** e)
        o.append(f'<line x1="{left}" y1="{yy:.1f}" x2="{left + plot_w}" y2="{yy:.1f}" '
                 f'stroke="#bbbbbb" stroke-width="1"/>')
        label = f"{10.0 ** e:g}%" if e >= 0 else f"{10.0 ** e:.{-e}f}%"
        o.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        if e < e_hi:
            for k in range(2, 10):
                ym = y(k * 10.0 ** e)
                o.append(f'<line x1="{left}" y1="{ym:.1f}" x2="{left + plot_w}" y2="{ym:.1f}" '
                         f'stroke="#eeeeee" stroke-width="1"/>')
    o.append(f'<text transform="translate(22 {top + plot_h / 2:.0f}) rotate(-90)" '
             f'text-anchor="middle" font-size="12">patch size, % of new image (log scale)</text>')
    # bars
    for gi, pr in enumerate(pairs):
        gx = left + gap_grp / 2 + gi * (group_w + gap_grp)
        for ti, t in enumerate(tools):
            x = gx + ti * (bw + gap_in)
            r = pr["results"].get(t["name"])
            if not r:
                continue
            if r["status"] == "ok" and r.get("pct_of_new"):
                yy = y(r["pct_of_new"])
                tip = (f"{pr['name']} / {t['name']}: {r['patch_bytes']:,} bytes, "
                       f"{fmt_pct(r['pct_of_new'])} of new")
                o.append(f'<rect x="{x:.1f}" y="{yy:.1f}" width="{bw}" '
                         f'height="{max(1.0, base_y - yy):.1f}" fill="{t["color"]}" '
                         f'stroke="#333" stroke-width="0.4"><title>{xml_escape(tip)}</title>'
                         f'</rect>')
            else:
                mark = "M" if r["status"] == "MISMATCH" else "F"
                tip = xml_escape(f"{pr['name']} / {t['name']}: {r['status']}")
                o.append(f'<g><title>{tip}</title><text x="{x + bw / 2:.1f}" y="{base_y - 4}" '
                         f'text-anchor="middle" font-weight="bold" fill="{t["color"]}">'
                         f'{mark}</text></g>')
        cx = gx + group_w / 2
        f = pr.get("fwdelta_over_best_peer")
        if f:
            o.append(f'<text x="{cx:.1f}" y="{top - 4}" text-anchor="middle" fill="#c0392b" '
                     f'font-weight="bold">{f:.2f}×</text>')
        head, _, tail = pr["name"].partition("-")
        o.append(f'<text x="{cx:.1f}" y="{base_y + 16}" text-anchor="middle" '
                 f'font-weight="bold">{xml_escape(head)}</text>')
        if tail:
            o.append(f'<text x="{cx:.1f}" y="{base_y + 30}" text-anchor="middle" '
                     f'font-size="9.5">{xml_escape(tail)}</text>')
    o.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base_y}" stroke="#000"/>')
    o.append(f'<line x1="{left}" y1="{base_y}" x2="{left + plot_w}" y2="{base_y}" '
             f'stroke="#000"/>')
    o.append(f'<text x="{left + plot_w / 2:.0f}" y="{base_y + 58}" text-anchor="middle" '
             f'font-size="12">corpus pair (old → new)</text>')
    # legend
    ly = top + 6
    o.append(f'<text x="{legend_x}" y="{ly}" font-weight="bold" font-size="12">tool</text>')
    for t in tools:
        ly += 20
        o.append(f'<rect x="{legend_x}" y="{ly - 10}" width="14" height="12" '
                 f'fill="{t["color"]}" stroke="#333" stroke-width="0.4"/>')
        o.append(f'<text x="{legend_x + 20}" y="{ly}">{xml_escape(t["name"])}</text>')
    for t in missing:
        ly += 20
        o.append(f'<text x="{legend_x}" y="{ly}" fill="#999">{xml_escape(t["name"])} '
                 f'(not installed)</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


# --------------------------------------------------------------------------- main


def git_desc() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return (rev or "?") + (" + uncommitted changes" if dirty else "")
    except OSError:
        return "?"


def cpu_model() -> str:
    for line in read_text(Path("/proc/cpuinfo")).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="pairs DIR/<pair>/{old,new} (default: corpus/public; "
                    "built with benches/peers/corpus-public.sh if missing)")
    ap.add_argument("--out", help="output directory (default: target/peers)")
    ap.add_argument("--pairs", help="comma-separated pair names or prefixes (P1,P2,...)")
    ap.add_argument("--tools", help="comma-separated tool names or families: "
                    + ", ".join(BY_NAME) + " (families: fwdelta, zstd, detools)")
    ap.add_argument("--fwdelta", help="fwdelta binary (default: target/release/fwdelta, "
                    "built with cargo if missing)")
    ap.add_argument("--reference", help="peer figures to compare with too (default: "
                    f"{REFERENCE}, if present; 'none' to leave them out)")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds per diff or apply before it counts as FAILED (default 3600)")
    ap.add_argument("--no-code-size", action="store_true",
                    help="leave out the applier's code-size and arena table "
                    "(benches/capi/size.py, appended to peers.md)")
    args = ap.parse_args()

    corpus = Path(args.corpus).resolve() if args.corpus else REPO / "corpus" / "public"
    out = Path(args.out).resolve() if args.out else REPO / "target" / "peers"
    if not Path(TIME).is_file():
        sys.exit(f"run.py: {TIME} not found: apt-get install time")
    if not corpus.is_dir():
        build_corpus(corpus)
    pairs = find_pairs(corpus, [p.strip() for p in args.pairs.split(",") if p.strip()]
                       if args.pairs else None)
    if not pairs:
        sys.exit(f"run.py: no pairs <pair>/{{old,new}} in {corpus}")
    selected = select_tools(args.tools)
    ref_path = None if args.reference == "none" else (
        Path(args.reference).resolve() if args.reference else REFERENCE)
    reference = read_reference(ref_path) if ref_path else {}
    if ref_path and not reference:
        log(f"run.py: no reference figures read from {ref_path}")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work.", dir=out))

    fw_default = args.fwdelta is None
    fw_src = Path(args.fwdelta).resolve() if args.fwdelta else REPO / "target/release/fwdelta"
    fw = None
    fw_missing = ""
    if any(t.family == "fwdelta" for t in selected):
        fw_src_ok, fw_missing = find_fwdelta(fw_src, fw_default)
        if fw_src_ok:
            # run a private copy, so a concurrent `cargo build` cannot swap it mid-run
            fw = work / "fwdelta"
            shutil.copy2(fw_src_ok, fw)
            # the signing key of fwdelta-signed, made for this run only
            subprocess.run([str(fw), "keygen", "-o", str(work / "bench"), "-q"], check=True)

    tool_entries = []
    for t in selected:
        if t.family == "fwdelta":
            installed, hint = fw is not None, fw_missing
        else:
            lacking = [p for p in t.programs if shutil.which(p) is None]
            installed, hint = not lacking, t.install
        tool_entries.append({
            "name": t.name, "family": t.family, "peer": t.is_peer, "installed": installed,
            "install": hint, "color": t.color,
            "version": tool_version(t, fw) if installed else None,
            "diff": [a.replace("{FW}", "fwdelta") for a in t.diff],
            "apply": [a.replace("{FW}", "fwdelta") for a in t.apply],
        })
    for e in tool_entries:
        if not e["installed"]:
            log(f"{e['name']}: not installed: {e['install']}")

    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "?"
    rel = lambda p: str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)  # noqa: E731
    report: dict = {
        "meta": {
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "corpus": rel(corpus), "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_at_start": load, "git": git_desc(),
            "fwdelta_binary": rel(fw_src),
            "fwdelta_version": next((e["version"] for e in tool_entries
                                     if e["family"] == "fwdelta" and e["installed"]), "—"),
            "fwdelta_sha256": sha256(fw) if fw else "-" * 12,
            "time_command": f"{TIME} -f '%e %M'", "duration_s": 0.0,
            "reference": str(ref_path) if reference else None,
        },
        "tools": tool_entries,
        "pairs": [],
    }
    run_tools = [BY_NAME[e["name"]] for e in tool_entries if e["installed"]]
    t_start = time.perf_counter()
    bad = False
    try:
        for pair in pairs:
            old, new = corpus / pair / "old", corpus / pair / "new"
            warm(old)
            warm(new)
            osz, nsz = old.stat().st_size, new.stat().st_size
            pr = {"name": pair, "old_bytes": osz, "new_bytes": nsz, "results": {}}
            ref = reference.get(pair, {})
            if ref.get("new_bytes") == nsz:
                pr["reference"] = {t: b for t, b in ref.items() if t in REFERENCE_TOOLS}
            elif ref:
                log(f"{pair}: the reference's new image is {ref.get('new_bytes')} bytes, "
                    f"this one {nsz}: its figures are left out")
            report["pairs"].append(pr)
            for t in run_tools:
                P, R = work / f"{t.name}.patch", work / f"{t.name}.result"
                P.unlink(missing_ok=True)
                R.unlink(missing_ok=True)
                vals = {"O": str(old), "N": str(new), "P": str(P), "R": str(R),
                        "B": str(xdelta_window(osz)), "FW": str(fw),
                        "K": str(work / "bench.key"), "KP": str(work / "bench.pub")}
                sub = lambda cmd: [a.format_map(vals) for a in cmd]  # noqa: E731
                r: dict = {"status": "ok", "patch_bytes": None}
                d = measure(sub(t.diff), work, "diff", args.timeout)
                r["diff"] = d
                if "error" not in d and not P.is_file():
                    d["error"] = "exit status 0 but no patch was written"
                if "error" in d:
                    r.update(status="FAILED", stage="diff", error=d["error"], diff_ok=False)
                else:
                    r["diff_ok"] = True
                    r["patch_bytes"] = P.stat().st_size
                    a = measure(sub(t.apply), work, "apply", args.timeout)
                    r["apply"] = a
                    if "error" in a:
                        r.update(status="FAILED", stage="apply", error=a["error"],
                                 apply_ok=False)
                    else:
                        r["apply_ok"] = True
                        if not same_bytes(R, new):
                            r["status"] = "MISMATCH"
                bad |= r["status"] != "ok"
                pr["results"][t.name] = r
                ap_ = r.get("apply") or {}
                log(f"{pair:24} {t.name:19} {r['status']:8} patch {fmt_int(r['patch_bytes']):>12}"
                    f"  diff {d.get('wall_s') or 0:7.2f} s {fmt_mib(d.get('rss_kib')):>9}"
                    f"  apply {ap_.get('wall_s') or 0:6.2f} s {fmt_mib(ap_.get('rss_kib')):>9}"
                    + (f"  {r['error']}" if r.get("error") else ""))
                P.unlink(missing_ok=True)
                R.unlink(missing_ok=True)
            # write after every pair, so an interrupted run still leaves its results
            report["meta"]["duration_s"] = time.perf_counter() - t_start
            analyse(report)
            write_outputs(report, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(render_md(report))
    if not args.no_code_size:
        sized = subprocess.run([sys.executable, str(REPO / "benches" / "capi" / "size.py")],
                               capture_output=True, text=True)
        if sized.returncode == 0:
            print(sized.stdout)
            with open(out / "peers.md", "a") as f:
                f.write("\n" + sized.stdout)
        else:
            bad = True
            log(f"run.py: benches/capi/size.py failed:\n{sized.stderr}")
    log(f"wrote {out / 'peers.md'}, {out / 'peers.json'}, {out / 'peers.svg'}")
    if bad:
        log("run.py: some results are FAILED or MISMATCH (see above)")
        return 1
    return 0


def write_outputs(report: dict, out: Path) -> None:
    for name, text in (("peers.md", render_md(report)),
                       ("peers.json", json.dumps(report, indent=1) + "\n"),
                       ("peers.svg", render_svg(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


if __name__ == "__main__":
    sys.exit(main())
