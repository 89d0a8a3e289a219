"""Masking: PRG bit-exact with AES-128-CTR, encode/decode exact, pairwise masks cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from collabedit_secure import kernels
from collabedit_secure.kernels import reference

from .conftest import require_cpu_extension

# NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt.
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
NIST_CIPHER = bytes.fromhex(
    "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"
)


def cryptography_words(seed: bytes, n: int) -> np.ndarray:
    stream = Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()
    return np.frombuffer(stream.update(bytes(8 * n)), dtype="<u8")


def test_nist_ctr_vector(backend):
    words = kernels.prg_mask(NIST_KEY + NIST_COUNTER, 8)
    keystream = words.astype("<u8").tobytes()
    assert bytes(p ^ k for p, k in zip(NIST_PLAIN, keystream)) == NIST_CIPHER


@pytest.mark.parametrize(
    "counter",
    [
        bytes(16),
        bytes.fromhex("000000000000000000000000fffffff0"),  # 32-bit counter carry
        bytes.fromhex("fffffffffffffffffffffffffffffff8"),  # 128-bit wrap
    ],
)
@pytest.mark.parametrize("n", [0, 1, 3, 2049, 300_001])
def test_prg_matches_cryptography(backend, counter, n):
    seed = bytes(range(100, 116)) + counter
    np.testing.assert_array_equal(kernels.prg_mask(seed, n), cryptography_words(seed, n))


def test_prg_into_out_buffer(backend):
    out = torch.zeros(1001, dtype=torch.uint64)
    seed = bytes(range(32))
    assert kernels.prg_mask(seed, 1001, out=out) is out
    np.testing.assert_array_equal(out.numpy(), cryptography_words(seed, 1001))


def test_encode_rounds_half_to_even_and_decodes(backend):
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.25, -7.0, 3.0]) / 4.0  # scale 2^2
    words = kernels.mask_encode(values, 2, None, [], [])
    assert words.dtype == np.uint64
    np.testing.assert_array_equal(words.view(np.int64), [0, 2, 2, 0, -2, 0, -7, 3])
    np.testing.assert_array_equal(kernels.mask_decode(words, 2, 1), [0.0, 0.5, 0.5, 0.0, -0.5, 0.0, -1.75, 0.75])


def test_masked_sum_of_parties_decodes_exactly(backend, rng):
    n_parties, scale_bits, shape = 4, 24, (3, 1001)
    bound = kernels.safe_bound(n_parties)
    values = [rng.standard_normal(shape) * 100 for _ in range(n_parties)]
    pair_seed = {(i, j): rng.bytes(32) for i in range(n_parties) for j in range(i + 1, n_parties)}
    self_seeds = [rng.bytes(32) for _ in range(n_parties)]
    total = np.zeros(np.prod(shape), np.uint64)
    for p in range(n_parties):
        peers = [q for q in range(n_parties) if q != p]
        seeds = [pair_seed[min(p, q), max(p, q)] for q in peers]
        signs = [1 if p < q else -1 for q in peers]
        upload = kernels.mask_encode(values[p], scale_bits, self_seeds[p], seeds, signs, bound=bound)
        assert upload.shape == shape
        total = kernels.ring_add(total, upload.reshape(-1))
    for seed in self_seeds:  # the coordinator removes the reconstructed self masks
        total = kernels.ring_sub(total, kernels.prg_mask(seed, total.size))
    encoded = [reference.fixed_point_encode(v, scale_bits).view(np.int64) for v in values]
    exact = np.sum(encoded, axis=0) / 2.0**scale_bits
    np.testing.assert_array_equal(kernels.mask_decode(total, scale_bits, n_parties, bound=bound), exact)
    np.testing.assert_allclose(exact.reshape(shape), np.sum(values, axis=0), atol=n_parties * 2.0**-scale_bits)


def test_mask_encode_is_its_definition(backend, rng):
    """x + PRG(self) + Σ sign_p PRG(peer_p) mod 2^64, built here from `cryptography` keystreams and
    numpy's wrapping uint64 arithmetic: a backend that dropped or mis-signed a stream fails, even
    where every backend agrees with the reference."""
    values = rng.standard_normal(1003) * 50
    self_seed, peers = rng.bytes(32), [rng.bytes(32) for _ in range(3)]
    signs = [1, -1, -1]
    want = np.rint(values * 2.0**20).astype(np.int64).view(np.uint64)
    want = want + cryptography_words(self_seed, values.size)
    for seed, sign in zip(peers, signs):
        stream = cryptography_words(seed, values.size)
        want = want + stream if sign > 0 else want - stream
    np.testing.assert_array_equal(kernels.mask_encode(values, 20, self_seed, peers, signs), want)


def test_masks_hide_every_upload_until_all_are_summed(backend, rng):
    """What the coordinator must not learn: one upload, a sum missing one party, or a sum whose
    self masks were not removed decodes to noise, not to the values; only the complete sum decodes."""
    n_parties, scale_bits, n = 3, 24, 4096
    bound = kernels.safe_bound(n_parties)
    values = [rng.standard_normal(n) for _ in range(n_parties)]
    pair = {(i, j): rng.bytes(32) for i in range(n_parties) for j in range(i + 1, n_parties)}
    self_seeds = [rng.bytes(32) for _ in range(n_parties)]
    uploads = []
    for p in range(n_parties):
        peers = [q for q in range(n_parties) if q != p]
        uploads.append(kernels.mask_encode(values[p], scale_bits, self_seeds[p],
                                           [pair[min(p, q), max(p, q)] for q in peers],
                                           [1 if p < q else -1 for q in peers], bound=bound))

    def decoded(parts, unmask):
        total = np.zeros(n, np.uint64)
        for part in parts:
            total = kernels.ring_add(total, part)
        for seed in unmask:
            total = kernels.ring_sub(total, kernels.prg_mask(seed, n))
        return total.view(np.int64) / 2.0**scale_bits  # decoding without mask_decode's bound check

    def looks_like(got, want):
        return np.abs(got - want).max() < 1e-3

    assert looks_like(decoded(uploads, self_seeds), np.sum(values, axis=0))
    assert not looks_like(decoded(uploads[:1], self_seeds[:1]), values[0])
    assert not looks_like(decoded(uploads[:2], self_seeds[:2]), values[0] + values[1])
    assert not looks_like(decoded(uploads, self_seeds[1:]), np.sum(values, axis=0))
    # Noise, not a small error: an unmasked word is uniform over the ring, about 2^63 / 2^24 in size.
    assert np.median(np.abs(decoded(uploads[:1], []))) > 2.0**30


def test_compiled_masking_equals_reference(rng):
    values = rng.standard_normal(200_003) * 1e3
    seeds = [rng.bytes(32) for _ in range(5)]
    signs = [1, -1, 1, -1, -1]
    with kernels.use_backend("reference"):
        want = kernels.mask_encode(values, 30, seeds[0], seeds[1:], signs[1:])
    require_cpu_extension()
    with kernels.use_backend("cpu"):
        np.testing.assert_array_equal(kernels.mask_encode(values, 30, seeds[0], seeds[1:], signs[1:]), want)


@pytest.mark.parametrize("n_peers", [0, 1, 3, 4, 7, 9])
@pytest.mark.parametrize("with_self", [True, False])
def test_any_number_of_streams_into_unaligned_out(n_peers, with_self, rng):
    """Any number of keystreams (none at all: plain encoding), any sign mix, and an output buffer
    that is not 32-byte aligned (the streaming-store path's scalar head) give the reference words."""
    values = rng.standard_normal(4099) * 10
    self_seed = rng.bytes(32) if with_self else None
    peers = [rng.bytes(32) for _ in range(n_peers)]
    signs = [int(s) for s in rng.choice([-1, 1], size=n_peers)]
    with kernels.use_backend("reference"):
        want = kernels.mask_encode(values, 20, self_seed, peers, signs)
    buffer = np.zeros(values.size + 1, np.uint64)
    with kernels.use_backend("cpu"):
        got = kernels.mask_encode(values, 20, self_seed, peers, signs, out=buffer[1:])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(buffer[1:], want)


def test_encode_torch_and_float32_and_out(backend, rng):
    values = torch.from_numpy(rng.standard_normal((4, 5))).float()[:, ::2]  # non-contiguous
    out = torch.empty(12, dtype=torch.uint64)
    seed = rng.bytes(32)
    assert kernels.mask_encode(values, 10, seed, [], [], out=out) is out
    want = reference.mask_encode(values.double().numpy(), 10, seed, [], []).reshape(-1)
    np.testing.assert_array_equal(out.numpy(), want)
    assert isinstance(kernels.mask_encode(values, 10, None, [], []), torch.Tensor)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0**40])
