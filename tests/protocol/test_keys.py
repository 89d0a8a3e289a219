from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from collabedit_secure.protocol.encoding import encode_fields
from collabedit_secure.protocol.keys import (
    KeyAdvertisement,
    KeyAdvertisementError,
    RoundKeys,
    advertisement_message,
    check_unique_keys,
    public_bytes,
    sign_advertisement,
    verify_advertisement,
    x25519_shared_secret,
)
from collabedit_secure.rpc import tls

FED, ROUND = "fed-1", 4


def advertise(federation, party, keys=None, round_id=ROUND):
    keys = keys or RoundKeys.generate()
    return sign_advertisement(federation.keys[party], federation.certs[party], FED, round_id, party, keys)


def test_message_definition():
    mask, share = bytes([1]) * 32, bytes([2]) * 32
    assert advertisement_message(FED, ROUND, "alice", mask, share) == encode_fields(
        "collabedit.v1/key-advertisement", FED, ROUND, "alice", mask, share
    )


def test_round_keys_are_fresh_and_sized():
    a, b = RoundKeys.generate(), RoundKeys.generate()
    assert len({a.mask_public_key, a.share_public_key, b.mask_public_key, b.share_public_key}) == 4
    assert a.self_secret != b.self_secret and len(a.self_secret) == 32
    with pytest.raises(ValueError):
        RoundKeys(a.mask_private_key, a.share_private_key, b"short")


def test_sign_and_verify(federation):
    adv = advertise(federation, "alice")
    verify_advertisement(adv, federation.ca_cert, FED, ROUND)
    verify_advertisement(adv, federation.ca_pem, FED, ROUND)  # CA as PEM works too
    # the signature is ECDSA P-256 / SHA-256 over the documented message
    cert_key = federation.keys["alice"].public_key()
    message = advertisement_message(FED, ROUND, "alice", adv.mask_public_key, adv.share_public_key)
    cert_key.verify(adv.signature, message, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("federation_id, round_id", [("fed-2", ROUND), (FED, ROUND + 1)])
def test_replay_in_other_round_or_federation_rejected(federation, federation_id, round_id):
    with pytest.raises(KeyAdvertisementError, match="signature does not verify"):
        verify_advertisement(advertise(federation, "alice"), federation.ca_cert, federation_id, round_id)


def test_substituted_keys_rejected(federation):
    adv = advertise(federation, "alice")
    attacker = RoundKeys.generate()  # what a coordinator would substitute
    for forged in (
        dataclasses.replace(adv, mask_public_key=attacker.mask_public_key),
        dataclasses.replace(adv, share_public_key=attacker.share_public_key),
        dataclasses.replace(adv, signature=adv.signature[:-1] + bytes([adv.signature[-1] ^ 1])),
        dataclasses.replace(adv, signature=b"not a signature"),
    ):
        with pytest.raises(KeyAdvertisementError, match="signature"):
            verify_advertisement(forged, federation.ca_cert, FED, ROUND)


@pytest.mark.parametrize("field", ["mask_public_key", "share_public_key"])
@pytest.mark.parametrize("size", [0, 31, 33])
def test_wrong_key_length_rejected(federation, field, size):
    adv = dataclasses.replace(advertise(federation, "alice"), **{field: bytes(size)})
    with pytest.raises(KeyAdvertisementError, match="32 raw bytes"):
        verify_advertisement(adv, federation.ca_cert, FED, ROUND)


@pytest.mark.parametrize("field", ["mask_public_key", "share_public_key"])
def test_low_order_public_key_rejected(federation, field):
    keys = RoundKeys.generate()
    low_order = (1).to_bytes(32, "little")  # the point u = 1 has order 4 on Curve25519
    mask, share = keys.mask_public_key, keys.share_public_key
    mask, share = (low_order, share) if field == "mask_public_key" else (mask, low_order)
    message = advertisement_message(FED, ROUND, "alice", mask, share)
    adv = KeyAdvertisement("alice", mask, share, federation.certs["alice"],
                           federation.keys["alice"].sign(message, ec.ECDSA(hashes.SHA256())))
    with pytest.raises(KeyAdvertisementError, match="invalid"):
        verify_advertisement(adv, federation.ca_cert, FED, ROUND)


def test_certificate_from_other_ca_rejected(federation, other_federation):
    adv = advertise(other_federation, "alice")
    with pytest.raises(KeyAdvertisementError, match="certificate rejected"):
        verify_advertisement(adv, federation.ca_cert, FED, ROUND)


def test_common_name_mismatch_rejected(federation):
    # bob signs with his own (valid) certificate but claims to be alice
    keys = RoundKeys.generate()
    message = advertisement_message(FED, ROUND, "alice", keys.mask_public_key, keys.share_public_key)
    adv = KeyAdvertisement("alice", keys.mask_public_key, keys.share_public_key, federation.certs["bob"],
                           federation.keys["bob"].sign(message, ec.ECDSA(hashes.SHA256())))
    with pytest.raises(KeyAdvertisementError, match="common name 'bob'"):
        verify_advertisement(adv, federation.ca_cert, FED, ROUND)


@pytest.mark.parametrize("start_days, length_days", [(-800, 365), (1, 365)])
def test_expired_and_not_yet_valid_certificates_rejected(federation, start_days, length_days):
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=start_days)
    cert, key = tls.issue_certificate("alice", federation.ca_cert, federation.ca_key, not_before=start,
                                      not_after=start + dt.timedelta(days=length_days))
    adv = sign_advertisement(key, tls.certificate_pem(cert), FED, ROUND, "alice", RoundKeys.generate())
    with pytest.raises(KeyAdvertisementError, match="not valid at validation time"):
        verify_advertisement(adv, federation.ca_cert, FED, ROUND)
    # the same advertisement verifies at a time inside both validity windows (only time was wrong)
    if start_days > 0:
        verify_advertisement(adv, federation.ca_cert, FED, ROUND, now=start + dt.timedelta(days=1))


