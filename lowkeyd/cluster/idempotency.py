"""Idempotent uploads: a retried ``POST /v1/cloak`` or ``/v1/jobs`` with the same ``Idempotency-Key`` is done once.

A client that lost its answer (a dropped connection, a replica that died after the work was
done, its own restart) sends the photo again with the same key. The first request with a
key claims it; a retry while it runs waits for it; a retry after it succeeded gets the same
answer, replayed byte for byte (marked ``Idempotent-Replayed: true``): the cloaked photo, or the
job it created (so the file is cloaked once, under one job id). Failures are not
remembered, so a retry after a 429, 503 or 422 is tried afresh.

:class:`AnswerBook` keeps the answers in one process (the service runs it as one
deployment, so every ingress replica shares it); :class:`IdempotentUploads` is the ASGI
middleware that consults it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
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


class Book(Protocol):
    async def claim(self, key: str) -> Answer | None: ...

    async def finish(self, key: str, answer: Answer) -> None: ...

    async def release(self, key: str) -> None: ...


class AnswerBook:
    """Keys claimed, and the answers of the last successful uploads up to ``keep_bytes``."""

    def __init__(self, keep_bytes: int, lease: float) -> None:
        """``lease``: seconds a claim holds before a waiting retry may take it over (its holder may have died)."""
        self._answers: collections.OrderedDict[str, Answer] = collections.OrderedDict()
        self._size = 0
        self._keep = keep_bytes
        self._lease = lease
        self._claims: dict[str, tuple[asyncio.Event, float]] = {}

    async def claim(self, key: str) -> Answer | None:
        """The answer to replay, or None: the caller does the work, then :meth:`finish` or :meth:`release`."""
        while True:
            if (answer := self._answers.get(key)) is not None:
                self._answers.move_to_end(key)
                return answer
            held = self._claims.get(key)
            if held is None or held[1] <= time.monotonic():
                self._claims[key] = (asyncio.Event(), time.monotonic() + self._lease)
                return None
            event, deadline = held
            try:
                await asyncio.wait_for(event.wait(), deadline - time.monotonic())
            except TimeoutError:
                pass

    async def finish(self, key: str, answer: Answer) -> None:
        if len(answer.body) <= self._keep:
            self._answers[key] = answer
            self._size += len(answer.body)
            while self._size > self._keep:
                _, old = self._answers.popitem(last=False)
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


class IdempotentUploads:
    """Middleware: a POST to an idempotent path with an ``Idempotency-Key`` is done once; the rest passes through.

    It must sit inside the authentication: a replayed answer is a cloaked photo, for token holders only.
    """

    def __init__(self, app: ASGIApp, book: Book) -> None:
        self.app = app
        self.book = book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _header(scope, KEY_HEADER) if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST" or scope["path"] not in IDEMPOTENT_PATHS:
            await self.app(scope, receive, send)
            return
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            await _send_json(send, 400, {"error": f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters"})
            return
        # A key names one request: the same key on the other path is another one.
        key = f"{scope['path']} {key}"
        answer = await self.book.claim(key)
        if answer is not None:
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [*answer.headers, (REPLAYED_HEADER, b"true")]})
            await send({"type": "http.response.body", "body": answer.body})
            return
        start: Message = {}
        body = bytearray()

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
            await send(message)

        done = False
        try:
            await self.app(scope, receive, keep)
            done = start.get("status") in SUCCESS
        finally:
            if done:
                await self.book.finish(key, Answer(start["status"], tuple(start.get("headers", ())), bytes(body)))
            else:
                await self.book.release(key)
