"""`collabedit bench privacy` at a tiny size: real processes, every field of the JSON, the table, the plot."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("collabedit_secure.coordinator.server")
pytest.importorskip("matplotlib")

from collabedit_secure.bench import privacy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
D = 16
PHASES = ("encode", "upload", "aggregate", "unmask", "solve", "download")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "collabedit_secure.cli", "bench", "privacy", "--parties", "2", "--dim", str(D),
           "--modes", "plain,mask", "--timeout", "120", "--json", str(out / "privacy.json"),
           "--plot", str(out / "privacy.png")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"report": json.loads((out / "privacy.json").read_text()), "stdout": done.stdout,
            "stderr": done.stderr, "png": out / "privacy.png"}


def test_every_configuration_ran_and_reported_its_progress(bench):
    rows = bench["report"]["configurations"]
    assert [(r["mode"], r["parties"], r["d"], r["status"]) for r in rows] == [("plain", 2, D, "ok"),
                                                                              ("mask", 2, D, "ok")], rows
    assert bench["report"]["failed"] == []
    for mode in ("plain", "mask"):
        assert f"{mode} n=2 d={D}: starting" in bench["stderr"]
        assert f"{mode} n=2 d={D}: done in" in bench["stderr"]


def test_json_has_every_number_with_plausible_values(bench):
    report = bench["report"]
    machine = report["machine"]
    for key in ("cpu", "cores", "python", "torch", "tenseal", "git_commit"):
        assert machine[key], key
    rows = {r["mode"]: r for r in report["configurations"]}
    packed_bytes = 8 * D * (D + 1) // 2  # S_KK's upper triangle alone, 8 bytes an entry
    for mode, row in rows.items():
        assert 0 < row["round_seconds"] < 120
        assert row["party_wall_seconds_max"] > 0
        assert set(row["phase_seconds"]) == set(PHASES)
        for phase in PHASES:
            assert row["phase_seconds"][phase] is not None and 0 <= row["phase_seconds"][phase] < row["round_seconds"], \
                (mode, phase, row["phase_seconds"])
        assert row["phase_seconds"]["upload"] > 0
        assert set(row["party_stage_seconds"]) == {"p00", "p01"}
        sent = row["bytes_sent_by_party"]
        assert all(v > packed_bytes for v in sent.values()), (mode, sent)
        assert row["bytes_sent_per_party"] == pytest.approx(sum(sent.values()) / 2)
        assert row["coordinator_bytes_received"] == sum(sent.values())
        # the accepted uploads: S_KK's triangle and S_RK (d/4 x d), 8 bytes an entry in both modes
        assert row["coordinator_upload_payload_bytes"] == 2 * 8 * (D * (D + 1) // 2 + (D // 4) * D)
        assert row["bytes_received_per_party"] >= 8 * (D // 4) * D  # ΔW came back
        rss = row["peak_rss_bytes"]
        assert 10e6 < rss["party_max"] < 100e9 and 10e6 < rss["coordinator"] < 100e9, rss
    assert rows["mask"]["bytes_sent_per_party"] >= rows["plain"]["bytes_sent_per_party"]
    assert rows["plain"]["ratios_to_plain"] == {"round_seconds": 1.0, "bytes_sent_per_party": 1.0,
                                                "coordinator_bytes_received": 1.0}
    ratios = rows["mask"]["ratios_to_plain"]
    assert ratios["round_seconds"] == pytest.approx(rows["mask"]["round_seconds"] / rows["plain"]["round_seconds"])
    assert ratios["bytes_sent_per_party"] == pytest.approx(
        rows["mask"]["bytes_sent_per_party"] / rows["plain"]["bytes_sent_per_party"])
    assert ratios["bytes_sent_per_party"] >= 1.0
    assert report["naive_he"] == []  # he was not asked for


def test_table_and_plot(bench):
    lines = bench["stdout"].splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("mode"))
    assert "MB/party" in lines[header] and "t/plain" in lines[header]
    assert lines[header + 1].split()[:3] == ["plain", "2", str(D)]
    assert lines[header + 2].split()[:3] == ["mask", "2", str(D)]
    assert bench["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench["png"].stat().st_size > 10_000


def test_a_refused_configuration_is_recorded_not_raised(tmp_path):
    data = privacy.write_data(tmp_path / "data", D, 2, [0])
    args = argparse.Namespace(layers=1, schedule="parallel", timeout=60)
    row = privacy.run_configuration("bogus", 2, D, data, tmp_path / "fed", args)  # the coordinator refuses it
    assert row["status"] == "failed" and "privacy" in row["error"], row
    row["configuration_seconds"] = 1.0
    privacy.add_ratios([row])
    assert row["ratios_to_plain"]["round_seconds"] is None
    assert "FAILED" in privacy.format_table([row])


def test_naive_he_measures_or_samples_real_ciphertexts():
    whole = privacy.naive_he(64)  # 4096 values: one ciphertext
    assert whole["ciphertexts"] == 1 and not whole["extrapolated"] and whole["bytes"] > 100_000
    sampled = privacy.naive_he(1100, sample=2)  # 1.21 M values: 296 ciphertexts, beyond the full limit
    assert sampled["ciphertexts"] == 296 and sampled["measured_ciphertexts"] == 2 and sampled["extrapolated"]
    assert sampled["bytes"] == pytest.approx(sampled["bytes_per_ciphertext_mean"] * 296)
    assert sampled["bytes_per_ciphertext_mean"] == pytest.approx(whole["bytes"], rel=0.05)
