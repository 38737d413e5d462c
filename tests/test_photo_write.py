"""Cloaked copies are the same photo to their owner and carry no trace of the original face.

The cloak is simulated by a visible pixel change (a block over the face inverted): the
photo layer must carry whatever pixels it is given, wherever a copy of them ends up.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import photo_fixtures as fx
import piexif
import pytest
from PIL import Image
from PIL.JpegImagePlugin import get_sampling

from lowkeyd.errors import PhotoError
from lowkeyd.photo import encode_photo, read_photo, write_photo
from lowkeyd.photo.containers import embedded_jpegs, jpeg_layout
from lowkeyd.photo.iptc import PhotoshopBlock
from lowkeyd.photo.jpeg import image_data
from lowkeyd.photo.jpegblocks import changed_mcus
from lowkeyd.photo.orientation import TO_STORED
from lowkeyd.photo.xmp import MARKER_NS

MARKER = {"version": "0.1.0", "preset": "balanced"}


def cloak(rgb: np.ndarray) -> np.ndarray:
    """A stand-in for the attack: invert a block over the face, unmistakable in any copy."""
    out = rgb.copy()
    h, w = out.shape[:2]
    out[h // 8 : h // 2, w // 4 : 3 * w // 4] = 255 - out[h // 8 : h // 2, w // 4 : 3 * w // 4]
    return out


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    return fx.rich_jpeg(tmp_path / "IMG_0001.jpg")


@pytest.mark.parametrize("strip_gps", [True, False])
def test_rich_jpeg_keeps_the_photo_and_loses_the_face(rich: Path, tmp_path: Path, strip_gps: bool) -> None:
    photo = read_photo(rich)
    assert photo.format == "JPEG" and photo.orientation == 6
    upright_source = fx.displayed(rich)
    assert photo.rgb.shape == upright_source.shape  # faces are looked for on the upright image
    assert fx.mean_diff(photo.rgb, upright_source) == 0
    cloaked = cloak(photo.rgb)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = write_photo(photo, cloaked, out_dir / rich.name, strip_gps=strip_gps, marker=MARKER)
    assert dest == out_dir / rich.name and sorted(os.listdir(out_dir)) == [rich.name]

    # displays exactly like the input, upright, once: same shape, the cloaked pixels
    shown = fx.displayed(dest)
    assert shown.shape == upright_source.shape
    assert fx.mean_diff(shown, cloaked) < 1.5
    with Image.open(dest) as im:
        assert im.format == "JPEG" and im.size == Image.open(rich).size  # stored sideways, like the source
        icc, quality_tables = im.info["icc_profile"], im.quantization
    assert icc == Image.open(rich).info["icc_profile"]
    assert len(quality_tables) == 2

    source_exif = piexif.load(str(rich))
    out_exif = piexif.load(str(dest))
    fx.assert_camera_tags_kept(source_exif, out_exif)
    assert out_exif["Exif"][piexif.ExifIFD.MakerNote] == fx.MAKER_NOTE
    assert (out_exif["GPS"] == {}) is strip_gps
    if not strip_gps:
        assert out_exif["GPS"] == fx.GPS

    # the thumbnail shows the cloaked pixels, not the original's
    new_thumb = np.asarray(Image.open(io.BytesIO(out_exif["thumbnail"])).convert("RGB"))
    assert new_thumb.shape == np.asarray(Image.open(io.BytesIO(source_exif["thumbnail"]))).shape
    size = (new_thumb.shape[1], new_thumb.shape[0])
    stored_cloaked = Image.fromarray(cloaked).transpose(TO_STORED[6]).resize(size)
    stored_original = Image.fromarray(photo.rgb).transpose(TO_STORED[6]).resize(size)
    assert fx.mean_diff(new_thumb, stored_cloaked) < 6
    assert fx.mean_diff(new_thumb, stored_original) > 20

    # XMP: face regions and names gone, GPS as configured, marker added, everything else equal
    source_facts, out_facts = fx.xmp_facts(fx.xmp_of(rich)), fx.xmp_facts(fx.xmp_of(dest))
    marker_facts = {f for f in out_facts if MARKER_NS in f[0]}
    assert {(p.rsplit("}", 1)[1], v) for p, v in marker_facts if "@" not in p} == set(MARKER.items())

    kept = {f for f in source_facts if not fx.removed_from_xmp(f, strip_gps=strip_gps)}
    assert kept < source_facts and out_facts - marker_facts == kept

    assert dest.stat().st_mtime_ns == rich.stat().st_mtime_ns
    assert read_photo(dest).cloak_marker == MARKER
    assert read_photo(rich).cloak_marker is None


def test_photoshop_block_keeps_its_iptc_but_not_its_thumbnail(rich: Path) -> None:
    photo = read_photo(fx.DATA / "obama.jpg")
    assert any("Photoshop thumbnail" in d for d in photo.dropped)
    out = encode_photo(photo, cloak(photo.rgb), marker=MARKER, strip_gps=False)
    (source_block,) = jpeg_layout(photo.source_bytes).app(13)
    (block,) = jpeg_layout(out).app(13)
    kinds = [r.kind for r in PhotoshopBlock.parse(block).resources]
    assert 0x0409 not in kinds and 0x040C not in kinds
    # every other resource, the IPTC record (captions, by-line, copyright) among them, byte for byte
    assert [r for r in PhotoshopBlock.parse(source_block).resources if r.kind not in (0x0409, 0x040C)] == (
        PhotoshopBlock.parse(block).resources
    )
    # stripping GPS takes the IPTC location fields (City WASHINGTON, ...) with it, and nothing else
    stripped = PhotoshopBlock.parse(next(jpeg_layout(encode_photo(photo, photo.rgb, marker=MARKER)).app(13)))
    assert not stripped.has_location and PhotoshopBlock.parse(block).has_location
    assert b"Pete Souza" in stripped.resources[0].data and b"WASHINGTON" not in stripped.resources[0].data


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_displays_like_the_source(tmp_path: Path, orientation: int) -> None:
    upright = fx.face(0.2)
    stored = upright.transpose(TO_STORED[orientation]) if orientation != 1 else upright
    source = tmp_path / "o.png"  # lossless, so "displays exactly like" is checked to the pixel
    stored.save(source, exif=fx.exif_with(orientation=orientation, thumbnail_of=stored))
    photo = read_photo(source)
    assert np.array_equal(photo.rgb, np.asarray(upright))
    cloaked = cloak(photo.rgb)
    out = encode_photo(photo, cloaked, marker=MARKER)
    assert np.array_equal(fx.displayed(out), cloaked)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == stored.size and im.getexif()[0x0112] == orientation


def test_heic_in_heic_out_with_exif(tmp_path: Path) -> None:
    import pillow_heif

    source = fx.heic(tmp_path / "IMG_0002.HEIC")
    photo = read_photo(source)
    assert photo.format == "HEIF" and photo.rgb.shape[0] > photo.rgb.shape[1]  # upright portrait
    assert any("thumbnails" in d for d in photo.dropped)
    cloaked = cloak(photo.rgb)
    dest = write_photo(photo, cloaked, tmp_path / "out.heic", marker=MARKER)
    heif = pillow_heif.open_heif(dest)
    assert heif.info["thumbnails"] == [] and not heif.info.get("depth_images")
    with Image.open(dest) as im:
        assert im.format == "HEIF"
        assert fx.mean_diff(np.asarray(im.convert("RGB")), cloaked) < 3
        assert im.info["icc_profile"] == Image.open(source).info["icc_profile"]
    source_exif, out_exif = piexif.load(Image.open(source).info["exif"]), piexif.load(heif.info["exif"])
    kept = [("0th", piexif.ImageIFD.Make), ("0th", piexif.ImageIFD.Model), ("Exif", piexif.ExifIFD.DateTimeOriginal)]
    for ifd, tag in kept:
        assert out_exif[ifd][tag] == source_exif[ifd][tag]
    assert source_exif["GPS"] and not out_exif["GPS"]
    assert read_photo(dest).cloak_marker == MARKER


def test_png_keeps_alpha_text_and_gamma(tmp_path: Path) -> None:
    source, alpha = fx.png_with_alpha(tmp_path / "astro.png")
    photo = read_photo(source)
    assert np.array_equal(photo.alpha, alpha)
    cloaked = cloak(photo.rgb)
    out = encode_photo(photo, cloaked, marker=MARKER)
    with Image.open(io.BytesIO(out)) as im:
        assert im.mode == "RGBA"
        pixels = np.asarray(im)
        assert im.info["Comment"] == "astronaut with a vignette"
        assert im.info["gamma"] == pytest.approx(0.45455)
    assert np.array_equal(pixels[..., 3], alpha) and np.array_equal(pixels[..., :3], cloaked)


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_stays_webp_and_lossless_stays_lossless(tmp_path: Path, lossless: bool) -> None:
    source = tmp_path / "w.webp"
    fx.face(0.3).save(source, lossless=lossless, quality=90, exif=fx.exif_with())
    photo = read_photo(source)
    assert photo.encoding.lossless is lossless
    cloaked = cloak(photo.rgb)
    out = encode_photo(photo, cloaked, marker=MARKER)
    assert (b"VP8L" in out[:64]) is lossless
    got = np.asarray(Image.open(io.BytesIO(out)).convert("RGB"))
    assert np.array_equal(got, cloaked) if lossless else fx.mean_diff(got, cloaked) < 3
    assert piexif.load(Image.open(io.BytesIO(out)).info["exif"])["0th"][piexif.ImageIFD.Make] == b"Canon"


def test_avif_round_trip_with_rotation(tmp_path: Path) -> None:
    upright = fx.face(0.25)
    source = tmp_path / "a.avif"
    upright.transpose(TO_STORED[6]).save(source, quality=90, exif=fx.exif_with(orientation=6))
    photo = read_photo(source)
    # Written upright: Pillow would rewrite (and mangle) EXIF that keeps an Orientation tag.
    assert photo.format == "AVIF" and photo.orientation == 1
    assert any("Orientation" in note for note in photo.dropped)
    assert fx.mean_diff(photo.rgb, np.asarray(upright)) < 4
    cloaked = cloak(photo.rgb)
    out = encode_photo(photo, cloaked, marker=MARKER)
    assert fx.mean_diff(fx.displayed(out), cloaked) < 4
    assert read_photo(out).cloak_marker == MARKER


def test_motion_photo_never_publishes_the_video(tmp_path: Path) -> None:
    source, video = fx.motion_photo(tmp_path / "PXL_0001.MP.jpg")
    photo = read_photo(source)
    assert photo.has_motion_video and any("video" in d for d in photo.dropped)
    out = encode_photo(photo, cloak(photo.rgb), marker=MARKER)
    assert jpeg_layout(out).end == len(out)  # nothing after the JPEG
    assert b"ftyp" not in out and video[-256:] not in out
    xmp = fx.xmp_of(out)
    assert b"MotionPhoto" not in xmp and b"Directory" not in xmp and b"Motion</rdf:li>" in xmp
    again = read_photo(out)
    assert not again.has_motion_video and again.dropped == ()


def test_mpf_secondary_images_are_dropped(tmp_path: Path) -> None:
    source = fx.mpo_jpeg(tmp_path / "portrait.jpg")
    assert Image.open(source).format == "MPO"
    photo = read_photo(source)
    assert photo.format == "JPEG" and any("MPF" in d for d in photo.dropped)
    out = encode_photo(photo, cloak(photo.rgb), marker=MARKER)
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "JPEG" and getattr(im, "n_frames", 1) == 1
    assert not any(p.startswith(b"MPF") for p in jpeg_layout(out).app(2))
    assert jpeg_layout(out).end == len(out)


def test_maker_note_preview_is_blanked_in_place(tmp_path: Path) -> None:
    still = fx.face(0.3)
    maker_note, (start, end) = fx.maker_note_with_preview(still)
    source = tmp_path / "nikon.jpg"
    still.save(source, quality=92, exif=fx.exif_with(extra={piexif.ExifIFD.MakerNote: maker_note}))
    photo = read_photo(source)
    assert any("MakerNote" in d for d in photo.dropped)
    out = piexif.load(encode_photo(photo, cloak(photo.rgb), marker=MARKER))["Exif"][piexif.ExifIFD.MakerNote]
    assert len(out) == len(maker_note)
    assert out[:start] == maker_note[:start] and out[end:] == maker_note[end:]
    assert out[start:end] == bytes(end - start) and not list(embedded_jpegs(out))


def test_out_of_spec_exif_tag_is_kept_as_the_camera_wrote_it(tmp_path: Path) -> None:
    exif = fx.scene_type_as_short(fx.exif_with(extra={piexif.ExifIFD.SceneType: b"\x01"}))
    source = tmp_path / "phone.jpg"
    fx.face(0.2).save(source, quality=92, exif=exif)
    photo = read_photo(source)
    assert not any("SceneType" in d for d in photo.dropped)
    out = piexif.load(encode_photo(photo, photo.rgb, marker=MARKER))
    loaded = piexif.load(exif)
    assert out["Exif"][piexif.ExifIFD.SceneType] == loaded["Exif"][piexif.ExifIFD.SceneType] == 1  # still a SHORT
    assert out["Exif"][piexif.ExifIFD.DateTimeOriginal] == loaded["Exif"][piexif.ExifIFD.DateTimeOriginal]
    assert out["0th"][piexif.ImageIFD.Model] == loaded["0th"][piexif.ImageIFD.Model]


def test_grayscale_stays_grayscale_and_palette_becomes_full_colour(tmp_path: Path) -> None:
    gray = tmp_path / "bw.jpg"
    fx.face(0.2).convert("L").save(gray, quality=95)
    photo = read_photo(gray)
    assert photo.grayscale
    with Image.open(io.BytesIO(encode_photo(photo, cloak(photo.rgb), marker=MARKER))) as im:
        assert im.mode == "L"
    palette = tmp_path / "p.png"
    fx.face(0.2).quantize(64).save(palette)
    photo = read_photo(palette)
    cloaked = cloak(photo.rgb)
    with Image.open(io.BytesIO(encode_photo(photo, cloaked, marker=MARKER))) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), cloaked)


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:2:2", "4:4:4"])
def test_jpeg_blocks_outside_the_change_are_kept_bit_for_bit(tmp_path: Path, subsampling: str) -> None:
    source = tmp_path / "web.jpg"
    fx.face(0.3).save(source, quality=60, subsampling=subsampling)
    photo = read_photo(source)
    cloaked = cloak(photo.rgb)
    out = encode_photo(photo, cloaked, marker=MARKER)
    with Image.open(io.BytesIO(out)) as im, Image.open(source) as src:
        assert get_sampling(im) == get_sampling(src) and im.quantization == src.quantization
        decoded = np.asarray(im.convert("RGB"))
    mcu = 16 if subsampling == "4:2:0" else 8, 8 if subsampling == "4:4:4" else 16
    touched = np.repeat(np.repeat(changed_mcus(photo.rgb, cloaked, mcu), mcu[0], 0), mcu[1], 1)
    # chroma upsampling blends a pixel with its neighbour's chroma: one pixel of margin around the MCUs
    rows = touched.copy()
    rows[:-1] |= touched[1:]
    rows[1:] |= touched[:-1]
    near = rows.copy()
    near[:, :-1] |= rows[:, 1:]
    near[:, 1:] |= rows[:, :-1]
    outside = ~near[: decoded.shape[0], : decoded.shape[1]]
    assert np.array_equal(decoded[outside], photo.rgb[outside])
    # inside, the cloak survives quantisation to within the source's own coarseness
    inside = (cloaked != photo.rgb).any(axis=2)
    assert np.abs(decoded[inside].astype(int) - cloaked[inside]).mean() < 6
    # README: "the same size within a few percent" (1.036-1.037 here, with a quarter of the picture inverted)
    assert abs(len(out) / source.stat().st_size - 1) < 0.05


def test_unchanged_jpeg_keeps_its_image_data_byte_for_byte(rich: Path) -> None:
    photo = read_photo(rich)
    out = encode_photo(photo, photo.rgb, marker=MARKER)
    assert image_data(out) == image_data(rich.read_bytes())


def test_fine_source_tables_are_kept(rich: Path) -> None:
    photo = read_photo(rich)
    out = encode_photo(photo, photo.rgb, marker=MARKER)
    with Image.open(io.BytesIO(out)) as im, Image.open(rich) as src:
        assert im.quantization == src.quantization


def test_write_is_atomic_and_leaves_nothing_when_the_disk_refuses(tmp_path: Path) -> None:
    source = fx.rich_jpeg(tmp_path / "src.jpg")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # A real short write: the file-size limit makes the kernel refuse the bytes past 1 KiB.
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from lowkeyd.errors import PhotoError
from lowkeyd.photo import read_photo, write_photo
photo = read_photo({str(source)!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
try:
    write_photo(photo, photo.rgb, {str(out_dir / "src.jpg")!r}, marker={{"version": "1"}})
except PhotoError as exc:
    print("PhotoError:", exc)
"""
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PhotoError:") and "cannot write" in result.stdout
    assert os.listdir(out_dir) == []


