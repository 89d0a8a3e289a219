"""The one place mask seeds are derived. Nothing else may run a KDF to make masks.

    mask_seed(secret, binding, pair) = HKDF-SHA256(
        ikm    = secret,                                   # 32 bytes
        salt   = b"collabedit.v1/mask-seed",
        info   = encode_fields("pairwise", *binding.fields(), low_id, high_id)   if pair
                 encode_fields("self", *binding.fields())                         if pair is None,
        length = 32)

where (low_id, high_id) are the pair's two party ids in ascending byte order (ids are ASCII,
encoding.check_party_id), so both members of a pair derive the same seed; binding.fields() is
(federation_id, round_id, layer, tensor, rank, dim_0, ..., dim_{rank-1}) as in encoding.py.

- pairwise: secret = X25519(my mask private key, peer's mask public key), the raw 32-byte output.
- self:     secret = the party's per-round 32-byte self-mask secret (RoundKeys.self_secret).

The 32-byte seed drives the kernels' PRG: AES-128-CTR with key seed[0:16] and initial counter block
seed[16:32]. Because the Binding is a required argument and part of `info`, a seed (hence a
mask) can never repeat across federations, rounds, layers, tensors or shapes.

pair_sign(me, peer) = +1 if me < peer (byte order) else -1: the lower id adds the pairwise mask,
the higher subtracts it, so each pair's masks cancel in the sum.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .encoding import Binding, check_party_id, encode_fields

MASK_SEED_SALT = b"collabedit.v1/mask-seed"
SEED_BYTES = 32
SECRET_BYTES = 32


def mask_seed(shared_secret: bytes, binding: Binding, pair: tuple[str, str] | None) -> bytes:
    """32-byte PRG seed for one tensor: pairwise (pair = the two party ids) or self (pair = None)."""
    if not isinstance(shared_secret, bytes) or len(shared_secret) != SECRET_BYTES:
        raise ValueError(f"shared_secret must be {SECRET_BYTES} bytes, got {_describe(shared_secret)}")
    if not isinstance(binding, Binding):
        raise TypeError(f"binding must be a Binding, not {type(binding).__name__}")
    if pair is None:
        info = encode_fields("self", *binding.fields())
    else:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(f"pair must be a tuple of two party ids, got {pair!r}")
        low, high = sorted(check_party_id(party) for party in pair)
        if low == high:
            raise ValueError(f"a pairwise mask needs two different parties, got {pair!r}")
        info = encode_fields("pairwise", *binding.fields(), low, high)
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=MASK_SEED_SALT, info=info).derive(shared_secret)


def pair_sign(me: str, peer: str) -> int:
    """+1 if me sorts before peer, else -1 (the sign of the pairwise mask in me's upload)."""
    check_party_id(me)
    check_party_id(peer)
    if me == peer:
        raise ValueError(f"party {me!r} has no pairwise mask with itself")
    return 1 if me < peer else -1


def _describe(value: object) -> str:
    return f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else type(value).__name__
