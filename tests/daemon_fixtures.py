"""What the daemon and API end-to-end tests share: sample photos to drop in, a short attack, polling."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import piexif
import pytest
from PIL import Image

from lowkeyd.photo import read_photo

DATA = Path(__file__).parent / "data"
# Five large steps inside the widest budget protect the sample faces against every member (measured:
# cosine < 0.2, dlib 0.85) at a fraction of the default preset's cost; visibility does not matter here.
FAST_ATTACK = {"steps": 5, "step_size": 0.012, "lpips_weight": 0, "flip": False, "blur_kernel": 0, "budget": 4}
# The same steps, each on four views (plain and blurred, each flipped): a face that takes a while, for other
# photos to pass or queue behind. (More steps would not do: they fill the budget's box and the LPIPS bound
# then scales the change back below a member's threshold.)
SLOW_ATTACK = {**FAST_ATTACK, "flip": True, "sample_views": False, "blur_kernel": 7}


def jpeg_bytes(image: Image.Image, **save: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, **save)
    return out.getvalue()


def face_photo(i: int) -> bytes:
    """A distinct photo (its own content hash) with a large face, from the sample photos (i < 30)."""
    name = ("obama.jpg", "obama2.jpg", "astronaut.png")[i % 3]
    with Image.open(DATA / name) as im:
        image = im.convert("RGB")
    margin = 3 * (i // 3)
    image = image.crop((margin, margin, image.width - margin, image.height))
    image.thumbnail((560, 700))
    return jpeg_bytes(image)


def faceless_photo(*, gps: bool, variant: int = 0) -> bytes:
    """A real photograph without a face (the legs of a full-body shot), optionally geotagged; each variant its own."""
    with Image.open(DATA / "obama3.jpg") as im:
        image = im.convert("RGB").crop((2 * variant, 1300, 1434, 2333))
    if not gps:
        return jpeg_bytes(image)
    exif = piexif.dump({"GPS": {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((38, 1), (53, 1), (23, 1))}})
    return jpeg_bytes(image, exif=exif)


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen, log: Callable[[], str]
) -> None:
    """Poll ``condition``; fail the test with the daemon's log if it exits or time runs out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"lowkeyd exited ({process.returncode}) waiting for {what}:\n{log()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{log()[-4000:]}")
        time.sleep(0.2)


@dataclass
class RunningDaemon:
    """A ``lowkeyd run`` process a test started in ``base`` (its folders, log and state under it)."""

    base: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def log(self) -> str:
        return (self.base / "daemon.log").read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(condition, timeout, what, self.process, self.log)


def api_ready(socket_path: Path) -> bool:
    """True once the daemon's API answers on its socket and its models are loaded."""
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://lowkeyd") as c:
            return c.get("/v1/status").json()["ready"]
    except httpx.HTTPError:
        return False


def job_result(
    client: httpx.Client, path: Path, wait_for: Callable[[Callable[[], bool], float, str], None], timeout: float
) -> dict[str, Any]:
    """POST a job for ``path`` to the API ``client`` talks to; its view once done or failed (``wait_for`` polls)."""
    created = client.post("/v1/jobs", json={"path": str(path)})
    assert created.status_code == 202, created.text
    url = created.headers["Location"]
    wait_for(lambda: client.get(url).json()["status"] in ("done", "failed"), timeout, "the job")
    return client.get(url).json()


def assert_protected(evaluator, original: bytes, published: Path) -> None:
    photo = read_photo(published)
    assert photo.cloak_marker is None, f"{published} names lowkeyd, which mark_published (off) did not ask for"
    evaluation = evaluator.compare(read_photo(original).rgb, photo.rgb)
    assert evaluation.faces, f"{published}: no face in the original?"
    for face in evaluation.faces:
        assert face.protected["dlib"], f"{published}: dlib still matches (distance {face.scores['dlib']:.2f})"


def stop_daemon(process: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it has not stopped within a minute."""
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)
