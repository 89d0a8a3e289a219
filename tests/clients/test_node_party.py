"""The Node masking party (clients/node) as one of three parties of a real round, beside two Python daemons.

A coordinator and Python party daemons run as processes over mTLS on loopback (LocalFederation); the Node
party (`node clients/node/bin/collabedit-node.js party --config ...`) joins as party c with the same
statistics the Python party c would upload. Mask mode makes the coordinator's decoded sum exact integer
arithmetic, so if Node encodes, masks, shares and reveals exactly as Python does, every party's ΔW equals
the ΔW of the all-Python round bit for bit.

Needs node and `npm ci --prefix clients/node`; without them these tests fail with that instruction.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("collabedit_secure.coordinator.server")

from .node_env import node_executable  # noqa: E402
from .node_federation import (  # noqa: E402
    PARTIES, merged_deltas, node_party_config, queue_edit, run_mixed_round, run_node_cli, run_python_round,
    synthetic_world, tls_args,
)
from .node_stats import read_node_delta  # noqa: E402


def _bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<f8").tobytes()


def test_node_party_delta_equals_python_round_bit_for_bit(tmp_path):
    """Sequential schedule: the round with the Node party gives every party the all-Python round's ΔW, bit for bit.
    Also drives the CLI against the live processes: submit (accepted and refused), download and watch."""
    node = node_executable()  # fails (does not skip) without node or clients/node/node_modules
    world = synthetic_world(tmp_path / "world")
    cli = {}

    def before_round(fed):
        # Party a's edit is queued by the Node CLI, party b's through the Python stub.
        requests = tmp_path / "requests.json"
        requests.write_text(json.dumps([{"case_id": "a-1", "prompt": "{} is in", "subject": "S0", "target_new": "X"}]))
        cli["submit"] = run_node_cli(node, "submit", "--party", f"127.0.0.1:{fed.ports['a']}", "--requests", str(requests))
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps([{"case_id": "a-2", "prompt": "no slot here", "subject": "S0", "target_new": "X"}]))
        cli["refused"] = run_node_cli(node, "submit", "--party", f"127.0.0.1:{fed.ports['a']}", "--requests", str(bad))
        queue_edit(fed, "b", 1)

    def after_round(fed, round_id):
        address = f"127.0.0.1:{fed.ports['coordinator']}"
        out = tmp_path / "delta-0.f64"
        cli["download"] = run_node_cli(node, "download", "--coordinator", address, *tls_args(fed, "a"),
                                       "--round", str(round_id), "--layer", "0", "--out", str(out))
        cli["download_file"] = out
        cli["watch"] = run_node_cli(node, "watch", "--coordinator", address, *tls_args(fed, "b"),
                                    "--round", str(round_id), "--json")

    reference = run_python_round(tmp_path / "python", world, "sequential")
    mixed = run_mixed_round(tmp_path / "mixed", world, "sequential", node, before_round, after_round)

    assert mixed["node"]["phase"] == "COMPLETED" and mixed["node"]["applied_layers"] == [0, 1]
    assert mixed["node"]["schedule"] == "SCHEDULE_SEQUENTIAL" and mixed["node"]["privacy_mode"] == "PRIVACY_MODE_MASK"
    for layer, want in reference["a"].items():
        for party in PARTIES:
            assert _bits(reference[party][layer]) == _bits(want), ("python round", party, layer)
        for party, deltas in mixed["python"].items():
            assert _bits(deltas[layer]) == _bits(want), ("mixed round, python party", party, layer)
        assert _bits(mixed["node_deltas"][layer]) == _bits(want), ("mixed round, node party", layer)
        assert mixed["node"]["layers"][str(layer)]["sha256"] == hashlib.sha256(_bits(want)).hexdigest()
    # ...and the round computed what it should (the in-process solve of the summed statistics).
    for layer, want in merged_deltas(world, tmp_path / "python" / "coordinator.yaml").items():
        got = reference["a"][layer]
        assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-9

    submit = cli["submit"]
    assert submit.returncode == 0 and "accepted 1 of 1: a-1" in submit.stdout, (submit.stdout, submit.stderr)
    refused = cli["refused"]
    assert refused.returncode == 4 and 'rejected "a-2"' in refused.stdout, (refused.stdout, refused.stderr)
    download = cli["download"]
    assert download.returncode == 0, download.stderr
    assert "shape [4, 6]" in download.stdout
    assert _bits(read_node_delta(cli["download_file"], (4, 6))) == _bits(reference["a"][0])
    watch = cli["watch"]
    assert watch.returncode == 0, watch.stderr
    last = json.loads(watch.stdout.strip().splitlines()[-1])
    assert last["phase"] == "COMPLETED" and last["layers_completed"] == [0, 1] and last["parties_alive"] == PARTIES


def test_node_party_parallel_schedule_completes(tmp_path):
    """Parallel schedule (one step, every layer): the round completes and every party holds the same ΔW.
    Before that, a Node party whose hparams fingerprint differs is refused at JoinFederation."""
    node = node_executable()
    world = synthetic_world(tmp_path / "world")
    refused = {}

    def before_node(fed):
        config = json.loads(node_party_config(fed, "c", world["node"][2]).read_text())
        config["fingerprints"]["hparams"] = "0" * 64
        bad = tmp_path / "bad-party.json"
        bad.write_text(json.dumps(config))
        refused["run"] = run_node_cli(node, "party", "--config", str(bad))

    mixed = run_mixed_round(tmp_path / "mixed", world, "parallel", node, before_node=before_node)
    run = refused["run"]
    assert run.returncode == 1 and "FAILED_PRECONDITION" in run.stderr and "hparams" in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("collabedit-node: JoinFederation refused"), run.stderr
    assert mixed["node"]["phase"] == "COMPLETED" and mixed["node"]["schedule"] == "SCHEDULE_PARALLEL"
    want = merged_deltas(world, tmp_path / "mixed" / "coordinator.yaml")
    for layer, delta in mixed["node_deltas"].items():
        for party, deltas in mixed["python"].items():
            assert _bits(deltas[layer]) == _bits(delta), (party, layer)
        assert np.linalg.norm(delta - want[layer]) / np.linalg.norm(want[layer]) <= 1e-9
    assert sorted(mixed["node_deltas"]) == [0, 1]
