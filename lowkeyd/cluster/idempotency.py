"""Idempotent uploads: a retried ``POST /v1/cloak`` or ``/v1/jobs`` with the same ``Idempotency-Key`` is done once.

A client that lost its answer (a dropped connection, a replica that died after the work was
done, its own restart) sends the photo again with the same key. The first request with a
key claims it; a retry while it runs waits for it; a retry after it succeeded gets the same
answer, replayed byte for byte (marked ``Idempotent-Replayed: true``): the cloaked photo, or the
job it created (so the file is cloaked once, under one job id). Failures are not
remembered, so a retry after a 429, 503 or 422 is tried afresh.

A key names one request, as the IETF Idempotency-Key draft says: the SHA-256 of the body is
kept with it, and the same key with another body is answered 422 (never the other photo's cloak).

:class:`AnswerBook` keeps the answers in one process (the service runs it as one
deployment, so every ingress replica shares it); :class:`IdempotentUploads` is the ASGI
middleware that consults it.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

KEY_HEADER = b"idempotency-key"
REPLAYED_HEADER = b"idempotent-replayed"
MAX_KEY_LENGTH = 200
# What is done once per key, and the answers that say it was done.
IDEMPOTENT_PATHS = ("/v1/cloak", "/v1/jobs")
SUCCESS = (200, 202, 204)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True)
class Reused:
    """The key was claimed for another request body."""


class Book(Protocol):
    async def claim(self, key: str, digest: str) -> Answer | Reused | None: ...

    async def finish(self, key: str, answer: Answer) -> None: ...

    async def release(self, key: str) -> None: ...


class AnswerBook:
    """Keys claimed, and the answers of the last successful uploads up to ``keep_bytes``; each with its body's hash."""

    def __init__(self, keep_bytes: int, lease: float) -> None:
        """``lease``: seconds a claim holds before a waiting retry may take it over (its holder may have died)."""
        self._answers: collections.OrderedDict[str, tuple[str, Answer]] = collections.OrderedDict()
        self._size = 0
        self._keep = keep_bytes
        self._lease = lease
        self._claims: dict[str, tuple[asyncio.Event, float, str]] = {}

    async def claim(self, key: str, digest: str) -> Answer | Reused | None:
        """The answer to replay, :class:`Reused` when ``key`` belongs to another body, or None: the caller does
        the work, then :meth:`finish` or :meth:`release`."""
        while True:
            if (kept := self._answers.get(key)) is not None:
                self._answers.move_to_end(key)
                return kept[1] if kept[0] == digest else Reused()
            held = self._claims.get(key)
            if held is None or held[1] <= time.monotonic():
                self._claims[key] = (asyncio.Event(), time.monotonic() + self._lease, digest)
                return None
            event, deadline, owner = held
            if owner != digest:
                return Reused()
            try:
                await asyncio.wait_for(event.wait(), deadline - time.monotonic())
            except TimeoutError:
                pass

    async def finish(self, key: str, answer: Answer) -> None:
        held = self._claims.get(key)
        if held is not None and len(answer.body) <= self._keep:
            self._answers[key] = (held[2], answer)
            self._size += len(answer.body)
            while self._size > self._keep:
                _, (_, old) = self._answers.popitem(last=False)
                self._size -= len(old.body)
        await self.release(key)

    async def release(self, key: str) -> None:
        held = self._claims.pop(key, None)
        if held is not None:
            held[0].set()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_json(send: Send, status: int, payload: dict[str, str]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body, or its first ``limit`` bytes and more when it is longer: (bytes read, more to come)."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body), False
        if len(body) > limit:
            return bytes(body), True


def _replay(body: bytes, more: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives the bytes already read first, then whatever the client still sends."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replayed


class IdempotentUploads:
    """Middleware: a POST to an idempotent path with an ``Idempotency-Key`` is done once; the rest passes through.

    It must sit inside the authentication: a replayed answer is a cloaked photo, for token holders only.
    The body is read here to be hashed, bounded by ``max_body``, and only while ``has_room()`` (else the API
    answers 429 before reading it, as without a key).
    """

    def __init__(self, app: ASGIApp, book: Book, *, max_body: int, has_room: Callable[[], bool]) -> None:
        self.app = app
        self.book = book
        self._max_body = max_body
        self._has_room = has_room

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope, KEY_HEADER) if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST" or scope["path"] not in IDEMPOTENT_PATHS:
            await self.app(scope, receive, send)
            return
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            await _send_json(send, 400, {"error": f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters"})
            return
        length = _header(scope, b"content-length") or ""
        if not self._has_room() or (length.isdigit() and int(length) > self._max_body):
            await self.app(scope, receive, send)  # a 429 or 413, nothing done: nothing to remember
            return
        body, more = await _read_body(receive, self._max_body)
        if more:
            await self.app(scope, _replay(body, more, receive), send)  # the API's 413
            return
        # A key names one request: the same key on the other path is another one.
        key = f"{scope['path']} {key}"
        answer = await self.book.claim(key, hashlib.sha256(body).hexdigest())
        if isinstance(answer, Reused):
            await _send_json(send, 422, {"error": "this Idempotency-Key was already used with another request body"})
            return
        if answer is not None:
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [*answer.headers, (REPLAYED_HEADER, b"true")]})
            await send({"type": "http.response.body", "body": answer.body})
            return
        start: Message = {}
        sent = bytearray()

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                sent.extend(message.get("body", b""))
            await send(message)

        done = False
        try:
            await self.app(scope, _replay(body, False, receive), keep)
            done = start.get("status") in SUCCESS
        finally:
            if done:
                await self.book.finish(key, Answer(start["status"], tuple(start.get("headers", ())), bytes(sent)))
            else:
                await self.book.release(key)
