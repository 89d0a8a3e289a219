"""A coordinator and three party daemons as real processes over mTLS on loopback, synthetic statistics.

ΔW at every party must equal the in-process collabedit_merge of the summed statistics (<= 1e-9)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch

pytest.importorskip("collabedit_secure.coordinator.server")

from collabedit_secure.coordinator.config import load_config as load_coordinator_config  # noqa: E402
from collabedit_secure.merging.collabedit import collabedit_merge  # noqa: E402
from collabedit_secure.party.engine import read_synthetic_delta  # noqa: E402
from collabedit_secure.party.local import LocalFederation, wait_results  # noqa: E402
from collabedit_secure.rpc.generated import common_pb2 as cpb  # noqa: E402
from collabedit_secure.rpc.generated import coordinator_pb2 as pb  # noqa: E402
from collabedit_secure.rpc.generated import party_pb2 as ppb  # noqa: E402

from .synthetic import D_OUT, LAYERS, MODEL_FINGERPRINT, party_stats  # noqa: E402

PARTIES = ["a", "b", "c"]
PHASE = cpb.RoundPhase


def federation(tmp_path, world, privacy="mask", schedule="sequential", threshold=2, deadlines=None, env=None):
    coordinator = {"schedule": schedule, "privacy": privacy, "threshold": threshold,
                   "min_parties": threshold, "hparams": str(world["hparams"]), "c0": str(world["c0"]),
                   "layer_shapes": {layer: D_OUT for layer in LAYERS}, "model_fingerprint": MODEL_FINGERPRINT,
                   "deadlines": deadlines or {"join": 60, "keys": 30, "upload": 30, "unmask": 30, "download": 30}}
    party = {"hparams": str(world["hparams"]), "c0": str(world["c0"]), "timeouts": {"join": 30, "phase": 60, "rpc": 10}}
    per_party = {p: {"statistics": f"synthetic:{world['stats'][i]}"} for i, p in enumerate(PARTIES)}
    return LocalFederation(tmp_path / "fed", PARTIES, coordinator, party, per_party, env=env)


def start_round(fed, parties=PARTIES) -> int:
    rounds = set()
    for i, party in enumerate(parties):
        stub = fed.party_stub(party)
        stub.SubmitEditRequests(ppb.SubmitEditRequestsRequest(requests=[ppb.EditRequest(
            case_id=f"{party}-1", prompt="{} is in", subject=f"S{i}", target_new="X")]), timeout=10)
        rounds.add(stub.StartRound(ppb.StartRoundRequest(), timeout=60).round_id)
    assert len(rounds) == 1
    return rounds.pop()


def expected_deltas(world, which) -> dict[int, np.ndarray]:
    config = load_coordinator_config(world["dir"] / "fed" / "coordinator.yaml")
    out = {}
    for spec, lam in zip(config.layers, config.lambdas):
        s_kk = sum(party_stats(i)[spec.layer][0] for i in which)
        s_rk = sum(party_stats(i)[spec.layer][1] for i in which)
        out[spec.layer] = collabedit_merge(config.c0[spec.module_name], lam, torch.tensor(s_kk),
                                           torch.tensor(s_rk)).numpy()
    return out


def check_deltas(results, world, which):
    want = expected_deltas(world, which)
    for party, result in results.items():
        got = read_synthetic_delta(result.delta_path)
        for layer, delta in want.items():
            assert np.linalg.norm(got[layer] - delta) / np.linalg.norm(delta) <= 1e-9, (party, layer)


@pytest.mark.parametrize("privacy, schedule", [("mask", "sequential"), ("mask", "parallel"),
                                               ("plain", "sequential"), ("plain", "parallel"),
                                               ("he", "sequential"), ("he", "parallel")])
def test_round_equals_in_process_merge(tmp_path, synthetic_world, privacy, schedule):
    with federation(tmp_path, synthetic_world, privacy, schedule) as fed:
        round_id = start_round(fed)
        results = wait_results({p: fed.party_stub(p) for p in PARTIES}, round_id, timeout=120)
        assert {r.phase for r in results.values()} == {PHASE.ROUND_PHASE_COMPLETED}, fed.describe_logs()
        check_deltas(results, synthetic_world, [0, 1, 2])
        for party, result in results.items():
            assert list(result.applied_layers) == list(LAYERS) and result.bytes_sent > 0
            assert result.stage_seconds["upload"] > 0 and result.case_ids == [f"{party}-1"]
            listed = fed.party_stub(party).ListEditRequests(ppb.ListEditRequestsRequest(), timeout=10).requests
            assert [(r.state, r.round_id) for r in listed] == [(ppb.EDIT_STATE_APPLIED, round_id)]
        if privacy == "plain":
            assert "PLAIN MODE" in fed.log_path("a").read_text()


def _wait_phase(fed, predicate, timeout=60):
    stub, deadline = fed.coordinator_stub(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = stub.GetRound(pb.GetRoundRequest(round_id=0), timeout=10).status
        if predicate(status):
            return status
        time.sleep(0.1)
    raise TimeoutError(f"coordinator status never matched; last {status}")


def _synthetic_model(fed, party):
    path = fed.root / f"{party}-state" / "synthetic_model.npz"
    return None if not path.exists() else dict(np.load(path))


SHORT = {"join": 60, "keys": 30, "upload": 4, "unmask": 20, "download": 4}


@pytest.mark.parametrize("privacy", ["mask", "he"])
def test_dropout_before_upload_is_recovered_with_t_survivors(tmp_path, synthetic_world, privacy):
    """HE: the round completes with the survivors' encrypted sum (nothing to recover: no masks)."""
    with federation(tmp_path, synthetic_world, privacy, threshold=2, deadlines=SHORT,
                    env={"c": {"COLLABEDIT_TEST_STALL": "before_upload:0"}}) as fed:
        round_id = start_round(fed)
        _wait_phase(fed, lambda s: s.phase == PHASE.ROUND_PHASE_UPLOADING)
        time.sleep(1.0)  # c has its keys and shares in, and hangs before its upload
        fed.kill("c")
        results = wait_results({p: fed.party_stub(p) for p in "ab"}, round_id, timeout=90)
        assert {r.phase for r in results.values()} == {PHASE.ROUND_PHASE_COMPLETED}, fed.describe_logs()
        check_deltas(results, synthetic_world, [0, 1])  # the sum of the survivors, c's masks removed
        status = fed.coordinator_stub().GetRound(pb.GetRoundRequest(round_id=round_id), timeout=10).status
        assert list(status.parties_dropped) == ["c"]


