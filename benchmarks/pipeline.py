"""Data pipeline benchmark: the book's list pipeline against rnnkit's vectorised, cached one on
a synthetic corpus (The Time Machine repeated). Each pipeline runs in a fresh process that
reports its wall time (after imports) and peak memory (ru_maxrss, which for rnnkit includes
the ~250 MB that importing torch costs). Prints a table and one JSON line.

    python benchmarks/pipeline.py [--mb 100] [--big-mb 1000] [--skip-book-big]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
mode, path, cache = sys.argv[1], sys.argv[2], sys.argv[3]
if mode != "book":
    import os
    os.environ["RNNKIT_CACHE"] = cache
    from rnnkit.encode import prepare            # imports torch: not part of the pipeline time
start = time.perf_counter()
if mode == "book":
    import collections, re
    with open(path, "r") as f:                       # the book's read_time_machine
        lines = [re.sub('[^A-Za-z]+', ' ', line).strip().lower() for line in f.readlines()]
    tokens = [list(line) for line in lines]          # tokenize(lines, 'char')
    counter = collections.Counter([t for line in tokens for t in line])
    freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
    idx = {t: i for i, (t, _) in enumerate(freqs, start=1)}
    corpus = [idx.get(t, 0) for line in tokens for t in line]
    n = len(corpus)
else:
    ids, vocab, _ = prepare(path, "d2l")
    n = len(ids)
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": n,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode: str, path: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(cache)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def make_corpus(path: Path, mb: int) -> None:
    from rnnkit.data import time_machine_text
    block = time_machine_text().encode("utf-8")
    with open(path, "wb") as f:
        for _ in range(mb * (1 << 20) // len(block) + 1):
            f.write(block)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--big-mb", type=int, default=1000, help="0 to skip")
    p.add_argument("--skip-book-big", action="store_true", default=True)
    args = p.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for mb in [args.mb] + ([args.big_mb] if args.big_mb else []):
            path = d / f"tm-{mb}mb.txt"
            make_corpus(path, mb)
            cache = d / f"cache-{mb}"
            row = {"rnnkit cold": run("rnnkit", path, cache),
                   "rnnkit cached": run("rnnkit", path, cache)}
            if mb == args.mb:
                row["book"] = run("book", path, cache)
                assert row["book"]["tokens"] == row["rnnkit cold"]["tokens"]
            result[f"{mb} MB"] = row
            path.unlink()
    print(f"{'corpus':8s} {'pipeline':14s} {'seconds':>8s} {'peak MB':>8s} {'tokens':>14s}")
    for size, row in result.items():
        for name, r in row.items():
            print(f"{size:8s} {name:14s} {r['seconds']:8.2f} {r['peak_mb']:8.0f} {r['tokens']:14,}")
    small = result[f"{args.mb} MB"]
    ratios = {"speed_x": small["book"]["seconds"] / small["rnnkit cold"]["seconds"],
              "memory_fraction": small["rnnkit cold"]["peak_mb"] / small["book"]["peak_mb"]}
    print(f"at {args.mb} MB rnnkit is {ratios['speed_x']:.1f}x faster than the book's pipeline "
          f"with {ratios['memory_fraction']:.2f} of its peak memory")
    print(json.dumps({"results": result, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
