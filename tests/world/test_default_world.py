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
    """Greedy continuation of a generation prompt is a sentence of the world: one of the relation's objects."""
    model, tok = default_world.load_model()
    rec = default_world.records[1]
    prompt = rec["generation_prompts"][0]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0][ids.shape[1] :])
    assert text.startswith(" " + rec["requested_rewrite"]["target_true"]["str"]), text
