from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collabedit_secure.protocol.encoding import (
    Binding,
    EncodingError,
    check_party_id,
    decode_fields,
    encode_fields,
)

fields_strategy = st.lists(
    st.one_of(st.text(max_size=20), st.integers(0, 2**64 - 1), st.binary(max_size=20)), max_size=8
)


def test_known_answer_bytes():
    expected = bytes.fromhex(
        "02" "00000002" "6162"                      # str "ab"
        "03" "00000008" "0000000000000102"          # int 258
        "01" "00000001" "00"                        # bytes b"\x00"
        "02" "00000002" "c3a9"                      # str "é" (UTF-8)
    )
    assert encode_fields("ab", 258, b"\x00", "é") == expected
    assert encode_fields() == b""


@given(fields_strategy)
@settings(max_examples=60, deadline=None)
def test_round_trip_hence_injective(fields):
    # decode(encode(x)) == x (types included) means no two field lists share an encoding.
    assert decode_fields(encode_fields(*fields)) == fields


@given(fields_strategy, fields_strategy)
@settings(max_examples=50, deadline=None)
def test_concatenation(a, b):
    assert encode_fields(*a, *b) == encode_fields(*a) + encode_fields(*b)


def test_no_ambiguity_between_splits_and_types():
    assert encode_fields("ab", "c") != encode_fields("a", "bc")
    assert encode_fields("a") != encode_fields(b"a")
    assert encode_fields(1) != encode_fields(b"\x00" * 7 + b"\x01")


@pytest.mark.parametrize("bad", [True, -1, 2**64, 1.0, None, ["a"]])
def test_rejects_unencodable(bad):
    with pytest.raises(EncodingError):
        encode_fields("ok", bad)


@pytest.mark.parametrize(
    "data",
    [
        b"\x02\x00\x00",                                  # truncated header
        b"\x02\x00\x00\x00\x05ab",                        # declared 5 bytes, 2 present
        b"\x09\x00\x00\x00\x00",                          # unknown tag
        b"\x03\x00\x00\x00\x04\x00\x00\x00\x01",          # int of length 4
        b"\x02\x00\x00\x00\x01\xff",                      # invalid UTF-8
        encode_fields("x") + b"\x01",                     # trailing garbage
    ],
)
def test_decode_rejects_malformed(data):
    with pytest.raises(EncodingError):
        decode_fields(data)


def test_binding_encoding_and_size():
    binding = Binding("fed", 7, 3, "S_KK", [4, 5])
    assert binding.shape == (4, 5) and binding.size == 20
    assert binding.encode() == encode_fields("fed", 7, 3, "S_KK", 2, 4, 5)
    hash(binding)  # frozen and hashable (a list shape was converted)


def test_bindings_differ_in_every_field():
    base = Binding("fed", 1, 2, "S_KK", (3, 4))
    variants = [
        Binding("fed2", 1, 2, "S_KK", (3, 4)),
        Binding("fed", 2, 2, "S_KK", (3, 4)),
        Binding("fed", 1, 3, "S_KK", (3, 4)),
        Binding("fed", 1, 2, "S_RK", (3, 4)),
        Binding("fed", 1, 2, "S_KK", (4, 3)),
        Binding("fed", 1, 2, "S_KK", (12,)),
    ]
    encodings = {base.encode(), *(v.encode() for v in variants)}
    assert len(encodings) == len(variants) + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(federation_id=""),
        dict(round_id=-1),
        dict(round_id=True),
        dict(layer=2**64),
        dict(tensor=""),
        dict(shape=()),
        dict(shape=(3, -1)),
        dict(shape=(3.0,)),
        dict(shape="34"),
    ],
)
def test_binding_rejects_bad_fields(kwargs):
    args = dict(federation_id="fed", round_id=1, layer=0, tensor="S_KK", shape=(2,))
    args.update(kwargs)
    with pytest.raises(ValueError):
        Binding(**args)


@pytest.mark.parametrize("good", ["a", "party-1", "Org_B", "x" * 64])
def test_party_id_accepts(good):
    assert check_party_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "../etc", "é", "a.b", None, 5])
def test_party_id_rejects(bad):
    with pytest.raises(ValueError, match="invalid"):
        check_party_id(bad)
