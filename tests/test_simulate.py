"""How `collabedit simulate` draws its edits (no model needed)."""

from __future__ import annotations

import pytest

from collabedit_secure.simulate import SimulationConfig, split_cases


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