def test_write_replaces_an_earlier_output_and_copies_mode_and_mtime(tmp_path: Path) -> None:
    source = fx.rich_jpeg(tmp_path / "src.jpg")
    os.chmod(source, 0o640)
    os.utime(source, ns=(1_600_000_000_000_000_000, 1_500_000_000_123_456_789))
    photo = read_photo(source)
    dest = tmp_path / "out.jpg"
    dest.write_bytes(b"an older cloak")
    write_photo(photo, cloak(photo.rgb), dest, marker=MARKER)
    assert dest.stat().st_mtime_ns == 1_500_000_000_123_456_789
    assert dest.stat().st_mode & 0o777 == 0o640
    assert read_photo(dest).cloak_marker == MARKER
    assert sorted(os.listdir(tmp_path)) == ["out.jpg", "src.jpg"]


def test_a_read_only_original_gives_a_copy_its_owner_can_replace(tmp_path: Path) -> None:
    source = fx.rich_jpeg(tmp_path / "src.jpg")
    os.chmod(source, 0o440)
    photo = read_photo(source)
    dest = tmp_path / "out.jpg"
    write_photo(photo, cloak(photo.rgb), dest, marker=MARKER)
    assert dest.stat().st_mode & 0o777 == 0o640


def test_write_refuses_to_overwrite_the_original(tmp_path: Path) -> None:
    source = fx.rich_jpeg(tmp_path / "src.jpg")
    before = source.read_bytes()
    photo = read_photo(source)
    os.link(source, tmp_path / "hardlink.jpg")
    for dest in (source, tmp_path / "." / "src.jpg", tmp_path / "hardlink.jpg"):
        with pytest.raises(PhotoError, match="original"):
            write_photo(photo, cloak(photo.rgb), dest, marker=MARKER)
    assert source.read_bytes() == before


