"""The status page itself: its routes, served by the daemon on a loopback port next to its API.

Plain server-rendered HTML (Jinja2 templates and a stylesheet shipped in the
package; one small script for the before/after slider, the only thing that
needs JavaScript). Every request passes :class:`Guard` first; see
:mod:`.auth` for who gets in.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lowkeyd.daemon.candidate import inspect
from lowkeyd.daemon.state import FileRecord, StateDB, Status
from lowkeyd.daemon.status_page.auth import COOKIE, SESSION_SECONDS, Gate, read_form
from lowkeyd.daemon.status_page.images import (
    DIFF_GAIN,
    KINDS,
    PictureCache,
    PictureUnavailable,
)
from lowkeyd.daemon.status_page.journal import Journal, PhotoDetail
from lowkeyd.daemon.status_page.records import FILTERS, Records, local_midnight
from lowkeyd.engine.transfer import transfer_estimate
from lowkeyd.paths import state_dir
from lowkeyd.serving.api.client import STATUS_PAGE_LOGIN
from lowkeyd.serving.reading import Refused

if TYPE_CHECKING:
    from lowkeyd.engine.presets import Preset
    from lowkeyd.serving.worker import Worker
    from lowkeyd.pipeline import Outcome

log = logging.getLogger(__name__)

PER_PAGE = 24
CACHE_NAME = "status-page-cache"
STATUS_LABELS = {
    "cloaked": "cloaked",
    "no_face": "no face",
    "already_cloaked": "already cloaked",
    "failed": "failed",
    "held": "held back",
    "retry": "waiting to retry",
    "waiting": "queued or being cloaked",
}
# Pages only ever load what they serve themselves; nothing else may frame or script them.
_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# Every response's, unless it sets its own (a picture's Cache-Control).
_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the page's own form
    # POSTs, and the CSRF check cannot tell those from a POST of a page that hides its origin on purpose
    # (its own no-referrer, a sandboxed frame). With same-origin the page's forms carry its real origin, so
    # both checks keep their force: the token and an Origin that must be the page's own. A Referer goes
    # only to the page itself, and the page links nowhere else.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    # Another site (another loopback port is one) may not embed a picture or page of this one: a private
    # thumbnail loaded with the user's cookie would tell it which photos exist and their sizes.
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
# A face in a picture's URL: its number, in ASCII digits ("²" is a digit to str.isdigit, not to int).
_FACE = re.compile(r"[1-9][0-9]{0,3}")


class Guard:
    """Every request: the Host must be the page's own, and all but ``/login`` need a live session."""

    def __init__(self, app: ASGIApp, gate: Gate, refuse: Callable[[int, str], Response]) -> None:
        self.app = app
        self.gate = gate
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        request = Request(scope)
        if not self.gate.host_ok(request):
            response = self.refuse(403, "This page answers only at its own loopback address.")
        elif scope["path"] != "/login" and self.gate.session(request) is None:
            response = self.refuse(401, "Not signed in, or the session has ended: run `lowkeyd open` to open this page.")
        else:
            await self.app(scope, receive, with_headers)
            return
        await response(scope, receive, with_headers)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _status_of(record: FileRecord) -> str:
    """The record's status as the page's filters name it."""
    if record.status is Status.DONE:
        return record.outcome or "cloaked"
    if record.status in (Status.QUEUED, Status.PROCESSING, Status.STRONGER):
        return "waiting"
    return record.status.value


