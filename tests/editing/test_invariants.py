"""The four collaboration invariants (float64), on a tiny random GPT-2; slow twins on the default world."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch

from collabedit_secure.editing import ModelAdapter, edit
from collabedit_secure.editing.context import generate_context_templates
from collabedit_secure.editing.keys import compute_keys
from collabedit_secure.editing.targets import TargetCache, compute_targets

from .conftest import random_c0, tiny_hparams, tiny_model, tiny_requests

TOL = 1e-9


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def random_split(requests, n_parties: int, seed: int):
    shuffled = list(requests)
    random.Random(seed).shuffle(shuffled)
    cuts = sorted(random.Random(seed + 1).sample(range(1, len(shuffled)), n_parties - 1))
    bounds = [0, *cuts, len(shuffled)]
    return [shuffled[a:b] for a, b in zip(bounds, bounds[1:])]


def setup(model, tok, hp):
    adapter = ModelAdapter.from_model(model, hp)
    c0 = {layer: random_c0(adapter.key_dim(model, layer), seed=layer) for layer in hp.layers}
    templates = generate_context_templates(model, tok, hp.context_template_seed, hp.context_template_length_params)
    return adapter, c0, templates


def reference_memit(model, tok, requests, hp, c0, templates, sequential: bool,
                    targets: TargetCache | None = None) -> dict[str, torch.Tensor]:
    """Textbook MEMIT written out independently of `edit` (MEMIT's adj_k = solve(A, K); ΔW = R adj_kᵀ)."""
    adapter = ModelAdapter.from_model(model, hp)
    z = compute_targets(model, tok, adapter, hp, requests, templates, cache=targets)
    saved = {l: adapter.weight_out_in(model, l).detach().clone() for l in hp.layers}
    updates = {}
    try:
        for i, layer in enumerate(hp.layers):
            keys, cur_z = compute_keys(model, tok, adapter, requests, [layer], templates, hp.z_layer)
            k = keys[layer]
            r = (z - cur_z) / (len(hp.layers) - i)
            adj_k = torch.linalg.solve(hp.layer_lambdas()[i] * c0[layer] + k @ k.T, k)
            updates[adapter.rewrite_name(layer)] = r @ adj_k.T
            if sequential:
                with torch.no_grad():
                    adapter.weight_out_in(model, layer).copy_(saved[layer] + updates[adapter.rewrite_name(layer)])
    finally:
        with torch.no_grad():
            for layer, w in saved.items():
                adapter.weight_out_in(model, layer).copy_(w)
    return updates


def check_invariants(model, tok, requests, hp, schedule: str, n_parties: int, seed: int = 0):
    adapter, c0, templates = setup(model, tok, hp)
    parties = random_split(requests, n_parties, seed)
    # The parties and global editing each optimise their own targets; the references below reuse
    # global editing's (compute_z is the slow part, and the same function either way).
    targets = TargetCache()
    collab = edit(model, tok, parties, hp, c0, schedule=schedule, templates=templates, keep_factors=True, keep_contributions=True)
    everyone = edit(model, tok, [list(requests)], hp, c0, schedule=schedule, templates=templates,
                    target_cache=targets)
    assert everyone.contributions == [] and len(collab.contributions) == n_parties  # kept only when asked
    for name, update in everyone.delta.weights.items():  # invariants 1 and 2
        assert update.abs().max() > 0
        assert rel_err(collab.delta.weights[name], update) <= TOL, name
    reference = reference_memit(model, tok, requests, hp, c0, templates, schedule == "sequential", targets)
    for name, update in reference.items():  # the driver really is MEMIT
        assert rel_err(everyone.delta.weights[name], update) <= 1e-8, name
    own = parties[0]  # invariant 3: one party == that party's own MEMIT
    alone = edit(model, tok, [own], hp, c0, schedule=schedule, templates=templates, keep_factors=True, keep_contributions=True,
                 target_cache=targets)
    own_reference = reference_memit(model, tok, own, hp, c0, templates, schedule == "sequential", targets)
    for name, update in own_reference.items():
        assert rel_err(alone.delta.weights[name], update) <= 1e-8, name
    # invariant 4: Δ_i (λC0 + K_iK_iᵀ) == R_iK_iᵀ
    for layer, lam in zip(hp.layers, hp.layer_lambdas()):
        name = adapter.rewrite_name(layer)
        part = alone.contributions[0][layer]
        lhs = alone.delta.weights[name] @ (lam * c0[layer] + part.keys @ part.keys.T)
        assert rel_err(lhs, part.residuals @ part.keys.T) <= TOL, name
    return collab, everyone


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_four_invariants_hold_with_a_lambda_per_layer(gpt2_f64, tok, schedule):
    hp = tiny_hparams(layers=[1, 2, 3], mom2_update_weight=[5.0, 50.0, 500.0])
    collab, everyone = check_invariants(gpt2_f64, tok, tiny_requests(4), hp, schedule, n_parties=2)
    assert everyone.lambdas == {f"transformer.h.{l}.mlp.c_proj": lam for l, lam in zip([1, 2, 3], [5.0, 50.0, 500.0])}
    assert collab.delta.metadata["lambda"] == [5.0, 50.0, 500.0]
    uniform = edit(gpt2_f64, tok, [tiny_requests(4)], tiny_hparams(layers=[1, 2, 3], mom2_update_weight=50.0),
                   setup(gpt2_f64, tok, hp)[1], schedule=schedule)
    listed = edit(gpt2_f64, tok, [tiny_requests(4)], tiny_hparams(layers=[1, 2, 3], mom2_update_weight=[50.0] * 3),
                  setup(gpt2_f64, tok, hp)[1], schedule=schedule)
    for name, update in uniform.delta.weights.items():  # one number or the same number per layer: one edit
        assert torch.equal(listed.delta.weights[name], update)
        if everyone.lambdas[name] != 50.0:  # the layers whose lambda differs are solved with theirs
            assert not torch.allclose(everyone.delta.weights[name], update)


@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_four_invariants_tiny_gpt2(gpt2_f64, tok, schedule):
    requests = tiny_requests(5)
    before = {k: v.clone() for k, v in gpt2_f64.state_dict().items()}
    check_invariants(gpt2_f64, tok, requests, tiny_hparams(layers=[1, 2, 3]), schedule, n_parties=3)
    for key, value in gpt2_f64.state_dict().items():  # edit never leaves the model edited
        assert torch.equal(value, before[key]), key


def test_sequential_differs_from_parallel(gpt2_f64, tok):
    """Otherwise the two schedule tests would not be testing two things."""
    hp = tiny_hparams(layers=[1, 2, 3])
    _, c0, templates = setup(gpt2_f64, tok, hp)
    requests = [tiny_requests(4)]
    par = edit(gpt2_f64, tok, requests, hp, c0, "parallel", templates=templates).delta.weights
    seq = edit(gpt2_f64, tok, requests, hp, c0, "sequential", templates=templates).delta.weights
    first, last = "transformer.h.1.mlp.c_proj", "transformer.h.3.mlp.c_proj"
    assert rel_err(seq[first], par[first]) <= 1e-12  # nothing applied before the first layer
    assert rel_err(seq[last], par[last]) > 1e-3


def test_float64_editing_of_a_float32_model(tok, monkeypatch):
    """edit_dtype float64 optimises the targets on the float32 weights (as MEMIT) and then edits
    exactly as on a float64 copy; the float32 model is handed back intact."""
    from collabedit_secure.editing import memit

    model = tiny_model("gpt2", tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model64 = copy.deepcopy(model).double()
    hp32, hp64 = tiny_hparams(layers=[1, 2, 3]), tiny_hparams(layers=[1, 2, 3], edit_dtype="float64")
    _, c0, templates = setup(model64, tok, hp32)
    requests = [tiny_requests(4)]
    result = edit(model, tok, requests, hp64, c0, "sequential", templates=templates)
    in_float32 = edit(model, tok, requests, hp32, c0, "sequential", templates=templates)
    assert torch.equal(result.targets[0], in_float32.targets[0])
    # The float64 copy, handed the same targets, gives the same update.
    monkeypatch.setattr(memit, "compute_targets", lambda *args: result.targets[0])
    want = edit(model64, tok, requests, hp32, c0, "sequential", templates=templates).delta.weights
    for name, update in want.items():
        assert rel_err(result.delta.weights[name], update) <= 1e-12, name
    after = model.state_dict()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_four_invariants_default_world(default_world, schedule):
    from collabedit_secure.editing import MemitHparams, requests_from_records

    model, tok = default_world.load_model()
    model = model.double().eval()
    # The invariants are identities of the solve: they hold for any targets, so compute_z gets 10
    # of its 100 steps here (the slow part; the world tests of editing quality use all of them).
    hp = dataclasses.replace(MemitHparams.builtin("default-world"), v_num_grad_steps=10)
    requests = requests_from_records(default_world.records[:8])
    check_invariants(model, tok, requests, hp, schedule, n_parties=3, seed=1)
