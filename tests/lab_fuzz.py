"""Random requests for the lab (hypothesis strategies) and the rule every answer must keep:
a 4xx JSON error with one message, or a correct 200; never a 5xx, never a traceback. Used by
tests/test_lab_fuzz.py (a few hundred cases) and benchmarks/fuzz_lab.py (tens of thousands)."""
from __future__ import annotations

import json
from urllib.parse import quote

import httpx
from hypothesis import strategies as st

MAX_BODY = 1 << 20
FIELDS = ["text", "prefix", "num_chars", "num_samples", "temperature", "top_k", "top_p", "seed",
          "beam", "layer", "state", "unknown", "chars"]
ENDPOINTS = {"generate": "POST", "stream": "GET", "score": "POST", "units": "POST",
             "validation": "GET", "metrics": "GET"}              # and the method each takes
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data", None]

# every plane of unicode, lone surrogates excepted (they are not UTF-8 at all: see raw bytes)
texts = st.text(st.characters(codec="utf-8"), max_size=200)
numbers = st.one_of(st.integers(-5, 400), st.integers(), st.integers(10 ** 18, 10 ** 40),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
                        [0, 1, -1, 1e-320, 5e-324, 1e308, 2 ** 63, 2 ** 64, True, False]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
field_values = st.one_of(numbers, texts, values, st.sampled_from(
    ["h", "c", "z", "unk", "refuse", "the time traveller", "", " ", "\x00", "<b>x</b>"]))
requests_objects = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6)


def _body(kind: str, draw) -> bytes:
    if kind == "fields":
        return json.dumps(draw(requests_objects)).encode()        # NaN/Infinity stay as such
    if kind == "value":
        return json.dumps(draw(values)).encode()
    if kind == "raw":
        return draw(st.binary(max_size=300))                       # invalid UTF-8 among them
    if kind == "deep":
        n = draw(st.integers(1, 200_000))
        return draw(st.sampled_from([b"[", b'{"a":'])) * n + b"1" + b"]" * n
    if kind == "huge-number":
        return b'{"num_chars": ' + b"9" * draw(st.integers(20, 20_000)) + b"}"
    if kind == "oversized":
        return b'{"text": "' + b"a" * (MAX_BODY + draw(st.integers(0, 1000))) + b'"}'
    return b""


@st.composite
def lab_requests(draw, run_names=("chapter", "lstm")):
    """(method, path with query, headers, body) for any endpoint of the lab."""
    name = draw(st.one_of(st.sampled_from(run_names), texts.filter(bool)))
    where = draw(st.sampled_from([*ENDPOINTS] * 3 + ["", "/", "/static/app.js", "/api/runs"]))
    right = ENDPOINTS.get(where, "GET")            # mostly the right method, to reach the code
    method = draw(st.one_of(st.just(right), st.just(right), st.sampled_from(METHODS)))
    if where in ENDPOINTS:
        path = f"/api/runs/{quote(name, safe='')}/{where}"
    else:
        path = where or "/" + quote(draw(texts), safe="/%")
    if draw(st.booleans()):
        query = draw(st.dictionaries(st.sampled_from(FIELDS), texts, max_size=5))
        raw = draw(st.binary(max_size=20))                         # bytes that are not UTF-8
        path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items()) + \
            ("&" + quote(raw) if raw else "")
    headers = {}
    kind = draw(st.one_of(st.just("application/json"), st.sampled_from(CONTENT_TYPES)))
    if kind is not None:
        headers["content-type"] = kind
    body = _body(draw(st.sampled_from(["fields"] * 6 + ["value", "raw", "deep", "huge-number",
                                                         "oversized", "empty"])), draw)
    return method, path, headers, body


def check_answer(client: httpx.Client, request: tuple) -> int:
    """Send `request`; assert the lab's rule for its answer; return the status."""
    method, path, headers, body = request
    with client.stream(method, path, headers=headers, content=body) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            assert r.status_code == 200
            next(r.iter_bytes(), None)                   # the first event, then drop the client
            return r.status_code
        content = r.read()
    assert r.status_code < 500, (request, r.status_code, content[:300])
    assert b"Traceback" not in content
    if r.status_code >= 400 and method != "HEAD":
        error = json.loads(content)
        assert isinstance(error, dict) and isinstance(error["error"], str), content[:300]
        assert "\n" not in error["error"]
    return r.status_code