def test_refuses_unencodable_values_with_index(backend, bad):
    values = np.zeros((3, 70_000))
    values[2, 65_537] = bad
    values[2, 65_538] = np.nan
    with pytest.raises(ValueError, match=r"index \(2, 65537\) \(flat 205537\).*bound = 1099511627776"):
        kernels.mask_encode(values, 4, None, [], [], bound=2**40)


def test_a_refused_encode_leaves_the_callers_buffer_as_it_was(backend):
    out = np.full(4, 7, np.uint64)
    with pytest.raises(ValueError, match=r"^value nan at index \(3,\)"):
        kernels.mask_encode(np.array([1.0, 2.0, 3.0, np.nan]), 0, bytes(32), [], [], out=out)
    assert out.tolist() == [7, 7, 7, 7]


def test_decode_checks_the_bound_for_numpy_party_counts():
    """int(bound) * np.int64(n) wraps to 0 in numpy: the check must not."""
    with pytest.raises(ValueError, match="may have wrapped"):
        kernels.mask_decode(np.zeros(3, np.uint64), 16, np.int64(4), bound=2**62)


@pytest.mark.parametrize("call, message", [
    (lambda: kernels.pack_upper(torch.arange(15.0).reshape(3, 5)), r"square \(d, d\) matrix, got shape \(3, 5\)"),
    (lambda: kernels.pack_upper(torch.zeros(3, 3, 2)), r"got shape \(3, 3, 2\)"),
    (lambda: kernels.pack_upper(torch.zeros(3)), r"got shape \(3,\)"),
    (lambda: kernels.unpack_upper(torch.zeros(1, 6)), r"1-D packed triangle, got shape \(1, 6\)"),
    (lambda: kernels.unpack_upper(torch.zeros(6), 4), "a packed 4 x 4 triangle has 10 entries, got 6"),
    (lambda: kernels.unpack_upper(torch.zeros(5)), "packed length 5 is not"),
    (lambda: kernels.packed_size(-1), "dimension must be >= 0"),
])
def test_packing_refuses_what_is_not_a_square_matrix_or_a_triangle(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_packing_takes_numpy_and_returns_numpy():
    matrix = np.arange(9.0).reshape(3, 3)
    packed = kernels.pack_upper(matrix)
    assert isinstance(packed, np.ndarray) and packed.tolist() == [0, 1, 2, 4, 5, 8]
    unpacked = kernels.unpack_upper(packed)
    assert isinstance(unpacked, np.ndarray)
    np.testing.assert_array_equal(unpacked, np.triu(matrix) + np.triu(matrix, 1).T)


def test_bound_is_inclusive(backend):
    assert kernels.mask_encode(np.array([-16.0, 16.0]), 2, None, [], [], bound=64).view(np.int64).tolist() == [-64, 64]
    with pytest.raises(ValueError, match="bound = 63"):
        kernels.mask_encode(np.array([16.0]), 2, None, [], [], bound=63)


def test_decode_refuses_wrapping_bound():
    with pytest.raises(ValueError, match="may have wrapped"):
        kernels.mask_decode(np.zeros(2, np.uint64), 8, 3, bound=kernels.DEFAULT_BOUND)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: kernels.prg_mask(b"short", 4), ValueError, "exactly 32 bytes"),
        (lambda: kernels.prg_mask("x" * 32, 4), TypeError, "seed must be 32 bytes"),
        (lambda: kernels.prg_mask(bytes(32), -1), ValueError, "n must be >= 0"),
        (lambda: kernels.prg_mask(bytes(32), 4, out=np.zeros(3, np.uint64)), ValueError, "out has 3 elements"),
        (lambda: kernels.mask_encode(np.zeros(2, np.int64), 4, None, [], []), TypeError, "values has dtype int64"),
        (lambda: kernels.mask_encode(np.zeros(2), 63, None, [], []), ValueError, "scale_bits must be in"),
        (lambda: kernels.mask_encode(np.zeros(2), 4, None, [bytes(32)], []), ValueError, "1 peer seeds but 0"),
        (lambda: kernels.mask_encode(np.zeros(2), 4, None, [bytes(32)], [2]), ValueError, r"peer_signs\[0\]"),
        (lambda: kernels.mask_encode(np.zeros(2), 4, None, [], [], out=np.zeros(2, np.int64)), TypeError, "out has dtype"),
        (lambda: kernels.ring_add(np.zeros(2, np.uint64), np.zeros(3, np.uint64)), ValueError, "a has shape"),
        (lambda: kernels.ring_sub(np.zeros(2, np.int64), np.zeros(2, np.uint64)), TypeError, "a has dtype int64"),
        (lambda: kernels.mask_decode(np.zeros(2, np.uint64), 4, 0), ValueError, r"n_parties must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments(backend, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_ring_wraps(backend):
    top = np.array([2**64 - 1, 5], np.uint64)
    np.testing.assert_array_equal(kernels.ring_add(top, np.array([2, 1], np.uint64)), [1, 6])
    np.testing.assert_array_equal(kernels.ring_sub(np.array([0, 5], np.uint64), np.array([1, 7], np.uint64)), [2**64 - 1, 2**64 - 2])


def test_encode_fast_and_exact_paths_agree_with_reference(backend, rng):
    """The compiled encode rounds with a vectorised 1.5·2^52 trick for |v·2^s| < 2^51 and falls back
    to an exact path per chunk otherwise: ties, -0.0, values on both sides of 2^51 and an output
    that is not 32-byte aligned must all give the reference words, and nothing outside `out`."""
    scale_bits = 8
    n = 5000
    values = rng.standard_normal(n) * 1e3
    values[:64] = (np.arange(64) - 32 + 0.5) / 2**scale_bits  # exact ties, both signs
    values[64] = -0.0
    values[100:110] = np.array([1, -1, 2, -2, 3, -3, 1.5, -1.5, 0.75, -0.75]) * 2.0**51 / 2**scale_bits
    values[3000:3004] = np.nextafter(2.0**51, 0) / 2**scale_bits  # just below the fast-path limit
    values[4001] = 2.0**53 / 2**scale_bits
    seeds = [rng.bytes(32) for _ in range(3)]
    want = reference.mask_encode(values, scale_bits, seeds[0], seeds[1:], [1, -1])
    backing = np.zeros(n + 2, np.uint64)
    out = backing[1 : n + 1]  # 8-byte but not 32-byte aligned when backing is
    kernels.mask_encode(values, scale_bits, seeds[0], seeds[1:], [1, -1], out=out)
    np.testing.assert_array_equal(out, want)
    assert backing[0] == 0 and backing[-1] == 0


@pytest.mark.parametrize(
    "sign, error, message",
    [
        (1.7, TypeError, r"peer_signs\[1\] must be the int \+1 or -1, not float 1\.7"),
        (np.float64(-1.2), TypeError, r"peer_signs\[1\] must be the int \+1 or -1, not float64"),
        (-1.0, TypeError, r"peer_signs\[1\] must be the int \+1 or -1, not float -1\.0"),
        (True, TypeError, r"peer_signs\[1\] must be the int \+1 or -1, not bool True"),
        (np.bool_(True), TypeError, r"peer_signs\[1\] must be the int \+1 or -1, not bool"),
        ("1", TypeError, r"peer_signs\[1\] must be the int \+1 or -1, not str '1'"),
    ],
)
def test_peer_signs_must_be_integers_plus_or_minus_one(backend, sign, error, message):
    # int() would have truncated 1.7 to +1 and -1.2 to -1: a silently wrong mask that never cancels.
    seeds = [bytes(32), bytes(range(32))]
    with pytest.raises(error, match=message):
        kernels.mask_encode(np.ones(4), 8, None, seeds, [1, sign])
    numpy_ints = kernels.mask_encode(np.ones(4), 8, None, seeds, [np.int64(1), np.int8(-1)])
    np.testing.assert_array_equal(numpy_ints, kernels.mask_encode(np.ones(4), 8, None, seeds, [1, -1]))
