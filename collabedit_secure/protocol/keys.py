"""Per-round key material and the signed advertisement that publishes it.

Each party, each round, makes fresh `RoundKeys`:
- mask key pair  (X25519): pairwise mask seeds with every peer (seeds.py);
- share key pair (X25519): keys of the share boxes that carry Shamir shares (sharebox.py);
- self_secret (32 bytes from os.urandom): the seed secret of its self mask.
Public keys are the raw 32-byte X25519 encodings (RFC 7748).

The coordinator relays public keys, so it could substitute its own and unmask individual uploads.
Each party therefore signs its advertisement with its certificate key and every peer verifies it:

    message   = encode_fields("collabedit.v1/key-advertisement", federation_id, round_id,
                              party_id, mask_public_key, share_public_key)
                (str, str, int, str, bytes[32], bytes[32]; encoding.py)
    signature = ECDSA P-256 over SHA-256(message), DER encoded (the certificate's key)

verify_advertisement accepts only if the certificate chains to the federation CA (CA signature,
validity window now, clientAuth usage, not a CA itself; RFC 5280 checks by
`cryptography.x509.verification`), its single subject CN equals party_id, the signature verifies
over the message above for this federation and round, and both keys are 32 bytes and not
low-order points (which would make every X25519 output zero).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from .encoding import check_party_id, encode_fields

ADVERTISEMENT_DOMAIN = "collabedit.v1/key-advertisement"
KEY_BYTES = 32
SELF_SECRET_BYTES = 32


class KeyAdvertisementError(ValueError):
    """A key advertisement that must not be used: wrong certificate, name, signature or keys."""


def public_bytes(key: x25519.X25519PublicKey | x25519.X25519PrivateKey) -> bytes:
    """Raw 32-byte X25519 public key (of a public key, or of a private key's public half)."""
    if isinstance(key, x25519.X25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: x25519.X25519PrivateKey) -> bytes:
    """Raw 32-byte X25519 private key (what is Shamir-shared for dropout recovery)."""
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def x25519_shared_secret(private_key: x25519.X25519PrivateKey | bytes, peer_public_key: bytes) -> bytes:
    """X25519(private, peer public) as 32 bytes; refuses malformed keys and low-order points."""
    if isinstance(private_key, (bytes, bytearray)):
        private_key = load_private_key(bytes(private_key))
    _check_key_bytes(peer_public_key, "peer public key")
    try:
        return private_key.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public_key))
    except ValueError as error:  # all-zero output: a low-order (malicious) public key
        raise ValueError(f"X25519 with this peer public key fails ({error}); the key is invalid") from None


def load_private_key(raw: bytes) -> x25519.X25519PrivateKey:
    _check_key_bytes(raw, "X25519 private key")
    return x25519.X25519PrivateKey.from_private_bytes(raw)


def _check_key_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        size = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ValueError(f"{name} must be {KEY_BYTES} raw bytes, got {size}")
    return value


@dataclass(frozen=True)
class RoundKeys:
    """One party's secrets for one round. Never reuse across rounds: make new ones each round."""

    mask_private_key: x25519.X25519PrivateKey
    share_private_key: x25519.X25519PrivateKey
    self_secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.self_secret, bytes) or len(self.self_secret) != SELF_SECRET_BYTES:
            raise ValueError(f"self_secret must be {SELF_SECRET_BYTES} bytes")

    @classmethod
    def generate(cls) -> "RoundKeys":
        generate = x25519.X25519PrivateKey.generate
        return cls(generate(), generate(), os.urandom(SELF_SECRET_BYTES))

    @property
    def mask_public_key(self) -> bytes:
        return public_bytes(self.mask_private_key)

    @property
    def share_public_key(self) -> bytes:
        return public_bytes(self.share_private_key)


@dataclass(frozen=True)
class KeyAdvertisement:
    """What a party publishes for a round, relayed unchanged by the coordinator."""

    party_id: str
    mask_public_key: bytes
    share_public_key: bytes
    certificate_pem: bytes
    signature: bytes


