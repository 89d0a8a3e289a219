"""covariance_accumulate: every backend equals float64 KᵀK over the kept rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collabedit_secure import kernels


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
    keys = rng.standard_normal((5000, 1500)).astype(np.float32)
    acc = np.zeros((1500, 1500))
    with kernels.use_backend(kernels.available_backends()[-1]):
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
