"""`rnnkit serve`: a local web lab over trained runs — one static page (rnnkit/web/) and a JSON
API on Starlette + uvicorn. Requests name runs, never files. Model work runs in threads, never
on the event loop, and the generation streams of a run are stepped together (streams.py).
"""
from __future__ import annotations

import asyncio
import base64
import gc
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (FileResponse, JSONResponse, Response,
                                 StreamingResponse)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import lab
from .errors import RnnkitError
from .labrequests import (MAX_TEXT, ApiError, _field, read_json, sampling_request,
                          text_request)
from .run import Run
from .streams import Stream, StreamEngine
from .text import SEPARATOR
from .webguard import Guard, HostRule, split_host

WEB = Path(__file__).parent / "web"
KEEP_TRACES = 2     # texts whose trace is kept for their units (two tabs): 20 MB each for 10,000
                    # characters of H 512, and fresh pages are slow to fault in on this VM


class JSON(JSONResponse):
    """A JSON response encoded by orjson: the lab's score and units carry ~10^5 numbers, which
    the standard encoder takes ~20 ms to write and orjson ~2 (NaN and infinities as null)."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass
class LabRun:
    """A run the lab serves (`Run.open`), under its name, with the lab's own state."""
    name: str
    run: Run
    engine: "StreamEngine | None" = None
    traces: dict = field(default_factory=dict)        # the last texts' traces (score → units)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model(self):
        return self.run.model

    @property
    def vocab(self):
        return self.run.vocab

    @property
    def config(self):
        return self.run.config

    @property
    def path(self) -> Path:
        return self.run.out

    def trace(self, ids: list[int]) -> dict:
        """The model's trace of these ids, kept for the next request: the page asks for the
        score and then the units of the same text. (A mixture scores with the mixture.)"""
        key = tuple(ids)
        with self.lock:
            if key in self.traces:
                return self.traces[key]
            while len(self.traces) >= KEEP_TRACES:     # before the new one: its memory is reused
                self.traces.pop(next(iter(self.traces)))
        traced = self.model.trace(ids)
        with self.lock:
            self.traces[key] = traced
        return traced

    def summary(self) -> dict:
        c, metrics, mixture = self.config, read_metrics(self.path), self.model.mixture
        vals = [m["val_ppl"] for m in metrics if m.get("val_ppl") is not None]
        return {"name": self.name, "cell": c.cell, "impl": c.impl, "hidden": c.hidden,
                "layers": c.layers, "embed": c.embed, "token": c.token, "vocab": len(self.vocab),
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "prefix": c.prefix, "end_on": c.end_on, "epochs": len(metrics),
                "train_ppl": metrics[-1]["train_ppl"] if metrics else None,
                "best_val_ppl": min(vals) if vals else None,
                "states": list(lab.STATES[c.cell]), "num_layers": c.layers,
                "ngram": mixture and mixture["n"],
                **({"ngram_val_ppl": mixture.get("val_ppl")} if mixture else {})}


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl as written so far (a line being written by a live run is skipped)."""
    try:
        text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict)]


# ---- the app ------------------------------------------------------------------------------------
def create_app(runs: dict[str, LabRun], rule: HostRule) -> Guard:
    """The lab over these runs, behind the guard that answers only the callers `rule` allows."""
    app = Starlette(routes=ROUTES, exception_handlers={ApiError: api_error,
                                                      HTTPException: http_error,
                                                      Exception: internal_error})
    app.state.runs = runs
    return Guard(app, rule)


def load_runs(run_dirs: list[str | Path]) -> dict[str, LabRun]:
    """Each run directory loaded once (safetensors only), named by its directory's name."""
    runs: dict[str, LabRun] = {}
    for d in run_dirs:
        run = Run.open(d)
        run.model                               # loaded now: a broken run fails at start
        name = Path(d).resolve().name or "run"
        while name in runs:
            name += "+"
        runs[name] = LabRun(name, run)
    return runs


def run_of(request: Request) -> LabRun:
    runs, name = request.app.state.runs, request.path_params["name"]
    if name not in runs:
        raise ApiError(404, f"no run named {name!r}; the lab serves {sorted(runs)}")
    return runs[name]


async def index(request):
    return FileResponse(WEB / "index.html")


async def list_runs(request):
    return JSON({"runs": [r.summary() for r in request.app.state.runs.values()]})


async def metrics(request):
    run = run_of(request)
    return JSON({"name": run.name, "metrics": read_metrics(run.path),
                 "config": run.config.to_dict()})


