#!/usr/bin/env python3
"""Box-level tools for making HEIF/HEIC/AVIF test fixtures (python3 stdlib only).

Used by scripts/make-heif-fixtures; every subcommand can also be run by hand:

    heif_fixture.py info FILE                     items, properties and references of a HEIF file
    heif_fixture.py selftest [FILE...]            built-in round-trip tests (+ round-trip of FILEs)
    heif_fixture.py transform IN OUT [--irot N] [--imir MODE] [--strip-exif]
    heif_fixture.py grid OUT WIDTH HEIGHT COLS TILE.heic...   (tiles in row-major order)
    heif_fixture.py huge IN OUT [SIZE]            rewrite every ispe to SIZE x SIZE in place
    heif_fixture.py broken-grid IN OUT            grid descriptor claims one more row and column
    heif_fixture.py no-hvcc IN OUT                drop hvcC/av1C from every ipma association list
    heif_fixture.py truncate IN OUT               first half of the bytes
    heif_fixture.py exif-orientation FILE         EXIF orientation of the primary item ("none" if no Exif)
    heif_fixture.py pnginfo PNG                   "WIDTH HEIGHT BITDEPTH COLORTYPE"
    heif_fixture.py icc {p3,srgb} OUT             write a matrix/TRC ICC v4 display profile

Structure (ISO/IEC 14496-12 = ISOBMFF, ISO/IEC 23008-12 = HEIF):

* `Box` is one box: a leaf keeps its payload bytes; a container (meta, iprp, ipco, iinf, iref,
  dinf) keeps its child boxes.  Full boxes keep version/flags apart from the payload.  Header
  forms (64-bit largesize, size 0 = "to end of file") are remembered so that parse -> serialize
  gives identical bytes.
* `Iloc`, `Ipma`, `Infe`, `Iref`, `Pitm`, `Ispe` and `ImageGrid` decode / encode the payloads
  that matter here, each with an exact round trip.
* `HeifFile` ties them together: it reads item data (iloc construction method 0 = file offsets,
  1 = offsets into idat), edits items/properties/references, and `relayout()` writes a new file
  ftyp + meta + one mdat with every iloc offset recomputed.  Edits that keep all byte lengths
  (patching a number in place) use `serialize()` instead, which leaves the layout untouched.
"""

import math
import struct
import sys
import zlib

# ---------------------------------------------------------------------------------------------
# Generic box layer
# ---------------------------------------------------------------------------------------------

# Full boxes (version + 24-bit flags after the header) that we may meet in a HEIF file.
# (idat, ipco, iprp, hvcC, colr, irot, imir are plain boxes.)
FULL_BOXES = {"meta", "hdlr", "pitm", "iloc", "iinf", "infe", "iref", "ipma", "ispe", "pixi",
              "auxC", "dref", "url ", "urn "}
# Boxes whose payload is a list of boxes (after the full-box header and, for iinf, a count).
CONTAINERS = {"meta", "iprp", "ipco", "iinf", "iref", "dinf", "dref", "grpl", "moov", "trak",
              "mdia", "minf", "stbl", "edts"}


class BoxError(ValueError):
    pass


class Box:
    """One ISOBMFF box.

    type      4-character string
    payload   bytes after the (full) header, for leaf boxes
    children  list of Box, for containers (payload is then only the bytes before the children,
              e.g. iinf's entry count, which serialize() recomputes)
    version, flags   for full boxes, else None
    large     the size was written as 64-bit largesize
    to_end    the size field was 0 ("extends to the end of the file")
    offset    absolute file offset of the box start when parsed (None for new boxes)
    """

    def __init__(self, type, payload=b"", children=None, version=None, flags=0):
        assert len(type) == 4, type
        self.type = type
        self.payload = payload
        self.children = children
        self.version = version
        self.flags = flags
        self.large = False
        self.to_end = False
        self.offset = None
        self.header_len = None

    # -- navigation ---------------------------------------------------------------------------
    def child(self, type):
        """First child of this type, or None."""
        for c in self.children or []:
            if c.type == type:
                return c
        return None

    def __repr__(self):
        return "Box(%r, %d bytes%s)" % (self.type, len(self.payload),
                                        ", %d children" % len(self.children)
                                        if self.children is not None else "")

    # -- serialization ------------------------------------------------------------------------
    def body(self):
        """Bytes after the size/type header: full-box header, payload, children."""
        out = bytearray()
        if self.version is not None:
            out += struct.pack(">I", (self.version << 24) | self.flags)
        if self.children is not None:
            if self.type == "iinf":  # entry_count: 16 bits in version 0, else 32 bits
                out += struct.pack(">H" if self.version == 0 else ">I", len(self.children))
            else:
                out += self.payload
            for c in self.children:
                out += c.serialize()
        else:
            out += self.payload
        return bytes(out)

    def serialize(self):
        body = self.body()
        if self.to_end:
            return struct.pack(">I4s", 0, self.type.encode("latin-1")) + body
        if self.large or len(body) + 8 > 0xFFFFFFFF:
            return struct.pack(">I4sQ", 1, self.type.encode("latin-1"), len(body) + 16) + body
        return struct.pack(">I4s", len(body) + 8, self.type.encode("latin-1")) + body


