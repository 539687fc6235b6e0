#!/usr/bin/env python3
"""Code size and RAM of the fwdelta applier as C firmware links it (issue 19).

Code: builds libfwdelta_capi.a (release, opt-level "s", fat LTO, one codegen
unit, panic=abort) for each codec set, links benches/capi/size_probe.c
against it with `cc -Os -ffunction-sections -fdata-sections
-Wl,--gc-sections -s`, and reports the .text (and .rodata) the apply path
adds: the probe built with -DWITH_FWDELTA minus the same probe without the
API calls. Host target (x86-64 Linux, std): the figure includes what Rust's
std runtime adds to a C program (panic and formatting machinery), which a
no_std microcontroller build would not carry.

RAM: makes patches of testdata/fw-* at applier budgets 64 KiB .. 4 MiB
(`fwdelta diff --apply-memory`), applies each through the C test program
(crates/fwdelta-capi/tests/c/apply_test.c) in an arena of max(budget +
FWD_ARENA_OVERHEAD, FWD_ARENA_MIN), and reports the header's claim and the
arena's peak use.

Also: the no_std core alone (no codec, stored patches) in a bare-metal
Cortex-M4F program (benches/mcu-size, linked by rust-lld; needs the
thumbv7em-none-eabihf target and llvm-size), with minus without the applier,
and the same program applying through the no_std C library (fwdelta-capi
without default features: its arena allocator and C entry points).

Prints a Markdown report; writes JSON to target/peers/capi-size.json.
Usage: python3 benches/capi/size.py [--no-ram]
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "target" / "capi-size"
INCLUDE = ROOT / "crates" / "fwdelta-capi" / "include"
FEATURES = [("stored only", ""), ("LZMA2", "lzma"), ("zstd", "zstd"), ("LZMA2 + zstd", "lzma,zstd")]
BUDGETS = [64 << 10, 256 << 10, 1 << 20, 4 << 20]
PAIRS = ["fw-cortex-m4", "fw-x86-64"]
MCU = "thumbv7em-none-eabihf"
SIZE_ENV = {
    "CARGO_PROFILE_RELEASE_OPT_LEVEL": "s",
    "CARGO_PROFILE_RELEASE_LTO": "fat",
    "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "1",
    "CARGO_PROFILE_RELEASE_PANIC": "abort",
    "CARGO_PROFILE_RELEASE_DEBUG": "false",
}
# Published figures, not measured here (different targets and scope).
PEERS = [
    ("HPatchLite (hpatchi)", "662 bytes of code", "HPatchLite's README: the patch function's code size"),
    ("detools (C applier)", "6-9 KB", "detools' documentation: its C library's code size"),
]


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def header_const(name):
    text = (INCLUDE / "fwdelta.h").read_text()
    m = re.search(rf"#define {name} \(?([0-9* ]+)\)?", text)
    return eval(m.group(1))  # "(64 * 1024)": digits, spaces and * only


def build_lib(features):
    env = dict(os.environ, **SIZE_ENV)
    cmd = ["cargo", "build", "--release", "-q", "-p", "fwdelta-capi", "--no-default-features",
           "--target-dir", str(TARGET)]
    # A hosted C program: the std feature (panics caught, in-place updates).
    cmd += ["--features", ",".join(["std"] + ([features] if features else []))]
    run(cmd, cwd=ROOT, env=env)
    lib = TARGET / f"libfwdelta_capi-{features.replace(',', '-') or 'stored'}.a"
    shutil.copy(TARGET / "release" / "libfwdelta_capi.a", lib)
    return lib


def sections(exe):
    """Sizes of .text and .rodata (size -A)."""
    sizes = {}
    for line in run(["size", "-A", str(exe)]).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in (".text", ".rodata"):
            sizes[parts[0]] = int(parts[1])
    return sizes


def link_probe(work, lib, name):
    exe = work / name
    cmd = ["cc", "-Os", "-ffunction-sections", "-fdata-sections", "-I", str(INCLUDE),
           str(Path(__file__).with_name("size_probe.c"))]
    if lib:
        cmd += ["-DWITH_FWDELTA", str(lib), "-lpthread", "-ldl", "-lm"]
    cmd += ["-Wl,--gc-sections", "-s", "-o", str(exe)]
    run(cmd)
    return sections(exe)


def code_sizes(work):
    base = link_probe(work, None, "probe-none")
    rows = []
    for label, features in FEATURES:
        lib = build_lib(features)
        s = link_probe(work, lib, f"probe-{features or 'stored'}")
        rows.append({"codecs": label, "features": features,
                     "text": s[".text"] - base[".text"],
                     "rodata": s.get(".rodata", 0) - base.get(".rodata", 0)})
    return rows


def mcu_sizes():
    """The no_std core and the no_std C library on a Cortex-M4F (benches/mcu-size),
    each minus the same program without the applier."""
    crate = ROOT / "benches" / "mcu-size"
    sizes = {}
    for label, extra in (("without", []), ("with", ["--features", "apply"]),
                         ("capi", ["--features", "capi"])):
        target = ROOT / "target" / f"mcu-size-{label}"
        run(["cargo", "build", "--release", "-q", "--offline", "--target", MCU,
             "--target-dir", str(target)] + extra, cwd=crate)
        exe = target / MCU / "release" / "fwdelta-mcu-size"
        sizes[label] = {}
        for line in run(["llvm-size", "-A", str(exe)]).splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in (".text", ".rodata"):
                sizes[label][parts[0]] = int(parts[1])
    diff = lambda label: {k: sizes[label].get(k, 0) - sizes["without"].get(k, 0)
                          for k in (".text", ".rodata")}
    return diff("with"), diff("capi")


def ram(work):
    overhead, minimum = header_const("FWD_ARENA_OVERHEAD"), header_const("FWD_ARENA_MIN")
    lib = TARGET / "libfwdelta_capi-lzma-zstd.a"
    exe = work / "apply_test"
    run(["cc", "-std=c99", "-O2", "-I", str(INCLUDE),
         str(ROOT / "crates/fwdelta-capi/tests/c/apply_test.c"), str(lib),
         "-lpthread", "-ldl", "-lm", "-o", str(exe)])
    run(["cargo", "build", "--release", "-q", "-p", "fwdelta"], cwd=ROOT)
    fwdelta = ROOT / "target" / "release" / "fwdelta"
    rows = []
    for pair in PAIRS:
        d = ROOT / "testdata" / pair
        for budget in BUDGETS:
            patch = work / f"{pair}-{budget}.fwd"
            run([str(fwdelta), "diff", "-q", "--apply-memory", str(budget), str(d / "old"),
                 str(d / "new"), "-o", str(patch)])
            arena = max(budget + overhead, minimum)
            out = run([str(exe), "apply", str(d / "old"), str(patch), str(d / "new"), str(arena),
                       "4096"])
            f = dict(kv.split("=") for kv in out.split()[1:] if "=" in kv)
            rows.append({"pair": pair, "budget": budget, "patch": patch.stat().st_size,
                         "claim": int(f["claim"]), "arena": arena, "peak": int(f["peak"])})
    return rows


def kib(n):
    return f"{n / 1024:,.1f} KiB"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        code = code_sizes(work)
        mcu, mcu_capi = mcu_sizes()
        mem = [] if "--no-ram" in sys.argv else ram(work)
    print("## Applier code size through the C API (x86-64 Linux, stripped)\n")
    print("`benches/capi/size.py`: .text and .rodata that linking libfwdelta_capi.a and calling "
          "fwd_applier_new/feed/finish/free add to a C program (`cc -Os`, `--gc-sections`, "
          "library at opt-level s, LTO, panic=abort). Includes Rust's std runtime (panic, "
          "formatting), which a no_std build would not carry.\n")
    print("| codecs | .text | .rodata |")
    print("|---|---:|---:|")
    for r in code:
        print(f"| {r['codecs']} | {r['text']:,} B ({kib(r['text'])}) | {r['rodata']:,} B |")
    print(f"| no_std core on Cortex-M4F ({MCU}, rust-lld, opt-level s, LTO; no codec: "
          f"stored patches; benches/mcu-size) | {mcu['.text']:,} B ({kib(mcu['.text'])}) | "
          f"{mcu['.rodata']:,} B |")
    print(f"| no_std C library on Cortex-M4F (the same, through fwd_applier_new/feed/finish/free "
          f"in an arena; `--no-default-features`) | {mcu_capi['.text']:,} B "
          f"({kib(mcu_capi['.text'])}) | {mcu_capi['.rodata']:,} B |")
    for name, fig, src in PEERS:
        print(f"| {name}: published | {fig} | ({src}) |")
    if mem:
        print("\n## Arena (RAM) per applier budget\n")
        print("| pair | budget | patch | header claim | arena given | arena peak |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in mem:
            print(f"| {r['pair']} | {kib(r['budget'])} | {r['patch']:,} B | {kib(r['claim'])} | "
                  f"{kib(r['arena'])} | {kib(r['peak'])} |")
    out = ROOT / "target" / "peers"
    out.mkdir(parents=True, exist_ok=True)
    (out / "capi-size.json").write_text(json.dumps({"code": code, "mcu_core": mcu, "mcu_capi": mcu_capi, "ram": mem}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
