"""Photo file in, protected photo file out: the photo layer and the engine, wired once.

Used by ``lowkeyd cloak``, the daemon and the local API alike, so every path
applies the same rules:

* the original is only ever read;
* a face that could not be protected is never written: the photo fails instead;
* a photo lowkeyd already cloaked (its XMP marker says so) is not cloaked twice;
* a photo without faces is published sanitised (metadata rules applied) or
  skipped, as the ``no_face`` policy says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lowkeyd import __version__
from lowkeyd.errors import EngineError, LowkeydError
from lowkeyd.photo import Photo, encode_photo, read_photo, write_photo
from lowkeyd.photo.atomic import atomic_write

if TYPE_CHECKING:
    from lowkeyd.engine.cloak import Cloaker, CloakResult, FaceReport

log = logging.getLogger(__name__)

Status = Literal["cloaked", "no_face", "already_cloaked"]
NoFacePolicy = Literal["copy", "skip"]


@dataclass
class Outcome:
    status: Status
    faces_cloaked: int
    faces_too_small: int
    seconds: float
    written: Path | None  # None when nothing was written (skipped, or bytes returned instead)
    message: str
    faces: list[FaceReport] = field(default_factory=list)


class PhotoProtector:
    """Protects photo files with one resident :class:`~lowkeyd.engine.cloak.Cloaker`."""

    def __init__(
        self,
        cloaker: Cloaker,
        *,
        strip_gps: bool = True,
        no_face: NoFacePolicy = "copy",
        max_pixels: int | None = None,
    ) -> None:
        self.cloaker = cloaker
        self.strip_gps = strip_gps
        self.no_face = no_face
        self.max_pixels = max_pixels

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
        cloaked = self._cloak([p for p in photos if isinstance(p, Photo) and p.cloak_marker is None])
        results: list[Outcome | LowkeydError] = []
        for (_, dest), photo in zip(jobs, photos):
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
        looked for exactly as :meth:`protect_files` would (the engine's own detector), so a photo
        published here would have had none cloaked there either.
        """
        start = time.perf_counter()
        result = None
        if photo.cloak_marker is None:
            if self.cloaker.detector is None or self.cloaker.detector.detect(photo.rgb):
                return None
            from lowkeyd.engine.cloak import CloakResult

            result = CloakResult(photo.rgb, [], 0.0, self.cloaker.preset.name)
        return self._publish_file(photo, dest, result, start)

    def protect_bytes(self, data: bytes) -> tuple[bytes | None, Outcome]:
        """The protected photo's bytes (same format), or None where the no-face policy skips it."""
        photo = read_photo(data, max_pixels=self.max_pixels)
        start = time.perf_counter()
        if photo.cloak_marker is not None:
            return data, self._outcome("already_cloaked", None, None, start)
        result = self._cloak([photo])[id(photo)]
        if isinstance(result, LowkeydError):
            raise result
        if self._skipped(result):
            return None, self._outcome("no_face", result, None, start)
        encoded = encode_photo(photo, result.rgb, strip_gps=self.strip_gps, marker=self._marker(result))
        return encoded, self._outcome(_status(result), result, None, start)

    # -- inside ------------------------------------------------------------------------

    def _cloak(self, photos: list[Photo]) -> dict[int, CloakResult | LowkeydError]:
        """Cloak the photos, colour and grayscale ones in separate batches; check every face is protected."""
        out: dict[int, CloakResult | LowkeydError] = {}
        for luma_only in (False, True):
            group = [p for p in photos if p.grayscale == luma_only]
            if not group:
                continue
            try:
                results = self.cloaker.cloak_batch([p.rgb for p in group], luma_only=luma_only)
            except LowkeydError as exc:
                out.update({id(p): exc for p in group})
                continue
            for photo, result in zip(group, results):
                out[id(photo)] = _unprotected(photo, result) or result
        return out

    def _publish_file(
        self, photo: Photo, dest: Path, result: CloakResult | LowkeydError | None, start: float
    ) -> Outcome:
        if photo.cloak_marker is not None:
            # lowkeyd wrote this file: publish it as it is rather than cloak twice.
            assert photo.source_path is not None
            atomic_write(dest, photo.source_path.read_bytes(), like=photo.source_stat)
            return self._outcome("already_cloaked", None, dest, start)
        if isinstance(result, LowkeydError):
            raise result
        assert result is not None
        if self._skipped(result):
            return self._outcome("no_face", result, None, start)
        write_photo(photo, result.rgb, dest, strip_gps=self.strip_gps, marker=self._marker(result))
        return self._outcome(_status(result), result, dest, start)

    def _skipped(self, result: CloakResult) -> bool:
        return not result.faces and self.no_face == "skip"

    def _marker(self, result: CloakResult) -> dict[str, str]:
        return {"version": __version__, "preset": result.preset, "faces": str(result.cloaked)}

    def _outcome(self, status: Status, result: CloakResult | None, written: Path | None, start: float) -> Outcome:
        seconds = time.perf_counter() - start
        if status == "already_cloaked":
            return Outcome(status, 0, 0, seconds, written, "already cloaked by lowkeyd; published as it is")
        assert result is not None
        if status == "no_face":
            what = "published without changes to its pixels" if written or self.no_face == "copy" else "skipped"
            return Outcome(status, 0, 0, seconds, written, f"no face found; {what}")
        message = f"{result.cloaked} face{'s' * (result.cloaked != 1)} cloaked"
        if result.too_small:
            message += f", {result.too_small} too small to matter left alone"
        return Outcome(status, result.cloaked, result.too_small, seconds, written, message, result.faces)


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
