"""The HE party's own solve: C_acc kept across rounds as packed triangles, committed only on COMPLETED,
and every ΔW equal to the solve on whole matrices."""

from __future__ import annotations

import numpy as np
import torch

from collabedit_secure.kernels import pack_upper, regularized_solve
from collabedit_secure.party.local_solve import LocalSolver

D, D_OUT, LAM, MODULE = 96, 20, 3.0, "m.0"


def _round(rng):
    k = rng.standard_normal((D, 12))
    return pack_upper(k @ k.T), rng.standard_normal((D_OUT, D))


def test_two_rounds_match_the_whole_matrix_solve_and_c_acc_is_packed(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((D, 400))
    c0 = torch.from_numpy(x @ x.T / 400)
    solver = LocalSolver({MODULE: c0}, {MODULE: LAM}, tmp_path / "state")
    c_acc = None
    for _ in range(2):
        s_kk, s_rk = _round(rng)
        expected = regularized_solve(c0.numpy(), LAM, s_kk, s_rk, c_acc=c_acc)
        delta = solver.solve(0, MODULE, s_kk, s_rk.copy())
        assert np.array_equal(delta, expected)  # bit for bit: the same operations in the same order
        solver.commit()
        c_acc = LAM * s_kk if c_acc is None else c_acc + LAM * s_kk
        saved = solver.c_acc()[MODULE]
        assert saved.shape == (D * (D + 1) // 2,) and np.array_equal(saved, c_acc)
    assert oct((tmp_path / "state" / "c_acc.npz").stat().st_mode & 0o777) == "0o600"
    assert list((tmp_path / "state" / "c_acc-pending").iterdir()) == []


def test_a_discarded_round_leaves_c_acc_as_it_was(tmp_path):
    rng = np.random.default_rng(6)
    solver = LocalSolver({MODULE: torch.eye(D, dtype=torch.float64)}, {MODULE: LAM}, tmp_path)
    s_kk, s_rk = _round(rng)
    solver.solve(0, MODULE, s_kk, s_rk)
    solver.commit()
    before = (tmp_path / "c_acc.npz").read_bytes()
    solver.solve(0, MODULE, *_round(rng))
    solver.discard()
    solver.commit()  # nothing pending: no change
    assert (tmp_path / "c_acc.npz").read_bytes() == before
    assert list((tmp_path / "c_acc-pending").iterdir()) == []


def test_an_earlier_versions_full_c_acc_is_read_and_rewritten_packed(tmp_path):
    rng = np.random.default_rng(7)
    c0 = torch.eye(D, dtype=torch.float64)
    k = rng.standard_normal((D, 8))
    full = LAM * (k @ k.T)
    np.savez(tmp_path / "c_acc.npz", **{MODULE: full})
    solver = LocalSolver({MODULE: c0}, {MODULE: LAM}, tmp_path)
    s_kk, s_rk = _round(rng)
    expected = regularized_solve(c0.numpy(), LAM, s_kk, s_rk, c_acc=full)
    assert np.array_equal(solver.solve(0, MODULE, s_kk, s_rk.copy()), expected)
    solver.commit()
    assert np.array_equal(solver.c_acc()[MODULE], pack_upper(full) + LAM * s_kk)
