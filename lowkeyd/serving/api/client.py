"""A client of the running daemon's local API, for ``lowkeyd cloak`` and other Python callers.

The daemon keeps the models loaded, so a photo sent to it is done in seconds
rather than after a model load. When no daemon answers, the client raises
:class:`DaemonUnavailable`, the signal to do the work in process instead.

By default it talks to the daemon's Unix socket in the runtime dir;
``LOWKEYD_URL`` (with ``LOWKEYD_API_TOKEN``) points it at a daemon's TCP port,
e.g. a GPU box on the LAN.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from lowkeyd.serving.api.wire import SUMMARY_HEADER, Job, Status, Summary, first_problem
from lowkeyd.errors import EngineError, LowkeydError, PhotoError
from lowkeyd.paths import runtime_dir
from lowkeyd.photo.atomic import atomic_write
from lowkeyd.pipeline import Outcome

API_SOCKET_NAME = "api.sock"
URL_ENV = "LOWKEYD_URL"
TOKEN_ENV = "LOWKEYD_API_TOKEN"
# A retried upload with the same key is not cloaked twice where the server keeps answers (lowkeyd serve).
IDEMPOTENCY_HEADER = "Idempotency-Key"
STATUS_PAGE_LOGIN = "/v1/status-page/login"
# Waiting for room in a busy daemon's queue: at most this many tries, each after its Retry-After.
BUSY_TRIES = 5
MAX_RETRY_WAIT = 60.0


Answer = TypeVar("Answer", bound=BaseModel)


class DaemonUnavailable(LowkeydError):
    """No daemon answers: the caller should do the work itself."""


class DaemonBusy(LowkeydError):
    """The daemon's queue stayed full."""


