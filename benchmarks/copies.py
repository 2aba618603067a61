"""How fast a run's copy index answers: build, save, load (checked) and the report for a
1,000-token sample, on training slices from 1 MB to 64 MB (Tiny Shakespeare, tiled, with 2% of
its characters changed so that the text does not repeat itself exactly). Prints a table and
one JSON line.

    python benchmarks/copies.py [--sizes 1,8,64]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rnnkit.copies import CopyIndex

SHAKESPEARE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / \
    "tinyshakespeare.txt"


def text_of(megabytes: int, rng) -> np.ndarray:
    raw = np.frombuffer(SHAKESPEARE.read_bytes(), dtype=np.uint8)
    text = np.tile(raw, (megabytes << 20) // len(raw) + 1)[:megabytes << 20].copy()
    changed = rng.integers(0, len(text), len(text) // 50)
    text[changed] = rng.integers(97, 123, len(changed))
    return text


def measure(megabytes: int) -> dict:
    rng = np.random.default_rng(0)
    text = text_of(megabytes, rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "copies.safetensors"
        start = time.perf_counter()
        index = CopyIndex.build(text)
        built = time.perf_counter() - start
        index.save(path)
        start = time.perf_counter()
        index = CopyIndex.load(path, text)
        loaded = time.perf_counter() - start
    # a sample that recites 400 characters of the text, then writes 600 of its own
    sample = np.concatenate([text[5000:5400], rng.integers(97, 123, 600).astype(np.uint8)])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        report = index.report(sample, 0, 20)
        times.append(time.perf_counter() - start)
    return {"megabytes": megabytes, "build_s": built, "load_s": loaded,
            "report_ms": statistics.median(times) * 1000, "longest": report.longest}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8,64", help="megabytes of training text, e.g. 1,8,64")
    args = ap.parse_args()
    if not SHAKESPEARE.exists():
        print(f"copies: {SHAKESPEARE} is not here", file=sys.stderr)
        return 1
    rows = [measure(int(s)) for s in args.sizes.split(",")]
    print(f"{'training text':>14s} {'build':>8s} {'load':>8s} {'report, 1,000 tokens':>22s}")
    for r in rows:
        print(f"{r['megabytes']:>11d} MB {r['build_s']:7.1f}s {r['load_s']:7.2f}s "
              f"{r['report_ms']:19.1f} ms")
    print(json.dumps({"benchmark": "copies", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
