"""A synthetic federation on loopback in which some parties are Python daemons and one is the Node masking
party (clients/node, `collabedit-node party`), for the interop tests.

The coordinator and the Python daemons are collabedit_secure.party.local.LocalFederation processes; the
Node party is one more process of the same federation, with party c's certificate and statistics. It
is registered in fed.procs, so LocalFederation.close() stops it (SIGTERM, then SIGKILL) whatever happened.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch

from collabedit_secure.coordinator.config import load_config as load_coordinator_config
from collabedit_secure.merging.collabedit import collabedit_merge
from collabedit_secure.party.engine import read_synthetic_delta
from collabedit_secure.party.local import SINGLE_THREADED, LocalFederation, wait_results
from collabedit_secure.rpc.generated import common_pb2 as cpb
from collabedit_secure.rpc.generated import party_pb2 as ppb
from tests.party.synthetic import D_OUT, LAYERS, MODEL_FINGERPRINT, party_stats, write_c0, write_hparams, write_party_stats

from .node_env import NODE_CLI, REPO
from .node_stats import read_node_delta, write_node_stats

PARTIES = ["a", "b", "c"]
DEADLINES = {"join": 60, "keys": 30, "upload": 30, "unmask": 30, "download": 30}
COMPLETED = cpb.ROUND_PHASE_COMPLETED


def synthetic_world(folder: Path) -> dict:
    """hparams, C0 and three parties' statistics: npz for the Python daemons, a folder each for Node."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"hparams": write_hparams(folder), "c0": write_c0(folder), "dir": folder,
            "npz": [write_party_stats(folder, i) for i in range(3)],
            "node": [write_node_stats(folder / f"node-stats-{i}", party_stats(i)) for i in range(3)]}


def make_federation(root: Path, world: dict, schedule: str, chunk_bytes: int = 64) -> LocalFederation:
    """Mask mode, threshold 2; 64-byte chunks so that every payload spans several chunks."""
    coordinator = {"schedule": schedule, "privacy": "mask", "threshold": 2, "min_parties": 2,
                   "hparams": str(world["hparams"]), "c0": str(world["c0"]), "chunk_bytes": chunk_bytes,
                   "layer_shapes": {layer: D_OUT for layer in LAYERS}, "model_fingerprint": MODEL_FINGERPRINT,
                   "deadlines": DEADLINES}
    party = {"hparams": str(world["hparams"]), "c0": str(world["c0"]), "timeouts": {"join": 30, "phase": 60, "rpc": 10}}
    per_party = {p: {"statistics": f"synthetic:{world['npz'][i]}"} for i, p in enumerate(PARTIES)}
    return LocalFederation(root, PARTIES, coordinator, party, per_party, federation_id="fed-node")


def start_processes(fed: LocalFederation, python_parties: list[str], timeout: float = 120.0) -> None:
    """Coordinator, then the given Python daemons, all SERVING; the other roster members are not started."""
    fed.write()
    fed.start_coordinator()
    fed.wait_serving("coordinator", timeout)
    fed._set_coordinator_address(f"127.0.0.1:{fed.ports['coordinator']}")
    for party in python_parties:
        fed.start_party(party)
    for party in python_parties:
        fed.wait_serving(party, timeout)


def tls_args(fed: LocalFederation, party: str) -> list[str]:
    pki = fed.root / "pki"
    return ["--ca", str(pki / "ca.pem"), "--cert", str(pki / f"{party}.pem"), "--key", str(pki / f"{party}.key")]


def node_party_config(fed: LocalFederation, party: str, stats: Path) -> Path:
    """The Node party's JSON config: the coordinator's fingerprints (Node has no model), the party's PKI."""
    config = load_coordinator_config(fed.root / "coordinator.yaml")
    pki = fed.root / "pki"
    data = {"federation_id": fed.federation_id, "coordinator": f"127.0.0.1:{fed.ports['coordinator']}",
            "party_id": party,
            "tls": {"ca": str(pki / "ca.pem"), "cert": str(pki / f"{party}.pem"), "key": str(pki / f"{party}.key")},
            "fingerprints": {"model": config.model_fingerprint, "hparams": config.hparams_fingerprint,
                             "c0": config.c0_fingerprint},
            "statistics": str(stats), "out": str(fed.root / f"node-{party}-out"),
            "timeouts": {"join": 30, "phase": 60, "rpc": 10}}
    path = fed.root / f"node-{party}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def start_node_party(fed: LocalFederation, node: str, party: str, stats: Path) -> str:
    """Starts `collabedit-node party` as fed.procs["node-<party>"] (logs/node-<party>.log); returns that name."""
    config = node_party_config(fed, party, stats)
    name = f"node-{party}"
    log = open(fed.log_path(name), "ab")
    try:
        fed.procs[name] = subprocess.Popen([node, str(NODE_CLI), "party", "--config", str(config)], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                           env={**os.environ, **SINGLE_THREADED})
    finally:
        log.close()
    return name