def default_socket_path() -> Path:
    """Where the daemon serves its API, and where clients look for it."""
    return runtime_dir() / API_SOCKET_NAME


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(MAX_RETRY_WAIT, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise LowkeydError(f"cannot use {ca_file} as the CA file: {getattr(exc, 'strerror', None) or exc}") from None


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip() or response.reason_phrase


class DaemonClient:
    def __init__(
        self,
        *,
        socket_path: Path | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 600.0,
        ca_file: Path | None = None,
    ) -> None:
        """``url`` (TCP, with ``token``) or ``socket_path``; neither means the environment's choice.

        An ``https://`` URL's certificate is checked against ``ca_file`` when given (a self-signed
        service's own certificate, say), else against the system's CAs.
        """
        if url is None and socket_path is None:
            url = os.environ.get(URL_ENV) or None
            token = token or os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Connecting is quick or impossible; only the answer may take a while (a photo being cloaked).
        timeouts = httpx.Timeout(timeout, connect=5.0)
        if url is not None:
            self.where = url
            self._http = httpx.Client(base_url=url, headers=headers, timeout=timeouts, verify=_verify(ca_file))
        else:
            path = socket_path or default_socket_path()
            self.where = str(path)
            transport = httpx.HTTPTransport(uds=str(path))
            # The host name is only what goes in the Host header; the socket is what is connected to.
            self._http = httpx.Client(transport=transport, base_url="http://lowkeyd", headers=headers, timeout=timeouts)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            # No socket, nothing listening, or a daemon that went away mid-request.
            raise DaemonUnavailable(f"no lowkeyd daemon answers on {self.where} ({exc})") from None
        except httpx.TimeoutException:
            raise LowkeydError(f"the lowkeyd daemon on {self.where} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise LowkeydError(f"talking to the lowkeyd daemon on {self.where} failed: {exc}") from None

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        message = _error_message(response)
        if response.status_code == 401:
            raise LowkeydError(f"the lowkeyd daemon on {self.where} refused the token: {message}")
        if response.status_code in (413, 415):
            raise PhotoError(message)
        if response.status_code == 422:
            raise EngineError(message)
        raise LowkeydError(f"the lowkeyd daemon answered {response.status_code}: {message}")

    def _read(self, model: type[Answer], sent: str | bytes, what: str) -> Answer:
        """An answer validated: a daemon of another version may send what this one cannot read."""
        try:
            return model.model_validate_json(sent)
        except ValidationError as exc:
            raise LowkeydError(
                f"the lowkeyd daemon on {self.where} sent {what} this lowkeyd cannot read: {first_problem(exc)}"
            ) from None

    def _json(self, model: type[Answer], what: str, method: str, path: str, **kwargs: Any) -> Answer:
        return self._read(model, self._check(self._request(method, path, **kwargs)).content, what)

    def status(self) -> Status:
        return self._json(Status, "a status", "GET", "/v1/status")

    def cloak_bytes(self, data: bytes, *, timeout: float | None = None) -> tuple[bytes | None, Summary]:
        """The cloaked photo (same format; None when the daemon's no-face policy skips it) and its summary.

        Waits (as the daemon's Retry-After says) while the queue is full, a few times, then raises :class:`DaemonBusy`.
        Every try names the upload by its content hash (``Idempotency-Key``): a service that kept the answer of
        an earlier try replays it instead of cloaking the photo again.
        """
        params = {} if timeout is None else {"timeout": timeout}
        headers = {"Content-Type": "application/octet-stream", IDEMPOTENCY_HEADER: hashlib.sha256(data).hexdigest()}
        for attempt in range(BUSY_TRIES):
            response = self._request("POST", "/v1/cloak", content=data, params=params, headers=headers)
            if response.status_code not in (429, 503):
                break
            if attempt < BUSY_TRIES - 1:
                time.sleep(_retry_after(response))
        else:
            raise DaemonBusy(f"the lowkeyd daemon on {self.where} stayed busy: {_error_message(response)}")
        self._check(response)
        sent = response.headers.get(SUMMARY_HEADER)
        if sent is None:
            raise LowkeydError(f"the lowkeyd daemon on {self.where} answered without its {SUMMARY_HEADER} header")
        return (None if response.status_code == 204 else response.content), self._read(Summary, sent, "a summary")

    def submit_job(self, path: Path) -> Job:
        """Queue ``path`` (under one of the daemon's job roots) to be cloaked into the outbox."""
        return self._json(Job, "a job", "POST", "/v1/jobs", json={"path": str(path)})

    def job(self, job_id: str) -> Job:
        return self._json(Job, "a job", "GET", f"/v1/jobs/{job_id}")

    def status_page_login(self) -> str:
        """A one-time URL that signs a browser in to the daemon's status page."""
        return str(self._check(self._request("POST", STATUS_PAGE_LOGIN)).json()["url"])


def find_daemon(timeout: float = 600.0) -> DaemonClient | None:
    """A client of the daemon the environment points at, or None when none answers."""
    client = DaemonClient(timeout=timeout)
    try:
        client.status()
    except DaemonUnavailable:
        client.close()
        return None
    except LowkeydError:
        client.close()
        raise
    return client


class DaemonProtector:
    """:class:`~lowkeyd.pipeline.PhotoProtector`'s ``protect_bytes`` and ``protect_file``, done by the daemon.

    The daemon's own settings apply (its preset, GPS and no-face policies); the
    outcomes carry no per-face reports, which stay in the daemon's summaries.
    """

    def __init__(self, client: DaemonClient) -> None:
        self.client = client

    def protect_bytes(self, data: bytes) -> tuple[bytes | None, Outcome]:
        cloaked, summary = self.client.cloak_bytes(data)
        return cloaked, outcome_of(summary, None)

    def protect_file(self, src: Path, dest: Path) -> Outcome:
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise PhotoError(f"{src}: cannot read ({exc.strerror or exc})") from None
        cloaked, summary = self.client.cloak_bytes(data)
        if cloaked is not None:
            atomic_write(dest, cloaked, like=src.stat())
        return outcome_of(summary, None if cloaked is None else dest)


def outcome_of(summary: Summary, written: Path | None, sha256: str | None = None) -> Outcome:
    """The :class:`~lowkeyd.pipeline.Outcome` an API summary describes (without per-face reports)."""
    return Outcome(
        status=summary.status,
        faces_cloaked=summary.faces_cloaked,
        faces_too_small=summary.faces_too_small,
        seconds=summary.seconds,
        written=written,
        message=summary.message,
        preset=summary.preset_settings,
        sha256=sha256,
    )