def parse_boxes(data, start=0, end=None, parent=None):
    """Parse the boxes in data[start:end]; containers are parsed recursively."""
    end = len(data) if end is None else end
    boxes = []
    pos = start
    while pos < end:
        if end - pos < 8:
            raise BoxError("%d stray bytes at offset %d" % (end - pos, pos))
        size, btype = struct.unpack_from(">I4s", data, pos)
        btype = btype.decode("latin-1")
        hdr = 8
        large = to_end = False
        if size == 1:
            if end - pos < 16:
                raise BoxError("truncated largesize header at %d" % pos)
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            hdr = 16
            large = True
        elif size == 0:
            size = end - pos
            to_end = True
        if size < hdr or pos + size > end:
            raise BoxError("box %r at offset %d has bad size %d (room: %d)"
                           % (btype, pos, size, end - pos))
        box = Box(btype)
        box.large, box.to_end, box.offset = large, to_end, pos
        body_start, body_end = pos + hdr, pos + size
        # Inside iref every child is a SingleItemTypeReferenceBox (leaf), whatever its type.
        if btype in FULL_BOXES and parent != "iref":
            if body_end - body_start < 4:
                raise BoxError("full box %r at %d too short" % (btype, pos))
            (vf,) = struct.unpack_from(">I", data, body_start)
            box.version, box.flags = vf >> 24, vf & 0xFFFFFF
            body_start += 4
        box.header_len = body_start - pos
        if btype in CONTAINERS and parent != "iref":
            if btype == "iinf":
                n = 2 if box.version == 0 else 4
                box.payload = bytes(data[body_start:body_start + n])
                body_start += n
            elif btype == "dref":
                box.payload = bytes(data[body_start:body_start + 4])
                body_start += 4
            box.children = parse_boxes(data, body_start, body_end, btype)
        else:
            box.payload = bytes(data[body_start:body_end])
        boxes.append(box)
        pos += size
    return boxes


def serialize_boxes(boxes):
    return b"".join(b.serialize() for b in boxes)


def walk(boxes, depth=0):
    """Yield (depth, box) for all boxes, depth first."""
    for b in boxes:
        yield depth, b
        if b.children is not None:
            yield from walk(b.children, depth + 1)


# ---------------------------------------------------------------------------------------------
# Byte helpers
# ---------------------------------------------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def uint(self, nbytes):
        if nbytes == 0:
            return 0
        if self.pos + nbytes > len(self.data):
            raise BoxError("read past end of payload")
        v = int.from_bytes(self.data[self.pos:self.pos + nbytes], "big")
        self.pos += nbytes
        return v

    def cstring(self):
        end = self.data.find(b"\0", self.pos)
        if end < 0:  # some writers omit the final NUL of the last string
            end = len(self.data)
        s = self.data[self.pos:end]
        self.pos = min(end + 1, len(self.data))
        return s

    def rest(self):
        r = self.data[self.pos:]
        self.pos = len(self.data)
        return r

    def at_end(self):
        return self.pos >= len(self.data)


def uint(v, nbytes):
    return v.to_bytes(nbytes, "big") if nbytes else b""


# ---------------------------------------------------------------------------------------------
# Typed payloads (each: parse(box) -> object, object.to_box() / write into box)
# ---------------------------------------------------------------------------------------------

class Pitm:
    """Primary item: 16-bit id (version 0) or 32-bit (version 1)."""

    @staticmethod
    def parse(box):
        return Reader(box.payload).uint(2 if box.version == 0 else 4)

    @staticmethod
    def payload(version, item_id):
        return uint(item_id, 2 if version == 0 else 4)


class Ispe:
    """Image spatial extents: 32-bit width and height."""

    @staticmethod
    def parse(box):
        return struct.unpack(">II", box.payload[:8])

    @staticmethod
    def box(width, height):
        return Box("ispe", struct.pack(">II", width, height), version=0)


class Infe:
    """Item info entry, versions 2 and 3 (0/1 are not used by HEIF writers).

    flags & 1 = hidden item.  item_type 'mime' carries content_type/content_encoding,
    'uri ' carries item_uri_type.
    """

    def __init__(self, item_id, item_type, hidden=False, name=b"", version=2):
        self.version, self.item_id, self.item_type = version, item_id, item_type
        self.flags = 1 if hidden else 0
        self.protection_index = 0
        self.name = name
        self.content_type = self.content_encoding = self.uri_type = None
        self.extra = b""

    @property
    def hidden(self):
        return bool(self.flags & 1)

    @classmethod
    def parse(cls, box):
        if box.version not in (2, 3):
            raise BoxError("infe version %d not supported" % box.version)
        r = Reader(box.payload)
        self = cls(0, "")
        self.version, self.flags = box.version, box.flags
        self.item_id = r.uint(2 if box.version == 2 else 4)
        self.protection_index = r.uint(2)
        self.item_type = r.data[r.pos:r.pos + 4].decode("latin-1")
        r.pos += 4
        self.name = r.cstring()
        if self.item_type == "mime":
            self.content_type = r.cstring()
            if not r.at_end():
                self.content_encoding = r.cstring()
        elif self.item_type == "uri ":
            self.uri_type = r.cstring()
        self.extra = r.rest()
        return self

    def to_box(self):
        out = uint(self.item_id, 2 if self.version == 2 else 4) + uint(self.protection_index, 2)
        out += self.item_type.encode("latin-1") + self.name + b"\0"
        if self.content_type is not None:
            out += self.content_type + b"\0"
        if self.content_encoding is not None:
            out += self.content_encoding + b"\0"
        if self.uri_type is not None:
            out += self.uri_type + b"\0"
        return Box("infe", out + self.extra, version=self.version, flags=self.flags)


class ItemLocation:
    def __init__(self, item_id, construction_method=0, data_reference_index=0, base_offset=0,
                 extents=None):
        self.item_id = item_id
        self.construction_method = construction_method
        self.data_reference_index = data_reference_index
        self.base_offset = base_offset
        self.extents = extents or []  # list of [extent_index, extent_offset, extent_length]

    def __repr__(self):
        return "ItemLocation(id=%d, method=%d, base=%d, extents=%r)" % (
            self.item_id, self.construction_method, self.base_offset, self.extents)


