"""PNG: always lossless, its ancillary chunks copied, 16-bit samples kept (Pillow codes 8 bits, OpenCV the 16)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lowkeyd.photo import containers
from lowkeyd.photo.codec import Cloaked, Codec, Inspection
from lowkeyd.photo.model import SourceEncoding

_TEXT = (b"tEXt", b"zTXt", b"iTXt")
# Colour, timing, density and text chunks: copied verbatim into the output.
_COPIED = {b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCV", b"cLLI", b"pHYs", b"tIME", *_TEXT}


class PngCodec(Codec):
    name = "PNG"
    label = "PNG"
    extensions = (".png",)

    def inspect(self, image: Image.Image, data: bytes, name: str, dropped: list[str]) -> Inspection:
        try:
            chunks = containers.png_chunks(data)
        except ValueError:
            chunks = []  # Pillow decoded it; without a chunk list only the extra chunks are lost
        copied = []
        for kind, payload in chunks:
            keyword = payload.split(b"\0", 1)[0]
            if kind in _TEXT and keyword.startswith(b"Raw profile type"):
                dropped.append(f"the PNG {keyword.decode('latin-1')} chunk")
            elif kind == b"iTXt" and keyword == b"XML:com.adobe.xmp":
                continue  # rewritten from the cleaned XMP
            elif kind in _COPIED:
                copied.append((kind, payload))
            elif kind == b"caBX":
                dropped.append("C2PA content credentials (they vouch for the original pixels)")
        return Inspection(SourceEncoding(lossless=True, png_chunks=tuple(copied)))

    def deep_samples(self, image: Image.Image, data: bytes) -> tuple[np.ndarray, int] | None:
        """A 16-bit PNG's samples, which Pillow decodes to 8 bits, through OpenCV."""
        if _bit_depth(data) != 16:
            return None
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise ValueError("OpenCV cannot decode it")
        if array.ndim == 2:
            return array[..., None], 16
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB), 16

    def encode(self, cloaked: Cloaked) -> bytes:
        info = PngInfo()
        if cloaked.packet:
            info.add_itxt("XML:com.adobe.xmp", cloaked.packet.decode("utf-8"))
        out = io.BytesIO()
        cloaked.image.save(out, format="PNG", pnginfo=info, **cloaked.pillow_options())
        # The source's own chunks go in after the header: Pillow writes pHYs only from a dpi it rounds.
        data = containers.png_with_chunks(out.getvalue(), cloaked.photo.encoding.png_chunks)
        samples = cloaked.samples
        if samples is None:
            return data
        # Pillow has no 16-bit colour mode: OpenCV codes the samples, Pillow's file lends the chunks.
        if samples.shape[2] == 1:
            bgr = samples[..., 0]
        else:
            bgr = cv2.cvtColor(samples, cv2.COLOR_RGBA2BGRA if samples.shape[2] == 4 else cv2.COLOR_RGB2BGR)
        ok, coded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise ValueError("OpenCV could not encode the 16-bit PNG")
        return containers.png_with_image(data, coded.tobytes())


def _bit_depth(data: bytes) -> int:
    """Bit depth from a PNG's IHDR (signature 8, length 4, type 4, width 4, height 4, depth 1)."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 8


CODEC = PngCodec()
