"""`collabedit bench kernels` building blocks at a tiny size: every row is complete and consistent."""

from __future__ import annotations

import math

from collabedit_secure.bench import kernels as bench


def test_masking_row_reports_bound_and_fresh_allocation():
    row = bench.bench_masking(48, repeats=1)
    assert row["elements"] == 48 * 49 // 2 and row["peers"] == bench.PEERS
    for key in ("kernel_s", "baseline_s", "kernel_fresh_out_s", "aes_bound_s"):
        assert row[key] > 0 and math.isfinite(row[key]), key
    assert math.isclose(row["speedup"], row["baseline_s"] / row["kernel_s"])
    assert math.isclose(row["fraction_of_aes_bound"], row["aes_bound_s"] / row["kernel_s"])
    assert "of AES bound" in bench.format_table([row]) and "fresh out" in bench.format_table([row])


def test_solve_row_has_small_residuals():
    row = bench.bench_solve(64, repeats=1)
    assert row["rhs"] == 16
    assert row["kernel_residual"] <= 1e-12 and row["baseline_residual"] <= 1e-12
