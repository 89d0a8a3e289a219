"""regularized_solve: Cholesky solve of ΔW (λC0 + C_acc + S_KK) = S_RK, checked by residual."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collabedit_secure import kernels
from collabedit_secure.kernels import _backends, reference

from .conftest import require_cpu_extension


def spd(rng, d, jitter=1.0):
    a = rng.standard_normal((d, d + 3))
    return a @ a.T / d + jitter * np.eye(d)


def relative_residual(system, delta, rhs):
    # ΔW A = S_RK, i.e. A ΔWᵀ = S_RKᵀ (A symmetric).
    return np.linalg.norm(system @ delta.T - rhs.T) / (np.linalg.norm(system) * np.linalg.norm(delta))


@pytest.mark.parametrize("d, d_out", [(1, 1), (7, 3), (96, 40), (400, 130)])
@pytest.mark.parametrize("packed", [False, True])
def test_residual_and_agreement(backend, rng, d, d_out, packed):
    c0, c_acc, s_full = spd(rng, d), spd(rng, d, 0.0), spd(rng, d, 0.0)
    s_rk = rng.standard_normal((d_out, d))
    s_kk = kernels.pack_upper(torch.from_numpy(s_full)).numpy() if packed else s_full
    delta = kernels.regularized_solve(c0, 0.7, s_kk, s_rk, c_acc=c_acc, layer="h.3.mlp")
    system = 0.7 * c0 + c_acc + s_full
    assert delta.dtype == np.float64 and delta.shape == (d_out, d)
    assert relative_residual(system, delta, s_rk) <= 1e-12
    np.testing.assert_allclose(delta, np.linalg.solve(system, s_rk.T).T, rtol=1e-8, atol=1e-10)


def test_float32_inputs_torch_result(backend, rng):
    d = 33
    c0 = torch.from_numpy(spd(rng, d)).float()
    s_kk = kernels.pack_upper(torch.from_numpy(spd(rng, d, 0.0))).float()
    s_rk = torch.from_numpy(rng.standard_normal((5, d))).float()
    delta = kernels.regularized_solve(c0, 2.0, s_kk, s_rk)
    assert isinstance(delta, torch.Tensor) and delta.dtype == torch.float64
    system = 2.0 * c0.double() + kernels.unpack_upper(s_kk.double(), d)
    assert relative_residual(system.numpy(), delta.numpy(), s_rk.double().numpy()) <= 1e-12


def test_non_contiguous_operands(backend, rng):
    d = 20
    c0 = np.asfortranarray(spd(rng, d))
    s_kk = spd(rng, d, 0.0)[:, :]
    s_rk = rng.standard_normal((d, 12)).T  # (12, d), transposed view
    delta = kernels.regularized_solve(c0, 1.0, s_kk, s_rk)
    assert relative_residual(c0 + s_kk, delta, s_rk) <= 1e-12


def test_empty_right_hand_sides(backend, rng):
    d = 9
    delta = kernels.regularized_solve(spd(rng, d), 1.0, np.zeros((d, d)), np.zeros((0, d)))
    assert delta.shape == (0, d)


def test_not_positive_definite_names_layer(backend, rng):
    d = 12
    c0 = spd(rng, d)
    s_kk = -3.0 * np.eye(d) - c0  # λ·C0 + S_KK is negative definite
    with pytest.raises(kernels.NotPositiveDefiniteError, match="layer transformer.h.7.mlp"):
        kernels.regularized_solve(c0, 1.0, s_kk, rng.standard_normal((2, d)), layer="transformer.h.7.mlp")


def test_nan_input_is_refused_not_propagated(backend, rng):
    d = 6
    s_kk = np.zeros((d, d))
    s_kk[2, 4] = s_kk[4, 2] = np.nan
    with pytest.raises(ValueError, match="layer L5.*NaN or Inf"):
        kernels.regularized_solve(spd(rng, d), 1.0, s_kk, np.ones((1, d)), layer="L5")


@pytest.mark.parametrize(
    "c0, s_kk, s_rk, lam, error, message",
    [
        (np.eye(3), np.zeros((3, 3)), np.zeros((2, 4)), 1.0, ValueError, "s_rk has shape"),
        (np.eye(3)[:2], np.zeros((3, 3)), np.zeros((2, 3)), 1.0, ValueError, "c0 must be square"),
        (np.eye(3), np.zeros(5), np.zeros((2, 3)), 1.0, ValueError, "s_kk has shape"),
        (np.eye(3, dtype=np.int64), np.zeros((3, 3)), np.zeros((2, 3)), 1.0, TypeError, "c0 has dtype int64"),
        (np.eye(3), np.zeros((3, 3)), np.zeros((2, 3)), float("nan"), ValueError, "lam must be"),
        (np.eye(3), np.zeros((3, 3)), np.zeros((2, 3)), 10**400, ValueError, "lam must be"),
        (np.eye(3), np.zeros((3, 3)), np.zeros((2, 3)), True, ValueError, "lam must be"),
        (np.eye(3), None, np.zeros((2, 3)), 1.0, ValueError, "s_kk is required"),
    ],
)
def test_bad_arguments(backend, c0, s_kk, s_rk, lam, error, message):
    with pytest.raises(error, match=message):
        kernels.regularized_solve(c0, lam, s_kk, s_rk)


def test_failure_in_a_later_block_reports_its_minor(backend, rng):
    d = 450  # several Cholesky blocks on the C++ path
    c0 = np.eye(d)
    s_kk = np.zeros((d, d))
    s_kk[d - 3, d - 3] = -2.0
    with pytest.raises(kernels.NotPositiveDefiniteError, match=rf"layer blk is not positive definite \(leading minor {d - 2} of {d}\)"):
        kernels.regularized_solve(c0, 1.0, s_kk, np.ones((2, d)), layer="blk")


@pytest.mark.parametrize("mode", ["blas", "split"])
def test_threading_modes_agree(monkeypatch, rng, mode):
    """Both ways of threading the factorisation (OpenBLAS threads / own threads): same residual
    bound, same error for an indefinite system."""
    monkeypatch.setenv("COLLABEDIT_SOLVE_THREADING", mode)
    d, d_out = 2100, 300
    a = rng.standard_normal((d, 64))
    c0 = np.eye(d) + a @ a.T / 64
    s_kk = spd(rng, 200, 0.0)
    s_full = np.zeros((d, d))
    s_full[:200, :200] = s_kk
    s_rk = rng.standard_normal((d_out, d))
    with kernels.use_backend("cpu"):
        delta = kernels.regularized_solve(c0, 0.5, s_full, s_rk, layer="h.0")
        assert relative_residual(0.5 * c0 + s_full, delta, s_rk) <= 1e-12
        bad = np.zeros((d, d))
        bad[d - 5, d - 5] = -1e6
        with pytest.raises(kernels.NotPositiveDefiniteError, match=rf"leading minor {d - 4} of {d}"):
            kernels.regularized_solve(c0, 0.5, bad, s_rk[:3], layer="h.0")


def test_unknown_threading_mode_is_an_error(monkeypatch, rng):
    monkeypatch.setenv("COLLABEDIT_SOLVE_THREADING", "openmp")
    with kernels.use_backend("cpu"), pytest.raises(ValueError, match="split or blas, not openmp"):
        kernels.regularized_solve(spd(rng, 2048), 1.0, np.zeros((2048, 2048)), np.ones((1, 2048)))


# ---------------------------------------------------------------------------------- operand values
#
# The compiled solves read only the upper triangle of c0, s_kk and c_acc, so the wrapper checks the
# whole of every operand for NaN and Inf first, and the reference reads the upper triangle too: a
# NaN below the diagonal, or a lower triangle that disagrees with the upper one, would otherwise
# pass unseen on one backend and fail (or differ) on another.


def solve_operands(rng, d=8):
    return {"c0": spd(rng, d), "s_kk": spd(rng, d, 0.0), "c_acc": spd(rng, d, 0.0), "s_rk": rng.standard_normal((3, d))}


def solve(ops, layer="L2"):
    return kernels.regularized_solve(ops["c0"], 0.5, ops["s_kk"], ops["s_rk"], c_acc=ops["c_acc"], layer=layer)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("name, where", [("c0", (5, 1)), ("s_kk", (7, 0)), ("c_acc", (4, 2)), ("s_rk", (1, 6))])
def test_non_finite_operand_is_named(backend, rng, name, where, bad):
    ops = solve_operands(rng)
    ops[name][where] = bad  # below the diagonal for the symmetric operands: the part the kernels skip
    with pytest.raises(ValueError, match=rf"^{name} for layer L2 has NaN or Inf entries$") as caught:
        solve(ops)
    assert not isinstance(caught.value, kernels.NotPositiveDefiniteError)


def test_non_finite_torch_operand_without_layer(backend, rng):
    ops = {k: torch.from_numpy(v).float() for k, v in solve_operands(rng).items()}
    ops["c0"][6, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^c0 has NaN or Inf entries$"):
        solve(ops, layer=None)


def test_packed_operands_are_checked_for_finiteness_only(backend, rng):
    ops = solve_operands(rng)
    ops["s_kk"] = kernels.pack_upper(torch.from_numpy(ops["s_kk"])).numpy().copy()
    assert solve(ops).shape == (3, 8)
    ops["s_kk"][4] = np.inf
    with pytest.raises(ValueError, match="^s_kk for layer L2 has NaN or Inf entries$"):
        solve(ops)


def test_reference_reads_the_upper_triangle_like_the_kernel(rng):
    """Below the diagonal anything may be stored: the reference and the compiled kernel both take
    the upper triangle and mirror it, so they solve the same system."""
    require_cpu_extension()
    d = 8
    ops = solve_operands(rng, d)
    upper = {k: np.triu(v) + np.triu(v, 1).T for k, v in ops.items() if k != "s_rk"}
    for name in upper:
        ops[name][np.tril_indices(d, -1)] += rng.standard_normal(d * (d - 1) // 2)
    def ref(m):
        t = {k: torch.from_numpy(v) for k, v in m.items()}
        return reference.regularized_solve(t["c0"], 0.5, t["s_kk"], t["s_rk"], t["c_acc"]).numpy()

    got = ref(ops)
    np.testing.assert_array_equal(got, ref({**upper, "s_rk": ops["s_rk"]}))
    x = ops["s_rk"].copy()
    assert _backends.cpu_module.regularized_solve(ops["c0"], 0.5, ops["c_acc"], ops["s_kk"], x) == 0
    np.testing.assert_allclose(x, got, rtol=1e-10, atol=1e-12)


def test_negative_stride_operands(backend, rng):
    ops = solve_operands(rng, 9)
    flipped = {k: v[::-1, ::-1] for k, v in ops.items()}  # P A P is still symmetric
    delta = solve(flipped)
    system = 0.5 * ops["c0"] + ops["c_acc"] + ops["s_kk"]
    np.testing.assert_allclose(delta, np.linalg.solve(system[::-1, ::-1], ops["s_rk"][::-1, ::-1].T).T, rtol=1e-9, atol=1e-12)
