"""A small reader of frozen TensorFlow GraphDef files, without TensorFlow.

A frozen graph is one protobuf message (``tensorflow.GraphDef``) whose
weights are ``Const`` nodes. Reading it needs only the protobuf wire format
and the few field numbers of ``GraphDef``, ``NodeDef``, ``AttrValue``,
``TensorProto`` and ``TensorShapeProto`` listed below (from tensorflow's
``core/framework/*.proto``), not TensorFlow, which lowkeyd does not want as a
run-time dependency for one file format.

Only what frozen inference graphs use is decoded: node names, ops, inputs,
scalar/list/shape/tensor attributes and the numeric tensor types. Everything
else (function libraries, versions, devices) is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Field numbers, from tensorflow/core/framework/{graph,node_def,attr_value,tensor,tensor_shape}.proto.
_GRAPH_NODE = 1
_NODE_NAME, _NODE_OP, _NODE_INPUT, _NODE_ATTR = 1, 2, 3, 5
_MAP_KEY, _MAP_VALUE = 1, 2
_ATTR_LIST, _ATTR_S, _ATTR_I, _ATTR_F, _ATTR_B, _ATTR_TYPE, _ATTR_SHAPE, _ATTR_TENSOR = 1, 2, 3, 4, 5, 6, 7, 8
_TENSOR_DTYPE, _TENSOR_SHAPE, _TENSOR_CONTENT = 1, 2, 4
_SHAPE_DIM, _DIM_SIZE = 2, 1

# tensorflow.DataType enum values of the numeric types -> numpy dtypes (little-endian, as TF writes them).
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    19: np.dtype("<f2"),
}
# TensorProto's typed value fields, used instead of tensor_content for small or splatted constants:
# field number -> numpy dtype of its fixed-width elements, or "varint". Fields 7 (int_val: int32 and
# narrower), 10 (int64_val), 11 (bool_val) and 13 (half_val: raw 16-bit patterns) are varints.
_VAL_FIELDS: dict[int, str] = {5: "<f4", 6: "<f8", 7: "varint", 10: "varint", 11: "varint", 13: "varint"}

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class GraphDefError(ValueError):
    """The bytes are not a GraphDef this reader understands."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise GraphDefError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field number, wire type, value)`` of one message; bytes values are zero-copy views."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _BYTES:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == _FIXED32:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == _FIXED64:
            value, pos = buf[pos : pos + 8], pos + 8
        else:
            raise GraphDefError(f"unsupported wire type {wire} (groups are not used by GraphDef)")
        if pos > end:
            raise GraphDefError("truncated message")
        yield number, wire, value


