"""Who may see the status page: whoever `lowkeyd open` let in, in that browser only.

The page listens on loopback TCP, which every local user can connect to, so
the port is no secret and every request is checked. `lowkeyd open` asks the
daemon, over its API socket (0600: only the daemon's user gets in), for a
one-time login token; the browser trades it at ``/login`` for a session
cookie (HttpOnly, SameSite=Strict). The few actions (retry, cloak stronger, pause, resume)
are POSTs carrying a CSRF token derived from the session, and their Origin,
when the browser sends one, must be the page's own (``null`` is not: the page's
Referrer-Policy, in :mod:`.app`, says why). The Host header must name the
loopback address itself, which turns away DNS-rebinding pages.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection, Request

COOKIE = "lowkeyd_session"
# The page's forms carry a few short fields; anything longer is not one of them.
MAX_FORM_BYTES = 16 * 1024
LOGIN_SECONDS = 120.0  # a login URL not opened by then is void
SESSION_SECONDS = 12 * 3600.0


class Gate:
    """One-time login tokens, sessions and their CSRF tokens; in memory, so a restart signs everyone out."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._logins: dict[str, float] = {}
        self._sessions: dict[str, float] = {}
        self._lock = threading.Lock()
        self.hosts: frozenset[str] = frozenset()

    def allow_hosts(self, host: str, port: int) -> None:
        """The Host headers a browser sends for this address (``localhost`` too, when the address is loopback)."""
        names = {f"[{host}]" if ":" in host else host}
        if host in ("127.0.0.1", "::1"):
            names.add("localhost")
        self.hosts = frozenset(f"{name}:{port}" for name in names)

    def new_login(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._forget_expired()
            self._logins[token] = time.monotonic() + LOGIN_SECONDS
        return token

    def use_login(self, token: str) -> str | None:
        """A new session for a valid, unused login token (which is spent either way); None for any other."""
        with self._lock:
            self._forget_expired()
            if self._logins.pop(token, None) is None:
                return None
            session = secrets.token_urlsafe(32)
            self._sessions[session] = time.monotonic() + SESSION_SECONDS
            return session

    def end(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for book in (self._logins, self._sessions):
            for token in [t for t, until in book.items() if until < now]:
                del book[token]

    def session(self, connection: HTTPConnection) -> str | None:
        """The request's live session, or None."""
        given = connection.cookies.get(COOKIE, "")
        with self._lock:
            until = self._sessions.get(given) if given else None
        return given if until is not None and until >= time.monotonic() else None

    def host_ok(self, connection: HTTPConnection) -> bool:
        return connection.headers.get("host", "") in self.hosts

    def csrf_token(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    async def csrf_ok(self, request: Request, session: str) -> bool:
        origin = request.headers.get("origin")
        if origin is not None and origin not in _origins(self.hosts):
            return False
        given = (await read_form(request)).get("csrf", "")
        return hmac.compare_digest(given.encode(), self.csrf_token(session).encode())


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (first value of each); empty for anything else or anything too long."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = await request.body()  # Starlette keeps it: the handler reading the form again gets the same
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: values[0] for name, values in fields.items()}


def _origins(hosts: Iterable[str]) -> set[str]:
    return {f"http://{host}" for host in hosts}