class Iloc:
    """Item location box, versions 0, 1 and 2.

    offset_size / length_size / base_offset_size / index_size are in bytes (0, 4 or 8);
    index_size exists in versions 1 and 2 only, construction_method likewise.
    An extent_length of 0 means "to the end of the referenced data".
    """

    def __init__(self, version=1, offset_size=4, length_size=4, base_offset_size=0, index_size=0):
        self.version = version
        self.offset_size, self.length_size = offset_size, length_size
        self.base_offset_size, self.index_size = base_offset_size, index_size
        self.items = []

    @classmethod
    def parse(cls, box):
        r = Reader(box.payload)
        self = cls(box.version)
        a, b = r.uint(1), r.uint(1)
        self.offset_size, self.length_size = a >> 4, a & 15
        self.base_offset_size = b >> 4
        self.index_size = (b & 15) if box.version in (1, 2) else 0
        self._reserved_nibble = (b & 15) if box.version == 0 else 0
        count = r.uint(2 if box.version < 2 else 4)
        for _ in range(count):
            loc = ItemLocation(r.uint(2 if box.version < 2 else 4))
            if box.version in (1, 2):
                loc.construction_method = r.uint(2) & 15
            loc.data_reference_index = r.uint(2)
            loc.base_offset = r.uint(self.base_offset_size)
            for _ in range(r.uint(2)):
                idx = r.uint(self.index_size) if self.index_size else 0
                loc.extents.append([idx, r.uint(self.offset_size), r.uint(self.length_size)])
            self.items.append(loc)
        if not r.at_end():
            raise BoxError("iloc: %d trailing bytes" % (len(r.data) - r.pos))
        return self

    def find(self, item_id):
        for loc in self.items:
            if loc.item_id == item_id:
                return loc
        return None

    def to_box(self):
        if any(loc.construction_method for loc in self.items) and self.version == 0:
            self.version = 1  # construction_method needs version >= 1
        low = self.index_size if self.version in (1, 2) else getattr(self, "_reserved_nibble", 0)
        out = bytearray([(self.offset_size << 4) | self.length_size,
                         (self.base_offset_size << 4) | low])
        idw = 2 if self.version < 2 else 4
        out += uint(len(self.items), idw)
        for loc in self.items:
            out += uint(loc.item_id, idw)
            if self.version in (1, 2):
                out += uint(loc.construction_method, 2)
            out += uint(loc.data_reference_index, 2)
            out += uint(loc.base_offset, self.base_offset_size)
            out += uint(len(loc.extents), 2)
            for idx, off, length in loc.extents:
                if self.version in (1, 2) and self.index_size:
                    out += uint(idx, self.index_size)
                for v, n in ((off, self.offset_size), (length, self.length_size)):
                    if v >= 1 << (8 * n) and n:
                        raise BoxError("iloc value %d does not fit %d bytes" % (v, n))
                    if n == 0 and v:
                        raise BoxError("iloc value %d with field size 0" % v)
                out += uint(off, self.offset_size) + uint(length, self.length_size)
        return Box("iloc", bytes(out), version=self.version, flags=0)


class Ipma:
    """Item property association.

    version 0: 16-bit item ids, version 1: 32-bit; flags & 1: 15-bit property indexes
    (16-bit field) instead of 7-bit (8-bit field).  The high bit is 'essential'.
    Property indexes are 1-based into ipco; 0 means "no property".
    entries: list of [item_id, [[essential(bool), index], ...]]
    """

    def __init__(self, version=0, flags=0):
        self.version, self.flags = version, flags
        self.entries = []

    @classmethod
    def parse(cls, box):
        r = Reader(box.payload)
        self = cls(box.version, box.flags)
        for _ in range(r.uint(4)):
            item_id = r.uint(2 if box.version < 1 else 4)
            assoc = []
            for _ in range(r.uint(1)):
                if box.flags & 1:
                    v = r.uint(2)
                    assoc.append([bool(v >> 15), v & 0x7FFF])
                else:
                    v = r.uint(1)
                    assoc.append([bool(v >> 7), v & 0x7F])
            self.entries.append([item_id, assoc])
        if not r.at_end():
            raise BoxError("ipma: %d trailing bytes" % (len(r.data) - r.pos))
        return self

    def get(self, item_id):
        for e in self.entries:
            if e[0] == item_id:
                return e[1]
        return None

    def to_box(self):
        if max((i for _, a in self.entries for _, i in a), default=0) > 127:
            self.flags |= 1
        if max((e[0] for e in self.entries), default=0) > 0xFFFF:
            self.version = 1
        out = bytearray(uint(len(self.entries), 4))
        for item_id, assoc in self.entries:
            out += uint(item_id, 2 if self.version < 1 else 4) + uint(len(assoc), 1)
            for essential, idx in assoc:
                if self.flags & 1:
                    out += uint((0x8000 if essential else 0) | idx, 2)
                else:
                    out += uint((0x80 if essential else 0) | idx, 1)
        return Box("ipma", bytes(out), version=self.version, flags=self.flags)


class Iref:
    """Item references: list of [type, from_id, [to_ids]] (16-bit ids in v0, 32-bit in v1)."""

    def __init__(self, version=0):
        self.version = version
        self.refs = []

    @classmethod
    def parse(cls, box):
        self = cls(box.version)
        w = 2 if box.version == 0 else 4
        for c in box.children:
            r = Reader(c.payload)
            from_id = r.uint(w)
            to_ids = [r.uint(w) for _ in range(r.uint(2))]
            self.refs.append([c.type, from_id, to_ids])
        return self

    def to_box(self):
        w = 2 if self.version == 0 else 4
        kids = []
        for rtype, from_id, to_ids in self.refs:
            p = uint(from_id, w) + uint(len(to_ids), 2) + b"".join(uint(t, w) for t in to_ids)
            kids.append(Box(rtype, p))
        return Box("iref", children=kids, version=self.version, flags=0)


