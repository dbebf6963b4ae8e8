"""The server's door: who may ask (Host, Origin, token), how much they may send, and the headers every answer has.

A plain ASGI middleware, so that it runs before any route, for every request, including ones no route matches.

- DNS rebinding: a page on another site whose name was made to resolve to 127.0.0.1 sends its own name as
  ``Host``. Only the names the server was bound to (and loopback names) pass; on a wildcard bind, IP literals pass
  too (rebinding needs a DNS name) and other names only when ``--allow-host`` lists them.
- Cross-site requests: a browser names the calling page in ``Origin``; it must be this server itself. No route
  answers CORS, so other sites cannot read what they send.
- Token: where one is set, a request carries it as ``Authorization: Bearer``, as the cookie the page sets, or once
  as ``?token=`` on the page's address, which sets the cookie and redirects to the address without it.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "featkit_token"  # + "_PORT": browsers keep one cookie jar for every port of a host
# a Host header as browsers send it: a name or an IPv4 address, or an IPv6 address in brackets, then the port
_HOST = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[1-9][0-9]{0,4}))?")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Pages, scripts and styles come from this server only; pictures also as blob: (the upload preview); no plugins,
# frames, inline scripts or form posts elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Door:
    """Who may come in.

    Attributes:
        host: the address the server is bound to.
        port: its port.
        token: the secret every request must carry, or None (only allowed on a loopback bind).
        allowed_hosts: more names a ``Host`` header may carry (a machine's DNS name, behind a proxy).
        max_body: bytes a request body may have (an upload with its multipart framing); more → 413.
    """

    host: str
    port: int
    token: str | None
    allowed_hosts: tuple[str, ...] = ()
    max_body: int = 20 * 2**20

    @property
    def cookie(self) -> str:
        return f"{COOKIE}_{self.port}"

    def host_allowed(self, header: str) -> bool:
        """Whether a ``Host`` header names this server (at its port)."""
        match = _HOST.fullmatch(header)
        if match is None or int(match["port"] or 80) != self.port:
            return False
        name = match["name"].strip("[]").lower()
        bound = self.host.strip("[]").lower()
        if name in LOOPBACK_NAMES or name == bound or name in (h.lower() for h in self.allowed_hosts):
            return True
        return is_wildcard(self.host) and _ip_literal(name)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a request's ``Origin`` is this server's own page: the Host it was sent to, over http or https.

        (https: the page behind a TLS proxy. The Host itself has passed :meth:`host_allowed`.)
        """
        return origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())

    def token_given(self, headers: dict[bytes, bytes], query: str) -> tuple[bool, bool]:
        """Whether a request carries the token, and whether it came in the query string.

        The cookie header is split by hand: other apps on this host (any port) set cookies too, some of which
        Python's cookie parser stops at, and any of several values of ours may be the right one.
        """
        assert self.token is not None
        token = self.token.encode()

        def right(value: str) -> bool:
            return hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token)

        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            return right(auth[7:]), False
        for pair in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = pair.partition("=")
            if name.strip() == self.cookie and right(value):
                return True, False
        given = parse_qs(query).get("token") or []
        return bool(given) and right(given[0]), bool(given)


class DoorMiddleware:
    """Refuses requests the :class:`Door` does not let in and adds the security headers to every response."""

    def __init__(self, app: ASGIApp, door: Door):
        self.app, self.door = app, door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.door.host_allowed(host):
            await _plain(send, 403, "This server answers only at its own address (the Host header names another).")
            return
        origin = headers.get(b"origin")
        if origin is not None and not self.door.origin_allowed(origin.decode("latin-1"), host):
            await _plain(send, 403, "Requests from other sites are refused.")
            return
        if self.door.token is not None:
            query = scope.get("query_string", b"").decode("latin-1")
            good, in_query = self.door.token_given(headers, query)
            if not good:
                await _plain(send, 401, "This server needs its token: open the address it printed "
                                        "(…/?token=…), or send Authorization: Bearer TOKEN.")
                return
            if in_query and scope["method"] == "GET" and scope["path"] == "/":
                await _redirect_setting_cookie(send, self.door.cookie, self.door.token)
                return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.door.max_body):
            await _plain(send, 413, f"The request is larger than this server's limit of {_mb(self.door.max_body)}.")
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, secured)


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in raw:
        out.setdefault(key.lower(), value)  # the first of repeated headers
    return out


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


async def _redirect_setting_cookie(send: Send, name: str, token: str) -> None:
    cookie = f"{name}={token}; Path=/; HttpOnly; SameSite=Strict".encode()
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", b"/"), (b"set-cookie", cookie), (b"content-length", b"0"),
                            *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": b""})
