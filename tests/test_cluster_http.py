"""The service's HTTP layers without Ray: the graceful stop and idempotent uploads, on a real Starlette app."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lowkeyd.cluster.drain import STOP_RETRY_AFTER, Draining
from lowkeyd.cluster.idempotency import AnswerBook, IdempotentUploads


class _Gate:
    """A route that says when it has a request, and answers when the test lets it (or never)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: Request) -> Response:
        self.entered.set()
        await self.release.wait()
        return Response(b"whole answer")


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lowkeyd")


def test_a_stop_refuses_new_requests_and_lets_those_in_flight_and_accepted_jobs_finish() -> None:
    async def scenario() -> None:
        gate = _Gate()
        jobs = [1]  # one job accepted (202) and still running
        draining = Draining(Starlette(routes=[Route("/v1/cloak", gate.handle, methods=["POST"])]), busy=lambda: jobs[0])
        async with _client(draining) as client:
            in_flight = asyncio.create_task(client.post("/v1/cloak", content=b"photo"))
            await gate.entered.wait()
            drain = asyncio.create_task(draining.drain(3600))
            await asyncio.sleep(0)
            refused = await client.post("/v1/cloak", content=b"another")
            assert refused.status_code == 503 and refused.headers["Retry-After"] == str(STOP_RETRY_AFTER)
            assert refused.json() == {"error": "lowkeyd is stopping; try again later"}
            gate.release.set()
            answer = await in_flight
            assert (answer.status_code, answer.content) == (200, b"whole answer")
            assert not drain.done()  # the job still runs
            jobs[0] = 0
            await drain  # returns once nothing is in flight, long before the grace period ends

    asyncio.run(scenario())


def test_past_the_grace_period_a_request_in_flight_is_answered_503_never_in_part() -> None:
    async def scenario() -> None:
        gate = _Gate()  # never released: a photo that cannot finish
        draining = Draining(Starlette(routes=[Route("/v1/cloak", gate.handle, methods=["POST"])]), busy=lambda: 0)
        async with _client(draining) as client:
            in_flight = asyncio.create_task(client.post("/v1/cloak", content=b"photo"))
            await gate.entered.wait()
            await draining.drain(0)
            answer = await in_flight
        assert answer.status_code == 503 and answer.headers["Retry-After"] == str(STOP_RETRY_AFTER)
        assert "nothing was kept" in answer.json()["error"]

    asyncio.run(scenario())


def test_a_key_reused_with_another_body_is_422_and_the_same_body_is_replayed() -> None:
    calls: list[bytes] = []

    async def cloak(request: Request) -> Response:
        body = await request.body()
        calls.append(body)
        return Response(b"cloaked " + body)

    async def scenario() -> None:
        book = AnswerBook(1024 * 1024, lease=60)
        app = IdempotentUploads(Starlette(routes=[Route("/v1/cloak", cloak, methods=["POST"])]), book,
                                max_body=1024, has_room=lambda: True)
        async with _client(app) as client:
            key = {"Idempotency-Key": "k1"}
            first = await client.post("/v1/cloak", content=b"photo A", headers=key)
            again = await client.post("/v1/cloak", content=b"photo A", headers=key)
            other = await client.post("/v1/cloak", content=b"photo B", headers=key)
            big = await client.post("/v1/cloak", content=b"x" * 2000, headers={"Idempotency-Key": "k2"})
        assert (first.status_code, first.content) == (200, b"cloaked photo A")
        assert (again.status_code, again.content, again.headers["Idempotent-Replayed"]) == (200, b"cloaked photo A", "true")
        assert other.status_code == 422 and "another request body" in other.json()["error"]
        # Over the bound the body is handed on whole to the API (which answers 413); nothing is remembered.
        assert big.status_code == 200 and calls == [b"photo A", b"x" * 2000]

    asyncio.run(scenario())
