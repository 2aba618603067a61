"""Web lab speed, over real HTTP against `rnnkit serve` in its own process:

  - `score` then `units` of a 10,000-character text on the chapter's model (RNN-512): the
    median of five texts after three, and the first text after the server started,
  - time to the first streamed characters,
  - aggregate characters/s of 32 concurrent streaming clients against one client alone.

Prints a table and one JSON line.

    python benchmarks/serve.py [--run RUN_DIR]   # default: trains the chapter's model, 100 epochs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_lab import lab_over_chapter  # noqa: E402


WARM = 3    # texts before the timed five: a new process's first buffers fault in fresh pages,
            # which cost ~5 ms/MB on this VM (10x a warm page); the server keeps two texts


def stream_chars(url: str, num_chars: int, seed: int, first: list | None = None) -> int:
    """Characters received over one stream (sampled, so every client differs)."""
    start, got = time.perf_counter(), 0
    with httpx.stream("GET", url, params={"num_chars": num_chars, "temperature": 0.8,
                                          "seed": seed}, timeout=300) as r:
        for line in r.iter_lines():
            event = json.loads(line[6:]) if line.startswith("data: ") else {}
            if "text" in event:                          # a chunk (done carries segments)
                if first is not None and not got:
                    first.append(time.perf_counter() - start)
                got += len(event["text"])
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a chapter run (default: train one here, 100 epochs)")
    args = ap.parse_args()
    with lab_over_chapter(args.run, epochs=100) as (_, url, run):
        result = measure(f"{url}/api/runs/{run.name}")
    print(f"{'what':44s} {'figure':>14s}")
    print(f"{'score + units, 10,000 characters':44s} {result['score_units_ms']:11.0f} ms")
    print(f"{'  the first text after start':44s} {result['first_text_ms']:11.0f} ms")
    print(f"{'  score alone / units after it':44s} {result['score_ms']:6.0f} / "
          f"{result['units_ms']:.0f} ms")
    print(f"{'first streamed characters':44s} {result['first_chars_ms']:11.0f} ms")
    print(f"{'one client':44s} {result['one_client_chars_per_s']:9,.0f} chars/s")
    print(f"{'32 clients, aggregate':44s} {result['clients32_chars_per_s']:9,.0f} chars/s "
          f"({result['clients32_ratio']:.1f}x)")
    print(json.dumps({"benchmark": "serve", **result}))


def measure(api: str) -> dict:
    from rnnkit.data import time_machine_text
    text = time_machine_text()[:20_000]
    client = httpx.Client(timeout=120)
    timings = []
    for i in range(WARM + 5):                            # a fresh text each round: no cache
        body = {"text": text[1000 * i:1000 * i + 10_000]}
        start = time.perf_counter()
        client.post(f"{api}/score", json=body).raise_for_status()
        mid = time.perf_counter()
        client.post(f"{api}/units", json=body,                    # as the page asks
                    headers={"Accept": "application/octet-stream"}).raise_for_status()
        timings.append((mid - start, time.perf_counter() - mid))
    first_ms = sum(timings[0]) * 1000
    timings = timings[WARM:]
    score_ms = statistics.median(t[0] for t in timings) * 1000
    units_ms = statistics.median(t[1] for t in timings) * 1000
    firsts: list[float] = []
    for seed in range(5):
        stream_chars(f"{api}/stream", 20, seed, firsts)
    start = time.perf_counter()
    one = stream_chars(f"{api}/stream", 3000, 0) / (time.perf_counter() - start)
    counts = [0] * 32

    def client_thread(i):
        counts[i] = stream_chars(f"{api}/stream", 3000, i)
    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(32)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    many = sum(counts) / (time.perf_counter() - start)
    return {"score_ms": score_ms, "units_ms": units_ms, "score_units_ms": score_ms + units_ms,
            "first_text_ms": first_ms,
            "first_chars_ms": statistics.median(firsts) * 1000, "one_client_chars_per_s": one,
            "clients32_chars_per_s": many, "clients32_ratio": many / one}


if __name__ == "__main__":
    main()
