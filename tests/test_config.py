"""The daemon's config file: defaults, paths, and a precise error for every kind of mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lowkeyd.cli import main
from lowkeyd.daemon.config import DaemonConfig, load_config
from lowkeyd.engine.presets import PRESETS, get_preset, stronger
from lowkeyd.errors import ConfigError
from lowkeyd.settings import ProtectionSettings

REPO = Path(__file__).resolve().parents[1]


def write_config(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    (tmp_path / "camera").mkdir()
    (tmp_path / "phone" / "DCIM").mkdir(parents=True)
    return tmp_path


def test_minimal_config_gets_defaults_and_absolute_paths(folders: Path) -> None:
    config = load_config(write_config(folders, "sources: [{path: camera}]\noutbox: out\n"))
    assert config.sources[0].path == folders / "camera"
    assert config.sources[0].name == "camera"
    assert config.sources[0].recursive and not config.sources[0].polling
    assert config.outbox == folders / "out"
    # The shipped preset, GPS stripped, copies of photos without faces; nothing says lowkeyd unless asked.
    assert config.protection == ProtectionSettings() and config.protection.preset == get_preset("default")
    assert config.protection.no_face == "copy" and config.protection.strip_gps and not config.protection.mark
    assert config.retry.max_attempts >= 1 and config.work.queue_size >= 1


def test_home_is_expanded(folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(folders))
    config = load_config(write_config(folders / "phone", "sources: [{path: ~/camera}]\noutbox: ~/out\n"))
    assert config.sources[0].path == folders / "camera"
    assert config.outbox == folders / "out"


def test_example_config_is_valid(folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(folders))
    (folders / "Pictures" / "Camera").mkdir(parents=True)
    config = load_config(REPO / "config.example.yaml")
    assert config.sources[0].name == "camera"
    assert config.outbox == folders / "Pictures" / "Cloaked"
    # every key the example shows is a real setting with its documented default
    assert config.model_dump(exclude={"sources", "outbox"}) == DaemonConfig(
        sources=config.sources, outbox=config.outbox
    ).model_dump(exclude={"sources", "outbox"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sources: [{path: camera}]\noutbox: out\nnotifcations: {enabled: false}\n", "notifcations: unknown key"),
        ("sources: [{path: camera, recursiv: true}]\noutbox: out\n", "sources[0].recursiv: unknown key"),
        ("sources: [{path: camera}]\n", "outbox: required key missing"),
        ("sources: [{path: nowhere}]\noutbox: out\n", "sources[0].path: folder does not exist"),
        ("sources: []\noutbox: out\n", "sources: List should have at least 1 item"),
        ("sources: [{path: camera}]\noutbox: out\nno_face: blur\n", "no_face: Input should be 'copy' or 'skip'"),
        ("sources: [{path: camera}]\noutbox: out\nwork: {queue_size: 0}\n", "work.queue_size: Input should be greater"),
        ("sources: [{path: camera}]\noutbox: out\npreset: fast\n", "preset: unknown preset 'fast'"),
        ("sources: [{path: camera}]\noutbox: out\nattack: {stepz: 3}\n", "attack.stepz: unknown key"),
        ("sources: [{path: camera}]\noutbox: out\nattack: {steps: -1}\n", "attack.steps: Input should be greater"),
        (
            "sources: [{path: camera}]\noutbox: out\nattack: {stepsize: 0.003, steps: -1}\n",
            "attack.steps: Input should be greater than or equal to 0; attack.stepsize: unknown key",
        ),
        ("sources: [{path: camera}]\noutbox: out\nattack: {ti_kernel: 4}\n", "attack.ti_kernel: Value error, must be odd"),
        ("sources: [{path: camera}]\noutbox: out\nattack: {name: mine}\n", "attack.name: the preset is named by preset:"),
        ("sources: [{path: camera}]\noutbox: out\ndevice: gpu\n", "device: expected cpu, cuda, cuda:N or mps"),
        ("sources: [{path: camera}]\noutbox: camera/cloaked\n", "is inside sources[0]"),
        ("sources: [{path: phone/DCIM}]\noutbox: phone\n", "is inside the outbox"),
        ("sources: [{path: phone}, {path: phone/DCIM}]\noutbox: out\n", "sources[0] and sources[1] overlap"),
        ("sources: [{path: camera}, {path: phone, name: camera}]\noutbox: out\n", "share the outbox folder 'camera'"),
        ("sources: [{path: camera, name: ../up}]\noutbox: out\n", "sources[0].name: must be a plain"),
        (
            "sources: [{path: camera, on_original_deleted: delete}]\noutbox: out\n",
            "sources[0].on_original_deleted: Input should be 'keep' or 'remove'",
        ),
        (
            "sources: [{path: camera, on_original_renamed: rename}]\noutbox: out\n",
            "sources[0].on_original_renamed: Input should be 'copy' or 'move'",
        ),
        ("sources: [{path: camera}]\noutbox: out\nwork: {max_megapixels: 0}\n", "work.max_megapixels: Input should be"),
        ("sources: [{path: camera}\noutbox: out\n", "not valid YAML at line 2"),
        ("- camera\n", "expected a mapping of settings"),
    ],
)
def test_mistakes_name_the_key(folders: Path, text: str, expected: str) -> None:
    path = write_config(folders, text)
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(path)
    message = str(caught.value)
    assert expected in message
    assert str(path) in message and "\n" not in message
    assert caught.value.exit_code == 78


def test_outbox_that_is_a_file_is_refused(folders: Path) -> None:
    (folders / "out").write_text("not a folder")
    with pytest.raises(ConfigError, match="outbox: not a folder"):
        load_config(write_config(folders, "sources: [{path: camera}]\noutbox: out\n"))


def test_missing_config_file_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWKEYD_CONFIG_DIR", str(tmp_path / "conf"))
    with pytest.raises(ConfigError, match=f"no config file at {tmp_path / 'conf' / 'config.yaml'}"):
        load_config()


def test_every_protection_key_reaches_the_settings_the_protector_gets(folders: Path) -> None:
    text = (
        "sources: [{path: camera}]\noutbox: out\npreset: strong\nattack: {steps: 3}\ndevice: cpu\nstrip_gps: false\n"
        "no_face: skip\nbelow_target: hold\nmark_published: true\nwork: {max_megapixels: 12.5}\n"
    )
    protection = load_config(write_config(folders, text)).protection
    assert protection == ProtectionSettings(
        preset=get_preset("strong", steps=3), device="cpu", strip_gps=False, no_face="skip", below_target="hold",
        max_megapixels=12.5, mark=True,
    )
    assert protection.max_pixels == 12_500_000


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--device", "gpu"], "device: expected cpu, cuda, cuda:N or mps, not 'gpu'"),
        (["--preset", "fast"], "preset: unknown preset 'fast' (choose from paper, default, strong)"),
        (["--set", "steps=-1"], "attack setting 'steps': Input should be greater than or equal to 0"),
    ],
)
def test_cloak_settles_its_settings_in_one_line_before_loading_a_model(
    folders: Path, option: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = folders / "camera" / "a.jpg"
    photo.write_bytes(b"not looked at: the settings are refused first")
    assert main(["cloak", str(photo), "-o", str(folders / "out"), "--no-daemon", *option]) == 1
    assert capsys.readouterr().err == f"lowkeyd: error: {expected}\n"
    assert not (folders / "out").exists()


def test_attack_overrides_reach_the_preset(folders: Path) -> None:
    text = "sources: [{path: camera}]\noutbox: out\npreset: strong\nattack: {steps: 3, target: null}\n"
    preset = load_config(write_config(folders, text)).protection.preset
    # Only the fields given change; the rest are the named preset's.
    assert preset == get_preset("strong", steps=3, target=None)
    assert preset.name == "strong(steps=3,target=None)" and preset.flip == get_preset("strong").flip


def test_cloak_stronger_runs_the_configured_attack_with_twice_its_budget(folders: Path) -> None:
    """What the status page's "Cloak stronger" runs on a held photo: the default's is ``strong`` itself."""
    base = "sources: [{path: camera}]\noutbox: out\n"
    assert stronger(load_config(write_config(folders, base)).protection.preset) is PRESETS["strong"]
    custom = load_config(write_config(folders, base + "attack: {steps: 8, budget: 1.5}\n")).protection.preset
    wider = stronger(custom)
    assert wider == get_preset("default", steps=8, budget=3.0).model_copy(update={"name": wider.name})
    assert wider.name == "strong(budget=3.0,steps=8)"
    # Doubling stops at the widest budget; a preset there already has nothing stronger.
    assert stronger(get_preset("default", budget=3.0)).budget == 4.0
    assert stronger(get_preset("strong", budget=4.0)) is None and stronger(PRESETS["paper"]) is None


def test_check_config_command(folders: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(folders, "sources: [{path: camera, exclude: ['*.png']}]\noutbox: out\nno_face: skip\n")
    assert main(["check-config", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert f"{good}: OK" in out
    assert f"source camera: {folders / 'camera'}" in out and "exclude *.png" in out
    assert "photos without faces: skip" in out and "lowkeyd's tag not written" in out
    assert not (folders / "out").exists(), "checking a config must not create anything"

    bad = write_config(folders, yaml.safe_dump({"sources": [{"path": "camera"}], "outbox": "out", "colour": 1}))
    assert main(["check-config", "--config", str(bad)]) == 78
    assert "colour: unknown key" in capsys.readouterr().err


def test_bad_config_exits_78_from_a_real_process(folders: Path) -> None:
    bad = write_config(folders, "sources: [{path: camera}]\noutbox: out\nwork: {batch_size: many}\n")
    for command in ("check-config", "run"):
        done = subprocess.run(
            [sys.executable, "-m", "lowkeyd", command, "--config", str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "LOWKEYD_STATE_DIR": str(folders / "state")},
        )
        assert done.returncode == 78, done.stderr
        assert "work.batch_size: Input should be a valid integer" in done.stderr
        assert "Traceback" not in done.stderr