def advertisement_message(federation_id: str, round_id: int, party_id: str, mask_pk: bytes, share_pk: bytes) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    return encode_fields(ADVERTISEMENT_DOMAIN, federation_id, round_id, party_id, mask_pk, share_pk)


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_advertisement(
    cert_private_key: ec.EllipticCurvePrivateKey,
    certificate_pem: bytes,
    federation_id: str,
    round_id: int,
    party_id: str,
    keys: RoundKeys,
) -> KeyAdvertisement:
    """Signs this round's public keys with the party's certificate key (ECDSA P-256, SHA-256)."""
    check_party_id(party_id)
    is_ec = isinstance(cert_private_key, ec.EllipticCurvePrivateKey)
    if not is_ec or not isinstance(cert_private_key.curve, ec.SECP256R1):
        raise TypeError("cert_private_key must be the ECDSA P-256 key of the party's certificate")
    cert = x509.load_pem_x509_certificate(certificate_pem)
    if _public_der(cert.public_key()) != _public_der(cert_private_key.public_key()):
        raise ValueError("cert_private_key does not belong to certificate_pem")  # peers would reject it anyway
    message = advertisement_message(federation_id, round_id, party_id, keys.mask_public_key, keys.share_public_key)
    signature = cert_private_key.sign(message, ec.ECDSA(hashes.SHA256()))
    return KeyAdvertisement(party_id, keys.mask_public_key, keys.share_public_key, certificate_pem, signature)


def _ca(ca_certificate: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(ca_certificate, x509.Certificate):
        return ca_certificate
    return x509.load_pem_x509_certificate(ca_certificate)


def verify_advertisement(
    adv: KeyAdvertisement,
    ca_certificate: x509.Certificate | bytes,
    federation_id: str,
    round_id: int,
    now: dt.datetime | None = None,
) -> None:
    """Raises KeyAdvertisementError unless adv is genuine for this federation and round."""
    who = repr(adv.party_id)
    try:
        check_party_id(adv.party_id)
        for key, name in ((adv.mask_public_key, "mask public key"), (adv.share_public_key, "share public key")):
            _check_key_bytes(key, name)
            # A low-order point makes every X25519 output zero (a known, unmasked "secret"):
            # probe with a throwaway key so such an advertisement is refused here, not mid-round.
            x25519_shared_secret(x25519.X25519PrivateKey.generate(), key)
        cert = x509.load_pem_x509_certificate(adv.certificate_pem)
    except (ValueError, TypeError) as error:
        raise KeyAdvertisementError(f"advertisement of {who}: {error}") from None
    when = now or dt.datetime.now(dt.timezone.utc)
    verifier = (
        verification.PolicyBuilder().store(verification.Store([_ca(ca_certificate)])).time(when).build_client_verifier()
    )
    try:
        verifier.verify(cert, [])
    except verification.VerificationError as error:
        raise KeyAdvertisementError(
            f"advertisement of {who}: certificate rejected by the federation CA: {error}"
        ) from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != adv.party_id:
        found = ", ".join(repr(n.value) for n in names) or "none"
        raise KeyAdvertisementError(f"advertisement of {who} carries the certificate of common name {found}")
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise KeyAdvertisementError(f"advertisement of {who}: certificate key is not ECDSA P-256")
    message = advertisement_message(federation_id, round_id, adv.party_id, adv.mask_public_key, adv.share_public_key)
    try:
        public_key.verify(adv.signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        raise KeyAdvertisementError(
            f"advertisement of {who}: signature does not verify for federation {federation_id!r} round {round_id}"
        ) from None


def check_unique_keys(advertisements: Iterable[KeyAdvertisement]) -> None:
    """Raises KeyAdvertisementError if a party id repeats or any public key appears twice
    (in two parties, or as both keys of one): a repeated key means copied or replayed keys."""
    seen_ids: set[str] = set()
    owner: dict[bytes, str] = {}
    for adv in advertisements:
        if adv.party_id in seen_ids:
            raise KeyAdvertisementError(f"party {adv.party_id!r} advertised keys twice")
        seen_ids.add(adv.party_id)
        for key in (adv.mask_public_key, adv.share_public_key):
            if key in owner:
                raise KeyAdvertisementError(
                    f"public key {key.hex()[:16]}... of {adv.party_id!r} was already advertised by {owner[key]!r}"
                )
            owner[key] = adv.party_id
