"""Real photo files for the photo-layer tests, made from the photos in tests/data, and ways to inspect them.

Each builder writes a file the way a phone, camera or photo manager would (EXIF with a
thumbnail and GPS, XMP face regions, MPF secondary images, an appended Motion Photo video)
using Pillow, pillow-heif, piexif and OpenCV, and returns what the test needs to check.
"""

from __future__ import annotations

import io
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import piexif
import piexif.helper
from PIL import Image, ImageOps

DATA = Path(__file__).parent / "data"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
PERSON = "Barack Obama"
MAKER_NOTE = b"Apple iOS\x00\x00\x01MM" + bytes(range(256)) * 4
USER_COMMENT = piexif.helper.UserComment.dump("Oval Office, first take", encoding="unicode")
GPS = {
    piexif.GPSIFD.GPSLatitudeRef: b"N",
    piexif.GPSIFD.GPSLatitude: ((38, 1), (53, 1), (2316, 100)),
    piexif.GPSIFD.GPSLongitudeRef: b"W",
    piexif.GPSIFD.GPSLongitude: ((77, 1), (2, 1), (1998, 100)),
    piexif.GPSIFD.GPSAltitude: (15, 1),
}

# A second rdf:Description of the kind Lightroom, Picasa and Windows Photo Gallery add:
# face regions in MWG and Microsoft form, the person's name in three places, and GPS.
PEOPLE_XMP = f"""<rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"
    xmlns:stDim="http://ns.adobe.com/xap/1.0/sType/Dimensions#"
    xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#"
    xmlns:MP="http://ns.microsoft.com/photo/1.2/"
    xmlns:MPRI="http://ns.microsoft.com/photo/1.2/t/RegionInfo#"
    xmlns:MPReg="http://ns.microsoft.com/photo/1.2/t/Region#"
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    exif:GPSLatitude="38,53.386N" exif:GPSLongitude="77,2.333W">
  <mwg-rs:Regions rdf:parseType="Resource">
    <mwg-rs:AppliedToDimensions stDim:w="910" stDim:h="1137" stDim:unit="pixel"/>
    <mwg-rs:RegionList><rdf:Bag><rdf:li><rdf:Description mwg-rs:Name="{PERSON}" mwg-rs:Type="Face">
      <mwg-rs:Area stArea:x="0.5" stArea:y="0.3" stArea:w="0.3" stArea:h="0.25" stArea:unit="normalized"/>
    </rdf:Description></rdf:li></rdf:Bag></mwg-rs:RegionList>
  </mwg-rs:Regions>
  <MP:RegionInfo rdf:parseType="Resource"><MPRI:Regions><rdf:Bag>
    <rdf:li MPReg:PersonDisplayName="{PERSON}" MPReg:Rectangle="0.35, 0.18, 0.3, 0.25"/>
  </rdf:Bag></MPRI:Regions></MP:RegionInfo>
  <Iptc4xmpExt:PersonInImage><rdf:Bag><rdf:li>{PERSON}</rdf:li></rdf:Bag></Iptc4xmpExt:PersonInImage>
  <lr:hierarchicalSubject><rdf:Bag>
    <rdf:li>People|{PERSON}</rdf:li><rdf:li>Places|Oval Office</rdf:li>
  </rdf:Bag></lr:hierarchicalSubject>
  <dc:subject><rdf:Bag><rdf:li>{PERSON}</rdf:li><rdf:li>portrait</rdf:li></rdf:Bag></dc:subject>
  <exif:GPSAltitude>15/1</exif:GPSAltitude>
</rdf:Description>"""

MOTION_XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:GCamera="http://ns.google.com/photos/1.0/camera/"
    xmlns:Container="http://ns.google.com/photos/1.0/container/"
    xmlns:Item="http://ns.google.com/photos/1.0/container/item/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    GCamera:MotionPhoto="1" GCamera:MotionPhotoVersion="1" GCamera:MotionPhotoPresentationTimestampUs="0">
  <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Motion</rdf:li></rdf:Alt></dc:title>
  <Container:Directory><rdf:Seq>
    <rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="image/jpeg" Item:Semantic="Primary"/></rdf:li>
    <rdf:li rdf:parseType="Resource">
      <Container:Item Item:Mime="video/mp4" Item:Semantic="MotionPhoto" Item:Length="{length}"/>
    </rdf:li>
  </rdf:Seq></Container:Directory>