def test_ca_certificate_is_not_a_party(federation):
    keys = RoundKeys.generate()
    ca_pem = federation.ca_pem
    message = advertisement_message(FED, ROUND, "alice", keys.mask_public_key, keys.share_public_key)
    adv = KeyAdvertisement("alice", keys.mask_public_key, keys.share_public_key, ca_pem,
                           federation.ca_key.sign(message, ec.ECDSA(hashes.SHA256())))
    with pytest.raises(KeyAdvertisementError, match="certificate rejected"):
        verify_advertisement(adv, federation.ca_cert, FED, ROUND)


def test_garbage_certificate_rejected(federation):
    adv = dataclasses.replace(advertise(federation, "alice"), certificate_pem=b"-----BEGIN CERTIFICATE-----\nxx\n")
    with pytest.raises(KeyAdvertisementError):
        verify_advertisement(adv, federation.ca_cert, FED, ROUND)


def test_sign_refuses_key_of_another_certificate(federation):
    with pytest.raises(ValueError, match="does not belong"):
        sign_advertisement(federation.keys["bob"], federation.certs["alice"], FED, ROUND, "alice", RoundKeys.generate())


def test_unique_keys(federation):
    advs = [advertise(federation, p) for p in ("alice", "bob", "carol")]
    check_unique_keys(advs)
    copied = dataclasses.replace(advs[2], mask_public_key=advs[0].mask_public_key)
    with pytest.raises(KeyAdvertisementError, match="already advertised by 'alice'"):
        check_unique_keys([advs[0], advs[1], copied])
    same_twice = dataclasses.replace(advs[1], share_public_key=advs[1].mask_public_key)
    with pytest.raises(KeyAdvertisementError, match="already advertised by 'bob'"):
        check_unique_keys([advs[0], same_twice])
    with pytest.raises(KeyAdvertisementError, match="twice"):
        check_unique_keys([advs[0], advs[0]])


def test_x25519_shared_secret():
    a, b = RoundKeys.generate(), RoundKeys.generate()
    assert x25519_shared_secret(a.mask_private_key, b.mask_public_key) == x25519_shared_secret(
        b.mask_private_key, a.mask_public_key
    )
    with pytest.raises(ValueError, match="invalid"):
        x25519_shared_secret(a.mask_private_key, bytes(32))  # low-order point: all-zero secret
    with pytest.raises(ValueError, match="32 raw bytes"):
        x25519_shared_secret(a.mask_private_key, b.mask_public_key[:31])
    assert public_bytes(x25519.X25519PrivateKey.from_private_bytes(bytes(32))) == public_bytes(
        x25519.X25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    )
