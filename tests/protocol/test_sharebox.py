from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from collabedit_secure.protocol.encoding import encode_fields
from collabedit_secure.protocol.keys import RoundKeys, x25519_shared_secret
from collabedit_secure.protocol.shamir import split
from collabedit_secure.protocol.sharebox import ShareBoxError, open_shares, seal_shares

FED, ROUND = "fed-1", 9


@pytest.fixture(scope="module")
def parties():
    return {p: RoundKeys.generate() for p in ("alice", "bob", "carol")}


@pytest.fixture(scope="module")
def shares():
    return split(bytes(range(32)), 3, 2)[1], split(bytes(range(1, 33)), 3, 2)[1]  # both x = 2


def seal(parties, shares, sender="alice", recipient="bob", round_id=ROUND):
    return seal_shares(FED, round_id, sender, recipient, parties[sender].share_private_key,
                       parties[recipient].share_public_key, *shares)


def open_(parties, box, sender="alice", recipient="bob", round_id=ROUND, federation=FED, key_of=None, expected_x=None):
    return open_shares(federation, round_id, sender, recipient, parties[key_of or recipient].share_private_key,
                       parties[sender].share_public_key, box, expected_x)


def test_round_trip(parties, shares):
    box = seal(parties, shares)
    assert open_(parties, box, expected_x=2) == shares
    assert seal(parties, shares) != box  # fresh random nonce every time


def test_byte_layout_by_hand(parties, shares):
    """nonce(12) || AES-256-GCM(HKDF(X25519, salt, context), aad = context), as documented."""
    box = seal(parties, shares)
    context = encode_fields(FED, ROUND, "alice", "bob")
    secret = x25519_shared_secret(parties["bob"].share_private_key, parties["alice"].share_public_key)
    key = HKDF(hashes.SHA256(), 32, b"collabedit.v1/share-box", context).derive(secret)
    plaintext = AESGCM(key).decrypt(box[:12], box[12:], context)
    assert plaintext == encode_fields("alice", "bob", shares[0].to_bytes(), shares[1].to_bytes())
    assert len(box) == 12 + len(plaintext) + 16


def test_wrong_recipient_cannot_open(parties, shares):
    box = seal(parties, shares)
    with pytest.raises(ShareBoxError, match="does not authenticate"):
        open_(parties, box, recipient="carol")  # carol, with her own key, claims bob's box
    with pytest.raises(ShareBoxError, match="does not authenticate"):
        open_(parties, box, key_of="carol")  # carol's key, bob's name


def test_wrong_sender_rejected(parties, shares):
    box = seal(parties, shares, sender="carol")
    with pytest.raises(ShareBoxError):
        open_(parties, box, sender="alice")


@pytest.mark.parametrize("round_id, federation", [(ROUND + 1, FED), (ROUND - 1, FED), (ROUND, "fed-2")])
def test_replay_into_other_round_or_federation_rejected(parties, shares, round_id, federation):
    box = seal(parties, shares)
    with pytest.raises(ShareBoxError, match="does not authenticate"):
        open_(parties, box, round_id=round_id, federation=federation)


@pytest.mark.parametrize("position", [0, 11, 12, 40, -1])
def test_tampering_detected(parties, shares, position):
    box = bytearray(seal(parties, shares))
    box[position] ^= 0x01
    with pytest.raises(ShareBoxError, match="does not authenticate"):
        open_(parties, bytes(box))


@pytest.mark.parametrize("box", [b"", bytes(27), "text"])
def test_truncated_or_wrong_type(parties, box):
    with pytest.raises(ShareBoxError, match="too short"):
        open_(parties, box)


def test_authentic_box_with_wrong_contents_rejected(parties, shares):
    """A (malicious) sender encrypting correctly but naming another recipient inside is caught."""
    context = encode_fields(FED, ROUND, "alice", "bob")
    secret = x25519_shared_secret(parties["alice"].share_private_key, parties["bob"].share_public_key)
    aead = AESGCM(HKDF(hashes.SHA256(), 32, b"collabedit.v1/share-box", context).derive(secret))
    for plaintext, match in [
        (encode_fields("alice", "carol", shares[0].to_bytes(), shares[1].to_bytes()), "names"),
        (encode_fields("alice", "bob", shares[0].to_bytes()), "names"),
        (encode_fields("alice", "bob", b"x" * 70, shares[1].to_bytes()), "malformed"),
        (encode_fields("alice", "bob", shares[0].to_bytes(), b"short"), "two shares"),
        (b"\xff", "malformed"),
    ]:
        box = bytes(12) + aead.encrypt(bytes(12), plaintext, context)
        with pytest.raises(ShareBoxError, match=match):
            open_(parties, box)


def test_expected_x(parties, shares):
    with pytest.raises(ShareBoxError, match="expected 3"):
        open_(parties, seal(parties, shares), expected_x=3)
    mixed = (shares[0], split(bytes(32), 3, 2)[0])  # x = 2 and x = 1
    with pytest.raises(ShareBoxError, match="x=2/1"):
        open_(parties, seal(parties, mixed))


def test_no_box_to_self(parties, shares):
    with pytest.raises(ValueError):
        seal(parties, shares, sender="bob", recipient="bob")
