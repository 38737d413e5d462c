"""A graceful stop for the ingress: refuse new requests, let those in flight finish, cancel the rest cleanly.

When the service stops, each ingress replica is told the grace period. From then on every new
request is answered 503 with ``Retry-After`` (a load balancer's health check sees it too); the
requests in flight, and the jobs already accepted, get the grace period to finish. Whatever
is still running then is answered 503: its answer is never sent in part, and a job's photo is
published atomically or not at all, so nothing half-written is left anywhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds a client refused during a stop is told to wait: the service (or another instance) may be back by then.
STOP_RETRY_AFTER = 10
_POLL = 0.1


async def refuse(send: Send, message: str) -> None:
    """Answer 503 with Retry-After: nothing was done, the client may try again."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(STOP_RETRY_AFTER).encode())]})
    await send({"type": "http.response.body", "body": body})


class Draining:
    """ASGI middleware around the API that :meth:`drain` turns into a graceful stop.

    ``busy`` counts the work accepted but not finished outside a request (jobs answered 202).
    """

    def __init__(self, app: ASGIApp, *, busy: Callable[[], int]) -> None:
        self.app = app
        self._busy = busy
        self._requests = 0
        self._stopping = False
        self._expired = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._stopping:
            await refuse(send, "lowkeyd is stopping; try again later")
            return
        self._requests += 1
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, tracked))
        expired = asyncio.ensure_future(self._expired.wait())
        try:
            await asyncio.wait({work, expired}, return_when=asyncio.FIRST_COMPLETED)
            if work.done() or started:  # an answer already on its way is sent whole
                await work
                return
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            await refuse(send, "lowkeyd stopped before this request was done; nothing was kept")
        finally:
            expired.cancel()
            self._requests -= 1

    async def drain(self, grace: float) -> None:
        """Refuse new requests; wait up to ``grace`` seconds for the work in flight, then cancel what is left."""
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self._requests or self._busy()) and loop.time() < deadline:
            await asyncio.sleep(_POLL)
        self._expired.set()
        while self._requests:  # the cancelled requests' 503s going out
            await asyncio.sleep(_POLL)
