"""Block-exact JPEG: re-quantise only the MCUs whose pixels changed, keep every other DCT coefficient.

Decoding and re-encoding a whole JPEG changes every block (3-83 % of the pixels of a photo, up
to 30 levels) and, at any fixed quality, its size. Working on the coefficients instead
(``jpeglib`` reads and writes them through libjpeg) leaves every block outside the cloaked
faces exactly as the camera stored it, with the photo's own quantisation tables and chroma
subsampling; only the minimum coded units that hold a changed pixel are transformed and
quantised again from the cloaked pixels. The same holds for CMYK and YCCK JPEGs, whose black
channel libjpeg cannot write changed (so the cloak leaves K alone), and the source's scan
mode is restored afterwards (:mod:`lowkeyd.photo.jpegscans`).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import jpeglib
import numpy as np

from lowkeyd.photo import jpegscans
from lowkeyd.photo.containers import ADOBE, SOF_MARKERS, jpeg_layout

# JFIF's full-range YCbCr, the colour transform of every YCbCr JPEG.
_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCC_OFFSET = np.array([0.0, 128.0, 128.0])


@functools.cache
def _dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II; C @ B @ C.T is JPEG's forward DCT of a level-shifted block."""
    k = np.arange(8)
    matrix = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    matrix[0] /= np.sqrt(2)
    return matrix


def changed_mcus(before: np.ndarray, after: np.ndarray, mcu: tuple[int, int]) -> np.ndarray:
    """(rows, cols) bool grid of the MCUs of size ``mcu`` (height, width) holding a pixel that differs."""
    diff = before != after
    if diff.ndim == 3:
        diff = diff.any(axis=2)
    padded = _pad(diff, mcu)
    return np.any(padded.reshape(padded.shape[0] // mcu[0], mcu[0], padded.shape[1] // mcu[1], mcu[1]), axis=(1, 3))


def _pad(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad by repeating the last row and column to a multiple of ``size``, as libjpeg does."""
    rows = -plane.shape[0] % size[0]
    cols = -plane.shape[1] % size[1]
    return np.pad(plane, ((0, rows), (0, cols)) + ((0, 0),) * (plane.ndim - 2), mode="edge")


def reencode(source: bytes, before: np.ndarray, after: np.ndarray) -> bytes | None:
    """``source`` as libjpeg writes it with the changed MCUs re-quantised, or None if none changed.

    ``before`` is the source as decoded and ``after`` the cloaked pixels, both in stored
    orientation: (H, W, 3) RGB for a colour JPEG, (H, W) for a grayscale one, (H, W, 4) as
    Pillow decodes CMYK for a CMYK or YCCK one. The output keeps the source's scan mode
    (:mod:`lowkeyd.photo.jpegscans`). ValueError where the change cannot be written block by
    block: libjpeg (through ``jpeglib``) writes no changed black channel, so a CMYK cloak must
    leave K as it was.
    """
    if np.array_equal(before, after):
        return None
    with tempfile.TemporaryDirectory(prefix="lowkeyd-") as folder:
        path = Path(folder) / "source.jpg"
        path.write_bytes(source)
        jpeg = jpeglib.read_dct(str(path))
        jpeg.load()
        components = [jpeg.Y] + ([jpeg.Cb, jpeg.Cr] if jpeg.has_chrominance else [])
        if len(components) + jpeg.has_black != (after.shape[2] if after.ndim == 3 else 1):
            raise ValueError("the pixels do not match the JPEG's components")
        if jpeg.has_black and not np.array_equal(before[..., 3], after[..., 3]):
            raise ValueError("a changed black channel cannot be re-quantised block by block")
        factors = np.asarray(jpeg.samp_factor)[: len(components)]  # (vertical, horizontal) per component
        vmax, hmax = factors.max(axis=0)
        mcus = changed_mcus(before, after, (8 * vmax, 8 * hmax))
        if not mcus.any():
            return None
        planes = _coded_planes(source, _pad(after.astype(np.float64), (8 * vmax, 8 * hmax)))
        for index, (component, plane) in enumerate(zip(components, planes, strict=True)):
            v, h = factors[index]
            blocks = _quantised_blocks(_downsample(plane, vmax // v, hmax // h), jpeg.get_component_qt(index))
            mask = np.repeat(np.repeat(mcus, v, axis=0), h, axis=1)[: component.shape[0], : component.shape[1]]
            component[mask] = blocks[: component.shape[0], : component.shape[1]][mask]
        jpeg.Y = components[0]
        if len(components) == 3:
            jpeg.Cb, jpeg.Cr = components[1], components[2]
        out = Path(folder) / "out.jpg"
        jpeg.write_dct(str(out), flags=["OPTIMIZE_CODING"])
        jpegscans.restore(out, jpegscans.scan_mode(source))
        return out.read_bytes()


def _coded_planes(source: bytes, pixels: np.ndarray) -> list[np.ndarray]:
    """The planes libjpeg codes for the first (up to three) components of decoded ``pixels``, as the source codes them.

    Colour is YCbCr unless the Adobe segment (or, without one, RGB component ids) says the
    samples are stored as they are. Adobe CMYK is stored inverted, which Pillow undoes on
    decoding; YCCK is the YCbCr of Pillow's C, M and Y (its K, left alone, is stored inverted).
    """
    if pixels.ndim == 2:
        return [pixels]
    transform, adobe = _colour_transform(source)
    colour = pixels[..., :3]
    if transform:
        ycc = colour @ _TO_YCC.T + _YCC_OFFSET
        return [ycc[..., 0], ycc[..., 1], ycc[..., 2]]
    if adobe and pixels.shape[2] == 4:
        colour = 255.0 - colour
    return [colour[..., 0], colour[..., 1], colour[..., 2]]


def _colour_transform(source: bytes) -> tuple[bool, bool]:
    """(whether colour is coded as YCbCr/YCCK, whether an Adobe APP14 segment is there), as libjpeg decides."""
    components = 0
    ids: tuple[int, ...] = ()
    for marker, payload in jpeg_layout(source).segments:
        if marker == ADOBE and payload.startswith(b"Adobe") and len(payload) >= 12:
            return payload[11] != 0, True
        if marker in SOF_MARKERS and len(payload) >= 6:
            components = payload[5]
            ids = tuple(payload[6 + 3 * i] for i in range(components) if 6 + 3 * i < len(payload))
    return components == 3 and ids != (82, 71, 66), False  # "R", "G", "B": stored as RGB


def _downsample(plane: np.ndarray, rows: int, cols: int) -> np.ndarray:
    if rows == cols == 1:
        return plane
    height, width = plane.shape
    return plane.reshape(height // rows, rows, width // cols, cols).mean(axis=(1, 3))


def _quantised_blocks(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(rows, cols, 8, 8) int16 quantised DCT coefficients of a plane whose sides are multiples of 8."""
    rows, cols = plane.shape[0] // 8, plane.shape[1] // 8
    blocks = (plane - 128.0).reshape(rows, 8, cols, 8).transpose(0, 2, 1, 3)
    dct = _dct_matrix()
    coefficients = dct @ blocks @ dct.T
    return np.round(coefficients / table).astype(np.int16)
