"""The import graph: no cycle, no layer crossed (scripts/imports.py, which reads the source without importing it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "imports.py"


def _graph(root: Path | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), *extra] + ([] if root is None else ["--root", str(root)])
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_package_has_no_cycle_and_keeps_its_layers() -> None:
    run = _graph()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no cycles" in run.stdout and "no layer crossed" in run.stdout
    # The API reaches serving's jobs, not the daemon's service.
    modules = _graph(None, "--modules").stdout
    routes = next(line for line in modules.splitlines() if line.startswith("lowkeyd.serving.api.routes ->"))
    assert "lowkeyd.serving.jobs" in routes and "lowkeyd.daemon.service" not in routes


def _package(root: Path, modules: dict[str, str]) -> Path:
    """A made-up ``lowkeyd`` under ``root``: each module's source by its path, every folder a package."""
    package = root / "lowkeyd"
    for name, text in modules.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    return package


def test_a_deferred_cycle_and_crossed_layers_fail(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "engine/cloak.py": "from lowkeyd.photo import decode\n",
            "photo/decode.py": "def later():\n    import torch\n",
            # service imports api only inside a function: a cycle all the same once it runs.
            "daemon/api.py": "from lowkeyd.daemon.service import FileJob\n",
            "daemon/service.py": "class FileJob: ...\ndef start():\n    from . import api\n",
            # serving stands under the daemon and the cluster: a deferred import of either crosses all the same.
            "serving/worker.py": "def stop():\n    from lowkeyd.daemon import service\n",
            "serving/outbox.py": "from lowkeyd.cluster.app import Ingress\n",
            "cluster/app.py": "class Ingress: ...\n",
        },
    )
    run = _graph(package)
    assert run.returncode == 1
    assert "cycle: lowkeyd.daemon.api <-> lowkeyd.daemon.service" in run.stdout
    assert "layer crossed: lowkeyd.engine.cloak imports lowkeyd.photo.decode" in run.stdout
    assert "layer crossed: lowkeyd.photo.decode imports torch" in run.stdout
    assert "layer crossed: lowkeyd.serving.worker imports lowkeyd.daemon.service" in run.stdout
    assert "layer crossed: lowkeyd.serving.outbox imports lowkeyd.cluster.app" in run.stdout


def test_imports_only_for_type_checkers_do_not_count(tmp_path: Path) -> None:
    checked_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lowkeyd.b import B\nelse:\n    import json\n"
    package = _package(tmp_path, {"a.py": checked_only, "b.py": "from lowkeyd.a import A\n"})
    run = _graph(package, "--modules")
    assert run.returncode == 0, run.stdout
    assert "lowkeyd.a -> json, typing" in run.stdout and "no cycles" in run.stdout
