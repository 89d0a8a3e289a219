"""EditDelta on disk and on models it does not fit: every refusal is precise and loses nothing."""

from __future__ import annotations

import gc
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from collabedit_secure.editing import EditDelta
from collabedit_secure.editing.delta import METADATA_FILE, TENSORS_FILE, DeltaMismatchError

from .conftest import tiny_model

LAYERS = ("transformer.h.1.mlp.c_proj", "transformer.h.2.mlp.c_proj")


def delta_for(model, seed: int = 0) -> EditDelta:
    """A random update of two layers, with the metadata edit() records about its base."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name in LAYERS:
        d_in, d_out = model.get_submodule(name).weight.shape  # Conv1D stores (in, out)
        weights[name] = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) * 1e-2
    metadata = {"model_fingerprint": EditDelta.fingerprint(model, weights),
                "base_weights_digest": EditDelta.base_digest(model)}
    return EditDelta(weights, metadata)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture
def model(tok):
    return tiny_model("gpt2", tok, torch.float64)


@pytest.mark.parametrize("tamper, message", [
    (lambda t: t[LAYERS[0]].__setitem__((0, 0), float("nan")), f"{LAYERS[0]}: ΔW has NaN or Inf entries"),
    (lambda t: t.__setitem__(LAYERS[1], t[LAYERS[1]].long()), f"{LAYERS[1]}: ΔW must be a 2-D floating-point"),
    (lambda t: t.__setitem__(LAYERS[1], t[LAYERS[1]][0]), f"{LAYERS[1]}: ΔW must be a 2-D floating-point"),
])
def test_a_tampered_update_is_refused_at_load(tamper, message, model, tmp_path):
    path = delta_for(model).save(tmp_path / "d")
    tensors = load_file(str(path / TENSORS_FILE))
    tamper(tensors)
    save_file(tensors, str(path / TENSORS_FILE))
    with pytest.raises(ValueError, match=f"^{path / TENSORS_FILE}: {message}"):
        EditDelta.load(path)


@pytest.mark.parametrize("metadata, message", [
    ({}, "no model_fingerprint"),
    ({"model_fingerprint": None}, "no model_fingerprint"),
    ([1, 2], "expected a JSON object, got list"),
    ("{not json", "not valid JSON"),
])
def test_metadata_that_cannot_guard_the_base_is_refused_at_load(metadata, message, model, tmp_path):
    path = delta_for(model).save(tmp_path / "d")
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    (path / METADATA_FILE).write_text(text)
    with pytest.raises(ValueError, match=f"^{path / METADATA_FILE}: {message}"):
        EditDelta.load(path)


def test_a_truncated_tensor_file_is_named(model, tmp_path):
    path = delta_for(model).save(tmp_path / "d")
    data = (path / TENSORS_FILE).read_bytes()
    (path / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"^{path / TENSORS_FILE}: not a readable safetensors file"):
        EditDelta.load(path)


def test_apply_twice_to_one_model_is_refused_even_without_fingerprints(model):
    delta = delta_for(model)
    bare = EditDelta(delta.weights)  # built in memory, nothing recorded about its base
    bare.apply(model)
    edited = state(model)
    with pytest.raises(DeltaMismatchError, match="already applied to this model"):
        bare.apply(model)
    assert unchanged(model, edited)


def test_a_revert_that_fails_on_one_layer_changes_no_layer(model, tmp_path):
    delta = delta_for(model)
    delta.apply(model)
    path = delta.save(tmp_path / "d")  # records the edited weights' fingerprint
    tensors = load_file(str(path / TENSORS_FILE))
    tensors[LAYERS[1]] = tensors[LAYERS[1]][:, :8].contiguous()
    save_file(tensors, str(path / TENSORS_FILE))
    edited = state(model)
    with pytest.raises(DeltaMismatchError, match=rf"{LAYERS[1]}: delta has shape \(32, 8\) \(out, in\) but the "
                                                 rf"weight is \(32, 128\) \(out, in\)"):
        EditDelta.load(path).revert(model)
    assert unchanged(model, edited)


def test_save_never_writes_over_a_delta_and_a_failed_save_leaves_nothing(model, tmp_path):
    first = delta_for(model)
    path = first.save(tmp_path / "d")
    saved = (path / TENSORS_FILE).read_bytes(), (path / METADATA_FILE).read_text()
    with pytest.raises(FileExistsError, match="never written over another"):
        delta_for(model, seed=1).save(path)
    assert ((path / TENSORS_FILE).read_bytes(), (path / METADATA_FILE).read_text()) == saved

    broken = delta_for(model, seed=1)
    broken.metadata[("not", "a", "json", "key")] = 1
    with pytest.raises(TypeError, match="metadata cannot be written as JSON"):
        broken.save(tmp_path / "e")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no partial folder, no staging left over

    (tmp_path / "empty").mkdir()
    assert EditDelta.load(first.save(tmp_path / "empty")).weights.keys() == first.weights.keys()


def test_a_saved_delta_takes_the_modes_of_the_umask(model, tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        path = delta_for(model).save(tmp_path / "d")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    assert {(p.name, p.stat().st_mode & 0o777) for p in path.iterdir()} == {(TENSORS_FILE, 0o644),
                                                                            (METADATA_FILE, 0o644)}


def test_a_model_dropped_without_revert_is_not_kept_alive(tok):
    model = tiny_model("gpt2", tok, torch.float64)
    delta = delta_for(model)
    delta.apply(model)
    assert len(delta._originals) == 1
    del model
    gc.collect()
    assert len(delta._originals) == 0
