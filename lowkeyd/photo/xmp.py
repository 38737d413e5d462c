"""XMP packets: parse, remove what betrays a face or a place, mark lowkeyd's outputs (or unmark), serialise.

An XMP packet is RDF/XML: ``x:xmpmeta`` > ``rdf:RDF`` > ``rdf:Description`` elements whose
attributes and child elements are the properties. Only properties lowkeyd must remove or add
are touched; everything else is written back as it was read (namespace prefixes included).
"""

from __future__ import annotations

import copy
import io
import re
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import defusedxml.ElementTree as SafeET

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMPMETA = "adobe:ns:meta/"
XML = "http://www.w3.org/XML/1998/namespace"

# The identifier of lowkeyd's own vocabulary. ".invalid" is reserved (RFC 2606), so it can
# never be mistaken for, or collide with, a real published vocabulary.
MARKER_NS = "https://lowkeyd.invalid/ns/cloak/1.0/"
MARKER_PROPERTY = "Cloaked"

_MWG_RS = "http://www.metadataworkinggroup.com/schemas/regions/"
_MS_PHOTO_12 = "http://ns.microsoft.com/photo/1.2/"
_MS_PHOTO_10 = "http://ns.microsoft.com/photo/1.0/"
_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_LIGHTROOM = "http://ns.adobe.com/lightroom/1.0/"
_DIGIKAM = "http://www.digikam.org/ns/1.0/"
_MEDIAPRO = "http://ns.iview-multimedia.com/mediapro/1.0/"
_DC = "http://purl.org/dc/elements/1.1/"
_GCAMERA = "http://ns.google.com/photos/1.0/camera/"
_XMP_NOTE = "http://ns.adobe.com/xmp/note/"

# Prefixes for namespaces lowkeyd writes itself or that a file declared without a usable prefix.
_WELL_KNOWN_PREFIXES = {
    RDF: "rdf",
    XMPMETA: "x",
    MARKER_NS: "lowkeyd",
    _DC: "dc",
    "http://ns.adobe.com/xap/1.0/": "xmp",
    "http://ns.adobe.com/exif/1.0/": "exif",
    "http://ns.adobe.com/tiff/1.0/": "tiff",
    "http://ns.adobe.com/photoshop/1.0/": "photoshop",
}

# Properties that outline faces or name the people shown.
_PEOPLE_PROPERTIES = (
    (_MWG_RS, "Regions"),
    (_MS_PHOTO_12, "RegionInfo"),
    (_IPTC_EXT, "PersonInImage"),
    (_IPTC_EXT, "PersonInImageWDetails"),
    (_IPTC_EXT, "ImageRegion"),
)
# Fields inside those properties whose values are person names.
_NAME_FIELDS = {"Name", "PersonDisplayName", "PersonName", "PersonInImage"}
# Keyword lists whose entries are paths such as "People|Jane Doe" or "People/Jane Doe".
_HIERARCHICAL_KEYWORDS = (
    (_LIGHTROOM, "hierarchicalSubject"),
    (_DIGIKAM, "TagsList"),
    (_MS_PHOTO_10, "LastKeywordXMP"),
    (_MEDIAPRO, "CatalogSets"),
)
_PEOPLE_ROOTS = {"people", "persons", "person"}
# Flat keyword lists: a person's name found above is removed from them too.
_FLAT_KEYWORDS = ((_DC, "subject"), (_MS_PHOTO_10, "LastKeywordIPTC"))

# Pointers to media lowkeyd never writes (videos, gain maps, depth maps, the original image as
# base64 in GImage:Data, extended XMP): left in place they would point at nothing or, for
# GImage/GDepth, carry the original pixels themselves. None = every property of that namespace.
_EMBEDDED_MEDIA: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    (
        _GCAMERA,
        (
            "MotionPhoto",
            "MotionPhotoVersion",
            "MotionPhotoPresentationTimestampUs",
            "MicroVideo",
            "MicroVideoVersion",
            "MicroVideoOffset",
            "MicroVideoPresentationTimestampUs",
        ),
    ),
    ("http://ns.google.com/photos/1.0/container/", None),
    ("http://ns.google.com/photos/1.0/image/", None),
    ("http://ns.google.com/photos/1.0/depthmap/", None),
    ("http://ns.adobe.com/hdr-gain-map/1.0/", None),
    ("http://ns.apple.com/HDRGainMap/1.0/", None),
    ("http://ns.apple.com/pixeldatainfo/1.0/", None),
    (_XMP_NOTE, ("HasExtendedXMP",)),
)

