"""The daemon's configuration file: what to watch, where to publish, how to cloak.

Loaded from ``config.yaml`` in the config dir (or ``--config``) and validated
with pydantic (unknown keys refused), so a typo is a one-line
:class:`~lowkeyd.errors.ConfigError` naming the key rather than a setting
silently ignored. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from lowkeyd.engine.presets import Preset
from lowkeyd.errors import ConfigError, LowkeydError
from lowkeyd.paths import config_dir, is_within
from lowkeyd.settings import BelowTargetPolicy, Device, NoFacePolicy, ProtectionSettings

CONFIG_NAME = "config.yaml"


def default_config_path() -> Path:
    return config_dir() / CONFIG_NAME


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _expand(value: Any, info: ValidationInfo) -> Any:
    """``~`` expanded, relative paths taken from the config file's folder, the result absolute."""
    if not isinstance(value, (str, Path)):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = Path(base) / path
    return path.resolve()


def _problem(kind: str, message: str) -> PydanticCustomError:
    # A custom error keeps the message as written (no "Value error, " prefix in what the user reads).
    return PydanticCustomError(kind, message)


class _Folder(_Section):
    """A folder of photos, published to a sub-folder of the outbox named after it."""

    path: Path
    # The sub-folder of the outbox it is mirrored into; defaults to the folder's own name.
    name: str = ""

    _expand_path = field_validator("path", mode="before")(_expand)

    @field_validator("path")
    @classmethod
    def _must_be_folder(cls, path: Path) -> Path:
        if not path.exists():
            raise _problem("missing_source", f"folder does not exist: {path}")
        if not path.is_dir():
            raise _problem("not_a_folder", f"not a folder: {path}")
        return path

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if name and (name in (".", "..") or "/" in name or "\\" in name or name.startswith(".")):
            raise _problem("bad_name", f"must be a plain, visible folder name, not {name!r}")
        return name

    @model_validator(mode="after")
    def _default_name(self) -> _Folder:
        if not self.name:
            object.__setattr__(self, "name", self.path.name)
        return self


class SourceConfig(_Folder):
    """One watched folder: a camera roll, a phone's upload folder, a sync client's folder."""

    recursive: bool = True
    # Globs on the path relative to the source; a glob without "/" matches the file name.
    # No include globs means every photo.
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    # inotify/FSEvents see nothing on network and FUSE mounts: poll those instead.
    polling: bool = False
    poll_interval: float = Field(default=10.0, gt=0)
    # When an original is deleted, its cloaked copy is kept (the default: many people delete photos from
    # the phone once they are synced, and removing the copy would delete it from the cloud too) or removed.
    on_original_deleted: Literal["keep", "remove"] = "keep"
    # When an original is renamed or moved within the source, its cloaked copy follows (move, the
    # default) or a copy is published under the new name and the old one kept (copy).
    on_original_renamed: Literal["copy", "move"] = "move"


class WatchConfig(_Section):
    # A file is taken once its size and mtime have not changed for this long (and it decodes).
    settle_seconds: float = Field(default=2.0, ge=0)
    # Full rescans catch what a watcher missed (an overflowed inotify queue loses events); 0 turns them off.
    rescan_interval: float = Field(default=900.0, ge=0)


class WorkConfig(_Section):
    # Photos waiting for the models; when full, new photos wait on disk until there is room.
    queue_size: int = Field(default=32, ge=1)
    # Photos handed to the engine together when a burst arrives.
    batch_size: int = Field(default=8, ge=1)
    # Largest photo taken, in megapixels; larger ones fail with a clear message. Unset: a photo may peak at
    # an eighth of the machine's memory and half of what the models leave available (lowkeyd.serving.memory).
    max_megapixels: float | None = Field(default=None, gt=0)
    # torch CPU threads; unset: $LOWKEYD_THREADS, else the cores other processes leave idle.
    threads: int | None = Field(default=None, ge=1)
    # Added to the process's nice value so the desktop stays responsive (0 leaves it as is).
    nice: int = Field(default=10, ge=0, le=19)
    # Linux: run only on CPU time nothing else wants (SCHED_IDLE).
    idle_priority: bool = True
    # On stop, how long to let the photos being cloaked finish (seconds); unfinished ones are redone on
    # the next start. Under systemd's TimeoutStopSec (30 s), or the stop ends in a SIGKILL.
    stop_grace: float = Field(default=5.0, ge=0, le=25)


class RetryConfig(_Section):
    # After this many failed attempts a photo is marked failed and reported, never published.
    max_attempts: int = Field(default=3, ge=1)
    # Wait before the second attempt; it doubles for each one after.
    backoff_seconds: float = Field(default=60.0, ge=0)