class ImageGrid:
    """ImageGrid descriptor (the data of a 'grid' item, HEIF 6.6.2.3.2).

    version 0; flags & 1 -> output_width/height are 32-bit, else 16-bit;
    rows_minus_one, columns_minus_one: 8 bits each.
    """

    def __init__(self, rows, columns, width, height):
        self.rows, self.columns, self.width, self.height = rows, columns, width, height

    @classmethod
    def parse(cls, data):
        version, flags, rows_m1, cols_m1 = data[0], data[1], data[2], data[3]
        if version != 0:
            raise BoxError("grid descriptor version %d" % version)
        n = 4 if flags & 1 else 2
        w = int.from_bytes(data[4:4 + n], "big")
        h = int.from_bytes(data[4 + n:4 + 2 * n], "big")
        return cls(rows_m1 + 1, cols_m1 + 1, w, h)

    def to_bytes(self):
        if not (1 <= self.rows <= 256 and 1 <= self.columns <= 256):
            raise BoxError("grid of %dx%d tiles not representable" % (self.columns, self.rows))
        large = self.width > 0xFFFF or self.height > 0xFFFF
        n = 4 if large else 2
        return bytes([0, 1 if large else 0, self.rows - 1, self.columns - 1]) + \
            uint(self.width, n) + uint(self.height, n)


# ---------------------------------------------------------------------------------------------
# HEIF file model
# ---------------------------------------------------------------------------------------------

class HeifFile:
    """A parsed HEIF file with decoded meta structures.

    Edit self.infes / self.iloc / self.ipma / self.iref / self.properties / self.primary and
    the idat bytes, then call relayout() (new layout, offsets recomputed) or serialize()
    (keeps the original layout; only valid when no length changed).
    """

    def __init__(self, data):
        self.data = bytes(data)
        self.boxes = parse_boxes(self.data)
        self.ftyp = self._top("ftyp")
        self.meta = self._top("meta")
        m = self.meta
        self.pitm_box = m.child("pitm")
        self.primary = Pitm.parse(self.pitm_box) if self.pitm_box else None
        self.iinf_box = m.child("iinf")
        self.infes = [Infe.parse(b) for b in self.iinf_box.children if b.type == "infe"]
        self.iloc_box = m.child("iloc")
        self.iloc = Iloc.parse(self.iloc_box)
        self.iref_box = m.child("iref")
        self.iref = Iref.parse(self.iref_box) if self.iref_box else Iref(0)
        self.idat_box = m.child("idat")
        self.idat = self.idat_box.payload if self.idat_box else b""
        iprp = m.child("iprp")
        self.ipco_box = iprp.child("ipco")
        self.properties = list(self.ipco_box.children)  # 1-based in ipma
        self.ipma_boxes = [b for b in iprp.children if b.type == "ipma"]
        self.ipma = Ipma.parse(self.ipma_boxes[0])
        for extra in self.ipma_boxes[1:]:  # several ipma boxes are allowed; merge them
            self.ipma.entries += Ipma.parse(extra).entries

    def _top(self, type):
        for b in self.boxes:
            if b.type == type:
                return b
        raise BoxError("no top-level %r box" % type)

    # -- queries --------------------------------------------------------------------------
    def infe(self, item_id):
        for i in self.infes:
            if i.item_id == item_id:
                return i
        return None

    def item_data(self, item_id):
        """The bytes of an item: concatenation of its extents (methods 0 and 1)."""
        loc = self.iloc.find(item_id)
        if loc is None:
            raise BoxError("item %d has no iloc entry" % item_id)
        if loc.data_reference_index != 0:
            raise BoxError("item %d is in an external file" % item_id)
        if loc.construction_method == 0:
            src = self.data
        elif loc.construction_method == 1:
            src = self.idat
        else:
            raise BoxError("construction_method %d not supported" % loc.construction_method)
        out = bytearray()
        for _idx, off, length in loc.extents:
            start = loc.base_offset + off
            end = len(src) if length == 0 else start + length
            if end > len(src):
                raise BoxError("item %d extends past its data" % item_id)
            out += src[start:end]
        return bytes(out)

    def item_properties(self, item_id):
        """[(essential, Box), ...] of an item, in association order."""
        return [(ess, self.properties[idx - 1])
                for ess, idx in (self.ipma.get(item_id) or []) if idx]

    def refs_from(self, item_id, rtype):
        return [t for ty, f, tos in self.iref.refs if ty == rtype and f == item_id for t in tos]

    def exif_item(self, item_id):
        """The Exif item describing item_id (cdsc reference), or None."""
        for ty, f, tos in self.iref.refs:
            if ty == "cdsc" and item_id in tos:
                info = self.infe(f)
                if info and info.item_type == "Exif":
                    return f
        return None

    # -- edits ----------------------------------------------------------------------------
    def add_property(self, box, dedupe=True):
        """Append a property box to ipco; returns its 1-based index (reuses an equal one)."""
        if dedupe:
            ser = box.serialize()
            for i, p in enumerate(self.properties):
                if p.serialize() == ser:
                    return i + 1
        self.properties.append(box)
        return len(self.properties)

    def associate(self, item_id, index, essential):
        assoc = self.ipma.get(item_id)
        if assoc is None:
            assoc = []
            self.ipma.entries.append([item_id, assoc])
        assoc.append([essential, index])

    def remove_item(self, item_id):
        """Remove an item with its infe, iloc entry, ipma entry and references."""
        self.infes = [i for i in self.infes if i.item_id != item_id]
        self.iloc.items = [l for l in self.iloc.items if l.item_id != item_id]
        self.ipma.entries = [e for e in self.ipma.entries if e[0] != item_id]
        refs = []
        for ty, f, tos in self.iref.refs:
            tos = [t for t in tos if t != item_id]
            if f != item_id and tos:
                refs.append([ty, f, tos])
        self.iref.refs = refs

    # -- writing --------------------------------------------------------------------------
    def _meta_box(self):
        """A new meta box from the edited structures (child order as in the original)."""
        kids = []
        for b in self.meta.children:
            t = b.type
            if t == "pitm":
                kids.append(Box("pitm", Pitm.payload(b.version, self.primary), version=b.version))
            elif t == "iinf":
                kids.append(Box("iinf", children=[i.to_box() for i in self.infes],
                                version=b.version if len(self.infes) <= 0xFFFF else 1))
            elif t == "iloc":
                kids.append(self.iloc.to_box())
            elif t == "iref":
                if self.iref.refs:
                    kids.append(self.iref.to_box())
            elif t == "idat":
                kids.append(Box("idat", self.idat))
            elif t == "iprp":
                others = [c for c in b.children if c.type not in ("ipco", "ipma")]
                kids.append(Box("iprp", children=[
                    Box("ipco", children=list(self.properties))] + others +
                    [self.ipma.to_box()]))
            else:
                kids.append(b)
        if self.iref.refs and not any(k.type == "iref" for k in kids):
            kids.append(self.iref.to_box())
        if self.idat and not any(k.type == "idat" for k in kids):
            kids.append(Box("idat", self.idat))
        return Box("meta", children=kids, version=self.meta.version, flags=self.meta.flags)

    def serialize(self):
        """Write back with the ORIGINAL layout: only valid if no byte length changed."""
        meta = self._meta_box()
        out = bytearray()
        for b in self.boxes:
            out += meta.serialize() if b is self.meta else b.serialize()
        if len(out) != len(self.data):
            raise BoxError("serialize(): length changed (%d -> %d); use relayout()"
                           % (len(self.data), len(out)))
        return bytes(out)

    def relayout(self, ftyp=None):
        """Write ftyp + meta + one mdat holding every construction-method-0 item, in iloc order.

        Each such item gets one extent with an absolute file offset (base_offset 0); iloc field
        sizes are fixed (offset 4 or 8 bytes, length 4 bytes) before the offsets are known, so
        the meta size does not depend on them.
        """
        blobs = {loc.item_id: self.item_data(loc.item_id)
                 for loc in self.iloc.items if loc.construction_method == 0}
        total = sum(len(b) for b in blobs.values())
        self.iloc.offset_size = 8 if total > 0xFFFF0000 else 4
        self.iloc.length_size = 4 if max(map(len, blobs.values()), default=0) < 1 << 32 else 8
        self.iloc.base_offset_size = 0
        self.iloc.index_size = 0
        for loc in self.iloc.items:
            if loc.construction_method == 0:
                loc.base_offset = 0
                loc.extents = [[0, 0, len(blobs[loc.item_id])]]
            else:  # idat items stay in idat; fold base_offset into the extent offsets
                for ext in loc.extents:
                    ext[1] += loc.base_offset
                loc.base_offset = 0
        ftyp = ftyp or self.ftyp
        head = ftyp.serialize()
        meta_len = len(self._meta_box().serialize())
        mdat = Box("mdat", b"".join(blobs[l.item_id] for l in self.iloc.items
                                    if l.construction_method == 0))
        mdat_hdr = len(mdat.serialize()) - len(mdat.payload)
        pos = len(head) + meta_len + mdat_hdr
        for loc in self.iloc.items:
            if loc.construction_method == 0:
                loc.extents[0][1] = pos
                pos += len(blobs[loc.item_id])
        meta = self._meta_box().serialize()
        assert len(meta) == meta_len, "meta size changed while placing offsets"
        out = head + meta + mdat.serialize()
        # Check: every item reads back the same bytes from the new file.
        check = HeifFile(out)
        for item_id, blob in blobs.items():
            assert check.item_data(item_id) == blob, "item %d moved wrongly" % item_id
        return out


