"""The shipped default world: what it knows (recomputed here, not read from its build report), that it
is a build of today's default config and generator, and that a damaged copy is refused by name."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from collabedit_secure.world import WorldConfig, generate_world, load_default
from collabedit_secure.world.reference import REFERENCE_DIR, ReferenceWorldError, load_reference, provenance
from collabedit_secure.world.relations import RELATIONS, object_string
from collabedit_secure.world.train import knowledge


@pytest.mark.slow
def test_default_model_knows_its_facts(default_world):
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


def test_default_is_the_shipped_build_of_todays_config_and_generator(default_world):
    """The manifest's cache key hashes the config and BUILD_VERSION: a change to either, or to the
    generator's output, must come with a new reference build."""
    assert default_world.root == REFERENCE_DIR
    config = default_world.config
    assert config == WorldConfig(train_dtype=config.train_dtype, threads=config.threads)
    manifest = json.loads((REFERENCE_DIR / "manifest.json").read_text())
    assert manifest["cache_key"] == config.cache_key()
    world = generate_world(config)
    assert default_world.records == world.records and default_world.corpus_texts() == world.corpus
    made = provenance()
    assert made["train_dtype"] == config.train_dtype and made["cpu"] and made["date"]


def test_default_never_trains(monkeypatch):
    import collabedit_secure.world.cache as cache

    monkeypatch.setattr(cache, "build_world", lambda *a, **k: pytest.fail("load_default() trained a world"))
    assert load_default().root == REFERENCE_DIR


def test_the_shipped_c0_is_what_editing_uses(monkeypatch, tmp_path):
    """C0 of the default layers ships with the model: with an empty cache nothing is computed. (The
    file's name hashes the model, tokenizer, layer and corpus sample, so it serves only that exact
    statistic; its values are checked for what a second moment must be.)"""
    import torch

    import collabedit_secure.editing.covariance as covariance
    from collabedit_secure.pipeline import covariances, default_hparams, load_model

    monkeypatch.setenv("COLLABEDIT_CACHE", str(tmp_path))  # an empty cache: only the shipped files can serve
    monkeypatch.setattr(covariance, "_accumulate_batch", lambda *a, **k: pytest.fail("C0 was computed"))
    loaded = load_model("default")
    for schedule in ("sequential", "parallel"):
        c0, _ = covariances(loaded, default_hparams(loaded, schedule=schedule), progress=False)
        assert sorted(c0) == [f"transformer.h.{layer}.mlp.c_proj" for layer in (0, 1, 2)]
        for matrix in c0.values():
            assert matrix.dtype == torch.float64 and torch.equal(matrix, matrix.T)
            assert torch.linalg.eigvalsh(matrix).min() > -1e-9  # a second moment is positive semidefinite


@pytest.fixture
def reference_copy(tmp_path):
    return shutil.copytree(REFERENCE_DIR, tmp_path / "reference")


@pytest.mark.parametrize("damage, name", [
    (lambda root: (root / "model" / "model.safetensors").write_bytes(
        (root / "model" / "model.safetensors").read_bytes()[:-4096]), "model/model.safetensors"),
    (lambda root: (root / "records.json.gz").write_bytes((root / "records.json.gz").read_bytes()[:1000]),
     "records.json.gz"),
    (lambda root: sorted((root / "c0").iterdir())[0].write_bytes(b"\0" * 64),
     "c0/transformer.h.0.mlp.c_proj"),
    (lambda root: (root / "model" / "tokenizer.json").unlink(), "model/tokenizer.json missing"),
])
def test_a_damaged_shipped_file_is_refused_by_name(reference_copy, damage, name):
    assert load_reference(reference_copy).root == reference_copy
    damage(reference_copy)
    with pytest.raises(ReferenceWorldError, match=f"damaged: {name}"):
        load_reference(reference_copy)


def test_a_missing_shipped_world_says_how_to_get_one(tmp_path):
    with pytest.raises(ReferenceWorldError, match="shipped world is missing .* world build --train --out DIR"):
        load_reference(tmp_path)
