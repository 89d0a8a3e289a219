"""On the embedded default world: a global edit of 10 records with real C0 makes the new targets win."""

from __future__ import annotations

import pytest

from collabedit_secure.editing import MemitHparams, ModelAdapter, edit, layer_stats, requests_from_records
from collabedit_secure.eval.nll import target_nll


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_global_edit_efficacy_default_world(default_world, schedule):
    model, tok = default_world.load_model()
    model.eval()
    hp = MemitHparams.builtin("default-world")
    adapter = ModelAdapter.from_model(model, hp)
    texts = default_world.corpus_texts()
    c0 = {layer: layer_stats(model, tok, adapter.rewrite_name(layer), texts, n_samples=hp.mom2_n_samples,
                             batch_size=hp.mom2_batch_size, progress=False).moment() for layer in hp.layers}
    requests = requests_from_records(default_world.records[:10])
    prompts = [r.prompt.format(r.subject) for r in requests]
    new = [r.target_new.strip() for r in requests]
    true = [r.target_true.strip() for r in requests]
    delta = edit(model, tok, [requests], hp, c0, schedule=schedule).delta
    delta.apply(model)
    try:
        success = (target_nll(model, tok, prompts, new) < target_nll(model, tok, prompts, true)).double().mean()
    finally:
        delta.revert(model)
    print(f"{schedule}: efficacy {float(success):.2f} on 10 world records")
    assert success >= 0.8