class NotificationConfig(_Section):
    enabled: bool = True
    # Error notifications are grouped and shown at most this often (seconds).
    error_interval: float = Field(default=600.0, ge=0)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TcpConfig(_Section):
    """The API on a TCP port too: for a container's port, or a GPU box other machines send photos to."""

    # Bind an address other machines can reach (0.0.0.0 in a container): only on a network you trust.
    allow_remote: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    # Every request needs this bearer token. Default: api-token in the config dir, created when
    # missing; $LOWKEYD_API_TOKEN overrides it.
    token_file: Path | None = None

    _expand_token_file = field_validator("token_file", mode="before")(_expand)

    @field_validator("host")
    @classmethod
    def _loopback_unless_allowed(cls, host: str, info: ValidationInfo) -> str:
        if not info.data.get("allow_remote") and not _is_loopback(host):
            raise _problem(
                "remote_bind", f"{host} is reachable from other machines: use 127.0.0.1, or set allow_remote: true"
            )
        return host


class JobRootConfig(_Folder):
    """A folder whose photos tools may hand the daemon by path (POST /v1/jobs); not watched."""


class ApiConfig(_Section):
    # The local API on a Unix socket in the runtime dir, which only this user can open.
    enabled: bool = True
    tcp: TcpConfig | None = None
    # Largest photo a request may send (MB); larger ones are refused (413).
    max_upload_mb: float = Field(default=100, gt=0)
    # A request not answered within this many seconds gets 504.
    timeout: float = Field(default=600, gt=0)
    # Open connections at most (more get 503): bounds the uploads held in memory.
    max_connections: int = Field(default=64, ge=1)
    # Folders tools may hand photos from by path; each is published to <outbox>/<name>/.
    job_roots: list[JobRootConfig] = Field(default_factory=list)


class PublishHookConfig(_Section):
    """A command run for each photo published to the outbox, with LOWKEYD_* variables describing it."""

    # A list of arguments, or one string split like a shell would (no shell runs it).
    command: list[str] = Field(min_length=1)
    # Seconds before a run is killed (and recorded as failed).
    timeout: float = Field(default=300, gt=0)
    # Runs at the same time.
    concurrency: int = Field(default=1, ge=1)

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, command: Any, info: ValidationInfo) -> Any:
        if isinstance(command, str):
            command = shlex.split(command)
        if isinstance(command, list) and command and isinstance(command[0], str) and "/" in command[0]:
            # A script next to the config file is named relative to it, like every other path here.
            command = [str(_expand(command[0], info)), *command[1:]]
        return command


def _overrides_of(preset: type[Preset]) -> type[Preset]:
    """``preset``'s fields, each one optional: what ``attack:`` may change, checked as the preset checks it.

    No field has a value until it is given, so only what the config sets is applied to the named
    preset; a field's constraints and validators are the preset's own, and every bad key is
    reported at once, by its name.
    """

    def _no_name(cls: type, value: str) -> str:
        raise _problem("not_a_setting", "the preset is named by preset:, not in attack:")

    fields: dict[str, Any] = {}
    for name, info in preset.model_fields.items():
        optional = copy.copy(info)
        optional.default = None  # never validated: an unset field is left out of the overrides
        fields[name] = (info.annotation, optional)
    return create_model(
        "AttackSettings",
        __base__=preset,
        __validators__={"_no_name": field_validator("name")(_no_name)},
        **fields,
    )


# ``attack:`` in the config: single fields of the chosen preset, e.g. {steps: 30}. A type checker
# cannot follow a model built at run time; to it, the overrides are a Preset, which they subclass.
if TYPE_CHECKING:
    AttackSettings = Preset
else:
    AttackSettings = _overrides_of(Preset)


class RemoteConfig(_Section):
    """A lowkeyd service that does the cloaking (``lowkeyd serve`` on a GPU box, or a daemon's TCP API)."""

    url: str
    # The service's bearer token; $LOWKEYD_API_TOKEN overrides it; default: the api-token file of this machine.
    token_file: Path | None = None
    # For an https:// url: the CA (or the service's own self-signed certificate) to check it against.
    ca_file: Path | None = None
    # While the remote does not answer: photos wait for it (wait), or are cloaked here (local: the
    # models are loaded on the first such photo). Never published uncloaked either way.
    fallback: Literal["wait", "local"] = "wait"
    # How often a remote that does not answer is tried again (seconds).
    retry_seconds: float = Field(default=10.0, gt=0)
    # A photo not answered within this many seconds is failed (and retried as the retry: section says).
    timeout: float = Field(default=600.0, gt=0)

    _expand_token_file = field_validator("token_file", "ca_file", mode="before")(_expand)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise _problem("bad_url", f"expected http://HOST:PORT or https://..., not {url!r}")
        return url.rstrip("/")


