"""Masked uploads (party side) and unmasking of their sum (coordinator side), `mask` mode.

Party p's upload for a Binding b (all arithmetic mod 2^64, uint64 words):

    upload_p = encode(values_p) + PRG(mask_seed(self_secret_p, b, None))
               + Σ_{q ≠ p} pair_sign(p, q) · PRG(mask_seed(X25519(mask_sk_p, mask_pk_q), b, (p, q)))

computed in one pass by the compiled `kernels.mask_encode` (encode/PRG definitions there, seeds and
signs in seeds.py). The pairwise terms of two parties that both upload cancel in the sum.

Coordinator, with survivors S (uploaded) and dropped D (advertised keys, never uploaded):

    Σ_{p∈S} upload_p = Σ encode(values_p) + Σ_{p∈S} PRG(self_p)
                       + Σ_{p∈S, d∈D} pair_sign(p, d) · PRG(seed_pd)

so it SUBTRACTS each survivor's self mask (from its Shamir-recovered self secret) and ADDS, for each
dropped d and survivor p, `pairwise_mask_for_dropped(...)` = pair_sign(d, p) · PRG(seed_pd) — the
term d would have added itself, which is exactly minus what p added. Pairs of two dropped parties
contributed nothing and need nothing. The result decodes to Σ_{p∈S} values_p.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from collabedit_secure.kernels import mask_decode, mask_encode, prg_mask, ring_add, ring_sub

from .encoding import Binding, check_party_id
from .fixedpoint import RoundNumerics
from .keys import RoundKeys, load_private_key, public_bytes, x25519_shared_secret
from .seeds import mask_seed, pair_sign


def _check_n(binding: Binding, n: int | None) -> int:
    if n is not None and n != binding.size:
        raise ValueError(f"n = {n} but binding {binding.tensor!r} has shape {binding.shape} ({binding.size} words)")
    return binding.size


def masked_upload(
    values: np.ndarray,
    numerics: RoundNumerics,
    binding: Binding,
    me: str,
    my_keys: RoundKeys,
    peer_mask_public_keys: Mapping[str, bytes],
) -> np.ndarray:
    """values (float64, shape = binding.shape) -> masked uint64 words of the same shape.

    peer_mask_public_keys: every other party of the round's roster -> its verified mask public key.
    Raises FixedPointOverflowError (before any masking) if a value cannot be encoded.
    """
    check_party_id(me)
    if not isinstance(values, np.ndarray) or values.dtype not in (np.float64, np.float32):
        raise TypeError(f"values for {binding.tensor!r} must be a float64 (or float32) numpy array")
    if values.shape != binding.shape:
        raise ValueError(f"values for {binding.tensor!r} have shape {values.shape}, the binding says {binding.shape}")
    if me in peer_mask_public_keys:
        raise ValueError(f"peer_mask_public_keys must not include the uploading party {me!r}")
    if len(peer_mask_public_keys) + 1 > numerics.n_parties:
        raise ValueError(
            f"{len(peer_mask_public_keys) + 1} parties in the roster but the round numerics allow {numerics.n_parties}"
        )
    numerics.check_encodable(binding.tensor, values)
    peers = sorted(peer_mask_public_keys)
    seeds = [
        mask_seed(x25519_shared_secret(my_keys.mask_private_key, peer_mask_public_keys[peer]), binding, (me, peer))
        for peer in peers
    ]
    signs = [pair_sign(me, peer) for peer in peers]
    self_seed = mask_seed(my_keys.self_secret, binding, None)
    return mask_encode(values, numerics.scale_bits, self_seed, seeds, signs, bound=numerics.bound)


def self_mask(self_secret: bytes, binding: Binding, n: int | None = None) -> np.ndarray:
    """PRG(mask_seed(self_secret, binding, None)): the self mask a survivor added (SUBTRACT it)."""
    return prg_mask(mask_seed(self_secret, binding, None), _check_n(binding, n))


def pairwise_mask_for_dropped(
    dropped_party_mask_private_key: bytes | x25519.X25519PrivateKey,
    dropped_id: str,
    survivor_id: str,
    survivor_public_key: bytes,
    binding: Binding,
    n: int | None = None,
) -> np.ndarray:
    """Words to ADD to the ring sum to cancel the survivor's pairwise mask with a dropped party:
    pair_sign(dropped, survivor) · PRG(seed), the term the dropped party would have added."""
    secret = x25519_shared_secret(dropped_party_mask_private_key, survivor_public_key)
    words = prg_mask(mask_seed(secret, binding, (dropped_id, survivor_id)), _check_n(binding, n))
    if pair_sign(dropped_id, survivor_id) < 0:
        np.negative(words, out=words)  # two's-complement negation is negation mod 2^64
    return words


def sum_uploads(uploads: Sequence[np.ndarray]) -> np.ndarray:
    """Ring sum (mod 2^64) of masked uploads of the same shape."""
    if not uploads:
        raise ValueError("no uploads to sum")
    total = np.array(uploads[0], dtype=np.uint64, copy=True)
    for upload in uploads[1:]:
        ring_add(total, upload, out=total)
    return total


def unmask_sum(
    ring_sum: np.ndarray,
    survivors_self_secrets: Mapping[str, bytes],
    dropped_mask_private_keys: Mapping[str, bytes],
    mask_public_keys: Mapping[str, bytes],
    binding: Binding,
    numerics: RoundNumerics,
) -> np.ndarray:
    """float64 Σ of the survivors' values (shape = binding.shape) from the ring sum of their uploads.

    survivors_self_secrets: every party that uploaded -> its recovered self secret.
    dropped_mask_private_keys: every party that advertised keys but did not upload -> its
    recovered raw mask private key. mask_public_keys: the whole roster's advertised mask keys.
    """
    survivors, dropped, roster = set(survivors_self_secrets), set(dropped_mask_private_keys), set(mask_public_keys)
    if survivors & dropped:
        raise ValueError(f"parties {sorted(survivors & dropped)} cannot be both survivors and dropped")
    if survivors | dropped != roster:
        raise ValueError(
            f"survivors {sorted(survivors)} and dropped {sorted(dropped)} must together be the roster {sorted(roster)}"
        )
    if not survivors:
        raise ValueError("no survivors: there is no sum to unmask")
    words = np.asarray(ring_sum)
    if words.dtype != np.uint64 or words.size != binding.size:
        raise ValueError(
            f"ring sum must be {binding.size} uint64 words for {binding.tensor!r}, got {words.size} {words.dtype}"
        )
    total = np.array(words, dtype=np.uint64, copy=True).reshape(-1)
    buffer = np.empty(binding.size, np.uint64)
    for party in sorted(survivors):
        prg_mask(mask_seed(survivors_self_secrets[party], binding, None), binding.size, out=buffer)
        ring_sub(total, buffer, out=total)
    for gone in sorted(dropped):
        private_key = load_private_key(dropped_mask_private_keys[gone])
        if public_bytes(private_key) != mask_public_keys[gone]:
            raise ValueError(f"mask private key given for dropped party {gone!r} does not match its advertised key")
        for party in sorted(survivors):
            correction = pairwise_mask_for_dropped(private_key, gone, party, mask_public_keys[party], binding)
            ring_add(total, correction, out=total)
    return mask_decode(total, numerics.scale_bits, numerics.n_parties, bound=numerics.bound).reshape(binding.shape)
