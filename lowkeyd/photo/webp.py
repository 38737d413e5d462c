"""WebP: a lossless source (VP8L) is written lossless, a lossy one at the source's size."""

from __future__ import annotations

import io

from PIL import Image

from lowkeyd.photo import containers
from lowkeyd.photo.codec import Cloaked, Codec, Inspection, source_image_bytes
from lowkeyd.photo.model import SourceEncoding
from lowkeyd.photo.sizing import match_size


class WebpCodec(Codec):
    name = "WEBP"
    label = "WebP"
    extensions = (".webp",)

    def inspect(self, image: Image.Image, data: bytes, name: str, dropped: list[str]) -> Inspection:
        try:
            lossless = b"VP8L" in containers.riff_chunks(data)
        except ValueError:
            lossless = False
        return Inspection(SourceEncoding(lossless=lossless, image_bytes=source_image_bytes(image, data)))

    def encode(self, cloaked: Cloaked) -> bytes:
        packet = cloaked.packet or b""

        def at(quality: int | None) -> bytes:
            out = io.BytesIO()
            level = {"lossless": True} if quality is None else {"quality": quality, "alpha_quality": 100}
            # exact: keep the colour under fully transparent pixels, as the source had it
            cloaked.image.save(out, format="WEBP", exact=True, xmp=packet, **level, **cloaked.pillow_options())
            return out.getvalue()

        if cloaked.photo.encoding.lossless:
            return at(None)
        return match_size(at, cloaked.size_target())[0]


CODEC = WebpCodec()
