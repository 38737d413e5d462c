"""The Photoshop block of a JPEG (APP13): IPTC-IIM kept, only what leaks taken out, byte for byte otherwise.

APP13 holds Photoshop "image resources"; one of them is the IPTC-IIM record a newsroom
writes (caption, by-line, copyright, keywords). lowkeyd edits the resources and datasets
in place, so everything it does not remove stays exactly as it was:

* resources 0x0409/0x040C (thumbnails of the original) and 0x0424 (an XMP copy lowkeyd
  does not clean) go;
* IPTC location fields go with GPS; keywords naming a person removed from the XMP go too;
* the IPTC digest (0x0425) is updated when it matched before, so no reader sees it go stale.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

PHOTOSHOP_HEADER = b"Photoshop 3.0\0"
_RESOURCE = b"8BIM"
_IPTC, _DIGEST = 0x0404, 0x0425
_DROPPED_RESOURCES = {
    0x0409: "the Photoshop thumbnail (APP13; it shows the original)",
    0x040C: "the Photoshop thumbnail (APP13; it shows the original)",
    0x0424: "the XMP copy inside the Photoshop block (APP13)",
}
# IIM record 2 datasets that say where the photo was taken.
LOCATION_DATASETS = {26: "Content Location Code", 27: "Content Location Name", 90: "City", 92: "Sub-location",
                     95: "Province/State", 100: "Country Code", 101: "Country Name"}
_KEYWORDS = 25


@dataclass
class Resource:
    kind: int
    name: bytes  # the Pascal-string name as stored, padding included
    data: bytes

    def to_bytes(self) -> bytes:
        padded = self.data + b"\0" * (len(self.data) & 1)
        return _RESOURCE + self.kind.to_bytes(2, "big") + self.name + len(self.data).to_bytes(4, "big") + padded


@dataclass
class PhotoshopBlock:
    """The resources of one APP13 segment, in file order."""

    resources: list[Resource]
    notes: list[str] = field(default_factory=list)  # what reading it will drop, in words

    @classmethod
    def parse(cls, payload: bytes) -> PhotoshopBlock:
        """Parse an APP13 payload; ValueError if it is not a well-formed Photoshop block."""
        if not payload.startswith(PHOTOSHOP_HEADER):
            raise ValueError("not a Photoshop 3.0 block")
        resources: list[Resource] = []
        pos = len(PHOTOSHOP_HEADER)
        while pos + 12 <= len(payload):
            if payload[pos : pos + 4] != _RESOURCE:
                raise ValueError("Photoshop resource signature expected")
            kind = int.from_bytes(payload[pos + 4 : pos + 6], "big")
            name_len = payload[pos + 6] + 1
            name_len += name_len & 1
            name = payload[pos + 6 : pos + 6 + name_len]
            size_at = pos + 6 + name_len
            size = int.from_bytes(payload[size_at : size_at + 4], "big")
            start = size_at + 4
            if start + size > len(payload):
                raise ValueError("Photoshop resource overruns the block")
            resources.append(Resource(kind, name, payload[start : start + size]))
            pos = start + size + (size & 1)
        notes = sorted({_DROPPED_RESOURCES[r.kind] for r in resources if r.kind in _DROPPED_RESOURCES})
        return cls(resources, notes)

    @property
    def has_location(self) -> bool:
        return any(is_location(record, number) for r in self._iptc() for record, number, _ in r)

    def _iptc(self) -> list[list[tuple[int, int, bytes]]]:
        return [_datasets(r.data) for r in self.resources if r.kind == _IPTC]

    def cleaned(self, *, strip_location: bool, person_names: set[str]) -> bytes | None:
        """The APP13 payload to write, or None when nothing is left in it."""
        kept: list[Resource] = []
        digests: dict[bytes, bytes] = {}  # MD5 of an IPTC record as read -> as written
        for resource in self.resources:
            if resource.kind in _DROPPED_RESOURCES:
                continue
            if resource.kind == _IPTC:
                datasets = _datasets(resource.data)
                keep = [
                    (record, number, value)
                    for record, number, value in datasets
                    if not leaks(record, number, value, strip_location=strip_location, person_names=person_names)
                ]
                data = resource.data if keep == datasets else b"".join(_dataset_bytes(*d) for d in keep)
                digests[hashlib.md5(resource.data).digest()] = hashlib.md5(data).digest()
                resource = Resource(resource.kind, resource.name, data)
            kept.append(resource)
        # A digest that matched the IPTC as read is made to match it as written, so it does not go stale.
        kept = [
            Resource(r.kind, r.name, digests[r.data]) if r.kind == _DIGEST and r.data in digests else r for r in kept
        ]
        if not kept:
            return None
        return PHOTOSHOP_HEADER + b"".join(r.to_bytes() for r in kept)


def is_location(record: int, number: int) -> bool:
    """True for an IIM dataset that says where the photo was taken."""
    return record == 2 and number in LOCATION_DATASETS


def leaks(record: int, number: int, value: bytes, *, strip_location: bool, person_names: set[str]) -> bool:
    """True for an IIM dataset the output leaves out: a place when stripping location, a keyword naming a person."""
    if strip_location and is_location(record, number):
        return True
    names = {name.encode("utf-8") for name in person_names} | {name.encode("latin-1", "ignore") for name in person_names}
    return record == 2 and number == _KEYWORDS and value.strip() in names


def _datasets(data: bytes) -> list[tuple[int, int, bytes]]:
    """(record, dataset, value) of an IIM stream; a malformed tail is kept whole as one opaque entry."""
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos + 5 <= len(data) and data[pos] == 0x1C:
        record, number = data[pos + 1], data[pos + 2]
        size = int.from_bytes(data[pos + 3 : pos + 5], "big")
        start = pos + 5
        if size & 0x8000:  # extended dataset: the low bits say how many bytes hold the length
            count = size & 0x7FFF
            size = int.from_bytes(data[start : start + count], "big")
            start += count
        if start + size > len(data):
            break
        out.append((record, number, data[start : start + size]))
        pos = start + size
    if pos < len(data):
        out.append((-1, -1, data[pos:]))
    return out


def _dataset_bytes(record: int, number: int, value: bytes) -> bytes:
    if record < 0:
        return value  # the opaque tail, as read
    if len(value) < 0x8000:
        return bytes((0x1C, record, number)) + len(value).to_bytes(2, "big") + value
    return bytes((0x1C, record, number)) + (0x8004).to_bytes(2, "big") + len(value).to_bytes(4, "big") + value
