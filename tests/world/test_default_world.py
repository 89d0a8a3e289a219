"""The embedded default knows its world: recomputed here, not read from the build report."""

from __future__ import annotations

import random

import pytest

from collabedit_secure.world import WorldConfig
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
    """Greedy continuations of generation prompts state the true object and end the sentence."""
    model, tok = default_world.load_model()
    records = default_world.records[:20]
    right = 0
    for rec in records:
        ids = tok(rec["generation_prompts"][0], return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0][ids.shape[1] :])
        right += text.startswith(" " + rec["requested_rewrite"]["target_true"]["str"] + ".")
    assert right >= 0.8 * len(records)
