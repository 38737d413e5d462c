"""The status page on a real daemon: a `lowkeyd run` process with real models and a short attack.

The daemon watches one folder holding a photo with a face, a geotagged photo
without one and a damaged file (which fails at once: one attempt). The page is
driven over HTTP as a browser would: signed in through `lowkeyd open` (with a
stand-in browser on $BROWSER that records the URL it is given), then every
page, picture and action; and in headless Chromium, through Selenium and
Debian's chromedriver, by clicking its links and buttons.

The browser tests skip where Chromium, its driver or Selenium is missing, but
fail in CI (CI=true), which must run them.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import chromium
import httpx
import piexif
import pytest
import yaml
from chromium import By, Chrome, Keys, Select
from daemon_fixtures import (
    FAST_ATTACK,
    RunningDaemon,
    face_photo,
    faceless_photo,
    jpeg_bytes,
    stop_daemon,
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


class Daemon(RunningDaemon):
    @property
    def src(self) -> Path:
        return self.base / "src"

    @property
    def state_path(self) -> Path:
        return self.base / "state" / "state.sqlite3"

    def record(self, rel_path: str):
        if not self.state_path.exists():
            return None
        state = StateDB(self.state_path, readonly=True)
        try:
            return state.get("cam", rel_path)
        except sqlite3.OperationalError:  # the daemon has created the file but not its tables yet
            return None
        finally:
            state.close()

    def names(self, where: str = "1", *params: str) -> set[str]:
        """The watched folder's photos the daemon has a record of (``where``: an SQL condition on them)."""
        with closing(sqlite3.connect(f"file:{self.state_path}?mode=ro", uri=True)) as db:
            return {f"{s}/{p}" for s, p in db.execute(f"SELECT source, rel_path FROM files WHERE {where}", params)}

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


def _repair_in_place(path: Path, good: bytes) -> None:
    """Put a damaged photo's good first bytes back without changing what the daemon keys a file on (size,
    mtime, inode): only a retry makes it look again."""
    st = path.stat()
    with path.open("r+b") as f:
        f.write(good)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


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


def _sign_in(driver: Chrome, daemon: Daemon, query: str = "") -> str:
    """Sign in with a new `lowkeyd open` link (``query`` added to it); the page's base URL."""
    link = daemon.open_link()
    chromium.follow(driver, link + query)
    return link.split("/login")[0]


def _pictures_drawn(driver: Chrome) -> None:
    """Every picture on the page arrived and the browser could draw it (lazy ones are scrolled to first)."""
    for image in driver.find_elements(By.TAG_NAME, "img"):
        driver.execute_script("arguments[0].scrollIntoView()", image)
    chromium.wait(driver, lambda d: d.execute_script("return [...document.images].every(i => i.complete)"), "the pictures")
    undrawn = driver.execute_script("return [...document.images].filter(i => !i.naturalWidth).map(i => i.src)")
    assert not undrawn, f"pictures the browser could not draw: {undrawn}"
    driver.execute_script("window.scrollTo(0, 0)")


def _card_names(driver: Chrome) -> set[str]:
    return {link.text for link in driver.find_elements(By.CSS_SELECTOR, ".card .name a")}


# Where the page screenshots go: LOWKEYD_SCREENSHOTS=docs refreshes the README's.
# name -> (page, its heading)
SCREENSHOTS = {
    "overview": ("/", "Overview"), "photos": ("/photos", "Photos"), "photo": ("/photo/cam/face.jpg", "cam/face.jpg"),
    "failed": ("/photo/cam/broken.jpg", "cam/broken.jpg"),
}


