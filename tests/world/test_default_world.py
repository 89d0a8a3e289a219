"""The embedded default knows its world: recomputed here, not read from the build report."""

from __future__ import annotations

import random

import pytest

from collabedit_secure.world import WorldConfig
from collabedit_secure.world.relations import RELATIONS, object_string
from collabedit_secure.world.train import knowledge


@pytest.mark.slow
def test_default_model_knows_its_facts(default_world):
    assert default_world.config == WorldConfig()
    model, tok = default_world.load_model()
    sample = random.Random(0).sample(default_world.records, 300)
    scores = knowledge(model, tok, sample)
    for kind in ("rewrite", "paraphrase", "neighborhood"):
        assert scores[kind] >= 0.95, scores
    assert model.config.n_layer >= 4


@pytest.mark.slow
def test_default_model_generates_world_text(default_world):
    """Greedy continuations of generation prompts are world sentences: an object of the relation, then '.'.

    Top-1 recall among all objects of a relation is far above chance (1 in 10-12) but lower than the
    pairwise true-vs-new preference the knowledge bar measures.
    """
    model, tok = default_world.load_model()
    objects = {r.relation_id: {object_string(o) for o in r.objects} for r in RELATIONS}
    records = default_world.records[:20]
    fluent = right = 0
    for rec in records:
        rw = rec["requested_rewrite"]
        ids = tok(rec["generation_prompts"][0], return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0][ids.shape[1] :])
        fluent += any(text.startswith(f" {o}.") for o in objects[rw["relation_id"]])
        right += text.startswith(f" {rw['target_true']['str']}.")
    assert fluent == len(records)
    assert right >= 0.3 * len(records)