def run_node_cli(node: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(NODE_CLI), *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def queue_edit(fed: LocalFederation, party: str, index: int) -> None:
    fed.party_stub(party).SubmitEditRequests(ppb.SubmitEditRequestsRequest(requests=[ppb.EditRequest(
        case_id=f"{party}-1", prompt="{} is in", subject=f"S{index}", target_new="X")]), timeout=10)


def start_round(fed: LocalFederation, python_parties: list[str]) -> int:
    """Makes every Python daemon (with queued edits) join now; returns the round id."""
    rounds = {fed.party_stub(party).StartRound(ppb.StartRoundRequest(), timeout=60).round_id for party in python_parties}
    assert len(rounds) == 1, rounds
    return rounds.pop()


def wait_process(fed: LocalFederation, name: str, timeout: float) -> int:
    try:
        return fed.procs[name].wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} did not finish within {timeout:.0f} s; {fed.describe_logs()}") from None


def node_deltas(result: dict) -> dict[int, np.ndarray]:
    return {int(layer): read_node_delta(info["file"], tuple(info["shape"])) for layer, info in result["layers"].items()}


def run_python_round(root: Path, world: dict, schedule: str) -> dict[str, dict[int, np.ndarray]]:
    """The reference round: three Python daemons. party -> layer -> ΔW."""
    with make_federation(root, world, schedule) as fed:
        for i, party in enumerate(PARTIES):
            queue_edit(fed, party, i)
        round_id = start_round(fed, PARTIES)
        results = wait_results({p: fed.party_stub(p) for p in PARTIES}, round_id, timeout=120)
        assert {r.phase for r in results.values()} == {COMPLETED}, fed.describe_logs()
        return {party: read_synthetic_delta(result.delta_path) for party, result in results.items()}


def run_mixed_round(root: Path, world: dict, schedule: str, node: str, before_round=None, after_round=None,
                    before_node=None, node_party: str = "c", timeout: float = 120.0) -> dict:
    """Two Python daemons and the Node party as `node_party`.

    before_node(fed): called once the coordinator and the Python daemons serve, before the Node party
    starts; before_round(fed): then, to queue the daemons' edits (default: one each); after_round(fed,
    round_id): once every party finished, with the coordinator still up.
    Returns {"python": party -> layer -> ΔW, "node": the Node party's result.json, "node_deltas": layer -> ΔW}.
    """
    python_parties = [p for p in PARTIES if p != node_party]
    fed = make_federation(root, world, schedule)
    try:
        start_processes(fed, python_parties)
        if before_node is not None:
            before_node(fed)
        name = start_node_party(fed, node, node_party, world["node"][PARTIES.index(node_party)])
        if before_round is not None:
            before_round(fed)
        else:
            for party in python_parties:
                queue_edit(fed, party, PARTIES.index(party))
        round_id = start_round(fed, python_parties)
        results = wait_results({p: fed.party_stub(p) for p in python_parties}, round_id, timeout=timeout)
        code = wait_process(fed, name, timeout=30)
        log = fed.log_path(name).read_text(errors="replace")
        assert code == 0, f"{name} exited with {code}:\n{log[-3000:]}"
        assert {r.phase for r in results.values()} == {COMPLETED}, fed.describe_logs()
        result_path = fed.root / f"node-{node_party}-out" / f"round-{round_id}" / "result.json"
        result = json.loads(result_path.read_text())
        if after_round is not None:
            after_round(fed, round_id)
        return {"python": {party: read_synthetic_delta(r.delta_path) for party, r in results.items()},
                "node": result, "node_deltas": node_deltas(result), "round_id": round_id, "node_log": log}
    finally:
        fed.close()


def merged_deltas(world: dict, coordinator_yaml: Path) -> dict[int, np.ndarray]:
    """ΔW of the summed statistics of all three parties, solved in this process (float64)."""
    config = load_coordinator_config(coordinator_yaml)
    out = {}
    for spec, lam in zip(config.layers, config.lambdas):
        s_kk = sum(party_stats(i)[spec.layer][0] for i in range(3))
        s_rk = sum(party_stats(i)[spec.layer][1] for i in range(3))
        out[spec.layer] = collabedit_merge(config.c0[spec.module_name], lam, torch.tensor(s_kk),
                                           torch.tensor(s_rk)).numpy()
    return out
