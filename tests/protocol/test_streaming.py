"""Masking a block at a time (protocol/streaming.py) gives masking.py's words, and unmasking a ring
sum a block at a time gives unmask_sum's values: the wire format did not change."""

from __future__ import annotations

import numpy as np
import pytest

from collabedit_secure.kernels import prg_mask
from collabedit_secure.protocol.encoding import Binding
from collabedit_secure.protocol.fixedpoint import RoundNumerics
from collabedit_secure.protocol.keys import RoundKeys, private_bytes
from collabedit_secure.protocol.masking import masked_upload, sum_uploads, unmask_sum
from collabedit_secure.protocol.seeds import SEED_BYTES
from collabedit_secure.protocol.streaming import MaskedEncoder, seed_at, unmask_blocks

PARTIES = ("a", "b", "c")


def test_seed_at_continues_the_stream_across_a_128_bit_counter_wrap():
    seed = bytes(range(16)) + bytes.fromhex("ff" * 15 + "fe")  # the counter wraps two blocks in
    whole = prg_mask(seed, 40)
    for offset in (0, 2, 4, 6, 38):
        assert np.array_equal(prg_mask(seed_at(seed, offset), 40 - offset), whole[offset:])
    with pytest.raises(ValueError, match="even offset"):
        seed_at(seed, 3)
    with pytest.raises(ValueError, match=f"seed must be {SEED_BYTES} bytes"):
        seed_at(seed[:-1], 0)


@pytest.mark.parametrize("block", [2, 6, 64, 1000])
def test_blocks_mask_and_unmask_exactly_as_whole_tensors(block):
    rng = np.random.default_rng(block)
    shape = (7, 53)  # 371 words: an odd total, so the last block has an odd length
    numerics = RoundNumerics(len(PARTIES), 30, (2**63 - 1) // 3)
    binding = Binding("fed", 4, 2, "TENSOR_S_RK", shape)
    keys = {p: RoundKeys.generate() for p in PARTIES}
    public = {p: keys[p].mask_public_key for p in PARTIES}
    values = {p: rng.uniform(-5, 5, shape) for p in PARTIES}
    uploads = {}
    for me in PARTIES:
        peers = {p: public[p] for p in PARTIES if p != me}
        whole = masked_upload(values[me], numerics, binding, me, keys[me], peers)
        encoder = MaskedEncoder(numerics, binding, me, keys[me], peers)
        flat = values[me].reshape(-1)
        streamed = np.concatenate([encoder.encode(flat[o:o + block], o) for o in range(0, flat.size, block)])
        assert np.array_equal(streamed, whole.reshape(-1)), me
        uploads[me] = whole
    # "c" dropped after the keys were shared: its pairwise masks are corrected with its private key.
    survivors = {p: keys[p].self_secret for p in ("a", "b")}
    dropped = {"c": private_bytes(keys["c"].mask_private_key)}
    ring = sum_uploads([uploads["a"], uploads["b"]]).reshape(-1)
    expected = unmask_sum(ring.reshape(shape), survivors, dropped, public, binding, numerics)
    got = unmask_blocks((ring[o:o + block] for o in range(0, ring.size, block)), survivors, dropped, public,
                        binding, numerics)
    assert np.array_equal(got, expected)
    np.testing.assert_allclose(got, values["a"] + values["b"], atol=1e-8)


def test_a_ring_sum_of_the_wrong_length_is_refused():
    numerics = RoundNumerics(2, 30, (2**63 - 1) // 2)
    binding = Binding("fed", 1, 0, "TENSOR_S_RK", (2, 3))
    keys = {p: RoundKeys.generate() for p in ("a", "b")}
    public = {p: k.mask_public_key for p, k in keys.items()}
    secrets = {p: k.self_secret for p, k in keys.items()}
    with pytest.raises(ValueError, match="must be 6 uint64 words"):
        unmask_blocks([np.zeros(4, np.uint64)], secrets, {}, public, binding, numerics)
    with pytest.raises(ValueError, match="more than the 6 words"):
        unmask_blocks([np.zeros(4, np.uint64), np.zeros(4, np.uint64)], secrets, {}, public, binding, numerics)
