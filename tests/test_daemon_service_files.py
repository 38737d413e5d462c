"""Talking to the service manager and the desktop: sd_notify, unit files, install-service, journal logs, notifications."""

from __future__ import annotations

import logging
import os
import plistlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lowkeyd.cli import main
from lowkeyd.daemon.system import launchd, systemd
from lowkeyd.daemon.system.notify import Notifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    yield server
    server.close()


def test_sd_notify_sends_one_datagram_of_assignments(notify_socket: socket.socket) -> None:
    assert systemd.notify("READY=1", "STATUS=3 done")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=3 done"
    assert systemd.notify("WATCHDOG=1")
    assert notify_socket.recv(4096) == b"WATCHDOG=1"


def test_sd_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"lowkeyd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert server.recv(100) == b"READY=1"


def test_sd_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not systemd.notify("READY=1"), "a vanished socket is logged, not raised"


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None, "the watchdog is someone else's"


def test_checked_in_service_files_match_what_install_writes() -> None:
    assert (REPO / "systemd" / "lowkeyd.service").read_text() == systemd.render_unit()
    assert (REPO / "service" / "launchd" / "lowkeyd.plist").read_bytes() == launchd.render_plist()


def test_unit_settings() -> None:
    unit = systemd.render_unit()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "WatchdogSec=",
        "Nice=10",
        "CPUSchedulingPolicy=idle",
        "ExecStart=%h/.local/bin/lowkeyd run",
        "WantedBy=default.target",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert any(setting.startswith(line) for setting in unit.splitlines()), line
    plist = plistlib.loads(launchd.render_plist(["/opt/lowkeyd", "run"], log_path=Path("/Users/me/Library/Logs/lowkeyd.log")))
    assert plist["ProgramArguments"] == ["/opt/lowkeyd", "run"]
    assert plist["ProcessType"] == "Background" and plist["StandardErrorPath"].endswith("lowkeyd.log")
    assert plist["Umask"] == 0o077


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    (tmp_path / "run").mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    for name, unit in (("default", systemd.render_unit()), ("cpu", systemd.render_unit(cpu_only=True))):
        (tmp_path / f"{name}.service").write_text(unit)
        scored = subprocess.run(
            ["systemd-analyze", "security", "--user", "--offline=true", str(tmp_path / f"{name}.service")],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )
        score = scored.stdout.rsplit("Overall exposure level for", 1)[-1].split(":")[1].split()[0]
        assert float(score) <= 2.5, scored.stdout  # README, Limits: 2.2


def test_exec_start_quoting() -> None:
    assert systemd.command_line(["/usr/bin/python3", "-m", "lowkeyd", "run"]) == "/usr/bin/python3 -m lowkeyd run"
    assert (
        systemd.command_line(["/opt/my env/python", "--config", '/a/"b"/100%/$HOME.yaml'])
        == '"/opt/my env/python" --config "/a/\\"b\\"/100%%/$$HOME.yaml"'
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "my photos").mkdir()
    path = tmp_path / "conf dir" / "config.yaml"
    path.parent.mkdir()
    path.write_text(f"sources: [{{path: '{tmp_path / 'my photos'}'}}]\noutbox: '{tmp_path / 'out'}'\n")
    return path


