"""The checked-in conformance vectors agree with the code, and mean what the protocol guide says:
each is re-derived here with `cryptography` and Python integers, not with the project's kernels."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from collabedit_secure.protocol import conformance, seeds

FOLDER = conformance.DEFAULT_DIR
U64 = 1 << 64


def load(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.json").read_text())


def words(seed: bytes, n: int) -> list[int]:
    stream = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:32])).encryptor().update(bytes(8 * n))
    return [int.from_bytes(stream[8 * i:8 * i + 8], "little") for i in range(n)]


def hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def test_checked_in_vectors_agree_with_the_code():
    assert conformance.check(FOLDER) == []


def test_a_changed_byte_rule_is_caught(monkeypatch, tmp_path):
    for path in FOLDER.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    monkeypatch.setattr(seeds, "MASK_SEED_SALT", b"collabedit.v2/mask-seed")
    problems = conformance.check(tmp_path)
    assert any("mask_seeds.json" in p for p in problems) and any("masked_round.json" in p for p in problems)
    (tmp_path / "prg.json").unlink()
    assert any("prg.json is missing" in p for p in conformance.check(tmp_path))


def test_prg_is_aes_ctr_little_endian_words():
    for case in load("prg")["cases"]:
        seed = bytes.fromhex(case["seed"])
        assert [str(w) for w in words(seed, len(case["words"]))] == case["words"]


def test_mask_seeds_are_hkdf_of_the_stated_info():
    v = load("mask_seeds")
    secret, salt = bytes.fromhex(v["secret"]), bytes.fromhex(v["salt"])
    for kind in ("self", "pairwise"):
        assert hkdf(secret, salt, bytes.fromhex(v[kind]["info"])).hex() == v[kind]["seed"]


def test_fixed_point_words_are_round_half_even_twos_complement():
    v = load("fixed_point")
    scale, bound = v["scale_bits"], int(v["bound"])
    for case in v["cases"]:
        value = struct.unpack("<d", bytes.fromhex(case["value_hex"]))[0]
        assert value == case["value"] or (value != value and case["value"] != case["value"])
        integer = round(value * 2 ** scale)  # Python's round() is half-to-even
        assert abs(integer) <= bound and str(integer % U64) == case["word"]
    for case in v["refused"]:
        value = struct.unpack("<d", bytes.fromhex(case["value_hex"]))[0]
        assert value != value or abs(value) == float("inf") or abs(round(value * 2 ** scale)) > bound


def test_shamir_shares_lie_on_the_polynomial_and_combine():
    v = load("shamir")
    prime, coefficients = int(v["prime"]), [int(c) for c in v["coefficients"]]
    for share in v["shares"]:
        x = share["x"]
        assert int(share["y"]) == sum(c * x ** k for k, c in enumerate(coefficients)) % prime
        assert share["bytes"] == x.to_bytes(4, "big").hex() + int(share["y"]).to_bytes(66, "big").hex()
    assert all(c["secret"] == v["secret"] for c in v["combine"])


def test_share_box_opens_with_the_derived_key():
    v = load("share_box")
    recipient = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(v["recipient_share_private_key"]))
    secret = recipient.exchange(x25519.X25519PublicKey.from_public_bytes(bytes.fromhex(v["sender_share_public_key"])))
    key = hkdf(secret, bytes.fromhex(v["salt"]), bytes.fromhex(v["context"]))
    assert key.hex() == v["key"]
    box = bytes.fromhex(v["box"])
    assert AESGCM(key).decrypt(box[:12], box[12:], bytes.fromhex(v["context"])).hex() == v["plaintext"]


def test_chunks_cover_the_payload_with_their_digests():
    v = load("chunking")
    payload = bytes.fromhex(v["payload"])
    assert hashlib.sha256(payload).hexdigest() == v["sha256"] and len(payload) == v["total_bytes"]
    assert b"".join(bytes.fromhex(c["data"]) for c in v["chunks"]) == payload
    for chunk in v["chunks"]:
        data = bytes.fromhex(chunk["data"])
        assert len(data) <= v["chunk_bytes"] and hashlib.sha256(data).hexdigest() == chunk["sha256"]


def test_masked_round_sums_and_unmasks_to_the_values():
    v = load("masked_round")
    scale = v["scale_bits"]
    total = [sum(int(p["upload"][i]) for p in v["parties"]) % U64 for i in range(len(v["ring_sum"]))]
    assert [str(t) for t in total] == v["ring_sum"]
    for party in v["parties"]:  # remove each self mask: the pairwise masks cancelled in the sum
        total = [(t - w) % U64 for t, w in zip(total, words(bytes.fromhex(party["self_seed"]), len(total)))]
    decoded = [(t - U64 if t >= U64 // 2 else t) / 2 ** scale for t in total]
    assert decoded == [d["value"] for d in v["decoded_sum"]]
    expected = [sum(p["values"][i]["value"] for p in v["parties"]) for i in range(len(total))]
    assert decoded == pytest.approx(expected, abs=3 * 2.0 ** -(scale + 1))
