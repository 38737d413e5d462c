"""The status page on a real daemon: a `lowkeyd run` process with real models and a short attack.

The daemon watches one folder holding a photo with a face, a geotagged photo
without one and a damaged file (which fails at once: one attempt). The page is
driven over HTTP as a browser would: signed in through `lowkeyd open` (with a
stand-in browser on $BROWSER that records the URL it is given), then every
page, picture and action.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import piexif
import pytest
import yaml
from daemon_fixtures import (
    FAST_ATTACK,
    face_photo,
    faceless_photo,
    jpeg_bytes,
    stop_daemon,
    wait_until,
)
from PIL import Image

from lowkeyd.daemon.state import StateDB, Status

pytestmark = pytest.mark.slow

LOWKEYD = Path(sys.executable).parent / "lowkeyd"
START_TIMEOUT = 600  # model loading on a busy 2-core machine
PHOTO_SECONDS = 180
# Stands in for the user's browser: keeps the URL `lowkeyd open` hands it.
FAKE_BROWSER = """#!/bin/sh
printf '%s\\n' "$1" >> "$BROWSER_CALLS"
"""


def other_faceless_photo(corner: int) -> bytes:
    """A no-face photo with content of its own: one corner (0-3) of the usual one, so no duplicate of it."""
    with Image.open(io.BytesIO(faceless_photo(gps=False))) as im:
        w, h = im.width // 2, im.height // 2
        x, y = w * (corner % 2), h * (corner // 2)
        return jpeg_bytes(im.convert("RGB").crop((x, y, x + w, y + h)))


def geotagged_landscape() -> bytes:
    """A no-face photo as a camera writes it: a make and a GPS position."""
    exif = piexif.dump(
        {
            "0th": {piexif.ImageIFD.Make: b"Canon"},
            "GPS": {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((38, 1), (53, 1), (23, 1))},
        }
    )
    with Image.open(io.BytesIO(faceless_photo(gps=False))) as im:
        return jpeg_bytes(im, exif=exif)


@dataclass
class Daemon:
    base: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    @property
    def src(self) -> Path:
        return self.base / "src"

    def log(self) -> str:
        return (self.base / "daemon.log").read_text(errors="replace")

    def wait_for(self, condition, timeout: float, what: str) -> None:
        wait_until(condition, timeout, what, self.process, self.log)

    def record(self, rel_path: str):
        path = self.base / "state" / "state.sqlite3"
        if not path.exists():
            return None
        state = StateDB(path, readonly=True)
        try:
            return state.get("cam", rel_path)
        except sqlite3.OperationalError:  # the daemon has created the file but not its tables yet
            return None
        finally:
            state.close()

    def open_link(self) -> str:
        """What `lowkeyd open` hands the browser."""
        calls = self.base / "browser-calls"
        calls.unlink(missing_ok=True)
        done = subprocess.run([str(LOWKEYD), "open"], check=False, capture_output=True, text=True, timeout=60, env=self.env)
        assert done.returncode == 0, done.stderr
        [url] = calls.read_text().split()
        return url

    @contextmanager
    def browser(self) -> Iterator[httpx.Client]:
        """A client signed in the way a browser is: the one-time link, then the session cookie."""
        url = self.open_link()
        with httpx.Client(base_url=url.split("/login")[0], timeout=PHOTO_SECONDS) as client:
            assert client.get(url).status_code == 200
            yield client


def _done(daemon: Daemon, *names: str) -> bool:
    records = [daemon.record(n) for n in names]
    return all(r is not None and r.status in (Status.DONE, Status.FAILED) for r in records)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("page")
    for folder in ("src", "bin"):
        (base / folder).mkdir()
    browser = base / "bin" / "browser"
    browser.write_text(FAKE_BROWSER)
    browser.chmod(0o755)
    config = {
        "sources": [{"path": str(base / "src"), "name": "cam"}],
        "outbox": str(base / "out"),
        "attack": FAST_ATTACK,
        "notifications": {"enabled": False},
        "work": {"nice": 0, "idle_priority": False, "batch_size": 1},
        "watch": {"settle_seconds": 1, "rescan_interval": 0},
        "retry": {"max_attempts": 1},
    }
    (base / "config.yaml").write_text(yaml.safe_dump(config))
    (base / "src" / "face.jpg").write_bytes(face_photo(0))
    (base / "src" / "landscape.jpg").write_bytes(geotagged_landscape())
    # Damaged where a JPEG starts: fails to decode; its good bytes are put back in place later.
    (base / "src" / "broken.jpg").write_bytes(b"\0\0" + other_faceless_photo(0)[2:])
    with pytest.MonkeyPatch.context() as patch:
        for name in ("STATE", "CONFIG", "RUNTIME"):
            patch.setenv(f"LOWKEYD_{name}_DIR", str(base / name.lower()))
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DBUS_SESSION_BUS_ADDRESS", "NOTIFY_SOCKET", "DISPLAY")},
            "BROWSER": str(browser),
            "BROWSER_CALLS": str(base / "browser-calls"),
            "LOWKEYD_THREADS": "1",
        }
        env.pop("LOWKEYD_URL", None)
        with (base / "daemon.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "lowkeyd", "run", "--config", str(base / "config.yaml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )
        running = Daemon(base, process, env)
        try:
            running.wait_for(
                lambda: _done(running, "face.jpg", "landscape.jpg", "broken.jpg"), START_TIMEOUT, "the three photos"
            )
            yield running
        finally:
            stop_daemon(process)


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_lowkeyd_open_signs_one_browser_in_and_everything_else_is_refused(daemon: Daemon) -> None:
    url = daemon.open_link()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=[\w-]{40,}", url), url
    base = url.split("/login")[0]
    with httpx.Client(base_url=base) as anonymous:
        assert anonymous.get("/").status_code == 401
        assert anonymous.get("/photos").status_code == 401
        assert anonymous.get("/picture/thumb/cam/face.jpg").status_code == 401
        assert anonymous.get("/static/style.css").status_code == 401
        assert anonymous.get("/login?token=forged-" + url.split("=")[1]).status_code == 403
        anonymous.cookies.set("lowkeyd_session", "forged")
        assert anonymous.get("/").status_code == 401
        # A DNS-rebinding page reaches the port under its own host name: refused even with the real link.
        assert anonymous.get(url, headers={"Host": f"evil.example:{base.rsplit(':', 1)[1]}"}).status_code == 403

    with httpx.Client(base_url=base) as browser:
        signed_in = browser.get(url)
        assert signed_in.status_code == 200
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie, cookie
        assert "content-security-policy" in signed_in.headers
        assert browser.get("/").status_code == 200
        with httpx.Client(base_url=base) as second:
            assert second.get(url).status_code == 403, "a login link works once"
            assert second.get("/").status_code == 401
        browser.post("/logout", data={"csrf": _csrf(browser.get("/").text)})
        assert browser.get("/").status_code == 401


def test_the_pages_show_what_was_cloaked_and_why_not(daemon: Daemon) -> None:
    with daemon.browser() as browser:
        overview = browser.get("/").text
        assert re.search(r"<th scope=\"row\">Today</th><td>2</td><td>1</td>", overview), overview
        assert "cam/broken.jpg" in overview and "not a readable image" in overview
        assert "Retry cam/broken.jpg" in overview

        photos = browser.get("/photos").text
        for name in ("face.jpg", "landscape.jpg", "broken.jpg"):
            assert f"/photo/cam/{name}" in photos
        failed = browser.get("/photos", params={"status": "failed"}).text
        assert "/photo/cam/broken.jpg" in failed and "/photo/cam/face.jpg" not in failed
        assert "1 photo matching" in failed

        face = browser.get("/photo/cam/face.jpg").text
        assert "white-box" in face and "Protection of face 1" in face
        members = re.findall(r'<tr><th scope="row">(\w+)</th><td>(-?[\d.]+)</td><td>([\d.]+)</td>', face)
        assert len(members) >= 2, face
        assert all(float(sim) < float(threshold) for _, sim, threshold in members)
        assert "holdout estimate" in face.lower()
        assert "/picture/cloaked/cam/face.jpg?face=1" in face

        landscape = browser.get("/photo/cam/landscape.jpg").text
        assert "Removed from the file" in landscape and "GPS" in landscape
        assert "no face found" in landscape
        assert browser.get("/photo/cam/nothing.jpg").status_code == 404
        assert browser.get("/photo/cam/../state/state.sqlite3").status_code == 404


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the page screenshots go: LOWKEYD_SCREENSHOTS=docs refreshes the README's.
# page name -> (path, window height)
SCREENSHOTS = {
    "overview": ("/", 1000), "photos": ("/photos", 900), "photo": ("/photo/cam/face.jpg", 2300),
    "failed": ("/photo/cam/broken.jpg", 700),
}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium to take screenshots with (apt-get install chromium)")
def test_a_real_browser_renders_every_page(daemon: Daemon, tmp_path: Path) -> None:
    """Headless Chromium signs in with a `lowkeyd open` link (its meta refresh carries the cookie) and shoots each page."""
    folder = Path(os.environ.get("LOWKEYD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (page, height) in SCREENSHOTS.items():
        shot = folder / f"status-page-{name}.png"
        shot.unlink(missing_ok=True)
        url = f"{daemon.open_link()}&next={page}"
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size=1280,{height}",
             "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", url],
            check=False, capture_output=True, timeout=120,
        )
        assert done.returncode == 0 and shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
        with Image.open(shot) as im:
            # A refused page is a short line of text on white; a signed-in page fills the frame with content.
            assert im.size == (1280, height) and len(np.unique(np.asarray(im.convert("L")))) > 50, f"{name}: a blank page?"


def _image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"] in ("image/jpeg", "image/png")
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def _files_outside_state(base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and p.relative_to(base).parts[0] != "state"}


def test_pictures_are_made_on_demand_and_kept_0600_in_the_state_dir_only(daemon: Daemon) -> None:
    cache = daemon.base / "state" / "status-page-cache"
    shutil.rmtree(cache, ignore_errors=True)
    before = _files_outside_state(daemon.base)
    with daemon.browser() as browser:
        thumb = _image(browser.get("/picture/thumb/cam/face.jpg"))
        assert max(thumb.size) <= 320
        original = _image(browser.get("/picture/original/cam/face.jpg?face=1"))
        cloaked = _image(browser.get("/picture/cloaked/cam/face.jpg?face=1"))
        diff = _image(browser.get("/picture/diff/cam/face.jpg?face=1"))
        assert original.size == cloaked.size == diff.size and min(original.size) >= 100  # 1:1 crops
        assert diff.getextrema() != ((0, 0), (0, 0), (0, 0)), "the cloak changed the face"
        # A photo without a face keeps its image data byte for byte: nothing to see in its difference.
        assert _image(browser.get("/picture/diff/cam/landscape.jpg")).getextrema() == ((0, 0), (0, 0), (0, 0))
        assert browser.get("/picture/diff/cam/landscape.jpg?face=1").status_code == 404
        assert browser.get("/picture/bogus/cam/face.jpg").status_code == 404
    kept = list(cache.iterdir())
    assert len(kept) == 5
    assert cache.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in kept), [oct(p.stat().st_mode) for p in kept]
    assert _files_outside_state(daemon.base) == before, "the page wrote outside the state dir"


def test_actions_need_the_page_s_csrf_token_and_origin(daemon: Daemon) -> None:
    with daemon.browser() as browser:
        csrf = _csrf(browser.get("/").text)
        assert browser.post("/pause").status_code == 403
        assert browser.post("/pause", data={"csrf": "0" * len(csrf)}).status_code == 403
        other_origin = {"Origin": "http://evil.example"}
        assert browser.post("/pause", data={"csrf": csrf}, headers=other_origin).status_code == 403
        assert "Pause cloaking" in browser.get("/").text, "a refused action did nothing"
        assert browser.get("/pause").status_code == 405


def test_pause_holds_new_photos_until_resumed(daemon: Daemon) -> None:
    with daemon.browser() as browser:
        csrf = _csrf(browser.get("/").text)
        paused = browser.post("/pause", data={"csrf": csrf, "back": "/photos"})
        assert paused.status_code == 303 and paused.headers["location"] == "/photos"
        assert "Resume cloaking" in browser.get("/").text
        (daemon.src / "later.jpg").write_bytes(other_faceless_photo(1))
        daemon.wait_for(lambda: daemon.record("later.jpg") is not None, 60, "later.jpg to be queued")
        time.sleep(3)  # anything the worker took would be done by now
        assert daemon.record("later.jpg").status is Status.QUEUED
        assert "later.jpg" in browser.get("/").text
        browser.post("/resume", data={"csrf": csrf})
        daemon.wait_for(lambda: _done(daemon, "later.jpg"), PHOTO_SECONDS, "later.jpg after resuming")
        assert daemon.record("later.jpg").status is Status.DONE


def test_retry_brings_a_failed_photo_back_once_its_cause_is_fixed(daemon: Daemon) -> None:
    broken = daemon.src / "broken.jpg"
    assert daemon.record("broken.jpg").status is Status.FAILED
    # Repair it without changing what the daemon keys a file on (size, mtime, inode): only a retry looks again.
    st = broken.stat()
    with broken.open("r+b") as f:
        f.write(b"\xff\xd8")
    os.utime(broken, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(3)  # the watcher's event for the repair has been seen and ignored by now
    assert daemon.record("broken.jpg").status is Status.FAILED
    with daemon.browser() as browser:
        csrf = _csrf(browser.get("/").text)
        form = {"csrf": csrf, "source": "cam", "path": "broken.jpg"}
        assert browser.post("/retry", data={**form, "csrf": "x"}).status_code == 403
        assert browser.post("/retry", data=form).status_code == 303
        assert browser.post("/retry", data=form).status_code == 409, "only a failed photo is retried"
        daemon.wait_for(lambda: daemon.record("broken.jpg").status is Status.DONE, PHOTO_SECONDS, "the retried photo")
        assert "no face found" in browser.get("/photo/cam/broken.jpg").text
        assert "No failures." in browser.get("/").text


def test_an_original_that_is_gone_shows_as_gone(daemon: Daemon) -> None:
    (daemon.src / "landscape.jpg").unlink()
    with daemon.browser() as browser:
        page = browser.get("/photo/cam/landscape.jpg").text
        assert "original gone" in page and "The original is gone." in page
        assert "original gone" in browser.get("/photos").text
        # Its published copy is still shown.
        _image(browser.get("/picture/cloaked/cam/landscape.jpg"))
        assert browser.get("/picture/original/cam/landscape.jpg").status_code == 404