</rdf:Description></rdf:RDF></x:xmpmeta>"""


def face(scale: float = 1.0) -> Image.Image:
    """obama.jpg, upright, optionally scaled down."""
    with Image.open(DATA / "obama.jpg") as im:
        im = im.convert("RGB")
        if scale != 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        return im


def source_metadata() -> tuple[dict, bytes, bytes]:
    """(piexif dict, ICC profile, XMP) of obama.jpg as the camera and Photoshop left them."""
    with Image.open(DATA / "obama.jpg") as im:
        return piexif.load(im.info["exif"]), im.info["icc_profile"], im.info["xmp"]


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


def rich_jpeg(dest: Path) -> Path:
    """The issue's test photo: Orientation 6, GPS, MakerNote, UserComment, a thumbnail of the
    original, an sRGB ICC profile and XMP with face regions, person names and GPS."""
    upright = face()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways-held camera records
    exif, icc, xmp = source_metadata()
    exif["0th"][piexif.ImageIFD.Orientation] = 6
    exif["GPS"] = dict(GPS)
    exif["Exif"][piexif.ExifIFD.MakerNote] = MAKER_NOTE
    exif["Exif"][piexif.ExifIFD.UserComment] = USER_COMMENT
    exif["Exif"][piexif.ExifIFD.PixelXDimension] = stored.width
    exif["Exif"][piexif.ExifIFD.PixelYDimension] = stored.height
    thumb = stored.copy()
    thumb.thumbnail((160, 160))
    exif["thumbnail"] = jpeg_bytes(thumb, quality=90)
    exif["1st"] = {
        piexif.ImageIFD.Compression: 6,
        piexif.ImageIFD.XResolution: (72, 1),
        piexif.ImageIFD.YResolution: (72, 1),
    }
    xmp_text = xmp.decode("utf-8").replace("</rdf:RDF>", PEOPLE_XMP + "</rdf:RDF>")
    stored.save(dest, format="JPEG", quality=95, exif=piexif.dump(exif), icc_profile=icc, xmp=xmp_text.encode("utf-8"))
    return dest


def exif_with(
    *, orientation: int = 1, gps: bool = True, thumbnail_of: Image.Image | None = None, extra: dict | None = None
) -> bytes:
    """A camera-like EXIF block: obama.jpg's own tags plus the given changes (``extra``: Exif IFD tags)."""
    exif, _, _ = source_metadata()
    exif["0th"][piexif.ImageIFD.Orientation] = orientation
    exif["GPS"] = dict(GPS) if gps else {}
    exif["Exif"].update(extra or {})
    if thumbnail_of is None:
        exif["thumbnail"] = None
        exif["1st"] = {}
    else:
        thumb = thumbnail_of.copy()
        thumb.thumbnail((160, 160))
        exif["thumbnail"] = jpeg_bytes(thumb, quality=85)
    return piexif.dump(exif)


def scene_type_as_short(exif: bytes) -> bytes:
    """Rewrite SceneType as a SHORT, the out-of-spec type some phones write, which piexif cannot dump."""
    entry = struct.pack(">HHI", piexif.ExifIFD.SceneType, 7, 1) + b"\x01\x00\x00\x00"
    assert exif.count(entry) == 1, "piexif writes big-endian IFD entries"
    return exif.replace(entry, struct.pack(">HHI", piexif.ExifIFD.SceneType, 3, 1) + b"\x00\x01\x00\x00")


def maker_note_with_preview(preview_of: Image.Image) -> tuple[bytes, tuple[int, int]]:
    """A Nikon-style MakerNote with a JPEG preview of the photo inside; returns it and the preview's span."""
    preview = preview_of.copy()
    preview.thumbnail((320, 320))
    jpeg = jpeg_bytes(preview, quality=80)
    head = b"Nikon\x00\x02\x10\x00\x00MM\x00*\x00\x00\x00\x08" + bytes(range(64))
    return head + jpeg + b"\x00" * 16 + b"tail", (len(head), len(head) + len(jpeg))


def mp4_video(frames: list[Image.Image]) -> bytes:
    """A real MP4 (MPEG-4 Part 2) of the frames, as a phone's Motion Photo carries."""
    import tempfile

    import cv2

    width, height = frames[0].size
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "clip.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
        assert writer.isOpened(), "OpenCV cannot write MP4 here"
        for frame in frames:
            writer.write(cv2.cvtColor(np.asarray(frame.convert("RGB")), cv2.COLOR_RGB2BGR))
        writer.release()
        return Path(path).read_bytes()