def ftyp_box(major, compatible, minor=0):
    return Box("ftyp", major.encode() + struct.pack(">I", minor) +
               b"".join(c.encode() for c in compatible))


# ---------------------------------------------------------------------------------------------
# Fixture operations
# ---------------------------------------------------------------------------------------------

def op_transform(src, irot=None, imir=None, strip_exif=False):
    """Add irot (angle*90 deg anticlockwise) and/or imir to the primary item.

    Transformative properties are essential and must follow the descriptive ones in the
    association list (HEIF 6.5.1); they apply in association order.
    """
    h = HeifFile(src)
    if strip_exif:
        for i in list(h.infes):
            if i.item_type == "Exif":
                h.remove_item(i.item_id)
    if irot is not None:
        h.associate(h.primary, h.add_property(Box("irot", bytes([irot & 3]))), True)
    if imir is not None:
        h.associate(h.primary, h.add_property(Box("imir", bytes([imir & 1]))), True)
    return h.relayout()


def op_grid(width, height, columns, tile_files):
    """One HEIF whose primary item is a grid of the hvc1 images of tile_files (row-major).

    Layout as on iPhones: ftyp heic/mif1,heic; tiles 1..N hidden; grid item N+1 is primary,
    its descriptor in idat (iloc method 1); dimg references grid -> tiles; identical tile
    properties (hvcC, ispe, ...) are stored once.
    """
    if len(tile_files) % columns:
        raise BoxError("%d tiles do not fill %d columns" % (len(tile_files), columns))
    rows = len(tile_files) // columns
    tiles = [HeifFile(open(f, "rb").read()) for f in tile_files]
    base = tiles[0]
    # Start from the first tile's file to reuse its hdlr etc., then rebuild the item lists.
    g = HeifFile(base.data)
    g.infes, g.iloc.items, g.ipma.entries, g.iref.refs, g.properties = [], [], [], [], []
    g.iloc.version = 1
    blobs = {}
    tile_props_first = None
    for n, t in enumerate(tiles, start=1):
        tid = t.primary
        if t.infe(tid).item_type != "hvc1":
            raise BoxError("%s: primary item is %r, not a single hvc1 image (odd size?)"
                           % (tile_files[n - 1], t.infe(tid).item_type))
        g.infes.append(Infe(n, "hvc1", hidden=True))
        blobs[n] = t.item_data(tid)
        props = t.item_properties(tid)
        tile_props_first = tile_props_first or props
        for ess, p in props:
            g.associate(n, g.add_property(p), ess)
    grid_id = len(tiles) + 1
    g.infes.append(Infe(grid_id, "grid"))
    desc = ImageGrid(rows, columns, width, height).to_bytes()
    g.idat = desc
    g.iloc.items.append(ItemLocation(grid_id, construction_method=1, extents=[[0, 0, len(desc)]]))
    g.associate(grid_id, g.add_property(Ispe.box(width, height)), False)
    for ess, p in tile_props_first:  # colour information / bit depth also describe the grid
        if p.type in ("colr", "pixi"):
            g.associate(grid_id, g.add_property(p), ess)
    g.iref.refs.append(["dimg", grid_id, list(range(1, len(tiles) + 1))])
    g.primary = grid_id
    # Tile data enter through iloc entries pointing into a scratch buffer that stands in for
    # the source file (item_data() of method-0 items reads g.data); relayout() moves them
    # into the new mdat.  idat gets appended to meta by _meta_box().
    scratch = bytearray()
    for n in range(1, len(tiles) + 1):
        g.iloc.items.insert(n - 1, ItemLocation(n, 0, 0, 0, [[0, len(scratch), len(blobs[n])]]))
        scratch += blobs[n]
    g.data = bytes(scratch)
    return g.relayout(ftyp=ftyp_box("heic", ["mif1", "heic"]))