async def generate(request):
    run = run_of(request)
    req = sampling_request(await read_json(request), run.run)
    samples = await run_in_threadpool(_generate, run, req)
    return JSON({"prefix": req["prefix"], "samples": samples, "unknown": req["unknown"]})


async def stream(request):
    run = run_of(request)
    req = sampling_request(dict(request.query_params), run.run)
    if req["beam"] is not None:
        raise ApiError(422, "beam search is not streamed; POST to generate instead")
    return StreamingResponse(_events(run, req), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def score(request):
    run = run_of(request)
    text, tokens, ids = text_request(await read_json(request), run.run)
    result = await run_in_threadpool(lambda: lab.score(run.trace(ids), ids))
    return JSON({"text": text, "tokens": tokens, "vocab": run.vocab.idx_to_token, **result})


async def units(request):
    run = run_of(request)
    obj = await read_json(request)
    text, tokens, ids = text_request(obj, run.run)
    if not lab.STATES[run.config.cell]:
        raise ApiError(422, f"units are for recurrent cells: a {run.config.cell} run has no "
                            "hidden states to show")
    layer = _field(obj, "layer", int, 0, 0, run.config.layers - 1)
    state = obj.get("state", "h")
    if state not in lab.STATES[run.config.cell]:
        raise ApiError(422, f"state must be one of {', '.join(lab.STATES[run.config.cell])} "
                            f"for a {run.config.cell} run")
    result = await run_in_threadpool(lambda: lab.units(run.trace(ids), tokens, layer, state))
    values = result.pop("values")                                         # (T, H) int8
    if "application/octet-stream" in request.headers.get("accept", ""):
        return Response(units_binary({"text": text, "tokens": tokens, **result}, values),
                        media_type="application/octet-stream")
    return JSON({"text": text, "tokens": tokens, **result,
                 "data": base64.b64encode(values).decode("ascii")})


def units_binary(header: dict, values) -> bytes:
    """The units as the page reads them (`Accept: application/octet-stream`): the JSON
    header's length as a little-endian uint32, the header, then the (T, H) int8 values —
    5 MB for 10,000 characters of H 512, where base64 in JSON would be 6.8 MB to encode,
    send and decode."""
    head = orjson.dumps(header)
    return b"".join([len(head).to_bytes(4, "little"), head, values.data])


async def validation(request):
    run = run_of(request)
    chars = _field(dict(request.query_params), "chars", int, 2000, 1, MAX_TEXT)
    return JSON({"text": await run_in_threadpool(_validation_text, run, chars)})


async def api_error(request, exc: ApiError):
    return JSON({"error": exc.message, **exc.details}, status_code=exc.status)


async def http_error(request, exc: HTTPException):
    return JSON({"error": exc.detail}, status_code=exc.status_code)


async def internal_error(request, exc: Exception):
    # a bug, not the caller's mistake: one line in the server's log, no traceback to the client
    print(f"rnnkit lab: internal error on {request.method} {request.url.path}: "
          f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return JSON({"error": f"internal error ({type(exc).__name__}); the lab keeps serving"},
                status_code=500)


ROUTES = [Route("/", index), Route("/api/runs", list_runs),
          Route("/api/runs/{name}/metrics", metrics),
          Route("/api/runs/{name}/generate", generate, methods=["POST"]),
          Route("/api/runs/{name}/stream", stream),
          Route("/api/runs/{name}/score", score, methods=["POST"]),
          Route("/api/runs/{name}/units", units, methods=["POST"]),
          Route("/api/runs/{name}/validation", validation),
          Mount("/static", StaticFiles(directory=WEB), name="static")]


def _generate(run: LabRun, req: dict) -> list[dict]:
    """What `rnnkit generate` prints for these arguments (the same method, `Run.generate`),
    with each sample's copies of the training text."""
    samples = run.run.generate(req["prefix"], req["num_chars"], num_samples=req["num_samples"],
                               temperature=req["temperature"], top_k=req["top_k"],
                               top_p=req["top_p"], seed=req["seed"], beam=req["beam"])
    return [{"text": s.text, **({} if s.log_prob is None else {"log_prob": s.log_prob}),
             "segments": copy_segments(run, req["prefix"], s.ids, s.generated_from)}
            for s in samples]


def copy_segments(run: LabRun, prefix: str, ids: list[int], generated_from: int
                  ) -> list[dict] | None:
    """The sample's text in pieces whose concatenation is the text: {"text", "copy"}, where
    "copy" is null or, for generated tokens inside a copy of the training text, where it
    occurs there and the training text around it. None: the training text cannot be read."""
    from .errors import RnnkitError
    from .run.run import Sample
    try:
        report = run.run.copies(Sample("", ids, generated_from))
    except RnnkitError:
        return None
    made, sep = run.vocab.to_tokens(ids[generated_from:]), SEPARATOR[run.config.token]
    copy_at = [None] * len(ids)                  # each token's copy: one dict per span
    for a, b, where in report.spans:
        copy = {"train_at": where, "tokens": b - a,
                "context": run.run.training_text(where - 40, where + b - a + 40)}
        copy_at[a:b] = [copy] * (b - a)
    segments = [{"text": prefix + (sep if made else ""), "copy": None}]
    for k, token in enumerate(made):
        copy = copy_at[generated_from + k]
        piece = token + (sep if k + 1 < len(made) else "")
        if segments[-1]["copy"] is copy:
            segments[-1]["text"] += piece
        else:
            segments.append({"text": piece, "copy": copy})
    return segments


async def _events(run: LabRun, req: dict):
    """Server-sent events: `chunk` {sample, text} as characters come, then `done`."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    sep = SEPARATOR[run.config.token]
    if run.engine is None:
        run.engine = StreamEngine(run.model)
    generator = (torch.Generator().manual_seed(req["seed"]) if req["seed"] is not None
                 else None)
    stream = run.engine.open(Stream(
        req["ids"], req["num_chars"], req["num_samples"],
        {"temperature": req["temperature"], "top_k": req["top_k"], "top_p": req["top_p"]},
        generator, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)))
    texts = [req["prefix"]] * req["num_samples"]
    made: list[list[int]] = [[] for _ in range(req["num_samples"])]   # each sample's new ids
    try:
        yield _event("start", {"prefix": req["prefix"], "num_samples": req["num_samples"]})
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            stream.taken += len(items)
            run.engine.wake()
            failure = next((i for i in items if isinstance(i, str)), None)
            if failure is not None:
                yield _event("error", {"error": failure})
                return
            ended = None in items
            chunks: dict[int, str] = {}
            for item in items:
                for step in item or []:                  # one token id per sample
                    for sample, token in enumerate(step):
                        chunks[sample] = chunks.get(sample, "") + sep + \
                            run.vocab.idx_to_token[token]
                        made[sample].append(token)
            for sample, piece in chunks.items():
                texts[sample] += piece
                yield _event("chunk", {"sample": sample, "text": piece})
            if ended:
                segments = await run_in_threadpool(lambda: [
                    copy_segments(run, req["prefix"], req["ids"] + m, len(req["ids"]))
                    for m in made])
                yield _event("done", {"samples": texts, "segments": segments})
                return
    finally:
        StreamEngine.close(stream)               # a client that left frees its rows


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _validation_text(run: LabRun, chars: int) -> str:
    """The first `chars` tokens of the run's validation slice, as text."""
    return run.run.decode(run.run.slices["val"][:chars])


def serve(run_dirs: list[str], host: str = "127.0.0.1", port: int = 8000, *,
          allow_hosts: tuple[str, ...] = (), ready=None) -> None:
    """Serve the lab until Ctrl-C. `ready(url)` is called once the socket listens. Requests
    must name this machine by a loopback name, `host` itself or one of `allow_hosts` ('*': any)."""
    import socket
    import uvicorn
    runs = load_runs(run_dirs)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise RnnkitError(f"cannot listen on {host}:{port} ({e.strerror}); pick another "
                          "--port") from None
    bound = sock.getsockname()[1]
    url = f"http://{host if family == socket.AF_INET else f'[{host}]'}:{bound}/"
    names = frozenset(split_host(n)[0] for n in (*allow_hosts, host) if n != "*")
    app = create_app(runs, HostRule(bound, names, any_host="*" in allow_hosts))
    # A score allocates ~10^5 small objects, and each full collection then walks every object
    # torch and the runs made at start-up (~170k): a 100 ms stall every few requests. Those
    # live as long as the server, so the collector may stop looking at them.
    gc.freeze()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    def announce() -> None:
        # only once uvicorn has started, and so handles Ctrl-C: a signal sent as soon as the
        # URL is printed must stop the server as cleanly as one sent later
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if server.started:
            ready(url)
    if ready is not None:
        threading.Thread(target=announce, daemon=True, name="rnnkit-ready").start()
    server.run(sockets=[sock])
