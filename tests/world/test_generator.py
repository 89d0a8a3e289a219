"""The synthetic world: determinism, CounterFact schema, counts and prompt semantics."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from collabedit_secure.world import WorldConfig, generate_world, tiny_config
from collabedit_secure.world.relations import RELATIONS, object_string


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig())


@pytest.fixture(scope="module")
def fact_table(world):
    return {(s, rid): o for s, rid, o in world.facts}


def test_same_seed_same_world_different_seed_different_world():
    a, b = generate_world(tiny_config()), generate_world(tiny_config())
    assert json.dumps(a.records) == json.dumps(b.records)
    assert a.corpus == b.corpus
    c = generate_world(tiny_config(seed=99))
    assert c.records != a.records and c.corpus != a.corpus


def test_default_counts(world):
    assert len(set(world.subjects)) == len(world.subjects) >= 1000
    assert len(world.relations) >= 20
    assert len(set(world.facts)) == len(world.facts) >= 5000
    assert len({(s, r) for s, r, _ in world.facts}) == len(world.facts)  # one object per (subject, relation)
    assert len(world.records) == len(world.facts)
    assert [r["case_id"] for r in world.records] == list(range(len(world.records)))


def test_names_are_not_substrings_of_each_other(world):
    names = sorted(world.subjects, key=len)
    joined = "\n".join(names)
    for name in names:
        assert joined.count(name) == 1, name


def test_schema_matches_multicounterfact(world, shared_data):
    real = json.loads((Path(shared_data) / "counterfact" / "multi_counterfact-30.json").read_text())[0]
    ours = world.records[0]
    assert set(ours) == set(real)
    assert set(ours["requested_rewrite"]) == set(real["requested_rewrite"])
    for key in ("target_new", "target_true"):
        assert set(ours["requested_rewrite"][key]) == {"str", "id"}
    for key in ("paraphrase_prompts", "neighborhood_prompts", "attribute_prompts", "generation_prompts"):
        assert isinstance(ours[key], list) and len(ours[key]) == len(real[key])


def test_records_mean_what_counterfact_means(world, fact_table):
    for rec in world.records:
        rw = rec["requested_rewrite"]
        s, rid = rw["subject"], rw["relation_id"]
        rel = next(r for r in world.relations if r.relation_id == rid)
        objects = {object_string(o) for o in rel.objects}
        true, new = rw["target_true"]["str"], rw["target_new"]["str"]
        assert rw["prompt"].count("{}") == 1 and rw["prompt"] == rel.prompt
        assert fact_table[s, rid] == true and new != true and new in objects
        assert rw["target_true"]["id"] != rw["target_new"]["id"]
        assert not true.startswith(" ") and not new.startswith(" ")
        assert len(rec["paraphrase_prompts"]) == 2 and all(s in p for p in rec["paraphrase_prompts"])
        assert len(rec["neighborhood_prompts"]) == 10 and len(rec["attribute_prompts"]) == 10
        assert len(rec["generation_prompts"]) == 10 and all(s in p for p in rec["generation_prompts"])
        assert _holders(rec["neighborhood_prompts"], rel, fact_table, true, exclude=s) == 10
        assert _holders(rec["attribute_prompts"], rel, fact_table, new, exclude=s) == 10


def _holders(prompts, rel, fact_table, obj, exclude):
    """How many prompts are about distinct other subjects whose true object for rel is obj."""
    subjects = set()
    for p in prompts:
        # templates can nest ("{} studied" / "At university, {} studied"): keep the parse naming a subject
        parsed = [_subject_in(p, t) for t in rel.templates]
        known = [s for s in parsed if (s, rel.relation_id) in fact_table]
        assert len(known) == 1, f"prompt {p!r} is not one template of {rel.relation_id} about one subject"
        s = known[0]
        assert s != exclude and fact_table[s, rel.relation_id] == obj
        subjects.add(s)
    return len(subjects)


def _subject_in(prompt, template):
    prefix, suffix = template.split("{}")
    if prompt.startswith(prefix) and prompt.endswith(suffix) and len(prompt) > len(prefix) + len(suffix):
        return prompt[len(prefix) : len(prompt) - len(suffix)]
    return None


def test_every_template_has_one_slot_and_objects_have_enough_holders(world):
    for rel in RELATIONS:
        assert len(rel.paraphrases) == 2 and len(rel.generations) >= 1
        assert all(t.count("{}") == 1 for t in rel.templates)
        assert 10 <= len(rel.objects) <= 15
    holders = defaultdict(int)
    for _, rid, o in world.facts:
        holders[rid, o] += 1
    assert min(holders.values()) >= 11


def test_corpus_states_every_fact_in_every_template(world):
    text = "\n".join(world.corpus)
    rel_by_id = {r.relation_id: r for r in world.relations}
    for s, rid, o in world.facts[::50]:
        for t in rel_by_id[rid].templates:
            assert f"{t.format(s)} {o}." in text


def test_impossible_world_is_rejected_precisely():
    with pytest.raises(ValueError, match="needs 11"):
        generate_world(tiny_config(n_subjects=30))
    with pytest.raises(ValueError, match="relations_per_subject"):
        WorldConfig(relations_per_subject=30)
    with pytest.raises(ValueError, match="train_dtype must be 'auto', 'float32' or 'bfloat16', got 'float16'"):
        WorldConfig(train_dtype="float16")


@pytest.mark.parametrize("field, value, message", [
    ("n_subjects", 1000.0, "n_subjects must be an integer, got 1000.0"),  # would key another cache entry
    ("max_sentences_per_text", 0, "max_sentences_per_text must be positive"),
    ("warmup_steps", -1, "warmup_steps must be >= 0"),
    ("filler_per_subject", -0.5, r"filler_per_subject must be a finite number >= 0"),
    ("lr", -1e-3, "lr must be a finite number > 0"),
    ("object_weight", float("nan"), "object_weight must be a finite number > 0"),
    ("min_lr_ratio", 2.0, r"min_lr_ratio must be a finite number in \[0, 1\]"),
])
def test_config_values_out_of_range_are_named(field, value, message):
    with pytest.raises(ValueError, match=f"^WorldConfig.{message}"):
        WorldConfig(**{field: value})


@pytest.mark.parametrize("native", [True, False])
def test_auto_train_dtype_follows_the_cpu_and_keys_the_cache(monkeypatch, native):
    """bfloat16 only where the CPU has it (emulated, it is ~20x slower than float32); the cache key
    hashes the resolved precision, so machines that train differently never share a build."""
    import torch

    from collabedit_secure.world import config as world_config

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    world_config.native_train_dtype.cache_clear()
    try:
        expected = "bfloat16" if native else "float32"
        auto = WorldConfig()
        assert auto.train_dtype == expected
        assert auto.cache_key() == WorldConfig(train_dtype=expected).cache_key()
        other = "float32" if native else "bfloat16"
        assert auto.cache_key() != WorldConfig(train_dtype=other).cache_key()
        assert WorldConfig.from_dict(auto.to_dict()) == auto
    finally:
        world_config.native_train_dtype.cache_clear()