def op_huge(src, size=100000):
    """Rewrite every ispe in place to size x size (same byte length)."""
    out = bytearray(src)
    n = 0
    for _d, b in walk(parse_boxes(src)):
        if b.type == "ispe":
            struct.pack_into(">II", out, b.offset + b.header_len, size, size)
            n += 1
    if not n:
        raise BoxError("no ispe box")
    return bytes(out)


def op_broken_grid(src):
    """The grid descriptor claims one more row and column than there are dimg tiles."""
    h = HeifFile(src)
    gid = h.primary
    if h.infe(gid).item_type != "grid":
        raise BoxError("primary item is not a grid")
    loc = h.iloc.find(gid)
    if loc.construction_method != 1 or len(loc.extents) != 1:
        raise BoxError("grid descriptor not in one idat extent")
    start = loc.base_offset + loc.extents[0][1]
    grid = ImageGrid.parse(h.idat[start:])
    grid.rows += 1
    grid.columns += 1
    new = grid.to_bytes()
    assert len(new) == len(h.idat[start:start + len(new)])
    h.idat = h.idat[:start] + new + h.idat[start + len(new):]
    return h.serialize()  # same lengths: layout untouched


def op_no_hvcc(src):
    """Drop the codec configuration (hvcC/av1C) from every association list."""
    h = HeifFile(src)
    dropped = 0
    for _item, assoc in h.ipma.entries:
        keep = [a for a in assoc if not (a[1] and h.properties[a[1] - 1].type in ("hvcC", "av1C"))]
        dropped += len(assoc) - len(keep)
        assoc[:] = keep
    if not dropped:
        raise BoxError("no hvcC/av1C association found")
    return h.relayout()


def exif_orientation(h, item_id):
    """EXIF orientation (1..8) in the Exif item of item_id; None if no Exif or no tag."""
    ex = h.exif_item(item_id)
    if ex is None:
        return None
    data = h.item_data(ex)
    # HEIF Exif item: 32-bit offset to the TIFF header, then the TIFF data.
    tiff = data[4 + int.from_bytes(data[:4], "big"):]
    if tiff[:2] not in (b"II", b"MM"):
        return None
    e = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(e + "I", tiff, 4)
    (count,) = struct.unpack_from(e + "H", tiff, ifd)
    for i in range(count):
        tag, typ, _n, val = struct.unpack_from(e + "HHI4s", tiff, ifd + 2 + 12 * i)
        if tag == 0x112:
            return struct.unpack(e + "H", val[:2])[0]
    return None


