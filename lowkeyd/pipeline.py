"""Photo file in, protected photo file out: the photo layer and the engine, wired once.

Used by ``lowkeyd cloak``, the daemon and the local API alike, so every path
applies the same rules:

* the original is only ever read;
* a face that could not be protected is never written: the photo fails instead;
* a photo lowkeyd already cloaked is not cloaked twice, when the caller knows this exact
  file (its content hash) as lowkeyd's output; the file itself says nothing of lowkeyd
  unless ``mark`` asks for the XMP marker (which proves nothing: anyone can write it);
* every published file is sanitised (GPS, thumbnails, face regions...), and what was left
  out is reported in the outcome;
* a photo without faces is published sanitised (metadata rules applied) or
  skipped, as the ``no_face`` policy says.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from lowkeyd import __version__
from lowkeyd.engine.transfer import transfer_estimate
from lowkeyd.errors import EngineError, LowkeydError
from lowkeyd.photo import Photo, encode_photo, read_photo, write_bytes
from lowkeyd.settings import BelowTargetPolicy, ProtectionSettings

if TYPE_CHECKING:
    import numpy as np

    from lowkeyd.engine.cloak import CloakResult, FaceReport
    from lowkeyd.engine.faces import FaceDetector
    from lowkeyd.engine.models.base import FaceEmbedder
    from lowkeyd.engine.presets import Preset

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = ProtectionSettings()

Status = Literal["cloaked", "no_face", "already_cloaked"]


class HeldBelowTarget(EngineError):
    """Not published under ``below_target: hold``: a face is short of the preset's target margin."""


@dataclass
class Outcome:
    status: Status
    faces_cloaked: int
    faces_too_small: int
    seconds: float
    written: Path | None  # None when nothing was written (skipped, or bytes returned instead)
    message: str
    preset: Preset  # the attack settings this photo went through (or would have, had it had a face)
    faces: list[FaceReport] = field(default_factory=list)
    dropped: tuple[str, ...] = ()  # what the published file leaves out of the original, in words
    sha256: str | None = None  # content hash of what was written or returned, for "lowkeyd wrote this"


class CloakEngine(Protocol):
    """The attack a :class:`PhotoProtector` runs: the resident :class:`~lowkeyd.engine.cloak.Cloaker`, or the
    model replicas of ``lowkeyd serve`` (:class:`~lowkeyd.cluster.app.ServeCloaker`)."""

    @property
    def preset(self) -> Preset: ...

    @property
    def device(self) -> object:
        """Where the attack runs, shown as text."""
        ...

    def cloak_batch(self, images: Sequence[np.ndarray], *, luma_only: bool = False) -> list[CloakResult]:
        """One result per image; the batch is all colour or all grayscale (:func:`colour_groups`)."""
        ...


@runtime_checkable
class LocalEngine(CloakEngine, Protocol):
    """An engine in this process: its own detector looks for faces before any attack (the daemon's fast lane)."""

    @property
    def detector(self) -> FaceDetector: ...

    @property
    def models(self) -> tuple[FaceEmbedder, ...]: ...

    def with_preset(self, preset: Preset) -> LocalEngine:
        """The same resident models running ``preset``."""
        ...


def colour_groups(grayscale: Sequence[bool]) -> Iterator[tuple[bool, list[int]]]:
    """The positions of the colour photos, then of the grayscale ones (attacked in luma only): one batch each."""
    for luma_only in (False, True):
        group = [i for i, gray in enumerate(grayscale) if gray == luma_only]
        if group:
            yield luma_only, group


