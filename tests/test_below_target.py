"""``below_target``: a face past every recogniser's threshold but short of the preset's target, through a real daemon.

The attack is set so the outcome is certain on the test photo: eight large steps take the face past
every member's threshold within the default budget (1) and within twice it, and a target of 3 (three
times as far past the threshold as a stranger) lies beyond what eight steps reach in either (measured:
dlib at 0.87 and 0.79 against its 0.91 threshold, its target 0.64). ``hold`` publishes nothing and says
why, and "Cloak stronger" on the status page then publishes the copy made with twice the budget;
``publish`` writes the copy and says it is short of the target.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import chromium
import pytest

from chromium import By, Chrome
from daemon_fixtures import face_photo
from lowkeyd.cli.daemon import status_report
from lowkeyd.serving.api.client import STATUS_PAGE_LOGIN
from lowkeyd.engine.presets import get_preset, stronger
from lowkeyd.photo import read_photo
from test_fail_closed import Daemon, files_under, running_daemon

pytestmark = pytest.mark.slow

SHORT_OF_TARGET = {"target": 3.0, "step_size": 0.01, "steps": 8}
# One photo through this attack, a deadline and not a measure: on a 2-core machine shared with other work, one
# such cloak has taken up to 9 minutes.
PHOTO_SECONDS = 900


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    (tmp_path / "src").mkdir()
    config = {
        "sources": [{"path": str(tmp_path / "src"), "name": "cam"}],
        "outbox": str(tmp_path / "out"),
        "attack": SHORT_OF_TARGET,
        "below_target": request.param,
        "notifications": {"enabled": False},
        "work": {"nice": 0, "idle_priority": False, "batch_size": 1},
        "watch": {"settle_seconds": 1, "rescan_interval": 0},
        "retry": {"max_attempts": 1, "backoff_seconds": 1},
        # The published copy names the preset it was cloaked with.
        "mark_published": True,
    }
    yield from running_daemon(tmp_path, config)


def _row(name: str) -> dict | None:
    return next((e for e in status_report()["recent_errors"] if e["path"] == name), None)


@pytest.mark.parametrize("daemon", ["publish"], indirect=True)
def test_publish_writes_the_copy_and_says_it_is_short_of_the_target(daemon: Daemon) -> None:
    (daemon.base / "src" / "face.jpg").write_bytes(face_photo(0))
    daemon.wait_for(lambda: "cam/face.jpg" in files_under(daemon.out), PHOTO_SECONDS, "face.jpg published")
    daemon.wait_for(lambda: "short of the target margin" in daemon.log(), PHOTO_SECONDS, "the cloak's report in the log")
    line = next(x for x in daemon.log().splitlines() if "short of the target margin" in x)
    assert "1 face cloaked; past all 4 attack members" in line, line
    assert _row("face.jpg") is None


@pytest.mark.parametrize("daemon", ["hold"], indirect=True)
def test_hold_publishes_nothing_until_cloak_stronger_on_the_status_page_publishes_twice_the_budget(
    daemon: Daemon, chrome: Chrome
) -> None:
    original = face_photo(0)
    photo = daemon.base / "src" / "face.jpg"
    photo.write_bytes(original)
    daemon.wait_for(lambda: (_row("face.jpg") or {}).get("status") == "held", PHOTO_SECONDS, "face.jpg held")
    error = _row("face.jpg")["error"]
    assert "held: a " in error and "short of the preset's target margin" in error and "not published" in error, error
    assert files_under(daemon.out) == set()

    with daemon.api() as api:
        link = api.post(STATUS_PAGE_LOGIN).json()["url"]  # what `lowkeyd open` hands the browser
    chromium.follow(chrome, link)
    held = chrome.find_element(By.CSS_SELECTOR, "section[aria-labelledby=failures]").text
    assert "cam/face.jpg" in held and "short of the preset's target margin" in held, held
    chrome.get(link.split("/login")[0] + "/photo/cam/face.jpg")
    assert "Why it was held back" in chromium.text(chrome) and chrome.find_element(By.CSS_SELECTOR, ".badge").text == "held back"
    chromium.click(chrome, chromium.button(chrome, "Cloak stronger"))
    assert chromium.heading(chrome) == "cam/face.jpg", "the form returns to the photo's page"

    daemon.wait_for(lambda: "cam/face.jpg" in files_under(daemon.out), PHOTO_SECONDS, "face.jpg published")
    # The configured attack with twice its budget: strong, with the test's own step settings.
    preset = stronger(get_preset("default", **SHORT_OF_TARGET))
    assert preset.name == "strong(step_size=0.01,steps=8,target=3.0)" and preset.budget == 2.0
    assert read_photo(daemon.out / "cam" / "face.jpg").cloak_marker["preset"] == preset.name
    assert photo.read_bytes() == original, "the original is only read"
    assert _row("face.jpg") is None
    chrome.refresh()
    page = chromium.text(chrome)
    assert f"Preset\n{preset.name}" in page and "Why it was held back" not in page, page
    # Published though still short of the target, saying so, with no estimate claimed for settings never measured.
    assert "1 face cloaked; past all 4 attack members" in page and "short of the target margin" in page, page
    assert f"No holdout estimate has been measured for preset {preset.name}" in page
    assert "no match" in page and "still matches" not in page
