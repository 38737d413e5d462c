"""The daemon's cloaking done by a remote lowkeyd service (``remote:`` in the config).

A sync box without a GPU hands each photo to ``lowkeyd serve`` (or another daemon's TCP
API) on the GPU box and publishes the answer into its own outbox, staged and renamed like
any other result. Everything else stays here: watching, the state database, the outbox, the
hook. What the remote applies is its own preset and policies.

When the remote does not answer (down, unreachable, its queue full) a photo waits for it,
tried again every ``retry_seconds``: the worker's queue fills and new photos wait on disk,
so nothing piles up and nothing is published uncloaked. With ``fallback: local`` the
models are loaded here on the first such photo and the photo is cloaked locally instead.
A remote that answers with an error (a photo it cannot read, a face it cannot protect)
fails that photo like a local error would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lowkeyd.engine.presets import Preset
from lowkeyd.errors import ConfigError, LowkeydError
from lowkeyd.photo import Photo, write_bytes
from lowkeyd.serving.api.client import TOKEN_ENV, DaemonBusy, DaemonClient, DaemonUnavailable, outcome_of

if TYPE_CHECKING:
    from lowkeyd.serving.api.wire import Summary
    from lowkeyd.daemon.config import RemoteConfig
    from lowkeyd.pipeline import Outcome, PhotoProtector

log = logging.getLogger(__name__)


def read_remote_token(config: RemoteConfig) -> str:
    """``$LOWKEYD_API_TOKEN``, else the token file, else the default one ``lowkeyd serve`` uses on this machine.

    Never created here: it is the service's secret.
    """
    from lowkeyd.serving.api.server import default_token_path

    token = os.environ.get(TOKEN_ENV)
    if token is None:
        path = config.token_file or default_token_path()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(f"remote: no token: {path} does not exist (name the service's token file, "
                              f"or set ${TOKEN_ENV})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"remote: cannot read the token file {path}: {exc}") from None
    if not token:
        raise ConfigError("remote: the token is empty")
    return token


def remote_client(config: RemoteConfig) -> DaemonClient:
    """A client of the remote service: its token, and its certificate checked against ``ca_file`` if given."""
    return DaemonClient(url=config.url, token=read_remote_token(config), timeout=config.timeout, ca_file=config.ca_file)


class RemoteProtector:
    """A :class:`~lowkeyd.serving.jobs.Protector` whose attack a remote lowkeyd runs."""

    def __init__(
        self,
        client: DaemonClient,
        rules: PhotoProtector,
        *,
        fallback: str,
        retry_seconds: float,
        load_local: Callable[[], PhotoProtector],
    ) -> None:
        """``rules``: a protector without a cloaker, for reading and for lowkeyd's own output."""
        self.client = client
        self._rules = rules
        self.max_pixels = rules.max_pixels
        self.device = f"remote {client.where}"
        self._fallback = fallback
        self._retry_seconds = retry_seconds
        self._load_local = load_local
        self._local: PhotoProtector | None = None
        self._lock = threading.Lock()

    def read(self, src: Path, *, follow_symlinks: bool = True) -> Photo:
        return self._rules.read(src, follow_symlinks=follow_symlinks)

    def protect_without_attack(self, photo: Photo, dest: Path) -> Outcome | None:
        return self._rules.protect_without_attack(photo, dest)

    def protect_files(
        self, jobs: Sequence[tuple[Path | Photo, Path]], *, follow_symlinks: bool = True
    ) -> list[Outcome | LowkeydError]:
        results: list[Outcome | LowkeydError] = []
        for src, dest in jobs:
            try:
                photo = src if isinstance(src, Photo) else self.read(Path(src), follow_symlinks=follow_symlinks)
                results.append(self._protect(photo, Path(dest)))
            except LowkeydError as exc:
                results.append(exc)
        return results

    def protect_bytes(self, data: bytes) -> tuple[bytes | None, Outcome]:
        """For the daemon's own API: the remote's answer as it is (the remote judges lowkeyd's own output too)."""
        answer = self._send(data)
        if answer is None:
            return self._local_protector().protect_bytes(data)
        cloaked, summary = answer
        return cloaked, outcome_of(summary, None, None if cloaked is None else hashlib.sha256(cloaked).hexdigest())

    def _protect(self, photo: Photo, dest: Path) -> Outcome:
        own = self._rules.protect_without_attack(photo, dest)  # lowkeyd's own output is not sent to be cloaked again
        if own is not None:
            return own
        start = time.perf_counter()
        answer = self._send(photo.source_bytes)
        if answer is None:  # the remote is down and local work is allowed
            result = self._local_protector().protect_files([(photo, dest)])[0]
            if isinstance(result, LowkeydError):
                raise result
            return result
        cloaked, summary = answer
        if cloaked is None:
            return outcome_of(summary, None)
        write_bytes(photo, cloaked, dest)
        outcome = outcome_of(summary, dest, hashlib.sha256(cloaked).hexdigest())
        outcome.seconds = time.perf_counter() - start
        return outcome

    def _send(self, data: bytes) -> tuple[bytes | None, Summary] | None:
        """The remote's answer; None when it is down and ``fallback: local``. Waits for it otherwise."""
        down_since = None
        while True:
            try:
                answer = self.client.cloak_bytes(data)
            except (DaemonUnavailable, DaemonBusy) as exc:
                if self._fallback == "local":
                    log.warning("the remote lowkeyd does not answer (%s); cloaking here", exc)
                    return None
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("the remote lowkeyd does not answer (%s); photos wait for it", exc)
                time.sleep(self._retry_seconds)
                continue
            if down_since is not None:
                log.info("the remote lowkeyd answers again after %.0f s", time.monotonic() - down_since)
            return answer

    def _local_protector(self) -> PhotoProtector:
        with self._lock:
            if self._local is None:
                log.info("loading the models here, for while the remote is down")
                self._local = self._load_local()
            return self._local


def remote_protector(
    config: RemoteConfig,
    rules: Callable[[Preset], PhotoProtector],
    load_local: Callable[[], PhotoProtector],
    own_preset: Preset,
) -> RemoteProtector:
    """Connect to the remote (a remote that is down now is waited for later, not an error at start).

    ``rules`` builds the protector that publishes lowkeyd's own output without sending it, under the
    remote's preset as its status states it; ``own_preset`` (the config's) stands in while the remote has
    not said, so that output is described by a real preset either way.
    """
    client = remote_client(config)
    try:
        status = client.status()
    except DaemonUnavailable as exc:
        log.warning("the remote lowkeyd does not answer yet (%s)", exc)
        preset = own_preset
    except LowkeydError as exc:
        client.close()
        raise ConfigError(f"remote: {exc}") from None
    else:
        preset = status.preset_settings or own_preset
    log.info("cloaking on the remote lowkeyd at %s (preset %s)", config.url, preset.name)
    return RemoteProtector(
        client, rules(preset), fallback=config.fallback, retry_seconds=config.retry_seconds, load_local=load_local
    )