def test_write_into_a_missing_folder_is_a_photo_error(tmp_path: Path) -> None:
    photo = read_photo(fx.DATA / "astronaut.png")
    with pytest.raises(PhotoError, match="cannot write"):
        write_photo(photo, photo.rgb, tmp_path / "missing" / "a.png", marker=MARKER)
    assert os.listdir(tmp_path) == []


def test_encode_rejects_pixels_of_another_shape() -> None:
    photo = read_photo(fx.DATA / "astronaut.png")
    with pytest.raises(ValueError, match="shape"):
        encode_photo(photo, photo.rgb[:10], marker=MARKER)


def test_thumbnail_is_made_to_fit_beside_a_big_maker_note(tmp_path: Path) -> None:
    still = fx.face(0.4)
    maker_note = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    exif, _, _ = fx.source_metadata()
    exif["Exif"][piexif.ExifIFD.MakerNote] = maker_note
    exif["0th"][piexif.ImageIFD.Make] = b"Nobody"  # a maker libexiv2 does not parse: the note stays opaque
    thumb = still.resize((240, 300))
    exif["thumbnail"] = fx.jpeg_bytes(thumb, quality=30)
    source = tmp_path / "big.jpg"
    still.save(source, quality=90, exif=piexif.dump(exif))
    photo = read_photo(source)
    out = encode_photo(photo, cloak(photo.rgb), marker=MARKER)
    segment = next(jpeg_layout(out).app(1))
    assert len(segment) <= 65533
    written = piexif.load(segment)
    assert written["Exif"][piexif.ExifIFD.MakerNote] == maker_note
    assert written["thumbnail"] and written["thumbnail"] != exif["thumbnail"]


