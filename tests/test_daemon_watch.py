"""Which files the daemon takes, and when: ignore rules, scans, real watchers, waiting for a file to settle."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from lowkeyd.daemon.config import SourceConfig
from lowkeyd.daemon.ignore import SourceFilter, is_sync_artifact
from lowkeyd.daemon.watch import (
    UNDECODABLE_PERIODS,
    FolderWatcher,
    Settling,
    inotify_limit_message,
    scan,
)

DATA = Path(__file__).parent / "data"


def _source(path: Path, **settings: object) -> SourceConfig:
    return SourceConfig.model_validate({"path": path, **settings})


JPEG = (DATA / "obama.jpg").read_bytes()

SYNC_ARTIFACTS = [
    ".syncthing.IMG_1.jpg.tmp",
    "~syncthing~IMG_1.jpg.tmp",
    ".stfolder/x.jpg",
    ".stversions/IMG_1~20240101-101010.jpg",
    "IMG_1.sync-conflict-20240101-101010-ABCDEFG.jpg",
    ".IMG_1.jpg.~4f2a9c",  # Nextcloud
    "IMG_1.jpg.part",
    ".sync_0123abcd.db",
    ".sync_0123abcd.db-wal",
    "IMG_1.jpg.partial",  # OneDrive, rclone
    ".pending-1700000000-IMG_1.jpg",  # Android MediaStore
    ".trashed-1700000000-IMG_1.jpg",
    ".IMG_1.jpg.icloud",
    "._IMG_1.jpg",
    ".DS_Store",
    "@eaDir/IMG_1.jpg/SYNOPHOTO_THUMB_XL.jpg",
    "IMG_1.xmp",
    "IMG_1.jpg.json",  # Google Takeout
    "IMG_1.aae",
    ".lowkeyd-staging/abc/IMG_1.jpg",
]


@pytest.mark.parametrize("name", SYNC_ARTIFACTS)
def test_sync_client_files_are_never_taken(name: str, tmp_path: Path) -> None:
    relative = PurePosixPath(name)
    assert is_sync_artifact(relative)
    assert not SourceFilter(_source(tmp_path)).wants(relative)


def test_photos_are_taken_by_extension_and_globs(tmp_path: Path) -> None:
    wants = SourceFilter(_source(tmp_path)).wants
    for name in ("IMG_1.jpg", "IMG_1.JPG", "a/b/IMG_2.heic", "x.png", "x.webp", "x.avif"):
        assert wants(PurePosixPath(name)), name
    for name in ("notes.txt", "movie.mp4", "IMG_1", "IMG_1.jpg.bak"):
        assert not wants(PurePosixPath(name)), name

    picky = SourceFilter(_source(tmp_path, include=["*.jpg", "DCIM/*"], exclude=["Screenshots/*", "*_thumb.*"])).wants
    assert picky(PurePosixPath("a/IMG_1.jpg"))
    assert picky(PurePosixPath("DCIM/IMG_1.png"))
    assert not picky(PurePosixPath("IMG_1.png"))
    assert not picky(PurePosixPath("Screenshots/s.jpg"))
    assert not picky(PurePosixPath("a/IMG_1_thumb.jpg"))

    flat = SourceFilter(_source(tmp_path, recursive=False)).wants
    assert flat(PurePosixPath("a.jpg")) and not flat(PurePosixPath("sub/a.jpg"))


def test_scan_finds_photos_and_skips_ignored_folders(tmp_path: Path) -> None:
    for name in ("a.jpg", "sub/b.png", "sub/deeper/c.heic", "notes.txt", ".stversions/old.jpg", "@eaDir/t.jpg", "state/x.jpg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    found = {p.relative_to(tmp_path).as_posix() for p in scan(_source(tmp_path), skip=[tmp_path / "state"])}
    assert found == {"a.jpg", "sub/b.png", "sub/deeper/c.heic"}
    assert {p.name for p in scan(_source(tmp_path, recursive=False))} == {"a.jpg"}


def test_a_file_is_taken_only_once_it_held_still(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    settling = Settling(1.0, {"cam": tmp_path})
    path.write_bytes(JPEG[:1000])
    settling.add("cam", path)
    t0 = time.monotonic()
    assert settling.take(t0) == [] and len(settling) == 1  # first look: the clock starts
    assert settling.take(t0 + 0.9) == []
    with path.open("ab") as f:  # the writer carries on
        f.write(JPEG[1000:5000])
    assert settling.take(t0 + 1.1) == [], "changed since the last look: the clock restarts"
    with path.open("ab") as f:
        f.write(JPEG[5000:])
    assert settling.take(t0 + 2.2) == []
    assert settling.take(t0 + 3.0) == []
    assert settling.take(t0 + 3.3) == [("cam", path)]
    assert len(settling) == 0


def test_a_file_that_holds_still_but_does_not_decode_waits_then_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(JPEG[: len(JPEG) // 2])  # a writer that stalled half way
    settling = Settling(1.0, {"cam": tmp_path})
    settling.add("cam", path)
    t0 = time.monotonic()
    settling.take(t0)
    assert settling.take(t0 + 1.5) == [], "truncated: not taken while it may still be completed"
    assert settling.take(t0 + UNDECODABLE_PERIODS - 1) == []
    assert settling.take(t0 + UNDECODABLE_PERIODS + 0.1) == [("cam", path)], "then taken, to be reported"


def test_take_hands_out_no_more_than_there_is_room_for(tmp_path: Path) -> None:
    settling = Settling(0.5, {"cam": tmp_path})
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(JPEG)
        settling.add("cam", tmp_path / f"{i}.jpg")
    t0 = time.monotonic()
    settling.take(t0)
    first = settling.take(t0 + 1, limit=2)
    assert len(first) == 2 and len(settling) == 1
    assert settling.take(t0 + 1, limit=0) == []
    assert settling.take(t0 + 1) == [("cam", p) for p in {tmp_path / f"{i}.jpg" for i in range(3)} - {p for _, p in first}]


def test_a_file_that_vanishes_while_settling_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(JPEG)
    settling = Settling(0.5, {"cam": tmp_path})
    settling.add("cam", path)
    path.unlink()
    assert settling.take() == [] and len(settling) == 0


class _Seen:
    def __init__(self) -> None:
        self.paths: list[tuple[str, Path]] = []
        self.changed = threading.Condition()

    def __call__(self, source: str, path: Path) -> None:
        with self.changed:
            self.paths.append((source, path))
            self.changed.notify_all()

    def wait_for(self, path: Path, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(p == path for _, p in self.paths), timeout)


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_watchers_report_written_and_moved_in_photos(tmp_path: Path, polling: bool) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(JPEG)
    seen = _Seen()
    watcher = FolderWatcher([_source(src, polling=polling, poll_interval=0.2)], seen, skip=[src / "skipped"])
    watcher.start()
    try:
        time.sleep(0.5)  # let the polling observer take its first snapshot
        (src / "sub" / "written.jpg").write_bytes(JPEG)
        tmp = src / ".syncthing.moved.jpg.tmp"
        tmp.write_bytes(JPEG)
        tmp.rename(src / "moved.jpg")
        os.rename(outside, src / "from-outside.jpg")
        (src / "notes.txt").write_text("not a photo")
        (src / "skipped").mkdir()
        (src / "skipped" / "x.jpg").write_bytes(JPEG)
        for name in ("sub/written.jpg", "moved.jpg", "from-outside.jpg"):
            assert seen.wait_for(src / name, timeout=10), name
        time.sleep(0.5)
    finally:
        watcher.stop()
    names = {p.relative_to(src).as_posix() for _, p in seen.paths}
    assert names == {"sub/written.jpg", "moved.jpg", "from-outside.jpg"}
    assert {s for s, _ in seen.paths} == {"src"}


def test_the_inotify_limit_message_names_the_sysctl(tmp_path: Path) -> None:
    watches = inotify_limit_message(tmp_path, OSError(errno.ENOSPC, "inotify watch limit reached"))
    assert watches is not None and "fs.inotify.max_user_watches" in watches and str(tmp_path) in watches
    instances = inotify_limit_message(tmp_path, OSError(errno.EMFILE, "inotify instance limit reached"))
    assert instances is not None and "fs.inotify.max_user_instances" in instances
    assert inotify_limit_message(tmp_path, OSError(errno.EACCES, "denied")) is None


def _formats(tmp_path: Path) -> dict[str, bytes]:
    from photo_fixtures import heic
    from PIL import Image

    out = {"jpeg": JPEG}
    out["heic"] = heic(tmp_path / "a.heic").read_bytes()
    with Image.open(DATA / "obama.jpg") as im:
        for fmt, kind in (("png", "PNG"), ("webp", "WEBP"), ("avif", "AVIF")):
            im.save(tmp_path / f"a.{fmt}", kind)
            out[fmt] = (tmp_path / f"a.{fmt}").read_bytes()
    return out


def test_a_complete_photo_is_told_from_its_container_and_any_cut_is_not(tmp_path: Path) -> None:
    from lowkeyd.photo.complete import looks_complete

    for name, data in _formats(tmp_path).items():
        assert looks_complete(data), name
        for cut in (10, 100, len(data) // 3, len(data) // 2, len(data) - 300, len(data) - 1):
            assert not looks_complete(data[:cut]), f"{name} cut at {cut} of {len(data)}"
    assert not looks_complete(b"GIF89a" + bytes(100))


def test_links_out_of_the_source_fifos_and_devices_are_handed_out_unopened(tmp_path: Path) -> None:
    from lowkeyd.daemon.candidate import inspect
    from lowkeyd.serving.reading import Refused

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "real.jpg").write_bytes(JPEG)
    (tmp_path / "private.jpg").write_bytes(JPEG)
    (src / "inside.jpg").symlink_to(src / "sub" / "real.jpg")
    (src / "outside.jpg").symlink_to(tmp_path / "private.jpg")
    (src / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(src / "fifo.jpg")
    assert inspect(src / "inside.jpg", src)[0] == src / "sub" / "real.jpg", "a link inside the source is followed"
    for name, why in (("outside.jpg", "outside the watched folder"), ("zero.jpg", "outside"), ("fifo.jpg", "a FIFO")):
        with pytest.raises(Refused, match=why):
            inspect(src / name, src)

    settling = Settling(5.0, {"cam": src})
    for name in ("inside.jpg", "outside.jpg", "zero.jpg", "fifo.jpg"):
        settling.add("cam", src / name)
    # Handed out at the first look (a FIFO is never opened, so this cannot block), the good one waits to settle.
    assert sorted(p.name for _, p in settling.take()) == ["fifo.jpg", "outside.jpg", "zero.jpg"]
    assert len(settling) == 1


def test_a_read_that_hangs_gives_up_in_bounded_time_and_then_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from lowkeyd.serving import reading

    # A read that never returns, as on a hung network mount: it keeps its reader thread, not the caller.
    monkeypatch.setattr(reading, "READ_SECONDS", 0.5)
    readers = reading._Readers(1)
    released = threading.Event()
    # The mount answers after two minutes at the latest: a reader that does not give up returns then and fails
    # the test, instead of hanging it.
    latest = threading.Timer(120, released.set)
    latest.start()
    with pytest.raises(OSError, match="no answer in 0.5 s"):
        readers.run(released.wait, Path("/mnt/hung/a.jpg"))
    with pytest.raises(OSError, match="stopped answering"):
        readers.run(lambda: "never run", Path("/mnt/hung/b.jpg"))
    latest.cancel()
    released.set()  # the mount answers again
    deadline = time.monotonic() + 60
    while True:
        try:
            assert readers.run(lambda: "read", Path("/mnt/hung/c.jpg")) == "read"
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
