"""eval.locality: ΔW applied through hooks at chosen positions equals the weight update where it should."""

from __future__ import annotations

import pytest
import torch

from collabedit_secure.editing import ModelAdapter, edit
from collabedit_secure.editing.context import generate_context_templates
from collabedit_secure.editing.tokens import subject_last_index
from collabedit_secure.eval.locality import delta_at_positions, efficacy_by_position

from .conftest import random_c0, tiny_hparams, tiny_requests


@pytest.fixture(scope="module")
def edited(gpt2_f64, tok):
    hp = tiny_hparams()
    adapter = ModelAdapter.from_model(gpt2_f64, hp)
    c0 = {layer: random_c0(adapter.key_dim(gpt2_f64, layer), seed=layer) for layer in hp.layers}
    templates = generate_context_templates(gpt2_f64, tok, 0, hp.context_template_length_params)
    requests = tiny_requests(4)
    return edit(gpt2_f64, tok, [requests], hp, c0, templates=templates).delta, requests[0]


def _logits(model, tok, text):
    return model(**tok(text, return_tensors="pt")).logits[0]


@torch.no_grad()
def test_hooks_match_the_weight_update(gpt2_f64, tok, edited):
    delta, request = edited
    text = request.prompt.format(request.subject)
    position = subject_last_index(tok, request.prompt, request.subject)
    plain = _logits(gpt2_f64, tok, text)
    with delta_at_positions(gpt2_f64, delta, "none", position):
        assert torch.equal(_logits(gpt2_f64, tok, text), plain)
    with delta_at_positions(gpt2_f64, delta, "all", position):
        hooked = _logits(gpt2_f64, tok, text)
    delta.apply(gpt2_f64)
    try:
        applied = _logits(gpt2_f64, tok, text)
    finally:
        delta.revert(gpt2_f64)
    assert torch.allclose(hooked, applied, rtol=0, atol=1e-10)
    assert not torch.allclose(hooked, plain)
    with delta_at_positions(gpt2_f64, delta, "subject", position):
        subject_only = _logits(gpt2_f64, tok, text)
    # causal: tokens before the subject's last one see no change; from it on, the edit acts
    assert torch.equal(subject_only[:position], plain[:position])
    assert not torch.allclose(subject_only[position], plain[position])
    assert torch.equal(_logits(gpt2_f64, tok, text), plain)  # hooks removed on exit


def test_bad_arguments(gpt2_f64, tok, edited):
    delta, _ = edited
    with pytest.raises(ValueError, match="mode must be one of"):
        with delta_at_positions(gpt2_f64, delta, "everywhere", 0):
            pass
    with pytest.raises(ValueError, match="unknown mode"):
        efficacy_by_position(gpt2_f64, tok, delta, [{}], modes=("subjects",))
    with pytest.raises(ValueError, match="at least one record"):
        efficacy_by_position(gpt2_f64, tok, delta, [])


@pytest.mark.slow
def test_all_and_none_agree_with_the_evaluator(default_world):
    """On the world model: mode 'all' is the edited model's efficacy, 'none' the unedited one's."""
    from collabedit_secure.eval.report import evaluate_dataset
    from collabedit_secure.editing import requests_from_records
    from collabedit_secure.simulate import Experiment, SimulationConfig

    world = Experiment(SimulationConfig(parties=1, edits_per_party=12, methods=["global"], fluency=False))
    records = default_world.records[:12]
    model, tok = world.model, world.tok
    delta = edit(model, tok, [requests_from_records(records)], world.hparams, world.c0, templates=world.templates).delta
    by_position = efficacy_by_position(model, tok, delta, records)
    _, before = evaluate_dataset(model, tok, records, fluency=False)
    delta.apply(model)
    try:
        _, after = evaluate_dataset(model, tok, records, fluency=False)
    finally:
        delta.revert(model)
    assert by_position["none"] == pytest.approx(before["efficacy"])
    assert by_position["all"] == pytest.approx(after["efficacy"])
    assert by_position["all"] > by_position["none"]
