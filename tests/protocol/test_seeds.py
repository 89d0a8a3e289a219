from __future__ import annotations

import hashlib
import hmac

import pytest

from collabedit_secure.protocol.encoding import Binding, encode_fields
from collabedit_secure.protocol.seeds import mask_seed, pair_sign

SECRET = bytes(range(32))
BINDING = Binding("fed-1", 12, 5, "S_KK", (3, 4))


def hkdf_sha256_by_hand(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """RFC 5869 written out with hmac, independent of the `cryptography` implementation."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()  # one block = 32 bytes


def test_pairwise_seed_definition():
    info = (
        b"\x02\x00\x00\x00\x08pairwise"
        + b"\x02\x00\x00\x00\x05fed-1"
        + b"\x03\x00\x00\x00\x08" + (12).to_bytes(8, "big")
        + b"\x03\x00\x00\x00\x08" + (5).to_bytes(8, "big")
        + b"\x02\x00\x00\x00\x04S_KK"
        + b"".join(b"\x03\x00\x00\x00\x08" + v.to_bytes(8, "big") for v in (2, 3, 4))
        + b"\x02\x00\x00\x00\x05alice" + b"\x02\x00\x00\x00\x03bob"
    )
    expected = hkdf_sha256_by_hand(SECRET, b"collabedit.v1/mask-seed", info)
    assert mask_seed(SECRET, BINDING, ("bob", "alice")) == expected
    assert mask_seed(SECRET, BINDING, ("alice", "bob")) == expected  # both members derive it


def test_self_seed_definition():
    info = encode_fields("self", "fed-1", 12, 5, "S_KK", 2, 3, 4)
    assert mask_seed(SECRET, BINDING, None) == hkdf_sha256_by_hand(SECRET, b"collabedit.v1/mask-seed", info)


def test_seed_changes_with_every_input():
    seeds = {
        mask_seed(SECRET, BINDING, ("alice", "bob")),
        mask_seed(SECRET, BINDING, None),
        mask_seed(SECRET, BINDING, ("alice", "carol")),
        mask_seed(bytes(32), BINDING, ("alice", "bob")),
        mask_seed(SECRET, Binding("fed-2", 12, 5, "S_KK", (3, 4)), ("alice", "bob")),
        mask_seed(SECRET, Binding("fed-1", 13, 5, "S_KK", (3, 4)), ("alice", "bob")),
        mask_seed(SECRET, Binding("fed-1", 12, 6, "S_KK", (3, 4)), ("alice", "bob")),
        mask_seed(SECRET, Binding("fed-1", 12, 5, "S_RK", (3, 4)), ("alice", "bob")),
        mask_seed(SECRET, Binding("fed-1", 12, 5, "S_KK", (4, 3)), ("alice", "bob")),
    }
    assert len(seeds) == 9 and all(len(s) == 32 for s in seeds)


@pytest.mark.parametrize(
    "secret, binding, pair, error",
    [
        (SECRET[:31], BINDING, None, ValueError),
        (SECRET + b"\x00", BINDING, None, ValueError),
        (bytearray(SECRET), BINDING, None, ValueError),
        (SECRET.hex(), BINDING, None, ValueError),
        (SECRET, ("fed-1", 12, 5, "S_KK", (3, 4)), None, TypeError),
        (SECRET, None, None, TypeError),
        (SECRET, BINDING, ("alice", "alice"), ValueError),
        (SECRET, BINDING, ("alice",), ValueError),
        (SECRET, BINDING, ["alice", "bob"], ValueError),
        (SECRET, BINDING, ("alice", "b o b"), ValueError),
    ],
)
def test_rejects_bad_arguments(secret, binding, pair, error):
    with pytest.raises(error):
        mask_seed(secret, binding, pair)


def test_pair_sign():
    assert pair_sign("alice", "bob") == 1 and pair_sign("bob", "alice") == -1
    assert pair_sign("B", "a") == 1  # byte order: uppercase sorts first
    with pytest.raises(ValueError):
        pair_sign("alice", "alice")
    with pytest.raises(ValueError):
        pair_sign("alice", "")
