"""Serving the local API: a Unix socket only its user can open, and optionally loopback TCP with a token.

The socket (``api.sock`` in the runtime dir) is the default: file permissions
(0600) decide who may use it, so it needs no token. TCP is for clients that
cannot open a socket file, a container's port, or a GPU box other machines on
the LAN send photos to: it always needs a bearer token, and it binds only a
loopback address unless the config explicitly allows others.

uvicorn runs in one thread of its own with its own event loop; the daemon's
main thread keeps its signal handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import uvicorn
from starlette.types import ASGIApp

from lowkeyd.errors import ConfigError, LowkeydError
from lowkeyd.paths import config_dir
from lowkeyd.serving.api.client import API_SOCKET_NAME, TOKEN_ENV
from lowkeyd.serving.api.routes import LocalApi

log = logging.getLogger(__name__)

TOKEN_FILE_NAME = "api-token"
# A shorter token is guessable; token_urlsafe(32) gives 43 characters.
MIN_TOKEN_LENGTH = 16
_THREAD_TIMEOUT = 10.0


class ApiError(LowkeydError):
    """The API cannot be served (address in use, socket path unusable)."""


def default_token_path() -> Path:
    return config_dir() / TOKEN_FILE_NAME


def token_source(token_file: Path | None = None) -> str:
    """Where :func:`load_token` takes the token from: ``$LOWKEYD_API_TOKEN``, or the token file's path."""
    return f"${TOKEN_ENV}" if TOKEN_ENV in os.environ else str(token_file or default_token_path())


def load_token(token_file: Path | None = None, *, create: bool = True) -> str:
    """The TCP token: ``$LOWKEYD_API_TOKEN``, else the token file (created, 0600, when missing and ``create``)."""
    token = os.environ.get(TOKEN_ENV)
    origin = token_source(token_file)
    if token is None:
        path = token_file or default_token_path()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            if not create:
                raise ConfigError(f"no API token: {path} does not exist (set {TOKEN_ENV}, or name a token file)") from None
            token = _create_token(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the API token file {path}: {exc}") from None
        else:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("the API token file %s is readable by other users: chmod 600 it", path)
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the API token in {origin} is too short (at least {MIN_TOKEN_LENGTH} characters)")
    return token


def _create_token(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL with 0600 from the start: the secret is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"no API token: cannot create {path} ({exc.strerror or exc}); set {TOKEN_ENV} or api.tcp.token_file"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.info("created the API token in %s (give it to the clients that use the TCP port)", path)
    return token


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening socket at ``path`` that only this user can connect to (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and _answers(path):
        raise ApiError(f"another lowkeyd already serves its API on {path}")
    # bind() creates the file with the umask's permissions: do it in a private folder, make it 0600,
    # then rename it into place, so no other user can ever connect.
    private = Path(tempfile.mkdtemp(prefix=".api-", dir=path.parent))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(private / API_SOCKET_NAME))
        os.chmod(private / API_SOCKET_NAME, 0o600)
        os.replace(private / API_SOCKET_NAME, path)
    except OSError as exc:
        sock.close()
        raise ApiError(f"cannot serve the API on {path}: {exc.strerror or exc}") from None
    finally:
        os.rmdir(private)
    sock.listen(128)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise ApiError(f"cannot serve the API on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@dataclass(frozen=True)
class TcpListener:
    host: str
    port: int
    token: str


class Page(Protocol):
    """A browser page served beside the API on a loopback port of its own (the daemon's status page)."""

    host: str
    port: int

    def serving_at(self, host: str, port: int) -> None: ...

    def app(self) -> ASGIApp: ...


class ApiServer:
    """The API on its listeners, in a thread; :meth:`start` binds (errors reach the caller), :meth:`stop` unbinds."""

    def __init__(
        self,
        api: LocalApi,
        *,
        socket_path: Path | None = None,
        tcp: TcpListener | None = None,
        max_connections: int = 64,
        page: Page | None = None,
    ) -> None:
        self.api = api
        self.page = page
        self.socket_path = socket_path
        self.tcp = tcp
        self.max_connections = max_connections
        self._servers: list[tuple[uvicorn.Server, socket.socket]] = []
        self._thread: threading.Thread | None = None
        self._socket_inode: int | None = None
        self.tcp_address: tuple[str, int] | None = None

    def _server(self, app: ASGIApp) -> uvicorn.Server:
        config = uvicorn.Config(
            app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            server_header=False,
            # Past this many open connections uvicorn answers 503 itself: bodies in memory stay bounded.
            limit_concurrency=self.max_connections,
            timeout_graceful_shutdown=2,
        )
        return uvicorn.Server(config)

    def start(self) -> None:
        try:
            self._bind()
        except BaseException:
            self.stop()  # nothing half-started left behind: the socket file goes too
            raise
        if not self._servers:
            return
        self._thread = threading.Thread(target=self._serve, name="lowkeyd-api", daemon=True)
        self._thread.start()
        if not self._wait_started():
            self.stop()
            raise ApiError("the API server did not start")
        if self.socket_path is not None:
            log.info("API on %s", self.socket_path)
        if self.tcp_address is not None:
            log.info("API on http://%s:%d (bearer token required)", *self.tcp_address)

    def _bind(self) -> None:
        if self.socket_path is not None:
            sock = bind_unix_socket(self.socket_path)
            self._socket_inode = self.socket_path.stat().st_ino
            self._servers.append((self._server(self.api.app(None)), sock))
        if self.tcp is not None:
            sock = bind_tcp(self.tcp.host, self.tcp.port)
            self.tcp_address = sock.getsockname()[:2]
            self._servers.append((self._server(self.api.app(self.tcp.token)), sock))
        if self.page is not None:
            # The status page: loopback only, whatever the API's TCP settings; it checks its own sessions.
            sock = bind_tcp(self.page.host, self.page.port)
            self.page.serving_at(*sock.getsockname()[:2])
            self._servers.append((self._server(self.page.app()), sock))

    def _serve(self) -> None:
        async def serve_all() -> None:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in self._servers))

        asyncio.run(serve_all())

    def _wait_started(self) -> bool:
        deadline = time.monotonic() + _THREAD_TIMEOUT
        while not all(server.started for server, _ in self._servers):
            if self._thread is None or not self._thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        for server, _ in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(_THREAD_TIMEOUT)
        self._close_sockets()
        # Remove the socket file only while it is still ours (not a newer daemon's).
        if self.socket_path is not None and self._socket_inode is not None:
            try:
                if self.socket_path.stat().st_ino == self._socket_inode:
                    self.socket_path.unlink()
            except FileNotFoundError:
                pass

    def _close_sockets(self) -> None:
        for _, sock in self._servers:
            sock.close()
