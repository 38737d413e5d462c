"""The outbox and the user's own files in it, and the outbox as a mount point.

lowkeyd never overwrites, moves or removes a file it did not write. Real objects on real files: the state database, the outbox and the follower the
daemon runs, with photos published the way the worker publishes them (staged,
then moved into place).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowkeyd.cli import main
from lowkeyd.cli.daemon import status_report
from lowkeyd.daemon.config import SourceConfig
from lowkeyd.daemon.follow import Follower
from lowkeyd.daemon.state import FileKey, StateDB, Status
from lowkeyd.serving.jobs import Published
from lowkeyd.serving.mounts import is_mount_point, mount_points
from lowkeyd.serving.outbox import STAGING_NAME, Outbox, OutboxUnavailable
from lowkeyd.serving.reading import content_hash

DATA = Path(__file__).parent / "data"


class World:
    """A source folder ``cam``, an outbox, the state database and a follower acting on ``policy``."""

    def __init__(self, tmp_path: Path, **policy: str) -> None:
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.out = tmp_path / "out"
        self.state = StateDB(tmp_path / "state" / "state.sqlite3")
        self.outbox = Outbox(self.out, self.state)
        self.events: list[Published] = []
        source = SourceConfig(path=self.src, name="cam", **policy)
        self.follower = Follower([source], self.state, self.outbox, self.events.append, "default", grace=0)

    def publish(self, name: str, original: bytes, cloaked: bytes) -> Path:
        """``name`` in the source, and its cloaked copy published and recorded as the daemon does it."""
        path = self.src / name
        path.write_bytes(original)
        dest = self.outbox.destination("cam", Path(name))
        staged = self.outbox.stage(dest)
        staged.write_bytes(cloaked)
        written = self.outbox.publish(staged, dest)
        self.state.mark_queued("cam", name, FileKey.of(path), content_hash(path))
        self.state.mark_done(
            "cam", name, outcome="cloaked", faces=1, faces_too_small=0, seconds=1.0, output=written,
            output_sha256=content_hash(written),
        )
        return written

    def published(self) -> dict[str, bytes]:
        return {p.relative_to(self.out).as_posix(): p.read_bytes() for p in self.out.rglob("*") if p.is_file() and not p.is_symlink()}


def _replace_like_an_editor(path: Path, data: bytes) -> None:
    """Save over ``path`` the way editors and sync clients do: a new file renamed into place."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("LOWKEYD_STATE_DIR", str(tmp_path / "state"))
    return World(tmp_path, on_original_deleted="remove", on_original_renamed="move")


