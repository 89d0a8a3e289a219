"""eval.locality: ΔW applied through hooks at chosen positions equals the weight update where it should."""

from __future__ import annotations

import pytest
import torch

from collabedit_secure.editing import ModelAdapter, edit
from collabedit_secure.editing.context import generate_context_templates
from collabedit_secure.editing.tokens import subject_last_index
from collabedit_secure.eval.locality import (delta_at_positions, efficacy_by_position, subject_states,
                                             target_attainment)

from .conftest import random_c0, tiny_hparams, tiny_requests


@pytest.fixture(scope="module")
def edited(gpt2_f64, tok):
    hp = tiny_hparams()
    adapter = ModelAdapter.from_model(gpt2_f64, hp)
    c0 = {layer: random_c0(adapter.key_dim(gpt2_f64, layer), seed=layer) for layer in hp.layers}
    templates = generate_context_templates(gpt2_f64, tok, 0, hp.context_template_length_params)
    requests = tiny_requests(4)
    return edit(gpt2_f64, tok, [requests], hp, c0, templates=templates, schedule="parallel").delta, requests[0]


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
    delta = edit(model, tok, [requests_from_records(records)], world.hparams, world.c0, "parallel",
                 templates=world.templates).delta
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


def test_target_attainment_on_hand_made_shifts():
    before = torch.zeros(2, 3, dtype=torch.float64)
    target = torch.tensor([[2.0, 1.0, 4.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    after = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)  # half + sideways, reached, unmoved
    got = target_attainment(target, before, after)
    assert torch.allclose(got["fraction"], torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(got["orthogonal"], torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="equal"):
        target_attainment(target, before, after[:, :2])
    with pytest.raises(ValueError, match=r"column\(s\) \[1\]"):
        target_attainment(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.ones(1, 2))


@torch.no_grad()
def test_one_layer_edit_attains_the_solve_s_fraction(gpt2_f64, tok):
    """One edited layer, bare prompt only: the block output moves by ΔW k = r kᵀ(λC0 + k kᵀ)⁻¹ k,
    exactly along the request, so fraction = kᵀ A⁻¹ k and nothing moves sideways."""
    hp = tiny_hparams(layers=[2])
    adapter = ModelAdapter.from_model(gpt2_f64, hp)
    c0 = {2: random_c0(adapter.key_dim(gpt2_f64, 2), seed=2)}
    request = tiny_requests(1)
    result = edit(gpt2_f64, tok, [request], hp, c0, templates=[["{}"]], keep_factors=True, keep_contributions=True, schedule="parallel")
    before = subject_states(gpt2_f64, tok, request, hp)
    result.delta.apply(gpt2_f64)
    try:
        after = subject_states(gpt2_f64, tok, request, hp)
    finally:
        result.delta.revert(gpt2_f64)
    k = result.contributions[0][2].keys[:, 0]
    a = hp.mom2_update_weight * c0[2] + torch.outer(k, k)
    expected = k @ torch.linalg.solve(a, k)
    got = target_attainment(result.targets[0], before, after)
    assert 0.05 < float(expected) < 0.999  # a partial fit, so the check can tell fractions apart
    assert torch.allclose(got["fraction"], expected.reshape(1), rtol=1e-9, atol=0)
    assert float(got["orthogonal"][0]) < 1e-9
