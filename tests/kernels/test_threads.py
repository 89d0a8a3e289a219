"""Kernels inside a multithreaded server: a thread budget per call, no process-wide switch flipped,
and results that do not depend on the budget, on the load, or on other calls running at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from collabedit_secure import kernels
from collabedit_secure.kernels import _backends

pytestmark = pytest.mark.skipif("cpu" not in kernels.available_backends(), reason="compiled CPU kernels not built")


def problem(seed: int, d: int = 700, d_out: int = 150):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, 40))
    keys = rng.standard_normal((d, 12))
    return np.eye(d) + a @ a.T / 40, keys @ keys.T, rng.standard_normal((d_out, d))


def solve(seed: int, threads: int | None) -> np.ndarray:
    c0, s_kk, s_rk = problem(seed)
    with kernels.use_backend("cpu"):
        return kernels.regularized_solve(c0, 2.0, s_kk, s_rk, threads=threads)


def test_solve_is_bit_identical_whatever_the_budget():
    base = solve(1, 1)
    for threads in (2, 3, 8):
        assert np.array_equal(solve(1, threads), base), threads


def test_concurrent_calls_with_different_budgets_match_their_serial_results():
    serial = {seed: solve(seed, None) for seed in range(6)}
    default = _backends.cpu_module.get_num_threads()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda seed: solve(seed, 1 + seed % 3), range(6)))
    for seed, result in enumerate(results):
        assert np.array_equal(result, serial[seed]), seed
    assert _backends.cpu_module.get_num_threads() == default  # no call changed the process default


def test_covariance_and_masking_take_a_budget_and_agree():
    rng = np.random.default_rng(3)
    keys = rng.standard_normal((500, 96))
    with kernels.use_backend("cpu"):
        one = kernels.covariance_accumulate(np.zeros((96, 96)), keys, threads=1)
        two = kernels.covariance_accumulate(np.zeros((96, 96)), keys, threads=2)
        values, seed = rng.standard_normal(10_000), bytes(range(32))
        masked = [kernels.mask_encode(values, 40, seed, [], [], threads=t) for t in (1, 2)]
    assert np.array_equal(one, two) and np.array_equal(*masked)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_a_bad_budget_is_refused(bad):
    c0, s_kk, s_rk = problem(0, d=8, d_out=2)
    with kernels.use_backend("cpu"), pytest.raises(ValueError, match="threads must be a positive int"):
        kernels.regularized_solve(c0, 1.0, s_kk, s_rk, threads=bad)


def test_operands_converted_by_the_binding_stay_alive_during_the_call():
    """A list is converted to a temporary array inside the binding; it must outlive the computation."""
    c0, s_kk, s_rk = problem(5, d=300, d_out=20)
    x = np.array(s_rk, dtype=np.float64, order="C", copy=True)
    status = _backends.cpu_module.regularized_solve(c0.tolist(), 2.0, None, s_kk.tolist(), x, 2)
    assert status == 0
    with kernels.use_backend("cpu"):
        assert np.array_equal(x, kernels.regularized_solve(c0, 2.0, s_kk, s_rk))
