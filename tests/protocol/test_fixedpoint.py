from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from collabedit_secure.kernels import mask_decode, mask_encode, safe_bound
from collabedit_secure.protocol.fixedpoint import (
    DEFAULT_SCALE_BITS,
    FixedPointOverflowError,
    RoundNumerics,
    max_abs_for,
    scale_bits_for,
    sum_error_bound,
)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 1000])
def test_bound_is_largest_that_cannot_wrap(n):
    numerics = RoundNumerics.for_parties(n)
    assert numerics.bound == safe_bound(n)
    assert n * numerics.bound < 2**63 <= n * (numerics.bound + 1)


def test_default_scale_covers_1e6_for_eight_parties():
    # The documented choice: f = 40 leaves 2^23/n headroom, >= 1e6 up to 8 parties.
    assert DEFAULT_SCALE_BITS == 40
    assert max_abs_for(8) >= 1e6 > max_abs_for(9)
    assert scale_bits_for(8, 1e6) == 40
    assert scale_bits_for(16, 1e6) == 39
    assert sum_error_bound(8) == 8 * 2.0**-41


@pytest.mark.parametrize("n, f", [(1, 40), (3, 40), (5, 20), (8, 0), (2, 62)])
def test_max_abs_is_exactly_the_edge(n, f):
    numerics = RoundNumerics.for_parties(n, f)
    edge = numerics.max_abs
    assert edge == max_abs_for(n, f)
    numerics.check_encodable("edge", np.array([edge, -edge]))
    # the kernels agree: they accept the edge with the same bound
    mask_encode(np.array([edge, -edge]), f, None, [], [], bound=numerics.bound)
    beyond = math.nextafter(edge, math.inf)
    with pytest.raises(FixedPointOverflowError):
        numerics.check_encodable("beyond", np.array([beyond]))
    with pytest.raises(ValueError):
        mask_encode(np.array([beyond]), f, None, [], [], bound=numerics.bound)


def test_overflow_error_names_tensor_index_value_and_bound():
    numerics = RoundNumerics.for_parties(4)
    values = np.zeros((3, 5))
    values[2, 1] = 1e7
    with pytest.raises(FixedPointOverflowError) as caught:
        numerics.check_encodable("layer7/S_KK", values)
    error = caught.value
    assert (error.tensor, error.index, error.value, error.bound) == ("layer7/S_KK", (2, 1), 1e7, numerics.bound)
    message = str(error)
    assert "'layer7/S_KK'" in message and "(2, 1)" in message and "10000000.0" in message
    assert str(numerics.bound) in message and "nothing was sent" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(bad):
    values = np.ones(10)
    values[6] = bad
    with pytest.raises(FixedPointOverflowError, match="not finite") as caught:
        RoundNumerics.for_parties(2).check_encodable("S_RK", values)
    assert caught.value.index == (6,)


def test_first_bad_index_in_later_chunk(monkeypatch):
    import collabedit_secure.protocol.fixedpoint as fp

    monkeypatch.setattr(fp, "_CHECK_CHUNK", 4)
    values = np.zeros(10, np.float32)
    values[9], values[7] = np.inf, np.nan
    with pytest.raises(FixedPointOverflowError) as caught:
        RoundNumerics.for_parties(2).check_encodable("t", values)
    assert caught.value.index == (7,)


def test_rejects_integer_arrays():
    with pytest.raises(TypeError):
        RoundNumerics.for_parties(2).check_encodable("t", np.arange(3))


@pytest.mark.parametrize(
    "kwargs",
    [dict(n_parties=0), dict(n_parties=True), dict(n_parties=2, scale_bits=63),
     dict(n_parties=2, scale_bits=-1), dict(n_parties=3, bound=safe_bound(3) + 1), dict(n_parties=2, bound=0)],
)
def test_numerics_validation(kwargs):
    with pytest.raises(ValueError):
        RoundNumerics(**kwargs)


def test_smaller_explicit_bound_allowed():
    numerics = RoundNumerics(3, 20, bound=2**40)
    assert numerics.max_abs == 2.0**20
    with pytest.raises(FixedPointOverflowError):
        numerics.check_encodable("t", np.array([2.0**20 + 1]))


def test_scale_bits_for_rejects_impossible():
    with pytest.raises(ValueError):
        scale_bits_for(2, 1e300)


@pytest.mark.parametrize("f", [8, 40])
def test_error_budget_holds_and_is_tight(f):
    """Decoded n-party sums stay within n*2^-(f+1) + 2^-53|sum| of the exact (rational) sum,
    and at coarse scale the rounding error really gets close to that budget."""
    n = 5
    numerics = RoundNumerics.for_parties(n, f)
    rng = np.random.default_rng(f)
    parts = [rng.uniform(-1000, 1000, 400) for _ in range(n)]
    total = np.zeros(400, np.uint64)
    for part in parts:
        total += mask_encode(part, f, None, [], [], bound=numerics.bound)
    decoded = mask_decode(total, f, n, bound=numerics.bound)
    worst = 0.0
    for i in range(400):
        exact = sum(Fraction(float(p[i])) for p in parts)
        error = abs(Fraction(float(decoded[i])) - exact)
        assert error <= Fraction(numerics.sum_error_bound(float(abs(exact))))
        worst = max(worst, float(error))
    if f == 8:
        assert worst > 0.5 * n * 2.0 ** -(f + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no usable GPU (torch.cuda.is_available())")
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_a_gpu_tensor_is_checked_on_the_gpu_with_the_same_refusal(bad):
    numerics = RoundNumerics.for_parties(3)
    values = np.zeros((4, 5))
    values[2, 3] = bad
    with pytest.raises(FixedPointOverflowError) as on_host:
        numerics.check_encodable("t", values)
    with pytest.raises(FixedPointOverflowError) as on_gpu:
        numerics.check_encodable("t", torch.from_numpy(values).cuda())
    assert str(on_gpu.value) == str(on_host.value) and on_gpu.value.index == (2, 3)
    numerics.check_encodable("t", torch.zeros(4, 5, dtype=torch.float64, device="cuda"))  # nothing to refuse