def test_dropout_below_threshold_fails_and_changes_nothing(tmp_path, synthetic_world):
    with federation(tmp_path, synthetic_world, threshold=3, deadlines=SHORT,
                    env={"c": {"COLLABEDIT_TEST_STALL": "before_upload:0"}}) as fed:
        round_id = start_round(fed)
        _wait_phase(fed, lambda s: s.phase == PHASE.ROUND_PHASE_UPLOADING)
        time.sleep(1.0)
        fed.kill("c")
        results = wait_results({p: fed.party_stub(p) for p in "ab"}, round_id, timeout=90)
        status = fed.coordinator_stub().GetRound(pb.GetRoundRequest(round_id=round_id), timeout=10).status
        assert status.phase == PHASE.ROUND_PHASE_FAILED and "only 2 of 3" in status.failure_reason
        for party in "ab":
            assert results[party].phase == PHASE.ROUND_PHASE_FAILED and not results[party].applied_layers
            assert _synthetic_model(fed, party) is None  # never committed
            listed = fed.party_stub(party).ListEditRequests(ppb.ListEditRequestsRequest(), timeout=10).requests
            assert [r.state for r in listed] == [ppb.EDIT_STATE_QUEUED]  # waits for the next round


def test_party_lost_after_first_layer_rolls_back_everywhere(tmp_path, synthetic_world):
    with federation(tmp_path, synthetic_world, threshold=2, deadlines=SHORT,
                    env={"c": {"COLLABEDIT_TEST_STALL": "after_upload:0"}}) as fed:
        round_id = start_round(fed)
        _wait_phase(fed, lambda s: s.phase == PHASE.ROUND_PHASE_DOWNLOADING)
        fed.kill("c")
        results = wait_results({p: fed.party_stub(p) for p in "ab"}, round_id, timeout=90)
        for party in "ab":
            assert results[party].phase == PHASE.ROUND_PHASE_ROLLED_BACK, fed.describe_logs()
            assert _synthetic_model(fed, party) is None
            listed = fed.party_stub(party).ListEditRequests(ppb.ListEditRequestsRequest(), timeout=10).requests
            assert [r.state for r in listed] == [ppb.EDIT_STATE_QUEUED]
        with pytest.raises(grpc.RpcError):
            fed.party_stub("c").GetPartyStatus(ppb.GetPartyStatusRequest(), timeout=2)