# Place names, the words for what GPS says in numbers; they go with it.
_LOCATION_PROPERTIES = (
    ("http://ns.adobe.com/photoshop/1.0/", ("City", "State", "Country")),
    ("http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/", ("Location", "CountryCode")),
    (_IPTC_EXT, ("LocationCreated", "LocationShown")),
)

_NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


_TIFF_NS = "http://ns.adobe.com/tiff/1.0/"


def _split(qname: str) -> tuple[str, str]:
    """'{uri}local' -> (uri, local); an unqualified name has the empty namespace."""
    if qname.startswith("{"):
        uri, _, local = qname[1:].partition("}")
        return uri, local
    return "", qname


def _q(ns: str, local: str) -> str:
    return f"{{{ns}}}{local}"


class Xmp:
    """One XMP packet as an element tree, remembering the prefixes its file used."""

    def __init__(self, root: ET.Element, prefixes: dict[str, str]) -> None:
        self._root = root
        self._prefixes = prefixes  # namespace URI -> prefix as first declared in the file
        self.person_names: set[str] = set()  # names of people shown, as remove_people() found them
        rdf = root.find(_q(RDF, "RDF"))
        if rdf is None:
            raise ValueError("XMP packet has no rdf:RDF element")
        self._rdf = rdf

    @classmethod
    def parse(cls, raw: bytes) -> Xmp:
        """Parse a packet (with or without its ``<?xpacket?>`` wrapper); ValueError if it is not XMP."""
        prefixes: dict[str, str] = {}
        root: ET.Element | None = None
        try:
            # DTDs and entities are refused: XMP never has them, and they are how XML bombs work.
            events = SafeET.iterparse(io.BytesIO(raw.rstrip(b"\x00")), events=("start-ns", "start"), forbid_dtd=True)
            for event, item in events:
                if event == "start-ns":
                    prefix, uri = item
                    prefixes.setdefault(uri, prefix)
                elif root is None:
                    root = item
        except (ET.ParseError, ValueError) as exc:
            raise ValueError(f"XMP is not well-formed XML: {exc}") from exc
        if root is None:
            raise ValueError("XMP packet is empty")
        if root.tag == _q(RDF, "RDF"):
            wrapper = ET.Element(_q(XMPMETA, "xmpmeta"))
            wrapper.append(root)
            root = wrapper
        return cls(root, prefixes)

    @classmethod
    def empty(cls) -> Xmp:
        root = ET.Element(_q(XMPMETA, "xmpmeta"))
        ET.SubElement(root, _q(RDF, "RDF"))
        return cls(root, {})

    def copy(self) -> Xmp:
        twin = Xmp(copy.deepcopy(self._root), dict(self._prefixes))
        twin.person_names = set(self.person_names)
        return twin

    def _descriptions(self) -> list[ET.Element]:
        return self._rdf.findall(_q(RDF, "Description"))

    def _label(self, ns: str, local: str) -> str:
        prefix = self._prefixes.get(ns) or _WELL_KNOWN_PREFIXES.get(ns) or ns
        return f"{prefix}:{local}"

    def _pop_properties(self, ns: str, locals_: tuple[str, ...] | None) -> list[tuple[str, ET.Element | str]]:
        """Remove top-level properties of namespace ``ns`` (all of them when ``locals_`` is None)."""
        removed: list[tuple[str, ET.Element | str]] = []
        for desc in self._descriptions():
            for name in list(desc.attrib):
                uri, local = _split(name)
                if uri == ns and (locals_ is None or local in locals_):
                    removed.append((local, desc.attrib.pop(name)))
            for child in list(desc):
                uri, local = _split(child.tag)
                if uri == ns and (locals_ is None or local in locals_):
                    desc.remove(child)
                    removed.append((local, child))
        return removed

    def remove_people(self) -> list[str]:
        """Remove face regions, people shown and person-name keywords; say which properties went."""
        removed: list[str] = []
        names: set[str] = set()
        for ns, local in _PEOPLE_PROPERTIES:
            for found_local, value in self._pop_properties(ns, (local,)):
                removed.append(self._label(ns, found_local))
                if isinstance(value, ET.Element):
                    names |= _names_in(value)
        for ns, local in _HIERARCHICAL_KEYWORDS:
            for item in self._list_items(ns, local):
                path = re.split(r"[|/]", (item.text or "").strip())
                if path[0].strip().casefold() in _PEOPLE_ROOTS or path[-1].strip() in names:
                    names.add(path[-1].strip())
                    self._remove_item(item)
                    removed.append(self._label(ns, local))
        for ns, local in _FLAT_KEYWORDS:
            for item in self._list_items(ns, local):
                if (item.text or "").strip() in names:
                    self._remove_item(item)
                    removed.append(self._label(ns, local))
        self.person_names |= names
        return sorted(set(removed))

    def remove_embedded_media(self) -> list[str]:
        """Remove pointers to, and copies of, media lowkeyd does not write; say which went."""
        removed = {
            self._label(ns, local) for ns, locals_ in _EMBEDDED_MEDIA for local, _ in self._pop_properties(ns, locals_)
        }
        return sorted(removed)

    def make_upright(self) -> bool:
        """Remove a tiff:Orientation other than 1 (the pixels are stored upright); True if there was one."""
        for desc in self._descriptions():
            for name in list(desc.attrib):
                if name == _q(_TIFF_NS, "Orientation") and desc.attrib[name].strip() != "1":
                    del desc.attrib[name]
                    return True
            for child in list(desc):
                if child.tag == _q(_TIFF_NS, "Orientation") and (child.text or "").strip() != "1":
                    desc.remove(child)
                    return True
        return False

    def remove_gps(self) -> bool:
        """Remove every GPS property, top-level or inside a structure (exif:GPS*, *:Gps*), and the
        place names (city, state, country, location) that say the same in words."""
        places = [self._pop_properties(ns, locals_) for ns, locals_ in _LOCATION_PROPERTIES]
        found = any(places)
        for element in list(self._rdf.iter()):
            for name in list(element.attrib):
                if _is_gps(name):
                    del element.attrib[name]
                    found = True
            for child in list(element):
                if _is_gps(child.tag):
                    element.remove(child)
                    found = True
        return found

    def _list_items(self, ns: str, local: str) -> list[ET.Element]:
        return [
            li
            for desc in self._descriptions()
            for prop in desc.findall(_q(ns, local))
            for li in prop.iter(_q(RDF, "li"))
        ]

    def _remove_item(self, item: ET.Element) -> None:
        """Remove an rdf:li; a property left with an empty list goes too."""
        for desc in self._descriptions():
            for prop in list(desc):
                for container in prop:
                    if item in list(container):
                        container.remove(item)
                        if len(container) == 0:
                            desc.remove(prop)
                        return

    @property
    def marker(self) -> dict[str, str] | None:
        """The fields of lowkeyd's ``Cloaked`` marker, or None when the packet has none."""
        for desc in self._descriptions():
            if _q(MARKER_NS, MARKER_PROPERTY) in desc.attrib:
                return {}
            element = desc.find(_q(MARKER_NS, MARKER_PROPERTY))
            if element is not None:
                fields: dict[str, str] = {}
                for holder in (element, *element.findall(_q(RDF, "Description"))):
                    for name, value in holder.attrib.items():
                        uri, local = _split(name)
                        if uri == MARKER_NS:
                            fields[local] = value
                    for child in holder:
                        uri, local = _split(child.tag)
                        if uri == MARKER_NS:
                            fields[local] = child.text or ""
                return fields
        return None

    def remove_marker(self) -> None:
        """Remove lowkeyd's marker, and a description it leaves with nothing to say."""
        marked = [d for d in self._descriptions() if any(_split(n)[0] == MARKER_NS for n in (*d.attrib, *(c.tag for c in d)))]
        self._pop_properties(MARKER_NS, None)
        for desc in marked:
            if len(desc) == 0 and set(desc.attrib) <= {_q(RDF, "about"), "about"}:
                self._rdf.remove(desc)

    def set_marker(self, fields: dict[str, str]) -> None:
        """Mark the packet as lowkeyd's output, replacing any earlier marker."""
        for key in fields:
            if not _NCNAME.fullmatch(key):
                raise ValueError(f"marker field {key!r} is not a valid XML name")
        self._pop_properties(MARKER_NS, (MARKER_PROPERTY,))
        # Every rdf:Description of a packet must be about the same resource; readers warn otherwise.
        # (old packets write it unqualified, as plain "about")
        abouts = (d.get(_q(RDF, "about")) or d.get("about") for d in self._descriptions())
        about = next((a for a in abouts if a), "")
        desc = ET.SubElement(self._rdf, _q(RDF, "Description"), {_q(RDF, "about"): about})
        struct = ET.SubElement(desc, _q(MARKER_NS, MARKER_PROPERTY), {_q(RDF, "parseType"): "Resource"})
        for key, value in fields.items():
            ET.SubElement(struct, _q(MARKER_NS, key)).text = str(value)

    def to_bytes(self) -> bytes:
        """The packet as UTF-8, wrapped in ``<?xpacket?>`` processing instructions."""
        prefixes = self._assign_prefixes()
        out: list[str] = ['<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n']
        _write(self._root, prefixes, out, declare=True)
        out.append('\n<?xpacket end="w"?>')
        return "".join(out).encode("utf-8")

    def _assign_prefixes(self) -> dict[str, str]:
        used: dict[str, None] = {}
        for element in self._root.iter():
            for name in (element.tag, *element.attrib):
                uri, _ = _split(name)
                if uri and uri != XML:
                    used[uri] = None
        prefixes: dict[str, str] = {}
        taken: set[str] = {"xml", "xmlns"}
        for uri in used:
            wanted = self._prefixes.get(uri) or _WELL_KNOWN_PREFIXES.get(uri) or "ns"
            prefix, n = wanted, 1
            while prefix in taken or not _NCNAME.fullmatch(prefix):
                prefix, n = f"ns{n}", n + 1
            taken.add(prefix)
            prefixes[uri] = prefix
        return prefixes


