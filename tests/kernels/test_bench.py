"""`collabedit bench kernels` building blocks at a tiny size: every row is complete and consistent."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

from collabedit_secure import kernels
from collabedit_secure.bench import kernels as bench


def test_masking_row_reports_bound_and_fresh_allocation():
    row = bench.bench_masking(48, repeats=1)
    assert row["elements"] == 48 * 49 // 2 and row["peers"] == bench.PEERS
    for key in ("kernel_s", "baseline_s", "kernel_fresh_out_s", "aes_bound_s"):
        assert row[key] > 0 and math.isfinite(row[key]), key
    assert math.isclose(row["speedup"], row["baseline_s"] / row["kernel_s"])
    assert math.isclose(row["fraction_of_aes_bound"], row["aes_bound_s"] / row["kernel_s"])
    assert "of AES bound" in bench.format_table([row]) and "fresh out" in bench.format_table([row])


def test_solve_rows_compare_with_lu_and_the_library_cholesky():
    rows = bench.bench_solve(64, repeats=1)
    assert [r["baseline"].split()[0] for r in rows] == ["torch.linalg.solve", "torch.linalg.cholesky"]
    assert rows[0]["kernel_s"] == rows[1]["kernel_s"]  # one kernel measurement, two references
    for row in rows:
        assert row["rhs"] == 16
        assert row["kernel_residual"] <= 1e-12 and row["baseline_residual"] <= 1e-12


def test_rows_name_the_backend_they_timed():
    # COLLABEDIT_KERNELS=reference (or no extension) times the reference in the "kernel" column.
    with kernels.use_backend("reference"):
        rows = [*bench.bench_covariance(16, repeats=1), *bench.bench_solve(16, repeats=1),
                bench.bench_masking(16, repeats=1)]
    assert len(rows) == 7 and all(r["backend"] == "reference" for r in rows)
    table = bench.format_table(rows).splitlines()
    assert table[0].split()[:2] == ["kernel", "backend"]
    assert all(line.split()[1] == "reference" for line in table[2:])
    assert bench.bench_masking(16, repeats=1)["backend"] == kernels.backend_for(None)


def test_masking_row_without_the_extension_says_the_bound_is_missing():
    code = (
        "import sys; sys.modules['collabedit_secure._kernels'] = None\n"
        "import json; from collabedit_secure.bench import kernels as bench\n"
        "row = bench.bench_masking(16, repeats=1)\n"
        "print(json.dumps([row['backend'], row['aes_bound_s'], row['fraction_of_aes_bound'], bench.format_table([row])]))"
    )
    env = dict(os.environ, COLLABEDIT_KERNELS="")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    backend, bound, fraction, table = json.loads(done.stdout)
    assert (backend, bound, fraction) == ("reference", None, None)
    assert "AES bound not measured (C++ extension not built)" in table


def test_json_records_the_repeats_each_row_used(tmp_path, monkeypatch):
    # Large sizes run half the repeats; a single top-level count would misstate them.
    monkeypatch.setattr(bench, "QUICK_SIZES", (16, 32))
    monkeypatch.setattr(bench, "LARGE_D", 32)
    out = tmp_path / "new" / "kernels.json"  # a folder the run makes when it writes
    bench.run(argparse.Namespace(quick=True, json=str(out), repeats=4))
    report = json.loads(out.read_text())
    assert "repeats" not in report and report["repeats_requested"] == 4
    assert {(r["d"], r["repeats"]) for r in report["results"]} == {(16, 4), (32, 2)}
    timed = kernels.backend_for(None)
    assert report["backends_timed"] == [timed] and all(r["backend"] == timed for r in report["results"])
