"""Metrics on the embedded default world: the unedited model knows the true facts, so it should
prefer o_true over o_new both on the edited subjects (low efficacy) and on neighbours (high
specificity)."""

from __future__ import annotations

import pytest

from collabedit_secure.eval.datasets import validate_counterfact_records
from collabedit_secure.eval.report import evaluate_dataset


@pytest.mark.slow
def test_unedited_world_model_prefers_true_facts(default_world):
    model, tok = default_world.load_model()
    records = validate_counterfact_records(default_world.records)[:50]
    per_case, summary = evaluate_dataset(model, tok, records, max_out_len=30)
    assert len(per_case) == 50
    assert summary["efficacy"] < 50.0 < summary["specificity"]
    assert summary["efficacy"] < summary["specificity"]
    assert summary["fluency"] > 0.0
