"""Metrics on the embedded default world: the unedited model knows the true facts, so it should
prefer o_true over o_new both on the edited subjects (low efficacy) and on neighbours (high
specificity)."""

from __future__ import annotations

import pytest

from collabedit_secure.eval.consistency import ConsistencyReference, tfidf_similarity
from collabedit_secure.eval.datasets import validate_counterfact_records
from collabedit_secure.eval.report import evaluate_dataset


@pytest.mark.slow
def test_unedited_world_model_prefers_true_facts(default_world):
    model, tok = default_world.load_model()
    records = validate_counterfact_records(default_world.records)[:50]
    reference = ConsistencyReference.from_world(default_world.records, default_world.corpus_texts())
    per_case, summary = evaluate_dataset(model, tok, records, max_out_len=30, consistency=reference)
    assert len(per_case) == 50
    # The build guarantees >= 95 % on every prompt set over 1,000 records; 50 of them leave slack.
    assert summary["efficacy"] <= 10.0 and summary["generalization"] <= 10.0
    assert summary["specificity"] >= 90.0
    assert summary["fluency"] > 250.0  # the model writes varied text (377 on 30 tokens here), not loops

    # Consistency reads what the generations say: they resemble the facts of other subjects with the
    # true object (the subject's own fact left out) more than those with the new object it is scored on.
    towards_true = []
    for record, case in zip(records, per_case):
        rewrite = record["requested_rewrite"]
        others = [text for text in reference.snippets[rewrite["relation_id"], rewrite["target_true"]["id"]]
                  if rewrite["subject"] not in text]
        towards_true.append(tfidf_similarity(" ".join(case["generated_texts"]), " ".join(others),
                                             reference.vectorizer))
    towards_new = [case["reference_score"] for case in per_case]
    assert summary["n"]["consistency"] == 50 and summary["consistency"] == pytest.approx(2 * sum(towards_new))
    assert sum(t > n for t, n in zip(towards_true, towards_new)) >= 40
