"""Who may call the lab, and what every answer carries: the rules of Jupyter Server and of the
web frameworks, as one ASGI middleware in front of the app.

- Host: only a loopback name or address with the lab's own port (DNS rebinding sends the
  attacker's name), plus the names the user allowed with `--allow-host`.
- Cross-site: an API request a browser marks as coming from another site (`Sec-Fetch-Site`,
  `Origin`) is refused; a cross-site POST can carry no `application/json` body without a CORS
  preflight, which the lab never grants, so writes must be `application/json`.
- Headers: a strict Content-Security-Policy (the page's own files only; Trusted Types make the
  browser itself refuse any string parsed as HTML), nosniff, no referrer, no framing.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
       "require-trusted-types-for 'script'; trusted-types 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()),
           (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY"),
           (b"cross-origin-resource-policy", b"same-origin")]
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def is_loopback(name: str) -> bool:
    """'localhost', 127.0.0.0/8 or ::1 (brackets allowed)."""
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """'name:port' / '[v6]:port' / 'name' → (lower-case name, port or None); ValueError if
    the value is not a host."""
    if value.count(":") > 1 and not value.startswith("["):       # a bare IPv6 address
        return str(ipaddress.ip_address(value)), None
    parts = urlsplit("//" + value)
    if not parts.hostname or parts.path or parts.query or parts.fragment or "@" in value:
        raise ValueError(value)
    return parts.hostname.lower(), parts.port


@dataclass(frozen=True)
class HostRule:
    """The Host names the lab answers, at its port: loopback always, `names` besides, or any."""
    port: int
    names: frozenset = frozenset()
    any_host: bool = False

    def allows(self, host: str) -> bool:
        try:
            name, port = split_host(host)
        except ValueError:
            return False
        if self.any_host:
            return True
        return (port or 80) == self.port and (is_loopback(name) or name in self.names)

    def allows_origin(self, origin: str) -> bool:
        parts = urlsplit(origin)
        return parts.scheme == "http" and bool(parts.netloc) and self.allows(parts.netloc)


class Guard:
    """ASGI middleware: refuses what `rule` does not allow, adds HEADERS to every answer."""

    def __init__(self, app, rule: HostRule):
        self.app, self.rule = app, rule

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)
        refusal = self.refusal(scope)
        if refusal is None:
            return await self.app(scope, receive, send_with_headers)
        status, text = refusal
        body = json.dumps({"error": text}).encode()
        await send_with_headers({"type": "http.response.start", "status": status,
                                 "headers": [(b"content-type", b"application/json"),
                                             (b"content-length", str(len(body)).encode())]})
        await send_with_headers({"type": "http.response.body", "body": body})

    def refusal(self, scope) -> tuple[int, str] | None:
        """(status, one line) for a request the lab does not answer, else None."""
        headers = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        host = headers.get("host")
        if host is None or not self.rule.allows(host):
            return 403, (f"the lab answers only requests for this machine (Host "
                         f"{host!r} is not one of its names at port {self.rule.port}); start "
                         "it with --host and --allow-host NAME to serve other names")
        if not scope["path"].startswith("/api/"):
            return None
        origin = headers.get("origin")
        if origin is not None and not self.rule.allows_origin(origin):
            return 403, f"cross-origin requests are refused (Origin {origin!r})"
        if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, "cross-site requests are refused"
        if scope["method"] in WRITES:
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return 415, (f"the body must be sent as application/json, not "
                             f"{kind or 'no content type'}")
        return None
