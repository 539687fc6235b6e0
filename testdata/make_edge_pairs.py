#!/usr/bin/env python3
"""Regenerate the edge-case pairs in testdata/ (deterministic; output is committed).

Each pair is a directory holding `old` and `new`:
  edge-empty        both empty
  edge-identical    64 KiB, old == new
  edge-old-empty    old empty, new 16 KiB
  edge-new-empty    old 16 KiB, new empty
  edge-one-byte     256 KiB, one byte changed
  edge-block-moved  256 KiB, a 32 KiB block moved from near the start to near the end
  edge-all-changed  64 KiB, every byte different
"""
import os
import random

here = os.path.dirname(os.path.abspath(__file__))


def codeish(rng, n):
    """Bytes shaped like Thumb code: repeated opcodes with varying operands."""
    out = bytearray()
    ops = [0x4770, 0xB500, 0xBD00, 0x2000, 0x6800, 0x6018, 0xF000, 0xE7FE]
    while len(out) < n:
        op = rng.choice(ops) | rng.randrange(0, 0x100)
        out += op.to_bytes(2, "little")
    return bytes(out[:n])


def put(name, old, new):
    d = os.path.join(here, name)
    os.makedirs(d, exist_ok=True)
    for fname, data in (("old", old), ("new", new)):
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)


def main():
    rng = random.Random(20261121)
    put("edge-empty", b"", b"")
    same = codeish(rng, 64 << 10)
    put("edge-identical", same, same)
    put("edge-old-empty", b"", codeish(rng, 16 << 10))
    put("edge-new-empty", codeish(rng, 16 << 10), b"")
    base = codeish(rng, 256 << 10)
    one = bytearray(base)
    one[123_457] ^= 0x5A
    put("edge-one-byte", base, bytes(one))
    block = base[16 << 10:48 << 10]
    rest = base[:16 << 10] + base[48 << 10:]
    moved = rest[:200 << 10] + block + rest[200 << 10:]
    put("edge-block-moved", base, moved)
    old = codeish(rng, 64 << 10)
    new = bytes((b + 1 + rng.randrange(255)) % 256 for b in old)
    assert all(a != b for a, b in zip(old, new))
    put("edge-all-changed", old, new)


if __name__ == "__main__":
    main()
