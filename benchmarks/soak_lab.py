"""The lab soaked: 32 concurrent clients for 5 minutes against a real `rnnkit serve`, mixing
generate, streams (read to the end, dropped mid-stream, or never read), score and units.

Prints requests served, errors by kind, p50/p99 of the first streamed chunk, and the server's
memory (RSS) and thread count at the start, middle and end of the load and once it is over;
then one JSON line. Exits 1 if the lab answered a 5xx, its memory grew 10% or more from the
middle to the end, or it kept more threads after the load than during it.

    python benchmarks/soak_lab.py [--seconds 300] [--clients 32] [--run RUN_DIR]
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_lab import lab_over_chapter  # noqa: E402

# what a client does next, and how often
ACTIONS = {"generate": 15, "stream": 25, "stream-dropped": 15, "stream-unread": 10,
           "score": 20, "units": 15}


def server_figures(pid: int) -> dict:
    """The server process's resident memory (MiB) and thread count, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return {"rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
            "threads": int(fields["Threads"])}


class Tally:
    """What the clients saw, shared between their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.served: collections.Counter = collections.Counter()      # by action
        self.errors: collections.Counter = collections.Counter()      # by kind
        self.first_chunk: list[float] = []                            # seconds

    def ok(self, action: str, first: float | None = None) -> None:
        with self.lock:
            self.served[action] += 1
            if first is not None:
                self.first_chunk.append(first)

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1


def stream(client: httpx.Client, api: str, rng: random.Random, tally: Tally, drop: bool):
    """Read a sampled stream to its end (or drop it after a few chunks); time the first."""
    params = {"num_chars": rng.choice([50, 200, 1000]), "num_samples": rng.choice([1, 2, 4]),
              "temperature": 0.8, "seed": rng.randrange(10**6)}
    start, first, chunks = time.perf_counter(), None, 0
    with client.stream("GET", f"{api}/stream", params=params) as r:
        if r.status_code != 200:
            return tally.error(f"stream {r.status_code}")
        for line in r.iter_lines():
            if line.startswith("event: chunk"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
                if drop and chunks >= rng.randint(1, 5):
                    break                                 # the client goes away mid-stream
            elif line.startswith("event: error"):
                return tally.error("stream error event")
            elif line.startswith("event: done"):
                break
    tally.ok("stream-dropped" if drop else "stream", first)


def unread_stream(url: str, api: str, rng: random.Random, tally: Tally) -> None:
    """Ask for a long stream and never read a byte of it, then hang up: the server must pause
    the stream on a bounded buffer, not pile up its output, and free it when we leave."""
    parts = urlsplit(url)
    path = f"{urlsplit(api).path}/stream?num_chars=10000&num_samples=16&temperature=1"
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        time.sleep(rng.uniform(1, 4))
    tally.ok("stream-unread")


def client_loop(index: int, url: str, api: str, text: str, stop: float, tally: Tally) -> None:
    rng = random.Random(index)
    actions, weights = list(ACTIONS), list(ACTIONS.values())
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < stop:
            action = rng.choices(actions, weights)[0]
            try:
                if action in ("stream", "stream-dropped"):
                    stream(client, api, rng, tally, drop=action == "stream-dropped")
                    continue
                if action == "stream-unread":
                    unread_stream(url, api, rng, tally)
                    continue
                if action == "generate":
                    body = {"num_chars": rng.choice([20, 100, 300]),
                            "num_samples": rng.choice([1, 3]), "temperature": 0.8,
                            "seed": rng.randrange(10**6)}
                else:
                    at = rng.randrange(len(text) - 2000)
                    body = {"text": text[at:at + rng.choice([200, 1000, 2000])]}
                r = client.post(f"{api}/{action}", json=body)
                if r.status_code == 200:
                    tally.ok(action)
                else:
                    tally.error(f"{action} {r.status_code}")
            except httpx.TimeoutException:
                tally.error(f"{action} timeout")
            except (httpx.HTTPError, OSError) as e:
                tally.error(f"{action} {type(e).__name__}")


def soak(url: str, pid: int, name: str, seconds: float, clients: int) -> dict:
    from rnnkit.data import time_machine_text
    text = time_machine_text()
    api = f"{url}/api/runs/{name}"
    tally = Tally()
    figures = {"start": server_figures(pid)}
    stop = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(i, url, api, text, stop, tally))
               for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    figures["middle"] = server_figures(pid)
    while time.monotonic() < stop - 1:
        time.sleep(0.5)
    figures["end"] = server_figures(pid)
    for t in threads:
        t.join()
    time.sleep(3)                               # dropped streams are closed, pools go idle
    figures["after"] = server_figures(pid)
    assert httpx.get(f"{url}/api/runs").status_code == 200
    firsts = sorted(tally.first_chunk)
    return {"seconds": seconds, "clients": clients,
            "served": dict(tally.served), "requests": sum(tally.served.values()),
            "errors": dict(tally.errors),
            "server_errors": sum(n for k, n in tally.errors.items() if k.endswith(tuple(
                f" 5{d:02d}" for d in range(100)))),
            "first_chunk_p50_ms": round(statistics.median(firsts) * 1000, 1) if firsts else None,
            "first_chunk_p99_ms": round(firsts[int(0.99 * (len(firsts) - 1))] * 1000, 1)
            if firsts else None,
            "server": figures,
            "rss_growth_middle_to_end": round(figures["end"]["rss_mib"] /
                                              figures["middle"]["rss_mib"] - 1, 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300, help="length of the load (default 300)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    ap.add_argument("--run", help="a run to serve (default: the chapter's model, 20 epochs)")
    args = ap.parse_args()
    with lab_over_chapter(args.run, epochs=20) as (proc, url, run):
        result = soak(url, proc.pid, run.name, args.seconds, args.clients)
    f = result["server"]
    print(f"{args.clients} clients for {args.seconds:.0f} s: {result['requests']:,} requests "
          f"served ({', '.join(f'{k} {v:,}' for k, v in sorted(result['served'].items()))})")
    print(f"errors: {', '.join(f'{k} {v}' for k, v in sorted(result['errors'].items())) or 'none'}")
    print(f"first streamed chunk: p50 {result['first_chunk_p50_ms']} ms, "
          f"p99 {result['first_chunk_p99_ms']} ms")
    print(f"{'server':8s} {'RSS MiB':>8s} {'threads':>8s}")
    for when in ("start", "middle", "end", "after"):
        print(f"{when:8s} {f[when]['rss_mib']:8.1f} {f[when]['threads']:8d}")
    verdicts = {"no 5xx": result["server_errors"] == 0,
                "memory growth middle→end < 10%": result["rss_growth_middle_to_end"] < 0.10,
                "no leaked threads": f["after"]["threads"] <= f["middle"]["threads"]}
    print("; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in verdicts.items()))
    print(json.dumps({"benchmark": "soak_lab", **result, "verdicts": verdicts}))
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
