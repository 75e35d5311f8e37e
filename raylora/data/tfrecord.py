"""TFRecord files and the protobuf messages in them, read without TensorFlow (AndroidControl ships as GZIP
TFRecord files of ``tf.train.Example`` episodes).

A TFRecord file is a sequence of ``length`` (uint64, little-endian), ``masked crc32c(length)`` (uint32),
``data``, ``masked crc32c(data)``. The length's checksum is verified (it is what tells a TFRecord file
from anything else); the data's is not: a GZIP file carries its own CRC32 over every byte, and computing
CRC32C in pure Python over gigabytes of screenshots would cost more than the conversion.

``tf.train.Example`` is ``features {map<string, Feature> feature = 1}``, a ``Feature`` being one of
``bytes_list = 1``, ``float_list = 2``, ``int64_list = 3``, each ``{repeated value = 1}``.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

_CRC_TABLE: list[int] = []


def records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (GZIP-compressed or not, told by its first bytes), streamed."""
    with path.open("rb") as raw:
        magic = raw.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        number = 0
        while True:
            header = f.read(12)
            if not header:
                return
            number += 1
            if len(header) < 12:
                raise DataError(f"{path}:record {number}", "truncated TFRecord header")
            length, crc = struct.unpack("<QI", header)
            if crc != masked_crc32c(header[:8]):
                raise DataError(f"{path}:record {number}", "not a TFRecord file (length checksum mismatch)")
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                raise DataError(f"{path}:record {number}", "truncated TFRecord record")
            yield data


def example(data: bytes) -> dict[str, list]:
    """A serialized ``tf.train.Example`` as ``{feature name: list of values}`` (bytes, floats or ints)."""
    features: dict[str, list] = {}
    for field, value in fields(data):
        if field != 1:
            continue
        for entry_field, entry in fields(value):
            if entry_field != 1:
                continue
            name, feature = "", b""
            for key, item in fields(entry):
                if key == 1:
                    name = item.decode("utf-8")
                elif key == 2:
                    feature = item
            features[name] = _feature_values(feature)
    return features


def _feature_values(feature: bytes) -> list:
    for kind, body in fields(feature):
        values = [v for field, v in fields(body) if field == 1]
        if kind == 1:
            return values
        if kind == 2:  # floats: packed (one bytes value) or one fixed32 each
            out: list = []
            for v in values:
                out.extend(struct.unpack(f"<{len(v) // 4}f", v) if isinstance(v, bytes) else [v])
            return out
        if kind == 3:
            out = []
            for v in values:
                out.extend(_packed_varints(v) if isinstance(v, bytes) else [signed(v)])
            return out
    return []


def fields(data: bytes) -> Iterator[tuple[int, bytes | int | float]]:
    """``(field number, value)`` of each field of a protobuf message: varints as ints, fixed32 as floats,
    length-delimited fields as bytes (the caller knows which are messages)."""
    i, end = 0, len(data)
    while i < end:
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value, i = struct.unpack_from("<d", data, i)[0], i + 8
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i : i + length], i + length
        elif wire == 5:
            value, i = struct.unpack_from("<f", data, i)[0], i + 4
        else:
            raise DataError("protobuf", f"unsupported wire type {wire} (field {field})")
        yield field, value


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data):
            raise DataError("protobuf", "truncated varint")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _packed_varints(data: bytes) -> list[int]:
    out, i = [], 0
    while i < len(data):
        value, i = _varint(data, i)
        out.append(signed(value))
    return out


def signed(value: int) -> int:
    """A varint read as a two's-complement int64 (int32 fields are sign-extended to 64 bits)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c(data: bytes) -> int:
    if not _CRC_TABLE:
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
