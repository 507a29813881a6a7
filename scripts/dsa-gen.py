#!/usr/bin/env python3
"""Writes a random DSA instance (minimalloc CSV: id,lower,upper,size) for the
scale measurements of `memo dsa` (docs/perf/dsa-scale-2026-12-02.md).

Buffers start at random times over a horizon of n / 4 steps, live a
log-uniform 1 .. 2000 steps, and have log-uniform sizes of 64 B .. 16 MiB in
multiples of 64, so about 1,000 buffers are alive at a time, like a training
step's activations. Deterministic for a given --seed.

  scripts/dsa-gen.py 1000000 > big.csv
"""
import argparse
import random
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("buffers", type=int)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    horizon = max(1, args.buffers // 4)
    out = sys.stdout
    out.write("id,lower,upper,size\n")
    lines = []
    for i in range(args.buffers):
        lower = rng.randrange(horizon)
        life = int(2 ** rng.uniform(0, 11))
        size = 64 * int(2 ** rng.uniform(0, 18))
        lines.append(f"b{i},{lower},{lower + life},{size}\n")
        if len(lines) >= 65536:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))


if __name__ == "__main__":
    main()
