"""The demo end to end on the embedded world model: a coordinator and three party daemons as real
processes over mTLS, real MEMIT in each, compared with global MEMIT in the test's process."""

from __future__ import annotations

import json

import pytest

from collabedit_secure.demo import demo_main


def test_demo_on_the_world_model(tmp_path, capsys):
    out = tmp_path / "demo.json"
    code = demo_main(["--edits-per-party", "1", "--workdir", str(tmp_path / "work"), "--json", str(out),
                      "--timeout", "600"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert report["delta_rel_err_vs_global"] <= 1e-9
    assert set(report["processes"]) == {"coordinator", "party-a", "party-b", "party-c"}
    assert report["failed_processes"] == []
    for party in ("party-a", "party-b", "party-c"):  # each uploads its masked sums, downloads ΔW
        assert report["processes"][party]["bytes_sent"] > 0 and report["processes"][party]["bytes_received"] > 0
    assert report["processes"]["coordinator"]["bytes_received"] > 0
    assert "rel.err vs global" in printed.out and "federated" in printed.out
    # The federation's model is the global edit's (same ΔW): the same metrics.
    assert report["metrics"]["federated"] == pytest.approx(report["metrics"]["global"])
