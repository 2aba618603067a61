"""The lab under tens of thousands of random requests (the strategies of tests/lab_fuzz.py), over
real HTTP against `rnnkit serve` in its own process. Every answer must be a 4xx JSON error with
one message or a correct 200, never a 5xx or a traceback; prints the counts by status and one
JSON line, and exits 1 on the first answer that breaks the rule (hypothesis shrinks it first).

    python benchmarks/fuzz_lab.py [--cases 20000] [--seed 0]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from lab_fuzz import check_answer, lab_requests  # noqa: E402
from test_lab import start_lab  # noqa: E402


def train_runs(root: Path) -> list[Path]:
    """The two small runs the fuzz strategies name: the chapter's RNN and a 2-layer LSTM."""
    from rnnkit.cli import main
    chapter, lstm, corpus = root / "chapter", root / "lstm", root / "quotes.txt"
    corpus.write_text('He said "yes (and no)" and left.\nShe said "no".\n' * 200)
    quiet = ["--sample-every", "0", "--json"]
    assert main(["train", "--hidden", "64", "--epochs", "3", "--max-tokens", "5000",
                 *quiet, "--out", str(chapter)]) == 0
    assert main(["train", "--cell", "lstm", "--layers", "2", "--embed", "16", "--hidden", "32",
                 "--epochs", "2", "--max-tokens", "3000", "--batch-size", "8", "--clean", "none",
                 "--corpus", str(corpus), *quiet, "--out", str(lstm)]) == 0
    return [chapter, lstm]


def fuzz(url: str, cases: int, start_seed: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    client = httpx.Client(base_url=url, timeout=120)

    @seed(start_seed)
    @settings(max_examples=cases, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(request=lab_requests())
    def one(request):
        counts[check_answer(client, request)] += 1
        if sum(counts.values()) % 2000 == 0:
            print(f"  {sum(counts.values()):,} requests: {dict(sorted(counts.items()))}",
                  file=sys.stderr, flush=True)

    one()
    assert client.get("/api/runs").status_code == 200          # and it still serves
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20_000, help="random requests (default 20000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(io.StringIO()):
            run_dirs = train_runs(Path(tmp))
        log = Path(tmp) / "server.log"
        with open(log, "w") as server_log:
            proc, url = start_lab(*run_dirs, stderr=server_log)
        start = time.perf_counter()
        try:
            counts = fuzz(url, args.cases, args.seed)
        except (AssertionError, httpx.HTTPError) as e:
            print(f"fuzz_lab: an answer broke the rule: {type(e).__name__}: {e}\n"
                  f"the server said:\n{log.read_text()[-3000:]}", file=sys.stderr)
            return 1
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        seconds = time.perf_counter() - start
    total = sum(counts.values())
    print(f"{'status':>8s} {'answers':>10s}")
    for status, n in sorted(counts.items()):
        print(f"{status:>8d} {n:>10,}")
    print(f"{'all':>8s} {total:>10,}  in {seconds:.0f} s; no 5xx, no traceback, still serving")
    print(json.dumps({"benchmark": "fuzz_lab", "requests": total, "seconds": round(seconds, 1),
                      "by_status": {str(k): v for k, v in sorted(counts.items())}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