def motion_photo(dest: Path) -> tuple[Path, bytes]:
    """A Google-style Motion Photo: JPEG with MotionPhoto XMP and an MP4 of the face appended."""
    still = face(0.25)
    video = mp4_video([still.rotate(angle) for angle in (0, 2, 4, 6)])
    xmp = MOTION_XMP.replace("{length}", str(len(video))).encode("utf-8")
    dest.write_bytes(jpeg_bytes(still, quality=92, exif=exif_with(), xmp=xmp) + video)
    return dest, video


def mpo_jpeg(dest: Path) -> Path:
    """A JPEG with an MPF secondary image (here a depth-map-like grey copy), as phones write."""
    still = face(0.25)
    depth = still.convert("L").convert("RGB")
    still.save(dest, format="MPO", save_all=True, append_images=[depth], quality=92, exif=exif_with())
    return dest


def heic(dest: Path, *, orientation: int = 6) -> Path:
    """An iPhone-like HEIC: rotated via irot (from EXIF orientation), EXIF with GPS, ICC, XMP, a thumbnail."""
    upright = face(0.5)
    stored = upright.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else upright
    _, icc, xmp = source_metadata()
    exif = exif_with(orientation=orientation)
    stored.save(dest, format="HEIF", quality=85, exif=exif, icc_profile=icc, xmp=xmp, thumbnails=[96])
    return dest


def png_with_alpha(dest: Path) -> tuple[Path, np.ndarray]:
    """astronaut.png with a radial alpha mask, a text chunk, gamma and EXIF."""
    with Image.open(DATA / "astronaut.png") as im:
        rgb = im.convert("RGB")
    yy, xx = np.mgrid[0 : rgb.height, 0 : rgb.width]
    radius = np.hypot(yy - rgb.height / 2, xx - rgb.width / 2)
    alpha = np.clip(255 - radius, 0, 255).astype(np.uint8)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha))
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "astronaut with a vignette")
    info.add(b"gAMA", struct.pack(">I", 45455))
    rgba.save(dest, format="PNG", pnginfo=info, exif=exif_with(gps=False))
    return dest, alpha


def displayed(data: bytes | Path) -> np.ndarray:
    """Pixels as an orientation-aware viewer shows them."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def xmp_facts(raw: bytes) -> set[tuple[str, str]]:
    """Every attribute and text of an XMP tree as (path, value), so packets compare as data, not bytes."""
    facts: set[tuple[str, str]] = set()

    def walk(element: ET.Element, path: str) -> None:
        for name, value in element.attrib.items():
            if name != f"{{{RDF}}}about":
                facts.add((f"{path}/@{name}", value))
        if element.text and element.text.strip():
            facts.add((path, element.text.strip()))
        for child in element:
            walk(child, f"{path}/{child.tag}")

    walk(ET.fromstring(raw), "")
    return facts


def xmp_of(path_or_bytes: Path | bytes) -> bytes:
    with Image.open(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes) as im:
        xmp = im.info["xmp"]
    return xmp.encode() if isinstance(xmp, str) else xmp


def removed_from_xmp(fact: tuple[str, str], *, strip_gps: bool) -> bool:
    """Whether an ``xmp_facts`` fact of a source must be gone from its cloaked copy."""
    path, value = fact
    return (
        any(part in path for part in ("/regions/}", "photo/1.2/}RegionInfo", "}PersonInImage"))
        or value in (PERSON, f"People|{PERSON}")
        or (strip_gps and "}GPS" in path)
        or (strip_gps and any(f"photoshop/1.0/}}{place}" in path for place in ("City", "State", "Country")))
    )


# What a camera writes that a cloaked copy must carry unchanged.
CAMERA_TAGS = [
    ("Exif", piexif.ExifIFD.DateTimeOriginal),
    ("0th", piexif.ImageIFD.Make),
    ("0th", piexif.ImageIFD.Model),
    ("Exif", piexif.ExifIFD.MakerNote),
    ("Exif", piexif.ExifIFD.UserComment),
    ("Exif", piexif.ExifIFD.LensModel),
    ("0th", piexif.ImageIFD.Orientation),
]


def assert_camera_tags_kept(source_exif: dict, out_exif: dict) -> None:
    for ifd, tag in CAMERA_TAGS:
        assert out_exif[ifd][tag] == source_exif[ifd][tag], piexif.TAGS[ifd][tag]["name"]