class DaemonConfig(_Section):
    sources: list[SourceConfig] = Field(min_length=1)
    outbox: Path
    preset: str = "default"
    device: Device | None = None
    # Preset fields to override, e.g. {steps: 30}.
    attack: AttackSettings = AttackSettings()
    # A photo without a face: publish its sanitised copy, or leave it out of the outbox.
    no_face: NoFacePolicy = "copy"
    # A face the visibility budget let past every recogniser's threshold but not to the preset's
    # target margin: publish it as it is (with its estimate), or hold the photo back.
    below_target: BelowTargetPolicy = "publish"
    strip_gps: bool = True
    # Write lowkeyd's XMP marker (version, preset, models) into published photos; off, they say nothing of
    # lowkeyd. The state database, not the marker, is what keeps a photo from being cloaked twice.
    mark_published: bool = False
    notifications: NotificationConfig = NotificationConfig()
    work: WorkConfig = WorkConfig()
    watch: WatchConfig = WatchConfig()
    retry: RetryConfig = RetryConfig()
    api: ApiConfig = ApiConfig()
    # A command run for each photo published to the outbox (e.g. an upload); none by default.
    on_published: PublishHookConfig | None = None
    # Offload the cloaking to a lowkeyd service; none by default (the models run here).
    remote: RemoteConfig | None = None

    _expand_outbox = field_validator("outbox", mode="before")(_expand)

    @field_validator("outbox")
    @classmethod
    def _outbox_is_folder(cls, outbox: Path) -> Path:
        if outbox.exists() and not outbox.is_dir():
            raise _problem("not_a_folder", f"not a folder: {outbox}")
        return outbox

    _protection: ProtectionSettings = PrivateAttr()

    @model_validator(mode="after")
    def _resolve_protection(self) -> DaemonConfig:
        try:
            # The one place the preset is resolved: everything downstream is handed this object.
            self._protection = ProtectionSettings.resolve(
                self.preset, self.attack.model_dump(exclude_unset=True), device=self.device, strip_gps=self.strip_gps,
                no_face=self.no_face, below_target=self.below_target, max_megapixels=self.work.max_megapixels,
                mark=self.mark_published,
            )
        except LowkeydError as exc:  # the preset's name, or a combination of attack fields each checked above
            raise _problem("bad_protection", str(exc)) from None
        return self

    @property
    def protection(self) -> ProtectionSettings:
        """How the daemon protects photos: ``preset`` with ``attack`` applied, and the photo policies."""
        return self._protection

    @model_validator(mode="after")
    def _folders_apart(self) -> DaemonConfig:
        names: dict[str, str] = {}

        def claim(name: str, where: str) -> None:
            # Sources and job roots each publish into outbox/<name>: no two may share one.
            if name in names:
                raise _problem(
                    "duplicate_name",
                    f"{names[name]} and {where} would share the outbox folder {name!r}: give one a different name",
                )
            names[name] = where

        for i, source in enumerate(self.sources):
            # Each of these would have the daemon cloak its own output, or the same photo twice.
            if is_within(self.outbox, source.path):
                raise _problem("outbox_in_source", f"outbox {self.outbox} is inside sources[{i}] {source.path}")
            if is_within(source.path, self.outbox):
                raise _problem("source_in_outbox", f"sources[{i}] {source.path} is inside the outbox {self.outbox}")
            for j, other in enumerate(self.sources[:i]):
                if is_within(source.path, other.path) or is_within(other.path, source.path):
                    raise _problem("sources_overlap", f"sources[{j}] and sources[{i}] overlap: {other.path}, {source.path}")
            claim(source.name, f"sources[{i}] {source.path}")
        for i, root in enumerate(self.api.job_roots):
            where = f"api.job_roots[{i}] {root.path}"
            if is_within(self.outbox, root.path) or is_within(root.path, self.outbox):
                raise _problem("root_and_outbox", f"{where} and the outbox {self.outbox} overlap")
            for j, source in enumerate(self.sources):
                # The watcher would publish its photos too, to another outbox folder.
                if is_within(root.path, source.path) or is_within(source.path, root.path):
                    raise _problem("root_and_source", f"{where} and sources[{j}] {source.path} overlap")
            claim(root.name, where)
        return self


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Any) -> str:
    where = _location(error["loc"])
    message = {
        "extra_forbidden": "unknown key",
        "missing": "required key missing",
    }.get(error["type"], error["msg"])
    return f"{where}: {message}" if where else message


def parse_config(data: Any, *, base_dir: Path, origin: str) -> DaemonConfig:
    """Validate already-parsed YAML; ``origin`` names the file in error messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of settings at the top level")
    try:
        return DaemonConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(f"{origin}: " + "; ".join(_describe(e) for e in exc.errors())) from None


def load_config(path: Path | None = None) -> DaemonConfig:
    """The config at ``path`` (default: ``config.yaml`` in the config dir), validated."""
    path = (path or default_config_path()).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {path}: copy config.example.yaml there, or pass --config"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, base_dir=path.resolve().parent, origin=str(path))
