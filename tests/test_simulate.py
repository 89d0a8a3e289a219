"""How `collabedit simulate` draws its edits (no model needed)."""

from __future__ import annotations

import pytest
import torch

from collabedit_secure.simulate import SimulationConfig, _float32_drift_note, relative_errors, split_cases


def records(subjects: list[str]) -> list[dict]:
    return [{"case_id": i, "requested_rewrite": {"subject": s}} for i, s in enumerate(subjects)]


def test_split_is_rounds_by_parties_by_edits_of_distinct_subjects():
    pool = records([f"s{i % 40}" for i in range(120)])  # every subject three times
    config = SimulationConfig(parties=3, edits_per_party=4, rounds=2, seed=5)
    split = split_cases(pool, config)
    assert [[len(party) for party in parties] for parties in split] == [[4, 4, 4], [4, 4, 4]]
    subjects = [r["requested_rewrite"]["subject"] for parties in split for party in parties for r in party]
    assert len(subjects) == len(set(subjects)) == 24  # no subject twice, within or across rounds
    assert split == split_cases(pool, config)  # seeded
    assert split != split_cases(pool, SimulationConfig(parties=3, edits_per_party=4, rounds=2, seed=6))


def test_split_refuses_more_edits_than_distinct_subjects():
    pool = records(["a", "b", "a", "c", "b"])
    with pytest.raises(ValueError, match="3 records with distinct subjects; 2 parties x 2 edits x 1 rounds need 4"):
        split_cases(pool, SimulationConfig(parties=2, edits_per_party=2, rounds=1))


def test_relative_errors_is_the_worst_layer_per_round():
    eye = torch.eye(3, dtype=torch.float64)
    reference = [{"a": eye, "b": 2 * eye}, {"a": eye, "b": eye}]
    got = [{"a": eye * 1.5, "b": 2 * eye + 1e-3 * eye}, {"a": eye, "b": eye}]
    errors = relative_errors(got, reference)
    assert errors == pytest.approx([0.5, 0.0], abs=1e-15)  # round 1: layer a (0.5) beats layer b (5e-4)
    assert relative_errors([{"a": -eye}], [{"a": eye}]) == [pytest.approx(2.0)]


@pytest.mark.slow
def test_baseline_rows_merge_local_edits_of_the_round_s_model(default_world):
    """TA / SA / TIES: every party edits the model as the round found it, alone; the server sums,
    averages or TIES-merges those local updates. Rebuilt here from `edit` and the merge rules."""
    from collabedit_secure.editing import EditRequest, edit
    from collabedit_secure.editing.adapters import ModelAdapter, get_module
    from collabedit_secure.merging.baselines import ties_merge
    from collabedit_secure.simulate import Experiment

    config = SimulationConfig(parties=2, edits_per_party=1, rounds=2, fluency=False)
    config.validate()
    experiment = Experiment(config)
    experiment.hparams.v_num_grad_steps = 10  # the wiring, not the edits' quality
    rounds = split_cases(default_world.records, config)
    merge_rules = {"ta": lambda local: {n: sum(d[n] for d in local) for n in local[0]},
                   "sa": lambda local: {n: sum(d[n] for d in local) / len(local) for n in local[0]},
                   "ties": ties_merge}
    for method, rule in merge_rules.items():
        _, _, got = experiment.run_method(method, rounds)
        experiment.reset()
        for round_index, parties in enumerate(rounds):
            local = [edit(experiment.model, experiment.tok, [[EditRequest.from_record(r) for r in party]],
                          experiment.hparams, experiment.c0, templates=experiment.templates,
                          target_cache=experiment.targets).delta.weights
                     for party in parties]
            assert all(not torch.equal(local[0][n], local[1][n]) for n in local[0])  # two different edits
            want = rule(local)
            for name, update in want.items():
                torch.testing.assert_close(got[round_index][name], update.double(), rtol=1e-12, atol=0)
                module = get_module(experiment.model, name)  # the next round starts from this round's merge
                with torch.no_grad():
                    module.weight += (update.T if ModelAdapter.is_transposed(module) else update).float()


def test_float32_drift_is_explained_only_where_a_later_round_exceeds_the_bound():
    float32, float64 = SimulationConfig(rounds=3), SimulationConfig(rounds=3, float64_weights=True)
    drifted = [2.2e-14, 1.0e-12, 3.9e-7]
    note = _float32_drift_note(drifted, float32)
    assert "3.9e-07 in round 3" in note and "round 1: 2.2e-14" in note and "--float64-weights" in note
    assert _float32_drift_note(drifted, float64) is None  # nothing is rounded between rounds there
    assert _float32_drift_note([2.2e-14, 1.0e-12, 4.0e-12], float32) is None
    assert _float32_drift_note([3.0e-9], SimulationConfig()) is None  # one round: the bound itself speaks