def png_info(path):
    """(width, height, bit_depth, colour_type) from the IHDR of a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise BoxError("%s is not a PNG" % path)
    return struct.unpack(">IIBB", head[16:26])


# ---------------------------------------------------------------------------------------------
# ICC profile writer (matrix/TRC display profile, ICC.1:2010 = v4.3)
# ---------------------------------------------------------------------------------------------

PRIMARIES = {
    # name: (description, (xr, yr), (xg, yg), (xb, yb), white (x, y)); transfer = sRGB curve
    "p3": ("Display P3 (fixture)", (0.680, 0.320), (0.265, 0.690), (0.150, 0.060),
           (0.3127, 0.3290)),
    "srgb": ("sRGB IEC61966-2.1 (fixture)", (0.640, 0.330), (0.300, 0.600), (0.150, 0.060),
             (0.3127, 0.3290)),
}
D50 = (0.9642, 1.0, 0.8249)


def _mat_mul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]


def _mat_inv(m):
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return [[(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
            [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
            [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det]]


def _xyz(xy):
    x, y = xy
    return [x / y, 1.0, (1 - x - y) / y]


def icc_profile(name):
    desc, r, g, b, w = PRIMARIES[name]
    # RGB -> XYZ (native white): columns are the primaries scaled so that RGB(1,1,1) = white.
    P = [list(col) for col in zip(_xyz(r), _xyz(g), _xyz(b))]
    W = _xyz(w)
    S = [sum(_mat_inv(P)[i][k] * W[k] for k in range(3)) for i in range(3)]
    M = [[P[i][j] * S[j] for j in range(3)] for i in range(3)]
    # Bradford chromatic adaptation native white -> D50 (the PCS illuminant).
    BR = [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
    cw = [sum(BR[i][k] * W[k] for k in range(3)) for i in range(3)]
    cd = [sum(BR[i][k] * D50[k] for k in range(3)) for i in range(3)]
    D = [[cd[i] / cw[i] if i == j else 0.0 for j in range(3)] for i in range(3)]
    chad = _mat_mul(_mat_inv(BR), _mat_mul(D, BR))
    MD50 = _mat_mul(chad, M)

    def s15(v):
        return struct.pack(">i", int(round(v * 65536)))

    def xyz_tag(v):
        return b"XYZ \0\0\0\0" + b"".join(s15(c) for c in v)

    def mluc(text):
        t = text.encode("utf-16-be")
        return b"mluc\0\0\0\0" + struct.pack(">II2s2sII", 1, 12, b"en", b"US", len(t), 28) + t

    # parametric curve type 3 (the sRGB curve): Y = (aX+b)^g for X >= d, else cX
    trc = b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + b"".join(
        s15(v) for v in (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    chad_tag = b"sf32\0\0\0\0" + b"".join(s15(chad[i][j]) for i in range(3) for j in range(3))
    tags = [("desc", mluc(desc)), ("cprt", mluc("No copyright, use freely")),
            ("wtpt", xyz_tag(D50)), ("chad", chad_tag),
            ("rXYZ", xyz_tag([MD50[i][0] for i in range(3)])),
            ("gXYZ", xyz_tag([MD50[i][1] for i in range(3)])),
            ("bXYZ", xyz_tag([MD50[i][2] for i in range(3)])),
            ("rTRC", trc), ("gTRC", trc), ("bTRC", trc)]
    table = bytearray(struct.pack(">I", len(tags)))
    data = bytearray()
    offsets = {}
    base = 128 + 4 + 12 * len(tags)
    for sig, body in tags:
        if body not in offsets:  # the three TRCs share one element
            offsets[body] = base + len(data)
            data += body + b"\0" * (-len(body) % 4)
        table += sig.encode() + struct.pack(">II", offsets[body], len(body))
    size = base + len(data)
    header = struct.pack(">I4sI4s4s4s6H4s4sI4sI8sI", size, b"\0\0\0\0", 0x04300000, b"mntr",
                         b"RGB ", b"XYZ ", 2024, 1, 1, 0, 0, 0, b"acsp", b"\0\0\0\0", 0,
                         b"\0\0\0\0", 0, b"\0" * 8, 0)
    header += b"".join(s15(c) for c in D50) + b"\0" * 4 + b"\0" * 16 + b"\0" * 28
    assert len(header) == 128
    return bytes(header + table + data), MD50


# ---------------------------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------------------------

def _synthetic_heif():
    """A small hand-made HEIF exercising every structure (not decodable: fake codec data)."""
    h = Box("hdlr", b"\0\0\0\0pict" + b"\0" * 12 + b"\0", version=0)
    infes = [Infe(1, "hvc1", hidden=True), Infe(2, "hvc1", hidden=True), Infe(3, "grid"),
             Infe(4, "Exif", hidden=True), Infe(70000, "mime", version=3)]
    infes[4].content_type = b"application/rdf+xml"
    iloc = Iloc(version=1, offset_size=8, length_size=4, base_offset_size=4, index_size=0)
    iloc.items = [ItemLocation(1, 0, 0, 0, [[0, 0, 5], [0, 0, 3]]),
                  ItemLocation(2, 0, 0, 0, [[0, 0, 4]]),
                  ItemLocation(3, 1, 0, 0, [[0, 0, 8]]),
                  ItemLocation(4, 0, 0, 0, [[0, 0, 6]])]
    props = [Box("hvcC", b"\x01" + b"\0" * 22), Ispe.box(64, 64), Ispe.box(128, 64),
             Box("irot", b"\x01")]
    props += [Box("free", bytes([i])) for i in range(130)]  # force 16-bit property indexes
    ipma = Ipma(0, 1)
    ipma.entries = [[1, [[True, 1], [False, 2]]], [2, [[True, 1], [False, 2]]],
                    [3, [[False, 3], [True, 4], [False, 134]]]]
    iref = Iref(1)
    iref.refs = [["dimg", 3, [1, 2]], ["cdsc", 4, [3]], ["thmb", 2, [3]]]
    meta = Box("meta", children=[h, Box("pitm", Pitm.payload(0, 3), version=0),
                                 iloc.to_box(), Box("iinf", children=[i.to_box() for i in infes],
                                                    version=0),
                                 iref.to_box(), Box("idat", ImageGrid(1, 2, 100, 60).to_bytes()),
                                 Box("iprp", children=[Box("ipco", children=props),
                                                       ipma.to_box()])], version=0)
    ftyp = ftyp_box("heic", ["mif1", "heic"])
    payload = b"AAAAABBBCCCCEEEEEE"
    mdat = Box("mdat", payload)
    mdat.large = True  # exercise the 64-bit largesize header
    head = ftyp.serialize() + meta.serialize()
    start = len(head) + 16
    # item 1: two extents (AAAAA, BBB); item 2 via base_offset; item 4 at the end
    iloc.items[0].extents = [[0, start, 5], [0, start + 5, 3]]
    iloc.items[1].base_offset, iloc.items[1].extents = start + 8, [[0, 0, 4]]
    iloc.items[3].extents = [[0, start + 12, 6]]
    meta.children[2] = iloc.to_box()
    return ftyp.serialize() + meta.serialize() + mdat.serialize()


def roundtrip_check(data, label):
    """parse -> serialize must be identical, for the box tree and every typed payload."""
    boxes = parse_boxes(data)
    assert serialize_boxes(boxes) == data, "%s: box tree round trip differs" % label
    for _d, b in walk(boxes):
        if b.type == "iloc":
            assert Iloc.parse(b).to_box().serialize() == b.serialize(), label + ": iloc"
        elif b.type == "ipma":
            assert Ipma.parse(b).to_box().serialize() == b.serialize(), label + ": ipma"
        elif b.type == "infe":
            assert Infe.parse(b).to_box().serialize() == b.serialize(), label + ": infe"
        elif b.type == "iref":
            assert Iref.parse(b).to_box().serialize() == b.serialize(), label + ": iref"
    h = HeifFile(data)
    assert h.serialize() == data, label + ": HeifFile.serialize"
    # A relayout must keep every item's bytes, and relayout of the result is a fixed point.
    again = HeifFile(h.relayout())
    for loc in HeifFile(data).iloc.items:
        assert again.item_data(loc.item_id) == HeifFile(data).item_data(loc.item_id)
    assert HeifFile(again.relayout()).relayout() == again.relayout(), label + ": fixed point"


def selftest(files):
    data = _synthetic_heif()
    roundtrip_check(data, "synthetic")
    h = HeifFile(data)
    assert h.primary == 3 and h.item_data(1) == b"AAAAABBB" and h.item_data(2) == b"CCCC"
    assert h.item_data(4) == b"EEEEEE"
    g = ImageGrid.parse(h.item_data(3))
    assert (g.rows, g.columns, g.width, g.height) == (1, 2, 100, 60)
    assert h.refs_from(3, "dimg") == [1, 2] and h.exif_item(3) == 4
    assert h.infe(70000).content_type == b"application/rdf+xml"
    assert [p.type for _e, p in h.item_properties(3)] == ["ispe", "irot", "free"]
    # edits: strip Exif + add imir, then check the structures after relayout
    h.remove_item(4)
    h.associate(3, h.add_property(Box("imir", b"\x01")), True)
    out = HeifFile(h.relayout())
    assert out.infe(4) is None and out.exif_item(3) is None
    assert [p.type for _e, p in out.item_properties(3)][-1] == "imir"
    assert out.item_data(1) == b"AAAAABBB" and out.item_data(2) == b"CCCC"
    assert op_huge(data, 100000) != data and len(op_huge(data)) == len(data)
    assert ImageGrid.parse(HeifFile(op_broken_grid(data)).item_data(3)).rows == 2
    nh = HeifFile(op_no_hvcc(data))
    assert all(p.type != "hvcC" for i in (1, 2) for _e, p in nh.item_properties(i))
    # big grid sizes use 32-bit fields
    gg = ImageGrid(3, 4, 70000, 5)
    assert len(gg.to_bytes()) == 12 and vars(ImageGrid.parse(gg.to_bytes())) == vars(gg)
    # ICC: the D50-adapted Display P3 colorants match published values (Apple's profile)
    _icc, m = icc_profile("p3")
    ref = [[0.5151, 0.2920, 0.1571], [0.2412, 0.6922, 0.0666], [-0.0011, 0.0419, 0.7841]]
    assert all(abs(m[i][j] - ref[i][j]) < 2e-3 for i in range(3) for j in range(3)), m
    for f in files:
        roundtrip_check(open(f, "rb").read(), f)
    print("selftest ok (synthetic%s)" % "".join(", " + f for f in files))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def cmd_info(path):
    h = HeifFile(open(path, "rb").read())
    print("ftyp:", h.ftyp.payload[:4].decode(), "compatible:",
          ",".join(h.ftyp.payload[i:i + 4].decode() for i in range(8, len(h.ftyp.payload), 4)))
    print("primary:", h.primary)
    for i in h.infes:
        loc = h.iloc.find(i.item_id)
        props = []
        for ess, p in h.item_properties(i.item_id):
            s = p.type + ("!" if ess else "")
            if p.type == "ispe":
                s += "(%dx%d)" % Ispe.parse(p)
            elif p.type in ("irot", "imir"):
                s += "(%d)" % p.payload[0]
            props.append(s)
        extra = ""
        if i.item_type == "grid":
            g = ImageGrid.parse(h.item_data(i.item_id))
            extra = " grid %dx%d tiles -> %dx%d" % (g.columns, g.rows, g.width, g.height)
        print("item %d %s%s method=%d bytes=%d props=[%s]%s" % (
            i.item_id, i.item_type, " hidden" if i.hidden else "",
            loc.construction_method if loc else -1,
            len(h.item_data(i.item_id)) if loc else 0, " ".join(props), extra))
    for ty, f, tos in h.iref.refs:
        print("iref %s %d -> %s" % (ty, f, tos))
    print("exif orientation of primary:", exif_orientation(h, h.primary))


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]

    def rd(p):
        with open(p, "rb") as f:
            return f.read()

    def wr(p, data):
        with open(p, "wb") as f:
            f.write(data)

    if cmd == "selftest":
        selftest(args)
    elif cmd == "info":
        cmd_info(args[0])
    elif cmd == "transform":
        src, dst, opts = args[0], args[1], args[2:]
        irot = imir = None
        strip = False
        while opts:
            o = opts.pop(0)
            if o == "--irot":
                irot = int(opts.pop(0))
            elif o == "--imir":
                imir = int(opts.pop(0))
            elif o == "--strip-exif":
                strip = True
            else:
                raise SystemExit("unknown option " + o)
        wr(dst, op_transform(rd(src), irot, imir, strip))
    elif cmd == "grid":
        out, w, h, cols = args[0], int(args[1]), int(args[2]), int(args[3])
        wr(out, op_grid(w, h, cols, args[4:]))
    elif cmd == "huge":
        wr(args[1], op_huge(rd(args[0]), int(args[2]) if len(args) > 2 else 100000))
    elif cmd == "broken-grid":
        wr(args[1], op_broken_grid(rd(args[0])))
    elif cmd == "no-hvcc":
        wr(args[1], op_no_hvcc(rd(args[0])))
    elif cmd == "truncate":
        d = rd(args[0])
        wr(args[1], d[:len(d) // 2])
    elif cmd == "exif-orientation":
        h = HeifFile(rd(args[0]))
        print(exif_orientation(h, h.primary) or "none")
    elif cmd == "pnginfo":
        print("%d %d %d %d" % png_info(args[0]))
    elif cmd == "icc":
        wr(args[1], icc_profile(args[0])[0])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
