"""End to end on a tiny world: build, load with the HF Auto classes, cache reuse, corruption recovery."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerFast

from collabedit_secure.world import build_world, load_default, open_or_build, tiny_config, verify_bundle
from collabedit_secure.world.generator import generate_world
from collabedit_secure.world.train import knowledge

# Explicit, since "auto" follows the CPU. float32 runs at full speed everywhere; bfloat16 is emulated
# where the CPU lacks it (a tiny build takes 4x as long with AVX2 only), so only one test builds it.
TINY = tiny_config(train_dtype="float32")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("world-cache")


@pytest.fixture(scope="module")
def tiny(cache_root):
    return load_default(cache_dir=cache_root, progress=False, config=TINY)


def test_tiny_build_loads_with_auto_classes(tiny):
    assert tiny.built_now
    model = AutoModelForCausalLM.from_pretrained(tiny.model_dir)
    tok = AutoTokenizer.from_pretrained(tiny.model_dir)
    assert isinstance(model, GPT2LMHeadModel) and isinstance(tok, PreTrainedTokenizerFast)
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    assert model.config.n_layer == TINY.n_layer and model.config.n_embd == TINY.n_embd
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()  # tied


def test_bundle_contents(tiny):
    assert tiny.records == json.loads((tiny.root / "records.json").read_text())
    world = generate_world(TINY)  # what the bundle must hold, made again from its config
    assert tiny.corpus_texts() == world.corpus and tiny.records == world.records
    last_epoch = tiny.knowledge["history"][-1]
    assert tiny.knowledge["epochs"] == last_epoch["epoch"] and tiny.knowledge["build_s"] > 0
    model, tok = tiny.load_model()
    assert not model.training and next(model.parameters()).dtype == torch.float32
    checked = tiny.records[: tiny.knowledge["records_checked"]]
    assert knowledge(model, tok, checked) == {k: tiny.knowledge[k] for k in ("rewrite", "paraphrase", "neighborhood")}


def test_bfloat16_training_learns_and_saves_float32_weights(tmp_path):
    """Autocast lowers only the matmuls; the weights written to the cache stay float32."""
    from safetensors import safe_open

    bundle = build_world(tmp_path / "bf16", tiny_config(train_dtype="bfloat16", n_layer=2), progress=False)
    history = bundle.knowledge["history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    with safe_open(str(bundle.model_dir / "model.safetensors"), framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"F32"}


def test_building_gives_the_caller_its_thread_count_back(tmp_path, monkeypatch):
    """Training runs on config.threads; the process that asked for the build keeps its own count."""
    seen = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real_set(n))[1])
    before = torch.get_num_threads()
    real_set(3)
    try:
        build_world(tmp_path / "w", TINY, progress=False)
        assert torch.get_num_threads() == 3
        assert seen == [TINY.threads, 3]
    finally:
        real_set(before)


def test_training_actually_learned_the_corpus(tiny):
    """Loss on world text must be well below an untrained model's (about log vocab)."""
    model, tok = tiny.load_model()
    ids = tok(tiny.corpus_texts()[0], return_tensors="pt")["input_ids"]
    loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < torch.log(torch.tensor(float(len(tok)))).item() - 1.0
    history = tiny.knowledge["history"]
    assert history[-1]["loss"] < history[0]["loss"] - 0.5


def test_cache_reuse_does_not_rebuild(tiny, cache_root):
    again = load_default(cache_dir=cache_root, progress=False, config=TINY)
    assert not again.built_now and again.root == tiny.root and again.records == tiny.records


def test_open_or_build_reuses_a_valid_build(tiny):
    again = open_or_build(tiny.root, TINY, progress=False)
    assert not again.built_now and again.root == tiny.root and again.records == tiny.records


def test_open_or_build_builds_into_an_empty_directory(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / ".w.building-killed" / "model").mkdir(parents=True)  # a builder killed with SIGKILL
    bundle = open_or_build(tmp_path / "w", TINY, progress=False)
    assert bundle.built_now and verify_bundle(tmp_path / "w", TINY) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.lock", "w"]


def test_open_or_build_leaves_other_content_alone(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds other files, not a build of the world"):
        open_or_build(mine, TINY, progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    (mine / "model").mkdir()  # a build that stopped before its manifest: named as such
    with pytest.raises(FileExistsError, match="not a build of this world .manifest.json missing"):
        open_or_build(mine, TINY, progress=False)


def test_corrupt_weights_are_detected_and_rebuilt(tiny, cache_root):
    weights = tiny.model_dir / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-64] + bytes(64))
    assert "sha256" in verify_bundle(tiny.root, TINY)
    with pytest.warns(RuntimeWarning, match="invalid"):
        rebuilt = load_default(cache_dir=cache_root, progress=False, config=TINY)
    assert rebuilt.built_now and verify_bundle(rebuilt.root, TINY) is None
    assert weights.read_bytes() == original  # deterministic training: the same weights again


def test_missing_manifest_is_detected_and_rebuilt(tiny, cache_root):
    (tiny.root / "manifest.json").unlink()
    assert "manifest.json missing" in verify_bundle(tiny.root, TINY)
    with pytest.warns(RuntimeWarning, match="manifest"):
        rebuilt = load_default(cache_dir=cache_root, progress=False, config=TINY)
    assert rebuilt.built_now and verify_bundle(rebuilt.root, TINY) is None