def test_an_unreadable_original_gives_a_copy_its_owner_can_read_and_replace(tmp_path: Path) -> None:
    import os
    import stat

    from lowkeyd.photo.atomic import atomic_write

    source = tmp_path / "locked.jpg"
    source.write_bytes(b"x")
    source.chmod(0)
    atomic_write(tmp_path / "copy.jpg", b"cloaked", like=os.stat(source))
    assert stat.S_IMODE((tmp_path / "copy.jpg").stat().st_mode) == 0o600


def test_exif_holding_only_gps_is_left_out_when_gps_is_stripped(tmp_path):
    with Image.open(fx.DATA / "obama3.jpg") as im:
        image = im.convert("RGB").crop((0, 1300, 600, 1900))
    gps_only = piexif.dump({"GPS": {piexif.GPSIFD.GPSLatitudeRef: b"N", piexif.GPSIFD.GPSLatitude: ((38, 1), (53, 1), (23, 1))}})
    source = tmp_path / "gps.jpg"
    image.save(source, "JPEG", quality=90, exif=gps_only)
    photo = read_photo(source)
    out = read_photo(write_photo(photo, photo.rgb, tmp_path / "out.jpg", marker={"preset": "default"}))
    assert out.exif is None and out.cloak_marker == {"preset": "default"}