class PhotoProtector:
    """Protects photo files with one :class:`CloakEngine`, or none where the attack runs elsewhere."""

    def __init__(
        self,
        cloaker: CloakEngine | None,
        settings: ProtectionSettings = DEFAULT_SETTINGS,
        *,
        max_pixels: int | None = None,
        is_own_output: Callable[[str], bool] | None = None,
    ) -> None:
        """``settings``' policies apply to every photo; the attack is ``cloaker``'s own.

        ``cloaker`` None: a remote lowkeyd cloaks; this protector reads photos and publishes lowkeyd's own
        output as it is, its outcomes naming ``settings.preset`` (the remote's), and fails every other photo.
        ``max_pixels``: the largest photo read, where the caller sizes it to the machine (default:
        ``settings.max_megapixels``, else the photo layer's own limit). ``is_own_output(sha256_hex)`` says
        whether lowkeyd wrote a file with that content (the daemon's state knows); without it every photo is cloaked.
        """
        self.cloaker = cloaker
        self.settings = settings
        self.preset: Preset = settings.preset if cloaker is None else cloaker.preset  # the attack this protector runs
        self.max_pixels = settings.max_pixels if max_pixels is None else max_pixels
        self.is_own_output = is_own_output

    @classmethod
    def load(
        cls,
        settings: ProtectionSettings = DEFAULT_SETTINGS,
        *,
        threads: int | None = None,
        is_own_output: Callable[[str], bool] | None = None,
    ) -> PhotoProtector:
        """Load the engine's models once, for this protector's lifetime, to run ``settings``: the one way in
        from the CLI and the daemon. ``threads`` as :meth:`~lowkeyd.engine.resident.ResidentModels.load`."""
        from lowkeyd.engine.cloak import Cloaker

        return cls(Cloaker(settings.preset, settings.device, threads=threads), settings, is_own_output=is_own_output)

    @property
    def device(self) -> str:
        """Where the attack runs, in words."""
        return "elsewhere (a remote lowkeyd)" if self.cloaker is None else str(self.cloaker.device)

    def with_preset(self, preset: Preset, *, below_target: BelowTargetPolicy) -> PhotoProtector:
        """This protector running ``preset`` on the same resident models (nothing is loaded again)."""
        if not isinstance(self.cloaker, LocalEngine):
            raise EngineError("another preset runs only on models resident here")
        settings = self.settings.model_copy(update={"preset": preset, "below_target": below_target})
        return PhotoProtector(
            self.cloaker.with_preset(preset), settings, max_pixels=self.max_pixels, is_own_output=self.is_own_output
        )

    # -- public ----------------------------------------------------------------------

    def protect_file(self, src: Path, dest: Path) -> Outcome:
        """Write the protected copy of ``src`` to ``dest`` atomically; raises a LowkeydError on failure."""
        result = self.protect_files([(src, dest)])[0]
        if isinstance(result, LowkeydError):
            raise result
        return result

    def protect_files(
        self, jobs: Sequence[tuple[Path | Photo, Path]], *, follow_symlinks: bool = True
    ) -> list[Outcome | LowkeydError]:
        """Protect several photos, their faces sharing the engine's batches; one failure spoils no other.

        A source is a path, or a photo already read with :meth:`read` (it is not decoded again).
        ``follow_symlinks`` False refuses a source path that is a symbolic link (the daemon hands resolved paths).
        """
        start = time.perf_counter()
        photos: list[Photo | LowkeydError] = []
        for src, _ in jobs:
            try:
                photos.append(src if isinstance(src, Photo) else self.read(Path(src), follow_symlinks=follow_symlinks))
            except LowkeydError as exc:
                photos.append(exc)
        cloaked = self._cloak([p for p in photos if isinstance(p, Photo) and not self._own(p)])
        results: list[Outcome | LowkeydError] = []
        for (_, dest), photo in zip(jobs, photos, strict=True):
            if isinstance(photo, LowkeydError):
                results.append(photo)
                continue
            try:
                results.append(self._publish_file(photo, Path(dest), cloaked.get(id(photo)), start))
            except LowkeydError as exc:
                results.append(exc)
        return results

    def read(self, src: Path, *, follow_symlinks: bool = True) -> Photo:
        """Decode ``src`` under this protector's pixel limit."""
        return read_photo(src, max_pixels=self.max_pixels, follow_symlinks=follow_symlinks)

    def protect_without_attack(self, photo: Photo, dest: Path) -> Outcome | None:
        """Write ``photo`` to ``dest`` when it needs no attack (lowkeyd's own, or without a face); None when it has one.

        The daemon's fast lane: such a photo does not wait behind faces being cloaked. The faces are
        looked for exactly as :meth:`protect_files` would (a :class:`LocalEngine`'s own detector), so a
        photo published here would have had none cloaked there either. Without a local engine only
        lowkeyd's own output is written here: the engine elsewhere looks for the faces of every other photo.
        """
        start = time.perf_counter()
        result = None
        if not self._own(photo):
            if not isinstance(self.cloaker, LocalEngine) or self.cloaker.detector.detect(photo.rgb):
                return None
            from lowkeyd.engine.cloak import CloakResult

            members = tuple(m.name for m in self.cloaker.models)
            result = CloakResult(photo.rgb, [], 0.0, self.preset.name, members)
        return self._publish_file(photo, dest, result, start)

    def protect_bytes(self, data: bytes) -> tuple[bytes | None, Outcome]:
        """The protected photo's bytes (same format), or None where the no-face policy skips it."""
        photo = read_photo(data, max_pixels=self.max_pixels)
        start = time.perf_counter()
        if self._own(photo):
            encoded = self._encode(photo, None)
            return encoded, self._outcome(photo, "already_cloaked", None, None, start, encoded)
        result = self._cloak([photo])[id(photo)]
        if isinstance(result, LowkeydError):
            raise result
        if self._skipped(result):
            return None, self._outcome(photo, "no_face", result, None, start, None)
        encoded = self._encode(photo, result)
        return encoded, self._outcome(photo, _status(result), result, None, start, encoded)

    # -- inside ------------------------------------------------------------------------

    def _cloak(self, photos: list[Photo]) -> dict[int, CloakResult | LowkeydError]:
        """Cloak the photos, colour and grayscale ones in separate batches; check every face is protected."""
        if self.cloaker is None:
            why = "no attack runs here (a remote lowkeyd cloaks this daemon's photos); not published"
            return {id(p): EngineError(f"{p.name}: {why}") for p in photos}
        out: dict[int, CloakResult | LowkeydError] = {}
        for luma_only, positions in colour_groups([p.grayscale for p in photos]):
            group = [photos[i] for i in positions]
            try:
                results = self.cloaker.cloak_batch([p.rgb for p in group], luma_only=luma_only)
            except LowkeydError as exc:
                out.update({id(p): exc for p in group})
                continue
            for photo, result in zip(group, results, strict=True):
                out[id(photo)] = _unprotected(photo, result) or self._held(photo, result) or result
        return out

    def _publish_file(
        self, photo: Photo, dest: Path, result: CloakResult | LowkeydError | None, start: float
    ) -> Outcome:
        if self._own(photo):
            encoded = self._encode(photo, None)
            write_bytes(photo, encoded, dest)
            return self._outcome(photo, "already_cloaked", None, dest, start, encoded)
        if isinstance(result, LowkeydError):
            raise result
        assert result is not None
        if self._skipped(result):
            return self._outcome(photo, "no_face", result, None, start, None)
        encoded = self._encode(photo, result)
        write_bytes(photo, encoded, dest)
        return self._outcome(photo, _status(result), result, dest, start, encoded)

    def _own(self, photo: Photo) -> bool:
        """True for a file lowkeyd itself wrote, by its content hash (a marker, if any, proves nothing)."""
        return self.is_own_output is not None and self.is_own_output(hashlib.sha256(photo.source_bytes).hexdigest())

    def _encode(self, photo: Photo, result: CloakResult | None) -> bytes:
        """The published bytes; lowkeyd's own output keeps its pixels (and marker, when marking), sanitised again."""
        mark = self.settings.mark
        if result is None:
            return encode_photo(photo, photo.rgb, strip_gps=self.settings.strip_gps, marker=photo.cloak_marker if mark else None)
        return encode_photo(photo, result.rgb, strip_gps=self.settings.strip_gps, marker=self._marker(result) if mark else None)

    def _held(self, photo: Photo, result: CloakResult) -> HeldBelowTarget | None:
        """Under ``below_target: hold``, an error for a photo with a face short of the preset's target."""
        if self.settings.below_target != "hold":
            return None
        for face in result.faces:
            if face.status == "cloaked" and face.below_target:
                return HeldBelowTarget(
                    f"{photo.name}: held: a {face.size:.0f} px face is short of the preset's target margin for "
                    f"{', '.join(face.below_target)} within the visibility budget; not published (preset strong "
                    "allows twice the change, or below_target: publish publishes it as it is)"
                )
        return None

    def _skipped(self, result: CloakResult) -> bool:
        return not result.faces and self.settings.no_face == "skip"

    def _marker(self, result: CloakResult) -> dict[str, str]:
        return {"version": __version__, "preset": result.preset, "faces": str(result.cloaked), "models": ",".join(result.members)}

    def _outcome(
        self,
        photo: Photo,
        status: Status,
        result: CloakResult | None,
        written: Path | None,
        start: float,
        encoded: bytes | None,
    ) -> Outcome:
        seconds = time.perf_counter() - start
        dropped = photo.drops(strip_gps=self.settings.strip_gps) if encoded is not None else ()
        sha256 = hashlib.sha256(encoded).hexdigest() if encoded is not None else None
        removed = f"; removed: {'; '.join(dropped)}" if dropped else ""
        if status == "already_cloaked":
            message = f"already cloaked by lowkeyd; published with its pixels as they are{removed}"
            return Outcome(status, 0, 0, seconds, written, message, self.preset, dropped=dropped, sha256=sha256)
        assert result is not None
        if status == "no_face":
            what = f"published with {_unchanged(photo)}{removed}" if encoded is not None else "skipped"
            message = f"no face found; {what}"
            return Outcome(status, 0, 0, seconds, written, message, self.preset, dropped=dropped, sha256=sha256)
        message = f"{result.cloaked} face{'s' * (result.cloaked != 1)} cloaked"
        if result.too_small:
            message += f", {result.too_small} too small to matter left alone"
        if result.cloaked:
            # Passing the attack's own members is white-box; say what is known about the rest.
            sizes = [f.size for f in result.faces if f.status == "cloaked"]
            estimate = transfer_estimate(self.preset, rgb=photo.rgb, face_sizes=sizes)
            message += f"; past all {len(result.members)} attack members ({', '.join(result.members)})"
            short = [f for f in result.faces if f.status == "cloaked" and f.below_target]
            if short:
                message += f", {len(short)} face{'s' * (len(short) != 1)} short of the target margin within the budget"
            message += f"; {estimate.short()}" if estimate else "; no holdout estimate for this preset"
        return Outcome(
            status, result.cloaked, result.too_small, seconds, written, message + removed, self.preset, result.faces,
            dropped, sha256,
        )


def _unchanged(photo: Photo) -> str:
    """What stays of a photo whose pixels lowkeyd did not change, in words."""
    if photo.format in ("JPEG", "TIFF"):
        return "its image data byte for byte, metadata sanitised"
    if photo.format == "PNG" or photo.encoding.lossless:
        return "the same pixels (recompressed losslessly), metadata sanitised"
    return f"the same pixels re-encoded as {photo.format} (lossy: they may differ slightly), metadata sanitised"


def _status(result: CloakResult) -> Status:
    return "cloaked" if result.faces else "no_face"


def _unprotected(photo: Photo, result: CloakResult) -> EngineError | None:
    """An error when any cloaked face still matches its original for an ensemble member."""
    for face in result.faces:
        if face.status == "cloaked" and not all(face.protected_against.values()):
            still = ", ".join(n for n, ok in face.protected_against.items() if not ok)
            return EngineError(
                f"{photo.name}: a {face.size:.0f} px face still matches its original for {still}; not published"
            )
    return None