def test_a_real_browser_renders_every_page(daemon: Daemon, chrome: Chrome, tmp_path: Path) -> None:
    """Chromium signs in with a `lowkeyd open` link, finds each page's own content, and shoots it whole."""
    folder = Path(os.environ.get("LOWKEYD_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    base = _sign_in(chrome, daemon)
    for name, (page, heading) in SCREENSHOTS.items():
        chrome.set_window_size(1280, 600)
        chrome.get(base + page)
        assert chromium.heading(chrome) == heading, f"{name}: {chromium.text(chrome)[:300]}"
        _pictures_drawn(chrome)
        text = chromium.text(chrome)
        if name == "overview":
            assert "Summary" in text and "Current work" in text and "cam/broken.jpg" in text
        elif name == "photos":
            assert {"cam/face.jpg", "cam/landscape.jpg", "cam/broken.jpg"} <= _card_names(chrome)
        elif name == "photo":
            assert "Protection of face 1" in text
            assert chrome.find_element(By.CSS_SELECTOR, "[data-compare] input[type=range]").is_displayed(), "no slider"
        else:
            assert "Why it failed" in text and chromium.button(chrome, "Retry").is_displayed()
        # The whole page: a window as tall as it, plus what the window keeps for itself.
        height, frame = chrome.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
        )
        chrome.set_window_size(1280, height + frame)
        shot = folder / f"status-page-{name}.png"
        assert chrome.save_screenshot(str(shot)), name
        with Image.open(shot) as im:
            assert im.size == (1280, height), (name, im.size, height)


def test_in_chromium_signing_in_opens_the_page_asked_for_and_no_other_site(daemon: Daemon, chrome: Chrome) -> None:
    link = daemon.open_link()
    base = link.split("/login")[0]
    chromium.follow(chrome, f"{link}&next=/photos%3Fstatus%3Dcloaked")
    assert chrome.current_url == f"{base}/photos?status=cloaked" and chromium.heading(chrome) == "Photos"
    cookie = chrome.get_cookie("lowkeyd_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert httpx.get(link).status_code == 403, "the daemon spent the link"
    # A tab is dropped by the browser's URL parser: "/<tab>/evil.example/" reads as "//evil.example/".
    _sign_in(chrome, daemon, "&next=/%09/evil.example/")
    assert chrome.current_url == f"{base}/" and chromium.heading(chrome) == "Overview"


@contextmanager
def _other_site(html: str) -> Iterator[str]:
    """A page on another loopback port: another origin, but the same site, so the page's cookie goes along."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


# A 1x1 GIF: a picture any page may show, to tell a blocked picture from one that was never asked for.
_DOT = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"


def test_in_chromium_another_loopback_site_cannot_show_the_page_s_pictures(daemon: Daemon, chrome: Chrome) -> None:
    """A page that could show a private thumbnail would learn which photos exist and their sizes."""
    base = _sign_in(chrome, daemon)
    picture = f"{base}/picture/thumb/cam/face.jpg"
    chrome.get(picture)
    assert chrome.execute_script("return document.images[0].naturalWidth") > 0, "the page itself shows it"
    with _other_site(f'<img id="ours" src="{picture}"><img id="dot" src="{_DOT}">') as other:
        chrome.get(other)
        chromium.wait(chrome, lambda d: d.execute_script("return [...document.images].every(i => i.complete)"), "the pictures")
        drawn = chrome.execute_script("return [...document.images].map(i => [i.id, i.naturalWidth])")
    assert drawn == [["ours", 0], ["dot", 1]], drawn


def test_in_chromium_the_photo_list_and_a_photo_page_show_what_the_daemon_did(daemon: Daemon, chrome: Chrome) -> None:
    _sign_in(chrome, daemon)
    chromium.click(chrome, chrome.find_element(By.LINK_TEXT, "Photos"))
    assert chromium.heading(chrome) == "Photos"
    assert _card_names(chrome) == daemon.names()
    _pictures_drawn(chrome)
    Select(chrome.find_element(By.ID, "f-status")).select_by_visible_text("cloaked")
    chromium.click(chrome, chromium.button(chrome, "Show"))
    cloaked = daemon.names("status = ? AND outcome = ?", Status.DONE.value, "cloaked")
    assert _card_names(chrome) == cloaked == {"cam/face.jpg"}

    chromium.click(chrome, chrome.find_element(By.LINK_TEXT, "cam/face.jpg"))
    assert chromium.heading(chrome) == "cam/face.jpg"
    record = daemon.record("face.jpg")
    assert record.status is Status.DONE and Path(record.output).is_file()
    assert len(chrome.find_elements(By.CSS_SELECTOR, "article.face")) == record.faces >= 1
    assert record.output in chromium.text(chrome)
    _pictures_drawn(chrome)
    # The slider, shown by its script: the published copy covers the left half, then none of it.
    slider = chrome.find_element(By.CSS_SELECTOR, "[data-compare] input[type=range]")
    after = chrome.find_element(By.CSS_SELECTOR, "[data-compare] .after")
    assert slider.is_displayed() and after.value_of_css_property("clip-path") == "inset(0px 50% 0px 0px)"
    slider.send_keys(Keys.HOME)
    assert slider.get_attribute("value") == "0" and after.value_of_css_property("clip-path") == "inset(0px 100% 0px 0px)"


def test_in_chromium_retry_brings_back_a_photo_fixed_on_disk(daemon: Daemon, chrome: Chrome) -> None:
    name, good = "clicked-retry.jpg", other_faceless_photo(2)
    photo = daemon.src / name
    photo.write_bytes(b"\0\0" + good[2:])
    daemon.wait_for(lambda: _done(daemon, name), PHOTO_SECONDS, f"{name} to fail")
    assert daemon.record(name).status is Status.FAILED
    base = _sign_in(chrome, daemon)
    failures = chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=failures]")
    assert f"cam/{name}" in failures.text and "not a readable image" in failures.text
    _repair_in_place(photo, good[:2])
    assert daemon.record(name).status is Status.FAILED
    chromium.click(chrome, failures.find_element(By.CSS_SELECTOR, f"button[aria-label='Retry cam/{name}']"))
    assert chrome.current_url == f"{base}/" and chromium.heading(chrome) == "Overview"
    daemon.wait_for(lambda: daemon.record(name).status is Status.DONE, PHOTO_SECONDS, f"{name} retried")
    chrome.refresh()
    assert f"cam/{name}" not in chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=failures]").text
    chrome.get(f"{base}/photo/cam/{name}")
    assert chromium.heading(chrome) == f"cam/{name}" and "no face found" in chromium.text(chrome)


def test_in_chromium_pause_holds_a_new_photo_until_resumed(daemon: Daemon, chrome: Chrome) -> None:
    name = "clicked-pause.jpg"
    _sign_in(chrome, daemon, "&next=/photos")
    chromium.click(chrome, chromium.button(chrome, "Pause cloaking"))
    assert chromium.heading(chrome) == "Photos", "the form returns to the page it was sent from"
    assert chrome.find_element(By.CSS_SELECTOR, "header .badge").text == "Paused"
    (daemon.src / name).write_bytes(other_faceless_photo(3))
    daemon.wait_for(lambda: daemon.record(name) is not None, 60, f"{name} to be queued")
    time.sleep(3)  # anything the worker took would be done by now
    assert daemon.record(name).status is Status.QUEUED
    chromium.click(chrome, chrome.find_element(By.LINK_TEXT, "Overview"))
    work = chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=work]").text
    assert "\nPaused: no new photo" in work and f"cam/{name} queued" in work, work
    chromium.click(chrome, chromium.button(chrome, "Resume cloaking"))
    assert chromium.heading(chrome) == "Overview" and chromium.button(chrome, "Pause cloaking").is_displayed()
    daemon.wait_for(lambda: daemon.record(name).status is Status.DONE, PHOTO_SECONDS, f"{name} after resuming")


def test_in_chromium_signing_out_ends_the_session_in_the_daemon(daemon: Daemon, chrome: Chrome) -> None:
    base = _sign_in(chrome, daemon)
    session = chrome.get_cookie("lowkeyd_session")["value"]
    with httpx.Client(base_url=base, cookies={"lowkeyd_session": session}) as same:
        assert same.get("/").status_code == 200
        chromium.click(chrome, chromium.button(chrome, "Sign out"))
        assert chromium.heading(chrome) == "Not allowed" and "Signed out" in chromium.text(chrome)
        assert chrome.get_cookie("lowkeyd_session") is None
        assert same.get("/").status_code == 401, "the daemon ended the session, not only the browser its cookie"
    chrome.get(f"{base}/")
    assert "Not signed in" in chromium.text(chrome)


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


def test_sign_in_returns_only_to_a_page_of_this_site(daemon: Daemon) -> None:
    with httpx.Client() as browser:
        asked = browser.get(f"{daemon.open_link()}&next=/photos%3Fstatus%3Dfailed").text
        assert 'content="0; url=/photos?status=failed"' in asked
        # A browser drops the tab and reads "//evil.example/", another site: the overview instead.
        evil = browser.get(f"{daemon.open_link()}&next=/%09/evil.example/").text
        assert 'content="0; url=/"' in evil and 'href="/"' in evil, evil


def test_a_bad_picture_request_is_a_404_and_pictures_carry_their_own_headers_once(daemon: Daemon) -> None:
    logged = len(daemon.log())
    with daemon.browser() as browser:
        # "²" and "٣" are digits to str.isdigit; 5000 digits are more than int() takes.
        for face in ("²", "٣", "0", "-1", "1.0", " 1", "9" * 5000, ""):
            answer = browser.get("/picture/original/cam/face.jpg", params={"face": face})
            assert answer.status_code == 404 and "No such face in this photo." in answer.text, face[:10]
        picture = browser.get("/picture/thumb/cam/face.jpg")
        page = browser.get("/")
    assert picture.status_code == 200 and picture.headers.get_list("cache-control") == ["private, max-age=300"]
    assert page.headers.get_list("cache-control") == ["no-store"]
    for response in (picture, page):
        assert response.headers.get_list("cross-origin-resource-policy") == ["same-origin"]
    assert "Traceback" not in daemon.log()[logged:]


def test_actions_need_the_page_s_csrf_token_and_origin(daemon: Daemon) -> None:
    with daemon.browser() as browser:
        csrf = _csrf(browser.get("/").text)
        assert browser.post("/pause").status_code == 403
        assert browser.post("/pause", data={"csrf": "0" * len(csrf)}).status_code == 403
        other_origin = {"Origin": "http://evil.example"}
        assert browser.post("/pause", data={"csrf": csrf}, headers=other_origin).status_code == 403
        # Another loopback port is the same site (the cookie goes along) but another origin.
        other_port = {"Origin": f"http://127.0.0.1:{browser.base_url.port + 1}"}
        assert browser.post("/pause", data={"csrf": csrf}, headers=other_port).status_code == 403
        # What a page hiding its origin sends (its own no-referrer, a sandboxed frame): refused, token or not.
        assert browser.post("/pause", data={"csrf": csrf}, headers={"Origin": "null"}).status_code == 403
        assert "Pause cloaking" in browser.get("/").text, "a refused action did nothing"
        assert browser.get("/pause").status_code == 405
        # The page's own forms carry its origin, which the browser sends since its referrer policy allows it.
        page = browser.get("/")
        assert page.headers["referrer-policy"] == "same-origin"
        own = {"Origin": str(browser.base_url).rstrip("/")}
        assert browser.post("/pause", data={"csrf": csrf}, headers=own).status_code == 303
        assert browser.post("/resume", data={"csrf": csrf}, headers=own).status_code == 303
        assert "Pause cloaking" in browser.get("/").text


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
    assert daemon.record("broken.jpg").status is Status.FAILED
    _repair_in_place(daemon.src / "broken.jpg", b"\xff\xd8")
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


def test_the_page_shows_no_file_the_daemon_refuses_to_read(daemon: Daemon) -> None:
    """A link out of the watched folder, a FIFO and a link to a device: the daemon refuses them, so does the page."""
    private = daemon.base / "private"
    private.mkdir()
    (private / "secret.jpg").write_bytes(face_photo(1))
    (daemon.src / "link-out.jpg").symlink_to(private / "secret.jpg")
    os.mkfifo(daemon.src / "pipe.jpg")
    (daemon.src / "zero.jpg").symlink_to("/dev/zero")
    names = ("link-out.jpg", "pipe.jpg", "zero.jpg")
    daemon.wait_for(
        lambda: all((r := daemon.record(n)) is not None and r.status is Status.FAILED for n in names), 120,
        "the daemon to refuse them",
    )
    cache = daemon.base / "state" / "status-page-cache"
    shutil.rmtree(cache, ignore_errors=True)
    with daemon.browser() as browser:
        for name in names:
            why = daemon.record(name).error
            assert why.endswith("not read, not published"), why
            original = browser.get(f"/picture/original/cam/{name}")
            assert original.status_code == 404 and why in original.text, original.text
            for kind in ("thumb", "diff", "cloaked"):
                assert browser.get(f"/picture/{kind}/cam/{name}").status_code == 404, (name, kind)
            page = browser.get(f"/photo/cam/{name}").text
            assert "original not shown" in page and f"not shown: {why}" in page, page
    assert not cache.exists() or not any(cache.iterdir()), "nothing of them was made or kept"
