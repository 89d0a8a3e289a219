"""A coordinator stopped mid-round resumes from its state_dir: each upload counts exactly once."""

from __future__ import annotations

import pytest

from collabedit_secure.coordinator.config import load_config
from collabedit_secure.rpc.generated import common_pb2 as pb

from .harness import (LAYERS, Party, expected_delta, finish_step, party_statistics, prepare, relative_error,
                      start, wait_phase, write_config)

pytestmark = pytest.mark.timeout(60)


def test_restart_mid_upload(tmp_path, pki, stats):
    config_path = write_config(tmp_path, stats, pki)
    config = load_config(config_path)
    running = start(config_path)
    parties = [Party(name, pki, running.port, config) for name in ("a", "b", "c")]
    data = {p.name: party_statistics(seed) for seed, p in enumerate(parties)}
    try:
        prepare(parties)
        for p in parties[:2]:
            p.upload_step(data[p.name], LAYERS)
        running.stop(0)

        running = start(config_path)  # same state_dir, a new port
        for p in parties:
            p.connect(running.port)
        assert wait_phase(parties[0], "UPLOADING").status.round_id == 1
        # a retry of an upload accepted before the restart is recognised, not added again
        assert parties[0].upload(0, pb.TENSOR_S_RK, data["a"][0][1]).already_accepted
        parties[2].upload_step(data["c"], LAYERS)
        wait_phase(parties[0], "UNMASKING")
        store = running.rounds.store
        assert store.query("SELECT COUNT(*) FROM uploads WHERE round = 1")[0][0] == 3 * 2 * len(LAYERS)
        assert {r[0] for r in store.query("SELECT generation FROM accumulators WHERE round = 1")} == {3}
        deltas = finish_step(parties, LAYERS)
        wait_phase(parties[0], "COMPLETED", round_id=1)
        expected = expected_delta(config, list(data.values()))
        for layer in LAYERS:
            assert relative_error(deltas[layer], expected[layer].numpy()) <= 1e-9

        # A completed round's result is served again after a restart, never recomputed.
        running.stop(0)
        running = start(config_path)
        parties[0].connect(running.port)
        again, _ = parties[0].download(0, round_id=1)
        assert (again == deltas[0]).all()
        assert wait_phase(parties[0], "WAITING_FOR_PARTIES").status.round_id == 2
    finally:
        for p in parties:
            p.close()
        running.stop(0)


def test_restart_mid_unmasking(tmp_path, pki, stats):
    """One survivor revealed its shares, then the coordinator stopped: the revealed shares are durable,
    the next reveal completes the unmasking, and the result is the sum of every upload once."""
    config_path = write_config(tmp_path, stats, pki, threshold=3, min_parties=3)
    config = load_config(config_path)
    running = start(config_path)
    parties = [Party(name, pki, running.port, config) for name in ("a", "b", "c")]
    data = {p.name: party_statistics(seed) for seed, p in enumerate(parties)}
    try:
        prepare(parties)
        for p in parties:
            p.upload_step(data[p.name], LAYERS)
        wait_phase(parties[0], "UNMASKING")
        parties[0].reveal()
        before = running.rounds.store.snapshot()
        running.stop(0)

        running = start(config_path)
        assert running.rounds.store.snapshot() == before  # nothing lost, nothing added by the restart
        for p in parties:
            p.connect(running.port)
        assert wait_phase(parties[0], "UNMASKING").status.round_id == 1
        for p in parties[1:]:  # a's reveal from before the restart still counts: t = 3 needs only these
            p.reveal()
        deltas = finish_step(parties, LAYERS, unmask=False)
        wait_phase(parties[0], "COMPLETED", round_id=1)
        expected = expected_delta(config, list(data.values()))
        for layer in LAYERS:
            assert relative_error(deltas[layer], expected[layer].numpy()) <= 1e-9
    finally:
        for p in parties:
            p.close()
        running.stop(0)