def _signed(value: int) -> int:
    """Protobuf int64/int32 varints are two's complement over 64 bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(buf: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        values.append(_signed(value))
    return values


def _shape(buf: memoryview) -> tuple[int, ...]:
    dims = []
    for number, _, value in _fields(buf):
        if number == _SHAPE_DIM:
            size = next((_signed(v) for n, _, v in _fields(value) if n == _DIM_SIZE), 0)
            dims.append(size)
    return tuple(dims)


def _tensor(buf: memoryview) -> np.ndarray | None:
    """A numeric TensorProto as an array; ``None`` for the other types (strings, bfloat16, resources)."""
    dtype_code, content = 0, None
    shape: tuple[int, ...] = ()
    values: list[Any] = []
    for number, wire, value in _fields(buf):
        if number == _TENSOR_DTYPE:
            dtype_code = value
        elif number == _TENSOR_SHAPE:
            shape = _shape(value)
        elif number == _TENSOR_CONTENT:
            content = value
        elif number in _VAL_FIELDS:
            kind = _VAL_FIELDS[number]
            if kind == "varint":
                values.extend(_packed_varints(value) if wire == _BYTES else [_signed(value)])
            else:
                values.extend(np.frombuffer(value, dtype=kind).tolist())
    if dtype_code not in _DTYPES:
        return None
    dtype = _DTYPES[dtype_code]
    count = int(np.prod(shape, dtype=np.int64))
    if content is not None:
        return np.frombuffer(content, dtype=dtype).reshape(shape).copy()
    if dtype == np.float16:
        # half_val holds the raw 16-bit patterns as ints.
        array = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        array = np.array(values, dtype=dtype)
    if array.size == count:
        return array.reshape(shape)
    if array.size == 0 or array.size > count:
        raise GraphDefError(f"tensor has {array.size} values for shape {shape}")
    # TF's convention: a short value list is padded with its last value (a splat when there is one value).
    return np.concatenate([array, np.full(count - array.size, array[-1], dtype=dtype)]).reshape(shape)


def _list(buf: memoryview) -> list[Any]:
    items: list[Any] = []
    for number, wire, value in _fields(buf):
        if number == _ATTR_S:
            items.append(bytes(value))
        elif number in (_ATTR_I, _ATTR_B, _ATTR_TYPE):
            ints = _packed_varints(value) if wire == _BYTES else [_signed(value)]
            items.extend([bool(i) for i in ints] if number == _ATTR_B else ints)
        elif number == _ATTR_F:
            items.extend(np.frombuffer(value, dtype="<f4").tolist())
        elif number == _ATTR_SHAPE:
            items.append(_shape(value))
        elif number == _ATTR_TENSOR:
            items.append(_tensor(value))
    return items


def _attr(buf: memoryview) -> Any:
    """One AttrValue as a Python value: bytes, int, float, bool, shape tuple, ndarray or list; None if not decoded."""
    for number, _wire, value in _fields(buf):
        if number == _ATTR_LIST:
            return _list(value)
        if number == _ATTR_S:
            return bytes(value)
        if number in (_ATTR_I, _ATTR_TYPE):
            return _signed(value)
        if number == _ATTR_F:
            return float(np.frombuffer(value, dtype="<f4")[0])
        if number == _ATTR_B:
            return bool(value)
        if number == _ATTR_SHAPE:
            return _shape(value)
        if number == _ATTR_TENSOR:
            return _tensor(value)
    return None


@dataclass(frozen=True)
class Node:
    """One NodeDef. ``inputs`` keep TF's spelling (``"^name"`` control inputs, ``"name:1"`` output indices)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


def _node(buf: memoryview) -> Node:
    name = op = ""
    inputs: list[str] = []
    attrs: dict[str, Any] = {}
    for number, _, value in _fields(buf):
        if number == _NODE_NAME:
            name = bytes(value).decode()
        elif number == _NODE_OP:
            op = bytes(value).decode()
        elif number == _NODE_INPUT:
            inputs.append(bytes(value).decode())
        elif number == _NODE_ATTR:
            entry = {n: v for n, _, v in _fields(value)}
            attrs[bytes(entry.get(_MAP_KEY, b"")).decode()] = _attr(entry.get(_MAP_VALUE, memoryview(b"")))
    return Node(name, op, tuple(inputs), attrs)


class GraphDef:
    """The nodes of a frozen graph, by name, in file order."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes: dict[str, Node] = {node.name: node for node in nodes}

    @classmethod
    def read(cls, path: Path) -> GraphDef:
        """Parse a binary ``.pb`` GraphDef. Raises :class:`GraphDefError` on malformed bytes."""
        data = memoryview(Path(path).read_bytes())
        try:
            nodes = [_node(value) for number, _, value in _fields(data) if number == _GRAPH_NODE]
        except (GraphDefError, UnicodeDecodeError, ValueError) as exc:
            raise GraphDefError(f"{path}: not a readable GraphDef ({exc})") from exc
        if not nodes:
            raise GraphDefError(f"{path}: GraphDef has no nodes")
        return cls(nodes)

    def constants(self) -> dict[str, np.ndarray]:
        """The value of every numeric ``Const`` node, by node name: a frozen graph's weights."""
        return {
            name: node.attrs["value"]
            for name, node in self.nodes.items()
            if node.op == "Const" and isinstance(node.attrs.get("value"), np.ndarray)
        }
