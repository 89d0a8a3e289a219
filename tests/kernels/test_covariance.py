"""covariance_accumulate: every backend equals float64 KᵀK over the kept rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collabedit_secure import kernels

from .conftest import require_cpu_extension


def expected(keys64: np.ndarray, mask=None) -> np.ndarray:
    kept = keys64 if mask is None else keys64[np.asarray(mask, bool)]
    return kept.T @ kept


@pytest.mark.parametrize("d", [1, 7, 1025])
@pytest.mark.parametrize("packed", [False, True])
def test_matches_float64_product(backend, rng, d, packed):
    keys = rng.standard_normal((37, d)).astype(np.float32)
    start = rng.standard_normal((d, d))
    start = start + start.T
    acc = kernels.pack_upper(torch.from_numpy(start)).numpy().copy() if packed else start.copy()
    kernels.covariance_accumulate(acc, keys)
    want = start + expected(keys.astype(np.float64))
    got = kernels.unpack_upper(torch.from_numpy(acc), d).numpy() if packed else acc
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-11 * d)


def test_mask_skips_padding_rows_and_bfloat16(backend, rng):
    keys = torch.from_numpy(rng.standard_normal((50, 33))).to(torch.bfloat16)
    mask = torch.from_numpy(rng.random(50) < 0.6)
    acc = torch.zeros(33, 33, dtype=torch.float64)
    kernels.covariance_accumulate(acc, keys, mask)
    want = expected(keys.to(torch.float64).numpy(), mask.numpy())
    np.testing.assert_allclose(acc.numpy(), want, rtol=1e-13, atol=1e-12)


def test_integer_attention_mask(backend, rng):
    keys = rng.standard_normal((9, 5))
    mask = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0], dtype=np.int64)
    acc = np.zeros((5, 5))
    kernels.covariance_accumulate(acc, keys, mask)
    np.testing.assert_allclose(acc, expected(keys, mask), rtol=1e-14, atol=1e-13)


def test_non_contiguous_keys_and_acc(backend, rng):
    base = rng.standard_normal((40, 64)).astype(np.float32)
    keys = base[::2, ::3]  # strided in both dimensions
    acc_base = np.zeros((keys.shape[1] * 2, keys.shape[1] * 2))
    acc = acc_base[::2, ::2]
    out = kernels.covariance_accumulate(acc, keys)
    assert out is acc
    np.testing.assert_allclose(acc, expected(keys.astype(np.float64)), rtol=1e-13, atol=1e-12)
    assert np.all(acc_base[1::2] == 0)


def test_transposed_torch_keys(backend, rng):
    keys = torch.from_numpy(rng.standard_normal((24, 11))).T  # (11, 24) column-major view
    acc = torch.zeros(24, 24, dtype=torch.float64)
    kernels.covariance_accumulate(acc, keys)
    np.testing.assert_allclose(acc.numpy(), expected(keys.numpy()), rtol=1e-13, atol=1e-12)


def test_empty_batch_and_all_masked(backend, rng):
    acc = np.eye(6)
    kernels.covariance_accumulate(acc, np.zeros((0, 6), np.float32))
    kernels.covariance_accumulate(acc, rng.standard_normal((4, 6)), np.zeros(4, bool))
    np.testing.assert_array_equal(acc, np.eye(6))


def test_large_batch_spans_several_chunks(rng):
    """More rows than one widening chunk, so chunk boundaries are exercised (C++ path)."""
    require_cpu_extension()
    keys = rng.standard_normal((5000, 1500)).astype(np.float32)
    acc = np.zeros((1500, 1500))
    with kernels.use_backend("cpu"):
        kernels.covariance_accumulate(acc, keys)
    k64 = keys.astype(np.float64)
    np.testing.assert_allclose(acc, k64.T @ k64, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(
    "acc, keys, mask, error, message",
    [
        (np.zeros((3, 3), np.float32), np.zeros((2, 3)), None, TypeError, "acc has dtype float32"),
        (np.zeros((3, 3)), np.zeros((2, 3), np.int32), None, TypeError, "keys has dtype int32"),
        (np.zeros((3, 3)), np.zeros(3), None, ValueError, "keys must be 2-D"),
        (np.zeros((4, 4)), np.zeros((2, 3)), None, ValueError, "expected (3, 3) or packed (6,)"),
        (np.zeros(5), np.zeros((2, 3)), None, ValueError, "packed (6,)"),
        (np.zeros((3, 3)), np.zeros((2, 3)), np.ones(3, bool), ValueError, "mask has shape (3,)"),
        (np.zeros((3, 3)), np.zeros((2, 3)), np.ones(2, np.float32), TypeError, "mask has dtype"),
        ([[0.0]], np.zeros((2, 1)), None, TypeError, "acc must be a torch.Tensor or numpy.ndarray"),
    ],
)
def test_bad_arguments(backend, acc, keys, mask, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        kernels.covariance_accumulate(acc, keys, mask)


def test_read_only_acc_is_refused_untouched(backend):
    acc = np.zeros((3, 3))
    acc.flags.writeable = False
    with pytest.raises(ValueError, match="acc is read-only"):
        kernels.covariance_accumulate(acc, np.ones((2, 3)))
    assert not acc.any()


def test_an_asymmetric_acc_is_read_by_its_upper_triangle(backend, rng):
    """The documented contract, the same on every backend: the lower triangle is rewritten from the upper."""
    acc = rng.standard_normal((4, 4))
    keys = rng.standard_normal((5, 4))
    upper = np.triu(acc) + np.triu(acc, 1).T
    kernels.covariance_accumulate(acc, keys)
    np.testing.assert_allclose(acc, upper + keys.T @ keys, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------- mixed precision
#
# precision="mixed" multiplies float32 keys in float32 over blocks of at most B = 1024 rows and adds
# each block into the float64 acc. Rounding analysis (Higham, dot products with unit roundoff
# u = 2^-24): each block entry is off by at most γ_B·Σ_r |k_ri k_rj| (B products and additions,
# γ_m = m·u / (1 - m·u)), plus one float32 rounding of the block result (≤ u·that sum) — together
# γ_(B+1)·Σ_r |k_ri k_rj| over the block's rows. Summed over blocks this is γ_(B+1)·(|K|ᵀ|K|)_ij;
# the float64 additions contribute ~2^-53 per block and are covered by the small atol. A block
# longer than B rows, a dropped or doubled block, or a wrong row/column breaks this bound.


def mixed_bound(keys64: np.ndarray) -> np.ndarray:
    u = 2.0**-24
    m = kernels.api.MIXED_BLOCK_ROWS + 1
    gamma = m * u / (1 - m * u)
    return gamma * (np.abs(keys64).T @ np.abs(keys64))


def test_mixed_precision_error_bound_over_several_blocks(rng):
    # 2500 kept rows: two full 1024-row blocks and a partial one, masked so rows are compacted.
    # Keys with a common offset make the sums large and their float32 rounding visible.
    n, d = 3000, 300
    keys = (1.0 + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    mask = np.ones(n, bool)
    mask[rng.choice(n, 500, replace=False)] = False
    start = rng.standard_normal((d, d))
    start = start + start.T
    acc = start.copy()
    kernels.covariance_accumulate(acc, keys, mask, precision="mixed")
    kept = keys[mask].astype(np.float64)
    exact = kept.T @ kept
    err = np.abs(acc - (start + exact))
    assert np.all(err <= mixed_bound(kept) + 1e-12 * np.abs(start + exact))
    # Typical error is ~√B·u relative, far inside the worst-case bound; float32 over all 2500
    # rows in one run would still pass the bound, so also check the result is symmetric and close.
    np.testing.assert_array_equal(acc, acc.T)
    assert np.linalg.norm(acc - start - exact) / np.linalg.norm(exact) < 2e-6


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "bfloat16"])
def test_mixed_precision_layouts(backend, rng, packed, layout):
    n, d = 1100, 257
    base = rng.standard_normal((n, 2 * d)).astype(np.float32)
    if layout == "contiguous":
        keys = base[:, :d].copy()
    elif layout == "strided":
        keys = base[:, ::2]
    else:
        keys = torch.from_numpy(base[:, :d].copy()).to(torch.bfloat16)
    keys64 = keys.to(torch.float64).numpy() if isinstance(keys, torch.Tensor) else keys.astype(np.float64)
    acc = np.zeros(d * (d + 1) // 2) if packed else np.zeros((d, d))
    kernels.covariance_accumulate(acc, keys, precision="mixed")
    got = kernels.unpack_upper(torch.from_numpy(acc), d).numpy() if packed else acc
    exact = keys64.T @ keys64
    assert np.all(np.abs(got - exact) <= mixed_bound(keys64))
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 2e-6


def test_mixed_precision_float64_keys_stay_exact(backend, rng):
    keys = rng.standard_normal((70, 40))
    acc = np.zeros((40, 40))
    kernels.covariance_accumulate(acc, keys, precision="mixed")
    np.testing.assert_allclose(acc, keys.T @ keys, rtol=1e-13, atol=1e-12)


def test_unknown_precision_is_refused(backend):
    with pytest.raises(ValueError, match="precision must be one of 'float64', 'mixed', got 'half'"):
        kernels.covariance_accumulate(np.zeros((2, 2)), np.zeros((3, 2)), precision="half")


def test_negative_strides(backend, rng):
    """keys[::-1] and friends: any strides, as documented, on every backend; acc is updated in place."""
    keys = rng.standard_normal((30, 8)).astype(np.float32)[::-1, ::-2]
    mask = (rng.random(30) < 0.7)[::-1]
    acc_base = np.eye(4)
    acc = acc_base[::-1, ::-1]
    assert kernels.covariance_accumulate(acc, keys, mask) is acc
    np.testing.assert_allclose(acc_base[::-1, ::-1], np.eye(4) + expected(keys.astype(np.float64), mask), rtol=1e-13, atol=1e-12)


# Exact-answer checks of the blocking itself. The error-bound tests above cannot tell blocked from
# unblocked accumulation: a single float32 SYRK over all rows is also within the bound. Here the keys
# are small integers whose float64 answer is an integer that float32 cannot represent, while every
# partial sum inside a block of at most B = MIXED_BLOCK_ROWS rows is an integer float32 holds exactly.
# Float32 arithmetic within blocks of <= B rows plus float64 across blocks therefore gives the exact
# answer; any result that went through one float32 accumulation of more than B rows (a larger block,
# e.g. 4096, or no blocking) ends as a float32 value and so cannot equal it.


def mixed_keys(layout: str, rows64: np.ndarray, rng) -> tuple[object, object]:
    """(keys, mask) presenting exactly `rows64` (in order) as the kept float32-exact keys."""
    n, d = rows64.shape
    if layout == "contiguous":  # the C++ in-place path: dense float32 rows read block by block
        return rows64.astype(np.float32), None
    if layout == "bfloat16":  # small integers and powers of two are exact in bfloat16
        keys = torch.from_numpy(rows64).to(torch.bfloat16)
        assert torch.equal(keys.to(torch.float64), torch.from_numpy(rows64))
        return keys, None
    # "masked": dropped rows interleaved (large, so counting one would show), kept rows compacted
    # into blocks; also a strided (non-contiguous) view.
    drop = np.zeros(2 * n, bool)
    drop[:n] = True
    rng.shuffle(drop)
    full = np.full((2 * n, 2 * d), 2.0**20)
    full[~drop, ::2] = rows64
    return full.astype(np.float32)[:, ::2], ~drop


def exact_gram(rows64: np.ndarray) -> np.ndarray:
    """KᵀK with Python integers (the keys here are integers), so no rounding at all."""
    ints = [[int(v) for v in row] for row in rows64]
    d = rows64.shape[1]
    return np.array([[float(sum(r[i] * r[j] for r in ints)) for j in range(d)] for i in range(d)])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "masked", "bfloat16"])
@pytest.mark.parametrize("big_first", [True, False])
def test_mixed_precision_sums_1024_row_blocks_in_float64(backend, rng, layout, packed, big_first):
    # B rows of 2^12 (products 2^24, block sum 2^34, exact) and B rows of 1 (block sum B, exact), in
    # either order: float64 across the two blocks gives exactly 2^34 + B = 2^34 + 2^10, which needs 25
    # significant bits, so no float32 sum over both (any order, any tree) can produce it. A second
    # column of ones makes d = 2, with exact off-diagonal 2^22 + 2^10 and diagonal 2B.
    block = kernels.api.MIXED_BLOCK_ROWS
    assert block == 1024  # the documented block size; the values below are chosen for it
    column = np.concatenate([np.full(block, 2.0**12), np.ones(block)])
    if not big_first:
        column = column[::-1].copy()
    rows64 = np.stack([column, np.ones(2 * block)], axis=1)
    want = np.array([[2.0**34 + block, 2.0**22 + block], [2.0**22 + block, 2.0 * block]])
    np.testing.assert_array_equal(want, exact_gram(rows64))
    # The construction discriminates: one float32 accumulation over all rows loses the ones.
    single = torch.from_numpy(rows64.astype(np.float32))
    assert float((single.T @ single)[0, 0]) != want[0, 0]

    keys, mask = mixed_keys(layout, rows64, rng)
    acc = np.zeros(3) if packed else np.zeros((2, 2))
    kernels.covariance_accumulate(acc, keys, mask, precision="mixed")
    got = kernels.unpack_upper(torch.from_numpy(acc), 2).numpy() if packed else acc
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layout", ["contiguous", "masked", "bfloat16"])
@pytest.mark.parametrize("n", [2 * 1024 - 1, 3 * 1024 - 1])
def test_mixed_precision_exact_for_any_block_alignment(backend, rng, layout, n):
    # Every row is (127, 125): products 16129, 15875, 15625 are all <= 2^14, so any run of at most
    # 1024 rows sums to an integer <= 2^24, exact in float32 whatever the block boundaries or the
    # summation order inside a block. The n-row totals are odd integers above 2^24, which float32
    # cannot hold: exact only if no float32 sum ever spans more than 1024 rows.
    rows64 = np.tile(np.array([[127.0, 125.0]]), (n, 1))
    want = exact_gram(rows64)
    assert np.all(want % 2 == 1) and np.all(want > 2.0**24)
    single = torch.from_numpy(rows64.astype(np.float32))
    assert not np.any((single.T @ single).double().numpy() == want)

    keys, mask = mixed_keys(layout, rows64, rng)
    start = np.array([[0.5, -0.25], [-0.25, 0.75]])  # exact when added to these integers
    acc = start.copy()
    kernels.covariance_accumulate(acc, keys, mask, precision="mixed")
    np.testing.assert_array_equal(acc, start + want)