def _names_in(element: ET.Element) -> set[str]:
    names: set[str] = set()
    for node in element.iter():
        for name, value in node.attrib.items():
            if _split(name)[1] in _NAME_FIELDS and value.strip():
                names.add(value.strip())
        if _split(node.tag)[1] in _NAME_FIELDS:
            texts = [li.text for li in node.iter(_q(RDF, "li"))] or [node.text]
            names |= {text.strip() for text in texts if text and text.strip()}
    return names


def _is_gps(qname: str) -> bool:
    uri, local = _split(qname)
    return uri != RDF and local.casefold().startswith("gps")


def _qualified(qname: str, prefixes: dict[str, str]) -> str:
    uri, local = _split(qname)
    if not uri:
        return local
    if uri == XML:
        return f"xml:{local}"
    return f"{prefixes[uri]}:{local}"


def _write(element: ET.Element, prefixes: dict[str, str], out: list[str], *, declare: bool = False) -> None:
    # Hand-written because ElementTree would rename every prefix to ns0, ns1... through a
    # process-wide registry; all namespaces are declared once, on the root element.
    tag = _qualified(element.tag, prefixes)
    attributes = [f"xmlns:{prefix}={quoteattr(uri)}" for uri, prefix in prefixes.items()] if declare else []
    attributes += [f"{_qualified(name, prefixes)}={quoteattr(value)}" for name, value in element.attrib.items()]
    out.append(f"<{tag}" + "".join(f" {a}" for a in attributes))
    if len(element) == 0 and not element.text:
        out.append("/>")
        return
    out.append(">" + escape(element.text or ""))
    for child in element:
        _write(child, prefixes, out)
        out.append(escape(child.tail or ""))
    out.append(f"</{tag}>")
