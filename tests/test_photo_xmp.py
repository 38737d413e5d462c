"""XMP cleaning beyond the face regions: GPS inside structures, embedded originals, extended XMP, prefixes."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

import photo_fixtures as fx
from lowkeyd.photo import encode_photo, read_photo
from lowkeyd.photo.containers import jpeg_layout
from lowkeyd.photo.xmp import Xmp

HEAD = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
)
TAIL = "</rdf:Description></rdf:RDF></x:xmpmeta>"


def test_gps_inside_structures_and_other_vocabularies_is_removed() -> None:
    xmp = Xmp.parse(
        (
            HEAD + ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
            ' xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" drone-dji:GpsLatitude="38.88" dc:format="image/jpeg">'
            '<Iptc4xmpExt:LocationCreated><rdf:Bag><rdf:li rdf:parseType="Resource">'
            "<Iptc4xmpExt:City>Washington</Iptc4xmpExt:City><Iptc4xmpExt:GPSLatitude>38,53.3N</Iptc4xmpExt:GPSLatitude>"
            "</rdf:li></rdf:Bag></Iptc4xmpExt:LocationCreated>" + TAIL
        ).encode()
    )
    assert xmp.remove_gps()
    out = xmp.to_bytes()
    assert b"38" not in out and b"Gps" not in out and b"GPS" not in out
    assert b"Washington" not in out and b'dc:format="image/jpeg"' in out  # place names go with GPS
    assert b'xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/"' not in out  # no longer used, not declared


def test_prefixes_survive_a_round_trip() -> None:
    _, _, raw = fx.source_metadata()
    out = Xmp.parse(raw).to_bytes()
    for prefix in (b"photoshop:City", b"xmpMM:History", b"stEvt:action", b"crs:Exposure", b"dc:creator"):
        assert prefix in out
    assert Xmp.parse(out).to_bytes() == out
    assert fx.xmp_facts(out) == fx.xmp_facts(raw)


def test_depth_photo_original_in_gimage_and_extended_xmp_are_dropped() -> None:
    still = fx.face(0.1)
    original = base64.b64encode(fx.jpeg_bytes(still)).decode()
    main = (
        HEAD + ' xmlns:GImage="http://ns.google.com/photos/1.0/image/" xmlns:xmpNote="http://ns.adobe.com/xmp/note/"'
        ' GImage:Mime="image/jpeg" xmpNote:HasExtendedXMP="0123456789ABCDEF0123456789ABCDEF">'
        '<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Lens Blur</rdf:li></rdf:Alt></dc:title>' + TAIL
    )
    extended = (
        HEAD.replace("<rdf:Description", '<rdf:Description xmlns:GImage="http://ns.google.com/photos/1.0/image/"')
        + f' GImage:Data="{original}">'
        + TAIL
    ).encode()
    guid = b"0123456789ABCDEF0123456789ABCDEF"
    payload = b"http://ns.adobe.com/xmp/extension/\x00" + guid + len(extended).to_bytes(4, "big") + bytes(4) + extended
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    photo = read_photo(fx.jpeg_bytes(still, exif=fx.exif_with(), xmp=main.encode(), extra=segment))
    assert "extended XMP" in photo.dropped and any("GImage:Mime" in d for d in photo.dropped)
    out = encode_photo(photo, photo.rgb, marker={"version": "1"})
    assert not any(p.startswith(b"http://ns.adobe.com/xmp/extension/") for p in jpeg_layout(out).app(1))
    assert original[:64].encode() not in out and b"HasExtendedXMP" not in out and b"Lens Blur" in out


@pytest.mark.parametrize("bad", [{"not a name": "x"}, {"1st": "x"}])
def test_marker_keys_must_be_xml_names(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="XML name"):
        Xmp.empty().set_marker(bad)


def test_the_photo_layer_never_imports_torch_or_the_engine() -> None:
    code = (
        "import sys, lowkeyd.photo; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lowkeyd.engine')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