class StatusPage:
    """The page's state and app; the daemon gives it its state database, worker and folders.

    ``stronger`` is the attack "Cloak stronger" runs on a held photo (None: the daemon has none).
    """

    def __init__(
        self,
        *,
        state: StateDB,
        worker: Worker[Any],
        roots: dict[str, Path],
        outbox: Path,
        journal: Journal | None = None,
        cache: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        stronger: Preset | None = None,
    ) -> None:
        self.state = state
        self.stronger = stronger
        self.worker = worker
        self.roots = roots
        self.outbox = outbox
        self.journal = journal or Journal(state.path)
        self.records = Records(state.path)
        self.pictures = PictureCache(cache or state_dir() / CACHE_NAME)
        self.host = host
        self.port = port
        self.gate = Gate()
        self.url: str | None = None
        self._templates = Environment(
            loader=PackageLoader("lowkeyd.daemon.status_page", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters.update(when=_when, duration=_duration, status_of=_status_of, pathq=_path_quote)
        self._templates.globals.update(labels=STATUS_LABELS, kinds=KINDS, stronger=stronger and stronger.name)

    # ---- wiring

    def serving_at(self, host: str, port: int) -> None:
        """Where the API server bound the page (the port may have been chosen by the system)."""
        self.host, self.port = host, port
        self.gate.allow_hosts(host, port)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        log.info("status page on %s (open it with `lowkeyd open`)", self.url)

    def record(self, source: str, rel_path: str, outcome: Outcome) -> None:
        """Keep what the page shows of a published photo (called in the worker thread)."""
        try:
            self.journal.record(source, rel_path, outcome)
        except Exception as exc:  # the page missing a photo's details must never fail its publishing
            log.warning("status page: cannot record %s/%s: %s", source, rel_path, exc)

    def close(self) -> None:
        self.records.close()
        self.journal.close()

    def api_routes(self) -> list[Route]:
        """The route on the daemon's API that `lowkeyd open` asks for a login URL."""

        async def login_url(request: Request) -> Response:
            if self.url is None:
                return JSONResponse({"error": "the status page is not being served"}, status_code=503)
            return JSONResponse({"url": f"{self.url}/login?{urlencode({'token': self.gate.new_login()})}"})

        return [Route(STATUS_PAGE_LOGIN, login_url, methods=["POST"])]

    def app(self) -> ASGIApp:
        routes = [
            Route("/login", self._login, methods=["GET"]),
            Route("/logout", self._logout, methods=["POST"]),
            Route("/", self._overview, methods=["GET"]),
            Route("/photos", self._photos, methods=["GET"]),
            Route("/photo/{source}/{path:path}", self._photo, methods=["GET"]),
            Route("/picture/{kind}/{source}/{path:path}", self._picture, methods=["GET"]),
            Route("/retry", self._retry, methods=["POST"]),
            Route("/stronger", self._cloak_stronger, methods=["POST"]),
            Route("/pause", self._pause, methods=["POST"]),
            Route("/resume", self._pause, methods=["POST"]),
            Mount("/static", StaticFiles(packages=[("lowkeyd.daemon.status_page", "static")]), name="static"),
        ]
        return Guard(Starlette(routes=routes), self.gate, self._refusal)

    # ---- rendering

    def _html(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        body = self._templates.get_template(template).render(paused=self.worker.paused, **context)
        return HTMLResponse(body, status_code=status_code)

    def _page(self, request: Request, template: str, **context: Any) -> HTMLResponse:
        session = self.gate.session(request)
        assert session is not None  # the Guard let it in
        return self._html(template, csrf=self.gate.csrf_token(session), path=request.url.path, **context)

    def _refusal(self, status_code: int, message: str) -> Response:
        return self._html("refused.html", status_code, message=message, code=status_code)

    # ---- signing in

    async def _login(self, request: Request) -> Response:
        session = self.gate.use_login(request.query_params.get("token", ""))
        if session is None:
            return self._refusal(403, "This login link was used already or has expired: run `lowkeyd open` again.")
        # A page, not a redirect: a SameSite=Strict cookie set while arriving from outside is sent with the
        # page's own next navigation, not with a redirect in the same chain.
        response = self._html("signed_in.html", next=_back(request.query_params.get("next")))
        response.set_cookie(
            COOKIE, session, max_age=int(SESSION_SECONDS), path="/", httponly=True, samesite="strict"
        )
        return response

    async def _logout(self, request: Request) -> Response:
        session = await self._checked(request)
        if isinstance(session, Response):
            return session
        self.gate.end(session)
        response = self._refusal(401, "Signed out. Run `lowkeyd open` to open this page again.")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def _checked(self, request: Request) -> str | Response:
        """The session of a POST whose CSRF token and origin are right, else the refusal to answer."""
        session = self.gate.session(request)
        assert session is not None
        if not await self.gate.csrf_ok(request, session):
            return self._refusal(403, "The form was not sent from this page (CSRF check failed): reload and try again.")
        return session

    # ---- pages

    async def _overview(self, request: Request) -> Response:
        def gather() -> dict[str, Any]:
            return {
                "today": self.records.totals(local_midnight()),
                "week": self.records.totals(time.time() - 7 * 86400),
                "ever": self.records.totals(0),
                "counts": self.state.counts(),
                "aside": self.state.published_aside(),
                "left_alone": self.state.event_counts().get("left_alone", 0),
                "working": self.records.in_progress(),
                "failures": self.records.failures(),
                "busy": self.worker.busy,
            }

        return self._page(request, "overview.html", **await run_in_threadpool(gather))

    async def _photos(self, request: Request) -> Response:
        source = request.query_params.get("source") or None
        status = request.query_params.get("status") or None
        if status is not None and status not in FILTERS:
            status = None
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            number = 1
        page = await run_in_threadpool(
            self.records.recent, page=number, per_page=PER_PAGE, source=source, status=status
        )
        filters = {k: v for k, v in (("source", source), ("status", status)) if v}
        return self._page(
            request, "photos.html", page=page, source=source, status=status, sources=self.records.sources(),
            filters=filters, query=lambda **extra: urlencode({**filters, **extra}),
            gone={(r.source, r.rel_path) for r in page.records if self._original(r)[1] == _GONE},
        )

    async def _photo(self, request: Request) -> Response:
        record = self._record(request)
        if isinstance(record, Response):
            return record
        detail = self._detail(record) if record.status is Status.DONE else None
        estimate = transfer_estimate(detail.preset, face_sizes=[f.size for f in detail.faces]) if detail else None
        original, not_shown = self._original(record)
        return self._page(
            request, "photo.html", record=record, detail=detail, estimate=estimate, faces=detail.faces if detail else (),
            original_exists=original is not None, original_gone=not_shown == _GONE, original_problem=not_shown,
            cloaked_exists=self._output(record) is not None, gain=DIFF_GAIN,
        )

    async def _picture(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in KINDS:
            return self._refusal(404, f"No such picture: {kind}.")
        record = self._record(request)
        if isinstance(record, Response):
            return record
        box = None
        face = request.query_params.get("face")
        if face is not None:
            detail = self._detail(record)
            if detail is None or not _FACE.fullmatch(face) or int(face) > len(detail.faces):
                return self._refusal(404, "No such face in this photo.")
            box = detail.faces[int(face) - 1].box
        original, not_shown = self._original(record)
        if original is None and kind in ("original", "diff"):
            return self._refusal(404, f"No picture of the original: {not_shown}.")
        try:
            picture = await run_in_threadpool(self.pictures.get, kind, original, self._output(record), box)
        except PictureUnavailable as exc:
            return self._refusal(404, f"No picture: {exc}.")
        # Private: the browser may keep it for this session, no proxy may.
        return Response(picture.data, media_type=picture.media_type, headers={"Cache-Control": "private, max-age=300"})

    # ---- actions

    async def _photo_action(
        self, request: Request, act: Callable[[str, str], bool], what: str, refused: str
    ) -> Response:
        """A form's action on one photo (its ``source`` and ``path``); ``act`` is False where it does not apply."""
        session = await self._checked(request)
        if isinstance(session, Response):
            return session
        form = await read_form(request)
        source, rel_path = form.get("source", ""), form.get("path", "")
        if not await run_in_threadpool(act, source, rel_path):
            return self._refusal(409, f"{source}/{rel_path} {refused}")
        log.info("%s/%s: %s asked for on the status page", source, rel_path, what)
        return RedirectResponse(_back(form.get("back")), status_code=303)

    async def _retry(self, request: Request) -> Response:
        return await self._photo_action(request, self.state.retry_now, "retry", "is not a failed photo (retried already?).")

    async def _cloak_stronger(self, request: Request) -> Response:
        if self.stronger is None:
            refused = "cannot be cloaked stronger here: a remote lowkeyd cloaks, or the attack has the widest budget already."
            return await self._photo_action(request, lambda *_: False, "cloak stronger", refused)
        preset = self.stronger.name
        return await self._photo_action(
            request, lambda source, rel_path: self.state.cloak_stronger(source, rel_path, preset),
            f"cloak stronger (preset {preset})", f"is not a photo held back that preset {preset} has not tried (asked for already?).",
        )

    async def _pause(self, request: Request) -> Response:
        session = await self._checked(request)
        if isinstance(session, Response):
            return session
        if request.url.path == "/pause":
            self.worker.pause()
            log.info("paused on the status page: no new photo is cloaked until resumed")
        else:
            self.worker.resume()
            log.info("resumed on the status page")
        return RedirectResponse(_back((await read_form(request)).get("back")), status_code=303)

    # ---- lookups

    def _record(self, request: Request) -> FileRecord | Response:
        source, rel_path = request.path_params["source"], request.path_params["path"]
        record = self.records.get(source, rel_path) if source in self.roots else None
        if record is None:
            return self._refusal(404, f"lowkeyd knows no photo {source}/{rel_path}.")
        return record

    def _original(self, record: FileRecord) -> tuple[Path | None, str]:
        """The original as the daemon reads it, or None and why the page will not show it."""
        root = self.roots[record.source]
        return _readable(root / record.rel_path, root)

    def _output(self, record: FileRecord) -> Path | None:
        """The published copy, only where the record says it is inside the outbox and it is a file there."""
        return None if record.output is None else _readable(Path(record.output), self.outbox)[0]

    def _detail(self, record: FileRecord) -> PhotoDetail | None:
        """What was recorded when the photo (or, for a duplicate, the photo it duplicates) was cloaked."""
        detail = self.journal.get(record.source, record.rel_path)
        if detail is None and record.duplicate_of and "/" in record.duplicate_of:
            source, rel_path = record.duplicate_of.split("/", 1)
            detail = self.journal.get(source, rel_path)
        return detail


_GONE = "gone (moved or deleted)"


def _readable(path: Path, folder: Path) -> tuple[Path | None, str]:
    """``path`` resolved, where the daemon would read it (a regular file in ``folder``, not behind a link
    out of it: :func:`~lowkeyd.daemon.candidate.inspect`'s rule), or None and why not."""
    try:
        return inspect(path, folder)[0], ""
    except FileNotFoundError:
        return None, _GONE
    except Refused as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"


# What a browser's URL parser drops before it reads a URL (WHATWG URL): C0 controls and spaces at either
# end, then every tab and newline anywhere. It also reads a backslash as a slash in an http URL.
_TRIMMED = "".join(map(chr, range(0x21)))
_DROPPED = str.maketrans("", "", "\t\n\r")


def _back(given: str | None) -> str:
    """Where a form or the sign-in returns to: a path on this page only, never another site.

    Judged as the browser will read it, since that is what it follows: ``/%09/evil.example`` (a tab) is
    ``//evil.example`` to a browser, another site. Returned in that form, percent-encoded.
    """
    url = (given or "").strip(_TRIMMED).translate(_DROPPED).replace("\\", "/")
    if not url.startswith("/") or url.startswith("//"):
        return "/"
    return quote(url, safe="/?#&=;:@!$'()*+,%~")


def _path_quote(rel_path: str) -> str:
    return quote(rel_path, safe="/")
