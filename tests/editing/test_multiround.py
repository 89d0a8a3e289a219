"""Multi-round editing with the dynamic covariance C_acc (spec section 2.7), tiny float64 GPT-2.

Round t solves ΔW_t = S_RK (λC0 + C_acc + S_KK)⁻¹ on the model as rounds 1..t-1 left it, then
C_acc += λ S_KK. Collaborative and global editing must agree round by round: given the same weights
and the same C_acc, the same ΔW.
"""

from __future__ import annotations

import pytest
import torch

from collabedit_secure.editing import edit
from collabedit_secure.merging.collabedit import update_dynamic_covariance

from .conftest import tiny_hparams, tiny_requests
from .test_invariants import TOL, random_split, rel_err, setup


@pytest.fixture
def two_rounds(gpt2_f64, tok):
    hp = tiny_hparams(layers=[1, 2, 3])
    adapter, c0, templates = setup(gpt2_f64, tok, hp)
    requests = tiny_requests(8)
    return hp, adapter, c0, templates, requests[:4], requests[4:]


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_second_round_collaborative_equals_global(gpt2_f64, tok, two_rounds, schedule):
    hp, adapter, c0, templates, first, second = two_rounds
    lam = hp.mom2_update_weight
    before = {k: v.clone() for k, v in gpt2_f64.state_dict().items()}

    def run(parties, c_acc=None):
        return edit(gpt2_f64, tok, parties, hp, c0, schedule=schedule, c_acc=c_acc, templates=templates,
                    keep_factors=True, keep_contributions=True)

    round1, round1_collab = run([first]), run(random_split(first, 2, seed=0))
    c_acc = update_dynamic_covariance(None, round1.s_kk, lam)
    c_acc_collab = update_dynamic_covariance(None, round1_collab.s_kk, lam)
    round1.delta.apply(gpt2_f64)  # both second rounds start from the same weights
    try:
        round2, round2_collab = run([second], c_acc), run(random_split(second, 3, seed=1), c_acc_collab)
    finally:
        round1.delta.revert(gpt2_f64)

    for layer in hp.layers:
        name = adapter.rewrite_name(layer)
        k1 = round1.contributions[0][layer].keys
        assert rel_err(c_acc[name], lam * k1 @ k1.T) <= TOL, name  # C_acc = λ K₁K₁ᵀ
        assert rel_err(c_acc_collab[name], c_acc[name]) <= TOL, name
        assert round2.delta.weights[name].abs().max() > 0
        assert rel_err(round2_collab.delta.weights[name], round2.delta.weights[name]) <= TOL, name
        part = round2.contributions[0][layer]  # round 2 really solved with C_acc in the system
        lhs = round2.delta.weights[name] @ (lam * c0[layer] + c_acc[name] + part.keys @ part.keys.T)
        assert rel_err(lhs, part.residuals @ part.keys.T) <= TOL, name
    assert round2.delta.metadata["dynamic_covariance"] and not round1.delta.metadata["dynamic_covariance"]
    for key, value in gpt2_f64.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_dynamic_covariance_weights_each_layer_by_its_own_lambda():
    s_kk = {"a": torch.eye(2, dtype=torch.float64), "b": 2 * torch.eye(2, dtype=torch.float64)}
    once = update_dynamic_covariance(None, s_kk, {"a": 10.0, "b": 100.0})
    assert torch.equal(once["a"], 10 * torch.eye(2, dtype=torch.float64))
    assert torch.equal(once["b"], 200 * torch.eye(2, dtype=torch.float64))
    twice = update_dynamic_covariance(once, s_kk, 10.0)  # one number: every layer
    assert torch.equal(twice["a"], 20 * torch.eye(2, dtype=torch.float64))
    assert torch.equal(twice["b"], 220 * torch.eye(2, dtype=torch.float64))


def test_dynamic_covariance_keeps_the_next_round_off_earlier_keys(gpt2_f64, tok, two_rounds):
    """With C_acc = λK₁K₁ᵀ, ΔW₂ minimises ‖ΔW K₂ - R₂‖² + λ tr(ΔW C0 ΔWᵀ) + λ‖ΔW K₁‖², so it moves
    round 1's keys less than the ΔW₂ solved without C_acc (parallel: K₂ and R₂ do not depend on it)."""
    hp, adapter, c0, templates, first, second = two_rounds
    round1 = edit(gpt2_f64, tok, [first], hp, c0, templates=templates, keep_factors=True, keep_contributions=True, schedule="parallel")
    c_acc = update_dynamic_covariance(None, round1.s_kk, hp.mom2_update_weight)
    round1.delta.apply(gpt2_f64)
    try:
        protected = edit(gpt2_f64, tok, [second], hp, c0, "parallel", c_acc=c_acc, templates=templates).delta.weights
        unprotected = edit(gpt2_f64, tok, [second], hp, c0, templates=templates, schedule="parallel").delta.weights
    finally:
        round1.delta.revert(gpt2_f64)
    for layer in hp.layers:
        name = adapter.rewrite_name(layer)
        k1 = round1.contributions[0][layer].keys
        assert (protected[name] @ k1).norm() < 0.99 * (unprotected[name] @ k1).norm(), name


def test_update_dynamic_covariance_accumulates_without_touching_its_inputs():
    eye = torch.eye(3, dtype=torch.float64)
    s1, s2 = {"h.1": eye.clone()}, {"h.1": torch.full((3, 3), 2.0, dtype=torch.float64)}
    c1 = update_dynamic_covariance(None, s1, 10.0)
    c2 = update_dynamic_covariance(c1, s2, 10.0)
    assert torch.equal(c1["h.1"], 10.0 * eye)
    assert torch.equal(c2["h.1"], 10.0 * eye + 20.0)
    assert torch.equal(s1["h.1"], eye)
