"""Who may call the lab, over real HTTP: loopback names at the lab's port only, no cross-site
requests, JSON writes only, the security headers on every answer, and `--allow-host`."""
import signal

import httpx
import pytest

from test_lab import runs, server, start_lab  # noqa: F401  (the shared fixtures)

HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.parametrize("method,path,kwargs", [
    ("get", "/", {}), ("get", "/static/app.js", {}), ("get", "/static/nope.js", {}),
    ("get", "/api/runs", {}), ("get", "/api/runs/nope/metrics", {}),
    ("post", "/api/runs/chapter/score", {"json": {"text": ""}}),
    ("post", "/api/runs/chapter/score",
     {"content": b"x", "headers": {"content-type": "text/plain"}}),
    ("get", "/api/runs", {"headers": {"host": "evil.example"}}),
])
def test_every_answer_carries_a_strict_csp_and_the_security_headers(method, path, kwargs,
                                                                    server):  # noqa: F811
    r = getattr(httpx, method)(server + path, **kwargs)
    for name, value in HEADERS.items():
        assert r.headers[name] == value
    csp = dict(part.strip().split(" ", 1)
               for part in r.headers["content-security-policy"].split(";"))
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and csp["default-src"] == "'none'"
    assert "unsafe" not in r.headers["content-security-policy"]
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("host,status", [
    ("{port}", 200), ("127.0.0.1:{port}", 200), ("localhost:{port}", 200),
    ("[::1]:{port}", 200), ("127.0.0.2:{port}", 200),
    ("evil.example:{port}", 403), ("evil.example", 403), ("127.0.0.1", 403),
    ("127.0.0.1:1", 403), ("localhost.evil.example:{port}", 403), ("user@127.0.0.1:{port}", 403),
    ("", 403),
])
def test_only_loopback_names_at_the_labs_port_are_answered(host, status, server):  # noqa: F811
    host = host.format(port=_port(server))
    if host.isdigit():
        host = f"127.0.0.1:{host}"
    r = httpx.get(server + "/api/runs", headers={"host": host})
    assert r.status_code == status
    if status == 403:
        assert "only requests for this machine" in r.json()["error"]
        assert "\n" not in r.json()["error"]
    r = httpx.get(server + "/", headers={"host": host})
    assert r.status_code == status                       # the page too: DNS rebinding


@pytest.mark.parametrize("headers,status,message", [
    ({"content-type": "text/plain"}, 415, "application/json"),
    ({"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"content-type": "multipart/form-data; boundary=x"}, 415, "application/json"),
    ({}, 415, "no content type"),
    ({"content-type": "application/json; charset=utf-8"}, 200, None),
    ({"content-type": "application/json", "origin": "http://evil.example"}, 403, "Origin"),
    ({"content-type": "application/json", "origin": "null"}, 403, "Origin"),
    ({"content-type": "application/json", "sec-fetch-site": "cross-site"}, 403, "cross-site"),
    ({"content-type": "application/json", "sec-fetch-site": "same-site"}, 403, "cross-site"),
    ({"content-type": "application/json", "sec-fetch-site": "same-origin",
      "origin": "http://127.0.0.1:{port}"}, 200, None),
])
def test_cross_site_writes_are_refused(headers, status, message, server):  # noqa: F811
    headers = {k: v.format(port=_port(server)) for k, v in headers.items()}
    r = httpx.post(server + "/api/runs/chapter/generate", content=b'{"num_chars": 5}',
                   headers=headers)
    assert r.status_code == status
    if message:
        assert message in r.json()["error"]


def test_a_cross_site_get_starts_no_model_work(server):  # noqa: F811
    # <img src=http://127.0.0.1:8000/api/runs/x/stream> from another site: the browser says so
    r = httpx.get(server + "/api/runs/chapter/stream?num_chars=5",
                  headers={"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    assert httpx.get(server + "/", headers={"sec-fetch-site": "cross-site"}).status_code == 200


def test_a_preflight_is_never_granted(server):  # noqa: F811
    r = httpx.options(server + "/api/runs/chapter/generate",
                      headers={"origin": "http://evil.example",
                               "access-control-request-method": "POST"})
    assert r.status_code in (403, 405)
    assert not any(k.startswith("access-control-") for k in r.headers)


def test_other_names_are_answered_only_when_the_user_allows_them(runs):  # noqa: F811
    proc, url = start_lab(runs[0], host="0.0.0.0", args=["--allow-host", "lab.example"])
    try:
        port = _port(url)
        get = lambda host: httpx.get(f"http://127.0.0.1:{port}/api/runs",  # noqa: E731
                                     headers={"host": host}).status_code
        assert get(f"lab.example:{port}") == 200 and get(f"LAB.example:{port}") == 200
        assert get(f"127.0.0.1:{port}") == 200 and get(f"0.0.0.0:{port}") == 200
        assert get(f"other.example:{port}") == 403
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert "anyone who can reach this machine" in proc.stderr.read()
    proc, url = start_lab(runs[0], host="0.0.0.0", args=["--allow-host", "*"])
    try:
        assert httpx.get(f"http://127.0.0.1:{_port(url)}/api/runs",
                         headers={"host": "any.example"}).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert "DNS rebinding" in proc.stderr.read()


def test_a_bad_allow_host_is_one_usage_line(runs, capsys):  # noqa: F811
    from rnnkit.cli import main
    assert main(["serve", str(runs[0]), "--allow-host", "a/b"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
