"""Masking and unmasking a block at a time: the words of masking.py without a whole tensor in memory.

`masked_upload` and `unmask_sum` (masking.py) take and return whole tensors. A party streaming a
d_in = 16384 layer would hold a 1 GiB packed S_KK, its 1 GiB of masked words and their bytes at
once; the coordinator likewise for the ring sum. The PRG is AES-128-CTR, so word i of a seed's
stream is keystream bytes 8i..8i+8, in AES block i // 2; the stream from word 2k on is the stream
of the same key with the counter block advanced by k (mod 2^128, as CTR mode counts). `seed_at`
makes that seed, so a block of words starting at an even offset is masked (or unmasked) exactly as
the same words of the whole tensor would be. The wire format does not change: a party's upload,
and the coordinator's decoded sum, are the same bytes as masking.py's (tests compare them).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from collabedit_secure.kernels import mask_decode, mask_encode, prg_mask, ring_add, ring_sub

from .encoding import Binding, check_party_id
from .fixedpoint import RoundNumerics
from .keys import RoundKeys, load_private_key, public_bytes, x25519_shared_secret
from .seeds import SEED_BYTES, mask_seed, pair_sign

BLOCK_WORDS = 1 << 17  # 1 MiB of words: even, so every block but the last starts on an AES block
_COUNTER_MODULUS = 1 << 128


def seed_at(seed: bytes, word_offset: int) -> bytes:
    """The seed whose PRG stream is `seed`'s stream from word `word_offset` on (an even offset)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if word_offset < 0 or word_offset % 2:
        raise ValueError(f"a block of words must start at an even offset >= 0 (an AES block), got {word_offset}")
    counter = (int.from_bytes(seed[16:], "big") + word_offset // 2) % _COUNTER_MODULUS
    return seed[:16] + counter.to_bytes(16, "big")


class MaskedEncoder:
    """masked_upload of one tensor, a block of values at a time.

    encoder = MaskedEncoder(numerics, binding, me, keys, peer_mask_public_keys)
    for offset in range(0, n, BLOCK_WORDS):
        words = encoder.encode(flat_values[offset:offset + BLOCK_WORDS], offset)

The words equal masked_upload(values, ...).reshape(-1)[offset:offset + len(block)]. Check every
value of the step first (numerics.check_encodable): a block that does not encode raises
FixedPointOverflowError here too, but by then earlier blocks may have been sent.
"""

    def __init__(self, numerics: RoundNumerics, binding: Binding, me: str, my_keys: RoundKeys,
                 peer_mask_public_keys: Mapping[str, bytes]):
        check_party_id(me)
        if me in peer_mask_public_keys:
            raise ValueError(f"peer_mask_public_keys must not include the uploading party {me!r}")
        if len(peer_mask_public_keys) + 1 > numerics.n_parties:
            raise ValueError(f"{len(peer_mask_public_keys) + 1} parties in the roster but the round numerics allow "
                             f"{numerics.n_parties}")
        self.numerics, self.binding, self.size = numerics, binding, binding.size
        peers = sorted(peer_mask_public_keys)
        self.seeds = [mask_seed(my_keys.self_secret, binding, None)] + [
            mask_seed(x25519_shared_secret(my_keys.mask_private_key, peer_mask_public_keys[peer]), binding, (me, peer))
            for peer in peers]
        self.signs = [1] + [pair_sign(me, peer) for peer in peers]

    def encode(self, values: np.ndarray, word_offset: int) -> np.ndarray:
        """Masked uint64 words (a host array) of values (flat; numpy, or a torch CUDA tensor masked on
        its GPU), which are the tensor's words from word_offset on."""
        on_gpu = getattr(values, "is_cuda", False)  # a torch CUDA tensor: masked by the CUDA kernel
        values = values.double().reshape(-1).contiguous() if on_gpu else \
            np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        n = int(values.numel() if on_gpu else values.size)
        if word_offset + n > self.size:
            raise ValueError(f"words {word_offset}..{word_offset + n} are past the {self.size} words of "
                             f"{self.binding.tensor!r}")
        seeds = [seed_at(seed, word_offset) for seed in self.seeds]
        words = mask_encode(values, self.numerics.scale_bits, seeds[0], seeds[1:], self.signs[1:],
                            bound=self.numerics.bound)
        return words.cpu().numpy() if on_gpu else words


def unmask_blocks(
    blocks: Iterable[np.ndarray],
    survivors_self_secrets: Mapping[str, bytes],
    dropped_mask_private_keys: Mapping[str, bytes],
    mask_public_keys: Mapping[str, bytes],
    binding: Binding,
    numerics: RoundNumerics,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """unmask_sum of a ring sum read a block at a time (each block but the last of an even length).

    Returns float64 of binding.shape (`out`, flat or shaped, if given): the same values as
    masking.unmask_sum of the whole sum. Only one block of words and one PRG block are held.
    """
    survivors, dropped, roster = set(survivors_self_secrets), set(dropped_mask_private_keys), set(mask_public_keys)
    if survivors & dropped:
        raise ValueError(f"parties {sorted(survivors & dropped)} cannot be both survivors and dropped")
    if survivors | dropped != roster:
        raise ValueError(
            f"survivors {sorted(survivors)} and dropped {sorted(dropped)} must together be the roster {sorted(roster)}")
    if not survivors:
        raise ValueError("no survivors: there is no sum to unmask")
    subtract = [mask_seed(survivors_self_secrets[party], binding, None) for party in sorted(survivors)]
    corrections: list[tuple[bytes, int]] = []  # (seed, sign): the pairwise term each dropped party never added
    for gone in sorted(dropped):
        private_key = load_private_key(dropped_mask_private_keys[gone])
        if public_bytes(private_key) != mask_public_keys[gone]:
            raise ValueError(f"mask private key given for dropped party {gone!r} does not match its advertised key")
        for party in sorted(survivors):
            secret = x25519_shared_secret(private_key, mask_public_keys[party])
            corrections.append((mask_seed(secret, binding, (gone, party)), pair_sign(gone, party)))
    result = np.empty(binding.size, np.float64) if out is None else out
    flat = result.reshape(-1)
    if flat.size != binding.size or flat.dtype != np.float64:
        raise ValueError(f"out must hold {binding.size} float64 values for {binding.tensor!r}")
    offset = 0
    for block in blocks:
        words = np.array(block, dtype=np.uint64, copy=True).reshape(-1)  # a block read from a file is read-only
        n = words.size
        if offset + n > binding.size:
            raise ValueError(f"ring sum has more than the {binding.size} words of {binding.tensor!r}")
        pad = np.empty(n, np.uint64)
        for seed in subtract:
            ring_sub(words, prg_mask(seed_at(seed, offset), n, out=pad), out=words)
        for seed, sign in corrections:
            prg_mask(seed_at(seed, offset), n, out=pad)
            (ring_add if sign > 0 else ring_sub)(words, pad, out=words)
        flat[offset:offset + n] = mask_decode(words, numerics.scale_bits, numerics.n_parties, bound=numerics.bound)
        offset += n
    if offset != binding.size:
        raise ValueError(f"ring sum must be {binding.size} uint64 words for {binding.tensor!r}, got {offset}")
    return result.reshape(binding.shape) if out is None else out
