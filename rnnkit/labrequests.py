"""A request to the lab, checked before any model work: its JSON body (bounded, strict), each
field's type and range, the sampling settings (`sampling.check_sampling`, as `rnnkit generate`
checks them) and the text to score. Every refusal is an `ApiError`: a 4xx and one line.
"""
from __future__ import annotations

import json
import math

from starlette.requests import Request

from .run import Run
from .sampling import Limits, check_sampling
from .text import tokens_of

MAX_BODY, MAX_TEXT = 1 << 20, 100_000                  # bytes of a request, characters of a text
LIMITS = Limits(num_chars=10_000, num_samples=64, beam=64, generated=10_000 * 64)


class ApiError(Exception):
    """A request the lab refuses: an HTTP status and one clear message (plus details)."""

    def __init__(self, status: int, message: str, **details):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


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


def sampling_request(obj: dict, run: Run) -> dict:
    """The generate arguments of `rnnkit generate`, checked as the CLI checks them."""
    prefix = obj.get("prefix") or run.config.prefix
    if not isinstance(prefix, str) or len(prefix) > MAX_TEXT:
        raise ApiError(422, f"prefix must be a text of at most {MAX_TEXT:,} characters")
    ids, unknown = run.encode(prefix)
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


def text_request(obj: dict, run: Run) -> tuple[str, list[str], list[int]]:
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
