"""HEIC/HEIF through pillow-heif: the primary picture at the source's size, depth, chroma and colour description.

Thumbnails, depth maps, auxiliary images and a Samsung motion video are never written.
"""

from __future__ import annotations

import io

import numpy as np
import pillow_heif
from PIL import Image

from lowkeyd.photo import containers
from lowkeyd.photo.codec import Cloaked, Codec, Inspection, source_image_bytes
from lowkeyd.photo.model import SourceEncoding
from lowkeyd.photo.sizing import match_size

pillow_heif.register_heif_opener()

# Secondary HEIF items pillow-heif reports; lowkeyd writes the primary image only.
_EXTRAS = {"thumbnails": "thumbnails", "depth_images": "depth maps", "aux": "auxiliary images (mattes, gain maps)"}
# pillow-heif's names for 16-bit sample layouts, by channel count.
_DEEP_MODES = {1: "L;16", 3: "RGB;16", 4: "RGBA;16"}


class HeifCodec(Codec):
    name = "HEIF"
    label = "HEIC/HEIF"
    extensions = (".heic", ".heif", ".hif")
    several = "holds {} images (a burst or collection)"

    def inspect(self, image: Image.Image, data: bytes, name: str, dropped: list[str]) -> Inspection:
        extras = [label for key, label in _EXTRAS.items() if image.info.get(key)]
        if extras:
            dropped.append("the HEIF " + " and ".join(extras))
        try:
            has_video = b"mpvd" in containers.bmff_boxes(data)  # Samsung's motion photo box
        except ValueError:
            has_video = False
        encoding = SourceEncoding(
            nclx_profile=image.info.get("nclx_profile"), chroma=image.info.get("chroma"),
            image_bytes=source_image_bytes(image, data),
        )
        return Inspection(encoding, has_video)

    def deep_samples(self, image: Image.Image, data: bytes) -> tuple[np.ndarray, int] | None:
        """A 10- or 12-bit picture's samples, which Pillow's view gives at 8 bits."""
        bits = image.info.get("bit_depth", 8)
        if bits <= 8:
            return None
        heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=False)
        array = np.asarray(heif)  # pillow-heif scales the samples up to 16 bits
        array = array >> (16 - bits)
        return (array[..., None] if array.ndim == 2 else array), bits

    def encode(self, cloaked: Cloaked) -> bytes:
        photo, samples = cloaked.photo, cloaked.samples
        if samples is None:
            heif = pillow_heif.from_pillow(cloaked.image)
        else:  # pillow-heif takes deep samples scaled to 16 bits and stores them at 10 or 12
            wide = samples.astype(np.uint16) << (16 - photo.bit_depth)
            heif = pillow_heif.from_bytes(mode=_DEEP_MODES[wide.shape[2]], size=cloaked.image.size, data=wide.tobytes())
        heif.info.pop("exif", None)
        if photo.icc_profile:
            heif.info["icc_profile"] = photo.icc_profile
        if photo.encoding.nclx_profile:
            heif.info["nclx_profile"] = photo.encoding.nclx_profile
        chroma = {"chroma": photo.encoding.chroma} if photo.encoding.chroma else {}
        save_12 = pillow_heif.options.SAVE_HDR_TO_12_BIT
        pillow_heif.options.SAVE_HDR_TO_12_BIT = photo.bit_depth > 10

        def at(quality: int) -> bytes:
            out = io.BytesIO()
            heif.save(out, quality=quality, exif=cloaked.exif, xmp=cloaked.packet or None, **chroma)
            return out.getvalue()

        try:
            return match_size(at, cloaked.size_target())[0]
        finally:
            pillow_heif.options.SAVE_HDR_TO_12_BIT = save_12


CODEC = HeifCodec()
