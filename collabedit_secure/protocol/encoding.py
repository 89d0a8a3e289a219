"""Canonical, unambiguous byte encoding of the values that keys, seeds and signatures are bound to.

Every field is written as

    tag (1 byte) || length (4 bytes, unsigned big-endian) || payload (length bytes)

with these tags:

    0x01  bytes  payload = the bytes themselves
    0x02  str    payload = the UTF-8 encoding of the string (as given: no Unicode normalisation)
    0x03  int    payload = the integer as 8 bytes, unsigned big-endian (0 <= v < 2^64), length 8

`encode_fields(a, b, c)` is the concatenation of the encodings of a, b, c, so
`encode_fields(*x, *y) == encode_fields(*x) + encode_fields(*y)`. Type tags plus explicit lengths
make the encoding injective: no two different field lists give the same bytes (plain string
concatenation would let "ab"+"c" collide with "a"+"bc"). Python bools are refused as ints
(a JavaScript port would see them as a different type).

A `Binding` names one tensor of one round. Its encoding is

    encode_fields(federation_id, round_id, layer, tensor, len(shape), shape[0], ..., shape[-1])

i.e. two str, two int, then the rank and each dimension as int fields.

Party ids (and the coordinator's name) are 1-64 characters from [A-Za-z0-9_-]: ASCII only, so
"string order" means byte order in every language, and they are safe as file names and
certificate common names.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

TAG_BYTES = 0x01
TAG_STR = 0x02
TAG_INT = 0x03

_U64_LIMIT = 1 << 64
_U32_LIMIT = 1 << 32
_PARTY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class EncodingError(ValueError):
    """A value cannot be encoded, or bytes are not a valid field encoding."""


def _field(tag: int, payload: bytes) -> bytes:
    if len(payload) >= _U32_LIMIT:
        raise EncodingError(f"field of {len(payload)} bytes exceeds the 4-byte length prefix")
    return struct.pack(">BI", tag, len(payload)) + payload


def encode_fields(*fields: str | int | bytes) -> bytes:
    """Concatenated tag-length-value encoding of str (UTF-8), int (u64 big-endian) and bytes fields."""
    out = bytearray()
    for position, value in enumerate(fields):
        if isinstance(value, bool):
            raise EncodingError(f"field {position} is a bool; encode it as an int 0/1 explicitly")
        if isinstance(value, int):
            if not 0 <= value < _U64_LIMIT:
                raise EncodingError(f"field {position}: int {value} is outside [0, 2^64)")
            out += _field(TAG_INT, value.to_bytes(8, "big"))
        elif isinstance(value, str):
            out += _field(TAG_STR, value.encode("utf-8"))
        elif isinstance(value, (bytes, bytearray)):
            out += _field(TAG_BYTES, bytes(value))
        else:
            raise EncodingError(f"field {position} has type {type(value).__name__}; only str, int and bytes encode")
    return bytes(out)


def decode_fields(data: bytes) -> list[str | int | bytes]:
    """Inverse of encode_fields; raises EncodingError on any malformed or trailing bytes."""
    fields: list[str | int | bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 5:
            raise EncodingError(f"truncated field header at byte {offset}")
        tag, length = struct.unpack_from(">BI", data, offset)
        offset += 5
        payload = bytes(data[offset : offset + length])
        if len(payload) != length:
            raise EncodingError(f"field at byte {offset - 5} declares {length} bytes, {len(payload)} present")
        offset += length
        if tag == TAG_BYTES:
            fields.append(payload)
        elif tag == TAG_STR:
            try:
                fields.append(payload.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise EncodingError(f"str field at byte {offset - length - 5} is not UTF-8") from error
        elif tag == TAG_INT:
            if length != 8:
                raise EncodingError(f"int field at byte {offset - length - 5} has length {length}, not 8")
            fields.append(int.from_bytes(payload, "big"))
        else:
            raise EncodingError(f"unknown field tag 0x{tag:02x} at byte {offset - length - 5}")
    return fields


def check_party_id(party_id: object, what: str = "party id") -> str:
    """Returns party_id if it is 1-64 characters of [A-Za-z0-9_-], else raises ValueError."""
    if not isinstance(party_id, str) or not _PARTY_ID.fullmatch(party_id):
        raise ValueError(f"{what} {party_id!r} is invalid: use 1-64 characters from A-Z a-z 0-9 '-' '_'")
    return party_id


def _check_u64(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _U64_LIMIT:
        raise ValueError(f"{name} must be an int in [0, 2^64), got {value!r}")
    return value


@dataclass(frozen=True)
class Binding:
    """(federation, round, layer, tensor, shape): what one masked tensor upload is bound to.

    Every mask seed is derived from a Binding, so a mask is never reused across federations,
    rounds, layers, tensors or shapes (reuse would let the coordinator subtract two uploads and
    see the difference of the plain inputs).
    """

    federation_id: str
    round_id: int
    layer: int
    tensor: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.federation_id, str) or not self.federation_id:
            raise ValueError(f"federation_id must be a non-empty str, got {self.federation_id!r}")
        _check_u64(self.round_id, "round_id")
        _check_u64(self.layer, "layer")
        if not isinstance(self.tensor, str) or not self.tensor:
            raise ValueError(f"tensor must be a non-empty str, got {self.tensor!r}")
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if not shape:
            raise ValueError(f"shape must be a non-empty tuple of ints, got {self.shape!r}")
        for dim in shape:
            _check_u64(dim, f"shape entry of {self.tensor}")
        object.__setattr__(self, "shape", shape)  # a list becomes a (hashable) tuple

    @property
    def size(self) -> int:
        """Number of elements, i.e. of uint64 ring words in the upload."""
        return math.prod(self.shape)

    def fields(self) -> tuple[str | int, ...]:
        """The fields encode() writes, in order (for building longer encodings)."""
        return (self.federation_id, self.round_id, self.layer, self.tensor, len(self.shape), *self.shape)

    def encode(self) -> bytes:
        return encode_fields(*self.fields())
