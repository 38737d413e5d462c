"""The status page's parts without a daemon: its sign-in tokens, redirects, pictures and held photos, on real photos."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from lowkeyd.serving.reading import content_hash
from lowkeyd.daemon.state import FileKey, StateDB, Status
from lowkeyd.daemon.status_page.app import StatusPage, _back
from lowkeyd.daemon.status_page.auth import Gate
from lowkeyd.daemon.status_page.journal import Journal
from lowkeyd.serving.worker import Worker
from lowkeyd.engine.presets import PRESETS, Preset
from lowkeyd.daemon.status_page.images import (
    PictureCache,
    PictureUnavailable,
    crop_box,
    render,
)

DATA = Path(__file__).parent / "data"


def test_a_login_token_signs_in_once_and_only_itself() -> None:
    gate = Gate()
    token = gate.new_login()
    assert gate.use_login("forged") is None
    session = gate.use_login(token)
    assert session is not None and session != token
    assert gate.use_login(token) is None
    assert gate.csrf_token(session) != gate.csrf_token(gate.use_login(gate.new_login()) or "")


def test_only_the_page_s_own_host_names_are_accepted() -> None:
    gate = Gate()
    gate.allow_hosts("127.0.0.1", 8123)
    assert gate.hosts == {"127.0.0.1:8123", "localhost:8123"}
    gate.allow_hosts("::1", 8123)
    assert gate.hosts == {"[::1]:8123", "localhost:8123"}


@pytest.mark.parametrize(
    ("given", "back"),
    [("/photos?status=failed", "/photos?status=failed"), ("//evil.example/", "/"), ("http://evil.example", "/"),
     ("/\\evil.example", "/"), (None, "/"), ("", "/"),
     # What a browser's URL parser drops or turns: a tab or newline anywhere, controls and spaces at the ends,
     # a backslash read as a slash. Each of these is "//evil.example/" to it.
     ("/\t/evil.example/", "/"), ("/\n/evil.example/", "/"), ("/\r\n/evil.example/", "/"), ("\\/evil.example/", "/"),
     ("\x00//evil.example/", "/"), (" //evil.example/", "/"), ("/\t\\evil.example/", "/"),
     # A path of this site stays one, as the browser will read it, and is sent percent-encoded.
     ("/photo/cam/a\tb.jpg", "/photo/cam/ab.jpg"), (" /photos ", "/photos"), ("/photo/cam/é \"x\".jpg", "/photo/cam/%C3%A9%20%22x%22.jpg"),
     ("/%2F/evil.example/", "/%2F/evil.example/")],
)
def test_forms_return_only_to_a_page_of_this_site(given: str | None, back: str) -> None:
    assert _back(given) == back


def test_the_difference_of_a_photo_with_itself_is_black_and_crops_are_1_to_1(tmp_path: Path) -> None:
    photo = tmp_path / "obama.jpg"
    shutil.copy(DATA / "obama.jpg", photo)
    whole = Image.open(io.BytesIO(render("diff", photo, photo, None).data))
    assert whole.getextrema() == ((0, 0), (0, 0), (0, 0))
    box = (100.0, 80.0, 300.0, 320.0)
    crop = Image.open(io.BytesIO(render("original", photo, photo, box).data))
    left, top, right, bottom = crop_box(box, *Image.open(photo).size)
    assert crop.size == (right - left, bottom - top) == (300, 360)
    with Image.open(photo) as im:
        expected = np.asarray(im.convert("RGB"))[top:bottom, left:right]
    assert np.array_equal(np.asarray(crop.convert("RGB")), expected), "a crop is the photo's own pixels, lossless"
    with pytest.raises(PictureUnavailable, match="gone"):
        render("cloaked", photo, tmp_path / "missing.jpg", None)


def test_crops_at_the_edge_are_clipped_to_the_photo() -> None:
    assert crop_box((-10.0, -10.0, 40.0, 40.0), 100, 80) == (0, 0, 53, 53)
    assert crop_box((60.0, 50.0, 100.0, 80.0), 100, 80) == (50, 42, 100, 80)
    with pytest.raises(PictureUnavailable):
        crop_box((200.0, 200.0, 300.0, 300.0), 100, 80)


def test_the_picture_cache_is_private_and_bounded(tmp_path: Path) -> None:
    photo = tmp_path / "astronaut.png"
    shutil.copy(DATA / "astronaut.png", photo)
    cache = PictureCache(tmp_path / "cache", limit=1)  # every new picture evicts the ones before it
    first = cache.get("thumb", photo, None, None)
    assert first.media_type == "image/jpeg"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # over the limit at once: nothing kept
    cache.limit = 10**9
    again = cache.get("thumb", photo, None, None)
    kept = list((tmp_path / "cache").iterdir())
    assert again.data == first.data and len(kept) == 1
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700 and kept[0].stat().st_mode & 0o777 == 0o600
    assert cache.get("thumb", photo, None, None).data == first.data
    with Image.open(photo) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photo)  # the file changed: a picture of it as it is now
    assert cache.get("thumb", photo, None, None).data != first.data
    assert len(list((tmp_path / "cache").iterdir())) == 2


def _page_with_a_held_photo(tmp_path: Path, stronger: Preset | None) -> StatusPage:
    """The page on a state database holding one photo, held back by the default preset."""
    photo = tmp_path / "src" / "face.jpg"
    photo.parent.mkdir()
    shutil.copy(DATA / "obama.jpg", photo)
    state = StateDB(tmp_path / "state.sqlite3")
    state.mark_queued("cam", "face.jpg", FileKey.of(photo), content_hash(photo))
    state.mark_held("cam", "face.jpg", "face.jpg: held: a 212 px face is short of the target margin", preset="default")
    page = StatusPage(
        state=state, worker=Worker(lambda: None, queue_size=1, batch_size=1), roots={"cam": photo.parent},
        outbox=tmp_path / "out", journal=Journal(tmp_path / "journal.sqlite3"), cache=tmp_path / "cache", stronger=stronger,
    )
    page.serving_at("127.0.0.1", 8123)
    return page


@asynccontextmanager
async def _signed_in(page: StatusPage) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A client with a session on ``page``, and its CSRF token."""
    transport = httpx.ASGITransport(page.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8123") as client:
        assert (await client.get("/login", params={"token": page.gate.new_login()})).status_code == 200
        yield client, re.search(r'name="csrf" value="([^"]+)"', (await client.get("/")).text).group(1)


def test_a_held_photo_is_offered_the_stronger_cloak_once(tmp_path: Path) -> None:
    page = _page_with_a_held_photo(tmp_path, PRESETS["strong"])

    async def scenario() -> None:
        async with _signed_in(page) as (client, csrf):
            overview = (await client.get("/")).text
            assert "1 held back" in overview and 'aria-label="Cloak stronger cam/face.jpg"' in overview
            assert "Retry cam/face.jpg" not in overview, "a retry would only hold it again"
            photo = (await client.get("/photo/cam/face.jpg")).text
            assert "Why it was held back" in photo and "short of the target margin" in photo
            assert "<dt>Held back by preset</dt><dd><code>default</code>" in photo and "preset <code>strong</code>" in photo
            assert "/photo/cam/face.jpg" in (await client.get("/photos", params={"status": "held"})).text

            form = {"csrf": csrf, "source": "cam", "path": "face.jpg", "back": "/photo/cam/face.jpg"}
            assert (await client.post("/stronger", data={**form, "csrf": "x"})).status_code == 403
            assert page.state.get("cam", "face.jpg").status is Status.HELD
            asked = await client.post("/stronger", data=form)
            assert asked.status_code == 303 and asked.headers["location"] == "/photo/cam/face.jpg"
            assert [(r.rel_path, r.status) for r in page.state.due_retries()] == [("face.jpg", Status.STRONGER)]
            assert (await client.post("/stronger", data=form)).status_code == 409, "asked for once"
            assert "to be cloaked stronger" in (await client.get("/")).text

            # Strong could not protect it either: held by strong, which is not offered again.
            page.state.mark_held("cam", "face.jpg", "face.jpg: a 212 px face still matches its original for dlib", preset="strong")
            photo = (await client.get("/photo/cam/face.jpg")).text
            assert "could not protect it either" in photo and "still matches" in photo and "Cloak stronger cam" not in photo
            assert (await client.post("/stronger", data=form)).status_code == 409

    asyncio.run(scenario())
    page.close()


def test_without_a_stronger_cloak_none_is_offered(tmp_path: Path) -> None:
    page = _page_with_a_held_photo(tmp_path, None)

    async def scenario() -> None:
        async with _signed_in(page) as (client, csrf):
            assert "Cloak stronger cam" not in (await client.get("/")).text
            assert "no stronger cloak here" in (await client.get("/photo/cam/face.jpg")).text
            refused = await client.post("/stronger", data={"csrf": csrf, "source": "cam", "path": "face.jpg"})
            assert refused.status_code == 409 and "cannot be cloaked stronger here" in refused.text

    asyncio.run(scenario())
    assert page.state.get("cam", "face.jpg").status is Status.HELD
    page.close()
