"""Party-to-party boxes for Shamir shares, relayed (unreadably) by the coordinator.

For sender S and recipient R in round r of federation F:

    context   = encode_fields(F, r, S, R)                        (str, int, str, str)
    key       = HKDF-SHA256(ikm  = X25519(S's share private key, R's share public key),
                            salt = b"collabedit.v1/share-box", info = context, length = 32)
    plaintext = encode_fields(S, R, self_secret_share (70 bytes), mask_key_share (70 bytes))
    box       = nonce (12 random bytes) || AES-256-GCM(key, nonce, plaintext, aad = context)
                (ciphertext || 16-byte tag, as `cryptography`'s AESGCM.encrypt returns it)

Share bytes are shamir.Share.to_bytes(). X25519 is symmetric, so R derives the same key from its
own share private key and S's share public key. Binding the key and the AAD to (F, r, S, R) means
a box opened for another round, federation, sender or recipient fails authentication; the ids
inside the plaintext are checked again after decryption.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .encoding import EncodingError, check_party_id, decode_fields, encode_fields
from .keys import x25519_shared_secret
from .shamir import SHARE_BYTES, Share, ShamirError

SHARE_BOX_SALT = b"collabedit.v1/share-box"
NONCE_BYTES = 12
TAG_BYTES = 16


class ShareBoxError(ValueError):
    """A share box that cannot be opened or whose contents are not what was expected."""


def box_context(federation_id: str, round_id: int, sender: str, recipient: str) -> bytes:
    """The HKDF info and AES-GCM associated data of a box (module docstring)."""
    if not isinstance(federation_id, str) or not federation_id:
        raise ValueError(f"federation_id must be a non-empty str, got {federation_id!r}")
    check_party_id(sender, "sender")
    check_party_id(recipient, "recipient")
    if sender == recipient:
        raise ValueError(f"a party does not send a share box to itself ({sender!r})")
    return encode_fields(federation_id, round_id, sender, recipient)


def box_key(private_key: x25519.X25519PrivateKey, peer_public_key: bytes, context: bytes,
            salt: bytes = SHARE_BOX_SALT) -> bytes:
    """HKDF-SHA256(X25519(private, peer public), salt, info = context), 32 bytes.
    Each kind of box has its own salt, so a box of one kind never opens as another."""
    secret = x25519_shared_secret(private_key, peer_public_key)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=context).derive(secret)


def box_aead(private_key: x25519.X25519PrivateKey, peer_public_key: bytes, context: bytes,
             salt: bytes = SHARE_BOX_SALT) -> AESGCM:
    return AESGCM(box_key(private_key, peer_public_key, context, salt))


def seal_shares(
    federation_id: str,
    round_id: int,
    sender: str,
    recipient: str,
    sender_share_private_key: x25519.X25519PrivateKey,
    recipient_share_public_key: bytes,
    self_secret_share: Share,
    mask_key_share: Share,
) -> bytes:
    """Encrypts the recipient's two shares of the sender's round secrets."""
    context = box_context(federation_id, round_id, sender, recipient)
    plaintext = encode_fields(sender, recipient, self_secret_share.to_bytes(), mask_key_share.to_bytes())
    nonce = os.urandom(NONCE_BYTES)  # random: a key is used for exactly one box, so no collision risk
    aead = box_aead(sender_share_private_key, recipient_share_public_key, context)
    return nonce + aead.encrypt(nonce, plaintext, context)


def open_shares(
    federation_id: str,
    round_id: int,
    sender: str,
    recipient: str,
    recipient_share_private_key: x25519.X25519PrivateKey,
    sender_share_public_key: bytes,
    box: bytes,
    expected_x: int | None = None,
) -> tuple[Share, Share]:
    """(self_secret_share, mask_key_share) from a box; ShareBoxError if anything is off."""
    context = box_context(federation_id, round_id, sender, recipient)
    if not isinstance(box, (bytes, bytearray)) or len(box) < NONCE_BYTES + TAG_BYTES:
        raise ShareBoxError(f"share box from {sender!r} is too short to be a box")
    try:
        plaintext = box_aead(recipient_share_private_key, sender_share_public_key, context).decrypt(
            bytes(box[:NONCE_BYTES]), bytes(box[NONCE_BYTES:]), context
        )
    except InvalidTag:
        raise ShareBoxError(
            f"share box from {sender!r} to {recipient!r} for round {round_id} does not authenticate "
            "(tampered, or meant for another party, round or federation)"
        ) from None
    try:
        fields = decode_fields(plaintext)
        if len(fields) != 4 or fields[:2] != [sender, recipient]:
            raise ShareBoxError(f"share box names {fields[:2]!r}, expected [{sender!r}, {recipient!r}]")
        if not all(isinstance(f, bytes) and len(f) == SHARE_BYTES for f in fields[2:]):
            raise ShareBoxError("share box does not hold two shares")
        self_share, mask_share = Share.from_bytes(fields[2]), Share.from_bytes(fields[3])
    except (EncodingError, ShamirError) as error:
        raise ShareBoxError(f"share box from {sender!r} is malformed: {error}") from None
    if self_share.x != mask_share.x or (expected_x is not None and self_share.x != expected_x):
        raise ShareBoxError(
            f"share box from {sender!r} holds shares for x={self_share.x}/{mask_share.x}, expected {expected_x}"
        )
    return self_share, mask_share