def test_install_service_writes_a_unit_systemd_accepts(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert main(["install-service", "--config", str(config_file)]) == 0
    unit_path = tmp_path / "xdg" / "systemd" / "user" / "lowkeyd.service"
    out = capsys.readouterr().out
    assert f"wrote {unit_path}" in out
    assert "systemctl --user enable lowkeyd.service" in out and "systemctl --user restart lowkeyd.service" in out
    unit = unit_path.read_text()
    exec_start = f'ExecStart={sys.executable} -m lowkeyd run --config "{config_file}"'
    assert exec_start in unit.splitlines()
    assert f"ReadWritePaths=-%h -%t -{tmp_path}" in unit.splitlines(), "the outbox, outside the home, is writable"
    assert "RestartPreventExitStatus=78" in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verified.returncode == 0 and "lowkeyd.service" not in verified.stderr, verified.stderr


def test_install_service_print_writes_nothing(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert main(["install-service", "--config", str(config_file), "--print"]) == 0
    assert capsys.readouterr().out == systemd.render_unit(
        systemd.command_line([sys.executable, "-m", "lowkeyd", "run", "--config", str(config_file)]),
        writable=[tmp_path],
    )
    assert not (tmp_path / "xdg").exists()


def test_install_service_names_the_config_it_checked(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found through the installer's environment, which the service will not have.
    monkeypatch.setenv("LOWKEYD_CONFIG_DIR", str(config_file.parent))
    assert main(["install-service", "--print"]) == 0
    assert f'--config "{config_file}"' in capsys.readouterr().out


def test_install_service_warns_of_folders_the_units_private_tmp_hides(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not tmp_path.resolve().is_relative_to(Path("/tmp").resolve()):
        pytest.skip("needs pytest's temporary folders under /tmp")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert main(["install-service", "--config", str(config_file), "--print"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    named = {"source my photos:": tmp_path / "my photos", "the outbox": tmp_path / "out", "the config": config_file}
    for what, path in named.items():
        assert any(f"{what} {path} is under /tmp, which the unit's PrivateTmp=yes hides" in w for w in warnings), what
    assert systemd.hidden_by_private_tmp({"home": Path.home(), "var": Path("/var/lib")}) == []
    assert len(systemd.hidden_by_private_tmp({"venv": Path("/var/tmp/venv"), "tmp": Path("/tmp")})) == 2


def test_install_service_refuses_a_bad_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    bad = tmp_path / "config.yaml"
    bad.write_text("sources: [{path: nowhere}]\noutbox: out\n")
    assert main(["install-service", "--config", str(bad)]) == 78
    assert not (tmp_path / "xdg").exists()


_LOG_SCRIPT = """
import logging
from lowkeyd.daemon.logs import setup_daemon_logging
setup_daemon_logging()
log = logging.getLogger("lowkeyd.test")
log.debug("hidden")
log.info("ready")
log.warning("careful")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("broke")
"""


def _log_lines(tmp_path: Path, journal: bool) -> list[str]:
    err_path = tmp_path / "stderr"
    with err_path.open("w") as err:
        st = os.fstat(err.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", _LOG_SCRIPT], stderr=err, env=env, timeout=60, check=True)
    return err_path.read_text().splitlines()


def test_logs_carry_journal_priorities_when_stderr_is_the_journal(tmp_path: Path) -> None:
    lines = _log_lines(tmp_path, journal=True)
    assert lines[:3] == ["<6>lowkeyd.test: ready", "<4>lowkeyd.test: careful", "<3>lowkeyd.test: broke"]
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[3:]), "each traceback line is an error"
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_logs_are_plain_with_times_elsewhere(tmp_path: Path) -> None:
    lines = _log_lines(tmp_path, journal=False)
    assert lines[0].endswith("INFO lowkeyd.test: ready") and lines[0][:4].isdigit()
    assert not any(line.startswith("<") for line in lines)


def test_notifications_are_grouped_per_burst(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    notifier = Notifier(enabled=True, error_interval=600)
    caplog.set_level(logging.INFO, logger="lowkeyd.daemon.system.notify")
    for faces in (1, 2, 1):
        notifier.photo_done("cloaked", faces)
    notifier.photo_done("no_face", 0)
    assert notifier.flush(idle=False) == [], "the burst is still going"
    assert notifier.flush(idle=True) == ["Cloaked 3 photos, 4 faces; 1 without faces"]
    assert notifier.flush(idle=True) == []
    notifier.photo_done("cloaked", 1)
    assert notifier.flush(idle=True) == ["Cloaked 1 photo, 1 face"]
    assert "Cloaked 3 photos, 4 faces; 1 without faces" in caplog.text, "headless: the log is the notification"


def test_error_notifications_are_rate_limited() -> None:
    notifier = Notifier(enabled=False, error_interval=600)
    notifier.photo_failed("cam/a.jpg", "not a photo")
    assert notifier.flush(idle=False, now=1000.0) == [
        "Could not cloak 1 photo, not published (cam/a.jpg: not a photo)"
    ]
    notifier.photo_failed("cam/b.jpg", "truncated")
    notifier.photo_failed("cam/c.jpg", "truncated")
    assert notifier.flush(idle=False, now=1300.0) == []
    assert notifier.flush(idle=False, now=1600.0) == [
        "Could not cloak 2 photos, not published (cam/b.jpg: truncated)"
    ]


def test_a_held_photo_is_announced_as_held_not_as_a_failure() -> None:
    notifier = Notifier(enabled=False, error_interval=600)
    notifier.photo_held("cam/a.jpg", "1 face short of the target")
    notifier.photo_failed("cam/b.jpg", "truncated")
    assert notifier.flush(idle=False, now=1000.0) == [
        "Could not cloak 1 photo, not published (cam/b.jpg: truncated)",
        "Held back 1 photo, not published (cam/a.jpg: 1 face short of the target); "
        "the status page can cloak it stronger",
    ]
    notifier.photo_held("cam/c.jpg", "short")
    assert notifier.flush(idle=False, now=1300.0) == [], "rate-limited like failures"


def test_a_broken_notification_service_falls_back_to_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A session bus address but no backend plyer can use (no dbus module, no notify-send here).
    if shutil.which("notify-send"):
        pytest.skip("a notify-send is installed: plyer would use it")
    pytest.importorskip("plyer")
    try:
        import dbus  # noqa: F401

        pytest.skip("python-dbus is installed: plyer would use it")
    except ImportError:
        pass
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
    notifier = Notifier(enabled=True, error_interval=0)
    caplog.set_level(logging.INFO, logger="lowkeyd.daemon.system.notify")
    notifier.photo_done("cloaked", 2)
    assert notifier.flush(idle=True) == ["Cloaked 1 photo, 2 faces"]
    assert "desktop notifications unavailable" in caplog.text
    notifier.photo_done("cloaked", 1)
    assert notifier.flush(idle=True) == ["Cloaked 1 photo, 1 face"], "and it keeps going"


def test_a_newline_in_a_file_name_cannot_forge_a_log_line(tmp_path: Path) -> None:
    err_path = tmp_path / "stderr"
    script = (
        "import logging\nfrom lowkeyd.daemon.logs import setup_daemon_logging\nsetup_daemon_logging()\n"
        "logging.getLogger('lowkeyd.test').info('%s: done', 'cam/a.jpg\\nERROR lowkeyd: forged\\x1b[2J')\n"
    )
    with err_path.open("w") as err:
        subprocess.run([sys.executable, "-c", script], stderr=err, timeout=60, check=True)
    lines = err_path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("cam/a.jpg\\nERROR lowkeyd: forged\\x1b[2J: done")