def test_a_copy_the_user_replaced_survives_its_original_being_deleted(world: World, caplog: pytest.LogCaptureFixture) -> None:
    a = world.publish("a.jpg", b"original a", b"cloaked a")
    world.publish("b.jpg", b"original b", b"cloaked b")
    _replace_like_an_editor(a, b"the user's own a")
    os.utime(a, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    for name in ("a.jpg", "b.jpg"):
        (world.src / name).unlink()
        world.follower.gone("cam", world.src / name)
    world.follower.apply_due(settled=True)

    assert world.published() == {"cam/a.jpg": b"the user's own a"}, "b's copy removed, the user's a left"
    assert [e.event for e in world.events] == ["removed"]
    assert world.state.get("cam", "a.jpg").status is Status.GONE
    assert world.state.history("cam", "a.jpg")[-1] == ("left_alone", str(a))
    assert world.state.event_counts()["left_alone"] == 1
    assert sum("left alone" in r.getMessage() for r in caplog.records) == 1, "said once, in the log"
    assert world.outbox.foreign(a) and not world.outbox.holds(a)


def test_a_copy_rewritten_with_the_same_bytes_is_still_lowkeyds(world: World) -> None:
    """The content decides, not the inode or the mtime: a sync client downloading the copy again changes neither."""
    a = world.publish("a.jpg", b"original a", b"cloaked a")
    _replace_like_an_editor(a, b"cloaked a")
    (world.src / "a.jpg").unlink()
    world.follower.gone("cam", world.src / "a.jpg")
    world.follower.apply_due(settled=True)
    assert world.published() == {}
    assert [e.event for e in world.events] == ["removed"]


def test_a_users_file_at_the_destination_is_not_overwritten(world: World, caplog: pytest.LogCaptureFixture) -> None:
    (world.out / "cam").mkdir(parents=True)
    (world.out / "cam" / "a.jpg").write_bytes(b"the user's own a")
    (world.out / "cam" / "b (lowkeyd 2).jpg").write_bytes(b"the user's own b 2")
    (world.out / "cam" / "c.jpg").symlink_to(world.src / "c.jpg")

    a = world.publish("a.jpg", b"original a", b"cloaked a")
    b = world.publish("b.jpg", b"original b", b"cloaked b")
    world.publish("b.jpg", b"original b", b"cloaked b")  # cloaked again (say, after an edit): its own copy replaced
    c = world.publish("c.jpg", b"original c", b"cloaked c")

    assert (a.name, c.name) == ("a (lowkeyd 2).jpg", "c (lowkeyd 2).jpg")
    assert b.name == "b.jpg"
    assert (world.out / "cam" / "c.jpg").is_symlink()
    assert world.published() == {
        "cam/a.jpg": b"the user's own a",
        "cam/a (lowkeyd 2).jpg": b"cloaked a",
        "cam/b.jpg": b"cloaked b",
        "cam/b (lowkeyd 2).jpg": b"the user's own b 2",
        "cam/c (lowkeyd 2).jpg": b"cloaked c",
    }
    assert world.state.get("cam", "a.jpg").output == str(a)
    assert world.state.published_aside() == 2
    assert sum("is not a file lowkeyd wrote" in r.getMessage() for r in caplog.records) == 2

    world.publish("a.jpg", b"original a, edited", b"cloaked a, edited")
    assert world.published()["cam/a (lowkeyd 2).jpg"] == b"cloaked a, edited", "its own aside copy replaced"
    assert "cam/a (lowkeyd 3).jpg" not in world.published()
    assert sum("is not a file lowkeyd wrote" in r.getMessage() for r in caplog.records) == 2, "not said again"


def test_renaming_an_original_onto_a_users_file_leaves_that_file(world: World) -> None:
    world.publish("a.jpg", b"original a", b"cloaked a")
    (world.out / "cam" / "mine.jpg").write_bytes(b"the user's own")
    earlier = world.state.get("cam", "a.jpg")
    os.rename(world.src / "a.jpg", world.src / "mine.jpg")
    new = world.src / "mine.jpg"

    dest = world.outbox.destination("cam", Path("mine.jpg"))
    assert world.follower.renamed(earlier, "cam", "mine.jpg", FileKey.of(new), content_hash(new), dest)

    assert world.published() == {"cam/mine.jpg": b"the user's own", "cam/mine (lowkeyd 2).jpg": b"cloaked a"}
    moved = world.out / "cam" / "mine (lowkeyd 2).jpg"
    assert world.state.get("cam", "mine.jpg").output == str(moved)
    assert world.outbox.holds(moved) and not world.outbox.holds(world.out / "cam" / "a.jpg")
    assert [(e.event, e.previous) for e in world.events] == [("renamed", world.out / "cam" / "a.jpg")]


def test_a_replaced_copy_is_not_moved_when_its_original_is_renamed(world: World) -> None:
    a = world.publish("a.jpg", b"original a", b"cloaked a")
    _replace_like_an_editor(a, b"the user's own a")
    earlier = world.state.get("cam", "a.jpg")
    os.rename(world.src / "a.jpg", world.src / "a2.jpg")
    new = world.src / "a2.jpg"
    dest = world.outbox.destination("cam", Path("a2.jpg"))
    assert not world.follower.renamed(earlier, "cam", "a2.jpg", FileKey.of(new), content_hash(new), dest), (
        "nothing of lowkeyd's to move: the photo is to be cloaked again"
    )
    assert world.published() == {"cam/a.jpg": b"the user's own a"}
    assert ("left_alone", str(a)) in world.state.history("cam", "a.jpg")


def test_status_says_what_was_left_alone(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (world.out / "cam").mkdir(parents=True)
    (world.out / "cam" / "b.jpg").write_bytes(b"the user's own b")
    a = world.publish("a.jpg", b"original a", b"cloaked a")
    world.publish("b.jpg", b"original b", b"cloaked b")
    _replace_like_an_editor(a, b"the user's own a")
    (world.src / "a.jpg").unlink()
    world.follower.gone("cam", world.src / "a.jpg")
    world.follower.apply_due(settled=True)
    assert main(["status"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert (
        "files of yours in the outbox, never overwritten or removed: 1 with a copy published beside it as "
        "\"name (lowkeyd 2)\", 1 left where lowkeyd's copy had been"
    ) in shown


def test_copies_published_before_their_hashes_were_kept_are_still_known(world: World, tmp_path: Path) -> None:
    a = world.publish("a.jpg", b"original a", b"cloaked a")
    b = world.publish("b.jpg", b"original b", b"cloaked b")
    world.state.close()
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as raw:  # the database as version 1 left it
        raw.execute("DROP TABLE published")
        raw.execute("PRAGMA user_version=1")
    raw.close()
    assert status_report()["published_aside"] == 0, "lowkeyd status reads it before the daemon upgrades it"
    state = StateDB(tmp_path / "state" / "state.sqlite3")
    outbox = Outbox(world.out, state)
    _replace_like_an_editor(b, b"the user's own b")
    assert outbox.holds(a), "its content is one lowkeyd published"
    assert not outbox.holds(b)
    state.close()


MOUNTINFO = rb"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
45 27 254:0 /home/u/drive /media/u/My\040Photos rw,relatime - ext4 /dev/vda rw
46 27 254:0 /srv/out /home/u/out\134new rw,relatime shared:5 - ext4 /dev/vda rw
"""


def test_the_mount_table_is_read_as_findmnt_reads_it() -> None:
    points = mount_points(MOUNTINFO)
    assert points == {Path("/proc"), Path("/"), Path("/media/u/My Photos"), Path("/home/u/out\\new")}
    assert is_mount_point(Path("/")) and is_mount_point(Path("/proc"))
    assert not is_mount_point(Path(__file__).parent)


@pytest.fixture
def bind_mounted_outbox(tmp_path: Path) -> Iterator[Path]:
    """An outbox folder with a folder of the same file system bind-mounted on it (root only)."""
    drive, out = tmp_path / "drive", tmp_path / "out"
    drive.mkdir()
    out.mkdir()
    done = subprocess.run(["mount", "--bind", str(drive), str(out)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"a bind mount needs root: {done.stderr.strip()}")
    yield out
    subprocess.run(["umount", "-l", str(out)], check=False)


def test_a_bind_mount_of_the_same_file_system_is_a_mount_point(
    bind_mounted_outbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOWKEYD_STATE_DIR", str(tmp_path / "state"))
    out = bind_mounted_outbox
    assert out.stat().st_dev == out.parent.stat().st_dev, "one file system: a device comparison cannot tell"
    assert is_mount_point(out)
    outbox = Outbox(out, StateDB(tmp_path / "state" / "state.sqlite3"))
    # rename(2) does not cross mounts, even of one file system: staging is inside the mount.
    assert outbox.staging == out / STAGING_NAME
    dest = outbox.destination("cam", Path("a.jpg"))
    staged = outbox.stage(dest)
    staged.write_bytes(b"cloaked")
    assert outbox.publish(staged, dest).read_bytes() == b"cloaked"
    assert (tmp_path / "drive" / "cam" / "a.jpg").read_bytes() == b"cloaked"
    assert outbox.unavailable() is None

    subprocess.run(["umount", str(out)], check=True)
    assert outbox.unavailable() == f"the outbox {out} is not mounted"
    with pytest.raises(OutboxUnavailable):
        outbox.stage(dest)
