"""`rnnkit serve`: a local web lab over trained runs — one static page (rnnkit/web/) and a JSON
API on Starlette + uvicorn. Requests name runs, never files. Model work runs in threads, never
on the event loop, and the generation streams of a run are stepped together (streams.py).
"""
from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import lab
from .errors import RnnkitError
from .generate import Limits, check_sampling
from .run import Run
from .streams import Stream, StreamEngine
from .text import SEPARATOR, tokens_of
from .webguard import Guard, HostRule, split_host

WEB = Path(__file__).parent / "web"
MAX_BODY, MAX_TEXT = 1 << 20, 100_000                  # bytes of a request, characters of a text
LIMITS = Limits(num_chars=10_000, num_samples=64, beam=64, generated=10_000 * 64)


class ApiError(Exception):
    """A request the lab refuses: an HTTP status and one clear message (plus details)."""

    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


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
        traced = self.model.trace(ids)
        with self.lock:
            while len(self.traces) >= 4:
                self.traces.pop(next(iter(self.traces)))
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


# ---- requests -----------------------------------------------------------------------------------
def _field(obj: dict, name: str, kind, default, low=None, high=None):
    """obj[name] as `kind` within [low, high], or `default` when absent or null; ApiError
    otherwise."""
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ApiError(422, f"{name} must be a {kind.__name__}, not {_short(value)}")
    try:
        if isinstance(value, str) and len(value) > 40:
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise ApiError(422, f"{name} must be a finite number")
        if kind is int and number != int(number):
            raise ValueError
        value = int(value) if kind is int and not isinstance(value, float) else kind(number)
    except (TypeError, ValueError, OverflowError):
        raise ApiError(422, f"{name} must be a {kind.__name__}, not {_short(value)}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(422, f"{name} must be between {low} and {high}, not {value}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sampling_request(obj: dict, run: LabRun) -> dict:
    """The generate arguments of `rnnkit generate`, checked as the CLI checks them."""
    prefix = obj.get("prefix") or run.config.prefix
    if not isinstance(prefix, str) or len(prefix) > MAX_TEXT:
        raise ApiError(422, f"prefix must be a text of at most {MAX_TEXT:,} characters")
    ids, unknown = run.run.encode(prefix)
    if not ids:
        raise ApiError(422, "prefix holds no token")
    req = {"prefix": prefix, "ids": ids, "unknown": sorted(set(unknown)),
           "num_chars": _field(obj, "num_chars", int, 100),
           "num_samples": _field(obj, "num_samples", int, 1),
           "temperature": _field(obj, "temperature", float, 0.0),
           "top_k": _field(obj, "top_k", int, None),
           "top_p": _field(obj, "top_p", float, None),
           "seed": _field(obj, "seed", int, None),
           "beam": _field(obj, "beam", int, None)}
    try:
        check_sampling(req, LIMITS)                  # the checks of `rnnkit generate`
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    return req


def text_request(obj: dict, run: LabRun) -> tuple[str, list[str], list[int]]:
    """(text as scored, its tokens, their ids): the run's cleaning applied, as `rnnkit eval`
    does. Characters outside the vocabulary are a 422 naming them and where they are, unless
    the request says "unknown": "unk" (then they score as <unk>, as `rnnkit eval` does)."""
    from .text import clean_lines
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        raise ApiError(422, "text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise ApiError(413, f"text is {len(text):,} characters; the lab reads at most "
                            f"{MAX_TEXT:,}")
    cleaned = "".join(clean_lines(text, run.config.clean))    # lines joined as the book does
    tokens = tokens_of(cleaned, run.config.token)
    if len(tokens) < 2:
        raise ApiError(422, "text must hold at least two tokens after the run's cleaning "
                            f"(--clean {run.config.clean})")
    where: dict[str, list[int]] = {}
    for i, t in enumerate(tokens):
        if t not in run.vocab.token_to_idx:
            where.setdefault(t, []).append(i)
    if where and obj.get("unknown", "refuse") != "unk":
        raise ApiError(422, f"{len(where)} character(s) are not in the run's vocabulary: "
                            + ", ".join(repr(c) for c in list(where)[:10])
                            + ' — send "unknown": "unk" to score them as <unk>',
                       text=cleaned, unknown=[{"char": c, "positions": p[:100]}
                                              for c, p in where.items()])
    return cleaned, tokens, run.vocab[tokens]


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


async def read_json(request: Request) -> dict:
    """The request's JSON object, refusing bodies over MAX_BODY before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"the request body is over {MAX_BODY:,} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"the request body is over {MAX_BODY:,} bytes")
    try:
        obj = json.loads(body or b"{}", parse_constant=_not_json)
    except (ValueError, RecursionError):        # bad UTF-8, NaN, 5,000-digit or deep values
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return obj


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
    return JSONResponse({"runs": [r.summary() for r in request.app.state.runs.values()]})


async def metrics(request):
    run = run_of(request)
    return JSONResponse({"name": run.name, "metrics": read_metrics(run.path),
                         "config": run.config.to_dict()})


async def generate(request):
    run = run_of(request)
    req = sampling_request(await read_json(request), run)
    samples = await run_in_threadpool(_generate, run, req)
    return JSONResponse({"prefix": req["prefix"], "samples": samples, "unknown": req["unknown"]})


async def stream(request):
    run = run_of(request)
    req = sampling_request(dict(request.query_params), run)
    if req["beam"] is not None:
        raise ApiError(422, "beam search is not streamed; POST to generate instead")
    return StreamingResponse(_events(run, req), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def score(request):
    run = run_of(request)
    text, tokens, ids = text_request(await read_json(request), run)
    result = await run_in_threadpool(lambda: lab.score(run.trace(ids), ids))
    return JSONResponse({"text": text, "tokens": tokens, "vocab": run.vocab.idx_to_token,
                         **result})


async def units(request):
    run = run_of(request)
    obj = await read_json(request)
    text, tokens, ids = text_request(obj, run)
    layer = _field(obj, "layer", int, 0, 0, run.config.layers - 1)
    state = obj.get("state", "h")
    if state not in lab.STATES[run.config.cell]:
        raise ApiError(422, f"state must be one of {', '.join(lab.STATES[run.config.cell])} "
                            f"for a {run.config.cell} run")
    result = await run_in_threadpool(lambda: lab.units(run.trace(ids), tokens, layer, state))
    return JSONResponse({"text": text, "tokens": tokens, **result})


async def validation(request):
    run = run_of(request)
    chars = _field(dict(request.query_params), "chars", int, 2000, 1, MAX_TEXT)
    return JSONResponse({"text": await run_in_threadpool(_validation_text, run, chars)})


async def api_error(request, exc: ApiError):
    return JSONResponse({"error": exc.message, **exc.details}, status_code=exc.status)


async def http_error(request, exc: HTTPException):
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def internal_error(request, exc: Exception):
    # a bug, not the caller's mistake: one line in the server's log, no traceback to the client
    print(f"rnnkit lab: internal error on {request.method} {request.url.path}: "
          f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); the lab keeps "
                                  "serving"}, status_code=500)


ROUTES = [Route("/", index), Route("/api/runs", list_runs),
          Route("/api/runs/{name}/metrics", metrics),
          Route("/api/runs/{name}/generate", generate, methods=["POST"]),
          Route("/api/runs/{name}/stream", stream),
          Route("/api/runs/{name}/score", score, methods=["POST"]),
          Route("/api/runs/{name}/units", units, methods=["POST"]),
          Route("/api/runs/{name}/validation", validation),
          Mount("/static", StaticFiles(directory=WEB), name="static")]


def _generate(run: LabRun, req: dict) -> list[dict]:
    """What `rnnkit generate` prints for these arguments (the same method, `Run.generate`)."""
    samples = run.run.generate(req["prefix"], req["num_chars"], num_samples=req["num_samples"],
                               temperature=req["temperature"], top_k=req["top_k"],
                               top_p=req["top_p"], seed=req["seed"], beam=req["beam"])
    return [{"text": text, **({} if logp is None else {"log_prob": logp})}
            for text, logp in samples]


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
            for sample, piece in chunks.items():
                texts[sample] += piece
                yield _event("chunk", {"sample": sample, "text": piece})
            if ended:
                yield _event("done", {"samples": texts})
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