@pytest.mark.parametrize("manifest", ["[]", "null", '{"files": ["model/model.safetensors"]}'])
def test_damaged_manifest_is_detected_and_rebuilt(tiny, cache_root, manifest):
    (tiny.root / "manifest.json").write_text(manifest)
    assert "manifest.json unreadable" in verify_bundle(tiny.root, TINY)
    with pytest.warns(RuntimeWarning, match="manifest.json unreadable"):
        rebuilt = load_default(cache_dir=cache_root, progress=False, config=TINY)
    assert rebuilt.built_now and verify_bundle(rebuilt.root, TINY) is None


def test_a_manifest_naming_files_outside_the_build_is_refused(tiny):
    manifest = tiny.root / "manifest.json"
    original = manifest.read_text()
    data = json.loads(original)
    data["files"]["../outside.json"] = "0" * 64
    manifest.write_text(json.dumps(data))
    try:
        assert verify_bundle(tiny.root, TINY) == "manifest names '../outside.json', outside the build"
    finally:
        manifest.write_text(original)
    assert verify_bundle(tiny.root, TINY) is None


def test_a_file_where_the_build_belongs_is_replaced_without_leftovers(tmp_path):
    final = tmp_path / f"world-{TINY.cache_key()}"
    final.write_text("not a world")
    assert verify_bundle(final, TINY) == "a file, not a directory"
    with pytest.warns(RuntimeWarning, match="a file, not a directory"):
        bundle = load_default(cache_dir=tmp_path, progress=False, config=TINY)
    assert bundle.built_now and verify_bundle(final, TINY) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name, f"{final.name}.lock"]


@pytest.mark.parametrize("leftover", [False, True])
def test_a_valid_build_is_read_without_taking_the_lock(tiny, cache_root, leftover):
    """Reading needs no write access to the cache (e.g. a read-only shared mount): here the lock
    file cannot even be opened, and the valid build is still served, also beside a folder that a
    killed builder left (which only a writer can remove)."""
    lock = cache_root / f"{tiny.root.name}.lock"
    stale = cache_root / f".{tiny.root.name}.building-dead"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    if leftover:
        stale.mkdir()
    try:
        again = load_default(cache_dir=cache_root, progress=False, config=TINY)
    finally:
        lock.rmdir()
        shutil.rmtree(stale, ignore_errors=True)
    assert not again.built_now and again.root == tiny.root


def test_an_intact_build_that_does_not_load_is_reported_not_rebuilt(tiny, cache_root, monkeypatch):
    """Every file matches the manifest, so the cause is here (memory, a transformers that cannot read
    it): a rebuild would not fix it, and the build stays where it is."""
    from collabedit_secure.world import cache

    def out_of_memory(self, *args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(cache.WorldBundle, "load_model", out_of_memory)
    with pytest.raises(cache.WorldCacheError, match=rf"{tiny.root} is complete .* but its model does not load: "
                                                    r"MemoryError: simulated; remove the folder to rebuild it"):
        load_default(cache_dir=cache_root, progress=False, config=TINY)
    assert verify_bundle(tiny.root, TINY) is None


def test_cache_json_is_strict_json(tmp_path):
    """A diverged test build's NaN losses are written as null, which every JSON reader parses."""
    from collabedit_secure.world.cache import _write_json

    _write_json(tmp_path / "k.json", {"history": [{"loss": float("nan")}, {"loss": float("inf")}]})
    text = (tmp_path / "k.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) == \
        {"history": [{"loss": None}, {"loss": None}]}


def test_config_change_uses_another_cache_entry(tiny, cache_root):
    other = tiny_config(seed=5)
    assert other.cache_key() != TINY.cache_key()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle = load_default(cache_dir=cache_root, progress=False, config=other)
    assert bundle.built_now and bundle.root != tiny.root


def test_a_build_is_as_readable_as_any_new_directory(tiny):
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(tiny.root.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    for path in tiny.root.rglob("*"):  # not safetensors' 0600 either
        assert stat.S_IMODE(path.stat().st_mode) == (0o777 if path.is_dir() else 0o666) & ~umask, path


def test_build_world_refuses_existing_dir(tmp_path):
    (tmp_path / "w").mkdir()
    with pytest.raises(FileExistsError, match=r"w already exists; remove it or pick another directory"):
        build_world(tmp_path / "w", TINY, progress=False)


def test_tokenizer_conventions(tiny):
    _, tok = tiny.load_model()
    rec = tiny.records[0]
    obj = rec["requested_rewrite"]["target_true"]["str"]
    prompt = rec["requested_rewrite"]["prompt"].format(rec["requested_rewrite"]["subject"])
    assert tok("x")["input_ids"] == tok.convert_tokens_to_ids(["x"])  # no BOS
    assert tok.bos_token_id not in tok(prompt)["input_ids"]
    # " " + object tokenises the same alone as after its prompt
    assert tok(prompt + " " + obj)["input_ids"] == tok(prompt)["input_ids"] + tok(" " + obj)["input_ids"]
    assert tok.decode(tok(" " + obj)["input_ids"]) == " " + obj


def test_killed_builder_leftovers_are_removed(tiny, cache_root):
    stale = cache_root / f".{tiny.root.name}.building-dead"
    (stale / "model").mkdir(parents=True)
    again = load_default(cache_dir=cache_root, progress=False, config=TINY)
    assert not stale.exists() and not again.built_now


def test_two_processes_building_at_once_share_one_build(tmp_path):
    """Two real processes race for the same cache entry: one builds, the other waits and reuses it."""
    import subprocess
    import sys

    script = ("import sys; from collabedit_secure.world import load_default, tiny_config, verify_bundle; "
              "b = load_default(cache_dir=sys.argv[1], progress=False, config=tiny_config(seed=11)); "
              "assert verify_bundle(b.root, b.config) is None; print(int(b.built_now), b.root)")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outputs) == [0, 1]
    assert outputs[0][1] == outputs[1][1]
