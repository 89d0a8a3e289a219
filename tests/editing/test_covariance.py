"""C0 statistics: correctness against a direct computation, cache hit, corruption, resume, MEMIT npz."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import transformers
from tokenizers import processors

from collabedit_secure.editing import SecondMoment, export_memit_stats, import_memit_stats, layer_stats
from collabedit_secure.editing.covariance import (
    CorruptStatsError, StatsMismatchError, check_stats_identity, corpus_sample,
)
from collabedit_secure.editing.fingerprint import layout_digest, weights_digest

from .conftest import corpus, make_tokenizer, tiny_model

LAYER = "transformer.h.1.mlp.c_proj"


class Interrupted(Exception):
    pass


def stats(model, tok, cache, **kw):
    return layer_stats(model, tok, LAYER, corpus()[:40], batch_size=8, cache_dir=cache, progress=False, **kw)


def test_matches_direct_computation(gpt2_f64, tok, tmp_path):
    stat = stats(gpt2_f64, tok, tmp_path)
    seen = []
    hook = gpt2_f64.get_submodule(LAYER).register_forward_hook(lambda m, a, o: seen.append(a[0][0]))
    with torch.no_grad():
        for text in [t for t in corpus()[:40] if t.strip()]:  # one text at a time: no padding at all
            gpt2_f64(**tok(text, return_tensors="pt"))
    hook.remove()
    keys = torch.cat(seen)
    assert stat.count == keys.shape[0]
    assert torch.allclose(stat.moment(), keys.T @ keys / keys.shape[0], rtol=1e-9, atol=1e-12)


def test_cache_hit_and_corruption_recomputed(gpt2_f64, tok, tmp_path):
    first = stats(gpt2_f64, tok, tmp_path)
    (final,) = (tmp_path / "stats").glob("*.npz")
    calls = []
    again = stats(gpt2_f64, tok, tmp_path, on_batch=calls.append)
    assert calls == [] and torch.equal(again.mom2, first.mom2)  # served from the cache
    final.write_bytes(final.read_bytes()[:-64] + b"\0" * 64)  # damage the file
    recomputed = stats(gpt2_f64, tok, tmp_path, on_batch=calls.append)
    assert calls and torch.equal(recomputed.mom2, first.mom2)


def test_resume_after_interruption_equals_uninterrupted(gpt2_f64, tok, tmp_path):
    whole = stats(gpt2_f64, tok, tmp_path / "a")

    def stop_at_third(position):
        if position >= 24:
            raise Interrupted

    with pytest.raises(Interrupted):
        stats(gpt2_f64, tok, tmp_path / "b", checkpoint_every=2, on_batch=stop_at_third)
    assert list((tmp_path / "b" / "stats").glob("*.partial.npz"))
    positions = []
    resumed = stats(gpt2_f64, tok, tmp_path / "b", checkpoint_every=2, on_batch=positions.append)
    assert positions[0] == 24  # batches 1-2 came from the checkpoint, batch 3 is redone
    assert resumed.count == whole.count and torch.equal(resumed.mom2, whole.mom2)


def test_resume_with_another_batch_size_starts_over(gpt2_f64, tok, tmp_path, caplog):
    def stop_at_third(position):
        if position >= 24:
            raise Interrupted

    with pytest.raises(Interrupted):
        stats(gpt2_f64, tok, tmp_path, checkpoint_every=2, on_batch=stop_at_third)
    positions = []
    with caplog.at_level("WARNING", logger="collabedit_secure.editing.covariance"):
        again = layer_stats(gpt2_f64, tok, LAYER, corpus()[:40], batch_size=5, cache_dir=tmp_path, progress=False,
                            on_batch=positions.append)
    assert positions[0] == 5 and "interrupted run used batch size 8, this one 5" in caplog.text
    fresh = layer_stats(gpt2_f64, tok, LAYER, corpus()[:40], batch_size=5, cache_dir=tmp_path / "fresh",
                        progress=False)
    assert again.count == fresh.count and torch.equal(again.mom2, fresh.mom2)


def test_cache_key_follows_the_config_and_the_tokenizer(tok, tmp_path):
    """Same weights, another activation or another tokenizer: other activations, so another C0."""
    model = tiny_model("gpt2", tok, torch.float64)
    base = stats(model, tok, tmp_path)
    config = copy.deepcopy(model.config)
    config.activation_function = "relu"
    relu_model = transformers.GPT2LMHeadModel(config).to(torch.float64).eval()
    relu_model.load_state_dict(model.state_dict())
    relu = stats(relu_model, tok, tmp_path)
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 2 and not torch.allclose(relu.mom2, base.mom2)
    bos = make_tokenizer()
    bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos.eos_token_id)])
    with_bos = stats(model, bos, tmp_path)
    assert with_bos.count == base.count + len([t for t in corpus()[:40] if t.strip()])
    model.config.use_cache = not model.config.use_cache  # bookkeeping: no new statistic
    tok("a b", padding="max_length", max_length=8, truncation=True)  # leaves padding state in the backend
    assert torch.equal(stats(model, tok, tmp_path, on_batch=pytest.fail).mom2, base.mom2)
    assert len(list((tmp_path / "stats").glob("*.npz"))) == 3


def test_truncated_checkpoint_is_ignored(gpt2_f64, tok, tmp_path):
    def stop_at_third(position):
        if position >= 24:
            raise Interrupted

    whole = stats(gpt2_f64, tok, tmp_path / "a")
    with pytest.raises(Interrupted):
        stats(gpt2_f64, tok, tmp_path / "b", checkpoint_every=2, on_batch=stop_at_third)
    (partial,) = (tmp_path / "b" / "stats").glob("*.partial.npz")
    partial.write_bytes(partial.read_bytes()[:300])  # damaged on disk: zip magic, no directory
    positions = []
    again = stats(gpt2_f64, tok, tmp_path / "b", checkpoint_every=2, on_batch=positions.append)
    assert positions[0] < 24  # started over
    assert again.count == whole.count and torch.equal(again.mom2, whole.mom2)


def test_memit_npz_round_trip(tmp_path):
    mom2 = torch.randn(6, 6, dtype=torch.float64)
    stat = SecondMoment(mom2 @ mom2.T, 17)
    path = export_memit_stats(stat, tmp_path / "transformer.h.1.mlp.c_proj_float32_mom2_100000.npz",
                              sample_size=100000)
    with np.load(path) as raw:  # MEMIT's CombinedStat(mom2=SecondMoment()) keys + tally's argument
        assert set(raw.files) == {"mom2.constructor", "mom2.count", "mom2.mom2", "sample_size"}
        assert raw["mom2.mom2"].dtype == np.float32 and int(raw["sample_size"]) == 100000
    back = import_memit_stats(path)
    assert back.count == 17 and torch.allclose(back.mom2, stat.mom2, rtol=1e-6)
    np.savez(tmp_path / "bare.npz", mom2=np.eye(3, dtype=np.float32), count=np.array(3))
    assert torch.equal(import_memit_stats(tmp_path / "bare.npz").moment(), torch.eye(3, dtype=torch.float64) / 3)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CorruptStatsError, match="junk.npz"):
        import_memit_stats(tmp_path / "junk.npz")
    (tmp_path / "text.npz").write_text("mom2 = [[1, 0], [0, 1]]\n")
    with pytest.raises(CorruptStatsError, match="text.npz: not an npz file"):
        import_memit_stats(tmp_path / "text.npz")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])  # a download cut short: zip magic, no directory
    with pytest.raises(CorruptStatsError, match="cut.npz"):
        import_memit_stats(tmp_path / "cut.npz")


def test_our_files_say_which_layer_and_model_they_are_of(tok, tmp_path):
    """MEMIT's files carry no identity (accepted as they are); ours name their layer, architecture and
    weights, so a renamed file or one of another model is caught before it becomes C0."""
    model = tiny_model("gpt2", tok)
    name = "transformer.h.1.mlp.c_proj"
    stat = layer_stats(model, tok, name, corpus()[:8], batch_size=4, cache_dir=tmp_path, progress=False)
    assert (stat.layer, stat.architecture, stat.model) == (name, layout_digest(model), weights_digest(model))
    again = layer_stats(model, tok, name, corpus()[:8], batch_size=4, cache_dir=tmp_path, progress=False)
    assert torch.equal(again.mom2, stat.mom2)  # read from the cache, identity included
    assert (again.layer, again.architecture, again.model) == (stat.layer, stat.architecture, stat.model)

    path = export_memit_stats(stat, tmp_path / "a.npz")
    back = import_memit_stats(path)
    assert (back.layer, back.architecture, back.model) == (stat.layer, stat.architecture, stat.model)
    assert check_stats_identity(back, path, name, model) is None
    with pytest.raises(StatsMismatchError, match=r"a.npz holds the statistics of transformer.h.1.mlp.c_proj, "
                                                 r"not of transformer.h.2.mlp.c_proj"):
        check_stats_identity(back, path, "transformer.h.2.mlp.c_proj", model)
    with pytest.raises(StatsMismatchError, match="another architecture"):
        check_stats_identity(back, path, name, tiny_model("gpt_neox", tok))
    assert check_stats_identity(back, path, name, copy.deepcopy(model).double()) is not None  # precision: noted
    retrained = copy.deepcopy(model)
    with torch.no_grad():
        retrained.transformer.wte.weight[0, 0] += 1.0
    assert check_stats_identity(back, path, name, retrained) == \
        f"computed on other weights of this architecture ({weights_digest(model)})"

    np.savez(tmp_path / "memit.npz", mom2=np.eye(3), count=np.array(3))
    memit = import_memit_stats(tmp_path / "memit.npz")
    assert (memit.layer, memit.architecture, memit.model) == (None, None, None)
    assert check_stats_identity(memit, "memit.npz", name, model) is None
    np.savez(tmp_path / "odd.npz", mom2=np.eye(3), count=np.array(3), **{"collabedit.layer": np.array([1, 2])})
    with pytest.raises(CorruptStatsError, match=r"odd.npz: collabedit.layer must be one string, "
                                                r"got int64 of shape \(2,\)"):
        import_memit_stats(tmp_path / "odd.npz")


@pytest.mark.parametrize("mom2, count, message", [
    (np.eye(3)[:2], 3, r"shape \(2, 3\), expected square"),
    (np.diag([1.0, np.nan, 1.0]), 3, "NaN or Inf"),
    (np.diag([1.0, np.inf, 1.0]), 3, "NaN or Inf"),
    (np.eye(3), 0, r"count must be one positive number, got 0"),
    (np.eye(3), [3, 4], r"count must be one positive number, got \[3, 4\]"),
    (np.eye(3) + np.diag([0.01, 0.01], 1), 3, r"not symmetric \(max \|A - Aᵀ\| is 1.0e-02 of max \|A\|\)"),
])
def test_imported_stats_are_checked_on_arrival(tmp_path, mom2, count, message):
    np.savez(tmp_path / "bad.npz", mom2=mom2, count=np.array(count))
    with pytest.raises(CorruptStatsError, match=message):
        import_memit_stats(tmp_path / "bad.npz")


def test_stats_command_names_its_file_by_the_documents_used(tok, tmp_path, monkeypatch, capsys):
    """`collabedit stats` on a local GPT-NeoX directory, a family with no shipped hparams of its own:
    statistics and editing take MEMIT's GPT-2 XL values (every document); mom2_n_samples from --hparams
    counts, and the file name says how many documents were used."""
    from collabedit_secure.cli import main

    monkeypatch.setenv("COLLABEDIT_CACHE", str(tmp_path / "cache"))
    model = tiny_model("gpt_neox", tok)
    model.save_pretrained(tmp_path / "neox")
    tok.save_pretrained(tmp_path / "neox")
    documents = tmp_path / "corpus.txt"
    documents.write_text("\n".join(corpus()[:12] + ["", "  "] + corpus()[12:20]) + "\n")  # 20 documents
    hparams = tmp_path / "neox.yaml"
    hparams.write_text("layers: [1]\nv_loss_layer: 3\nrewrite_module_tmp: gpt_neox.layers.{}.mlp.dense_4h_to_h\n"
                       "mom2_n_samples: 15\nmom2_batch_size: 4\n")
    argv = ["stats", "--model", str(tmp_path / "neox"), "--layers", "1", "--corpus", str(documents), "--out"]

    assert main([*argv, str(tmp_path / "all")]) == 0
    assert [f.name for f in (tmp_path / "all").glob("*.npz")] == ["gpt_neox.layers.1.mlp.dense_4h_to_h_float32_mom2_20.npz"]
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([{"prompt": "The mother tongue of {} is", "subject": "Lyon", "target_new": "English"}]))
    assert main(["edit", "--model", str(tmp_path / "neox"), "--requests", str(requests), "--stats",
                 str(tmp_path / "all"), "--out", str(tmp_path / "edited")]) == 0
    err = capsys.readouterr().err  # no file of its own: MEMIT's GPT-2 XL values at the model's depth
    assert ("no --hparams: the shipped gpt2-xl hparams (the gpt_neox family has no file of its own), made for 48 "
            "layers, at this model's 4: layers [1], v_loss_layer 3") in err
    assert "statistics of 20 samples; the hparams' mom2_n_samples is 100000" in err

    out = tmp_path / "out"
    assert main([*argv, str(out), "--hparams", str(hparams)]) == 0
    (written,) = out.glob("*.npz")
    assert written.name == "gpt_neox.layers.1.mlp.dense_4h_to_h_float32_mom2_15.npz"
    direct = layer_stats(model, tok, "gpt_neox.layers.1.mlp.dense_4h_to_h", corpus()[:20], n_samples=15,
                         batch_size=4, cache_dir=tmp_path / "direct", progress=False)
    exported = import_memit_stats(written)
    assert exported.count == direct.count
    assert torch.allclose(exported.moment(), direct.moment(), rtol=1e-5, atol=1e-7)  # stored as float32


def test_corpus_sample_draws_from_the_whole_corpus_with_a_fixed_seed():
    """As MEMIT samples its articles: a sorted corpus must not give C0 its first section only."""
    documents = [f"document {i}" for i in range(1000)]
    sample = corpus_sample(documents + ["", "  "], 100)
    assert len(sample) == len(set(sample)) == 100 and set(sample) <= set(documents)
    assert sample == sorted(sample, key=documents.index)  # corpus order kept
    assert max(map(documents.index, sample)) >= 500 and sample != documents[:100]
    assert corpus_sample(documents, 100) == sample  # reproducible: the cache key and every party agree
    assert corpus_sample(documents, 100, seed=2) != sample
    # Asking for as many documents as there are (or more, or None) takes them all, in order.
    assert corpus_sample(documents + [" "], 1000) == corpus_sample(documents, 5000) == corpus_sample(documents) == documents


@pytest.mark.parametrize("settings, message", [
    ({"n_samples": 0}, r"n_samples must be >= 1 \(or None: every document\), got 0"),
    ({"n_samples": -5}, "n_samples must be >= 1"),
    ({"batch_size": 0}, r"batch_size \(mom2_batch_size\) must be >= 1, got 0"),
    ({"max_length": 65}, r"max_length \(mom2_max_length\) must be between 1 and the model's context of 64 tokens"),
    ({"max_length": 0}, "max_length"),
])
def test_sampling_settings_out_of_range_are_named(settings, message, tok, tmp_path):
    model = tiny_model("gpt2", tok)  # 64 positions
    kwargs = {"batch_size": 8, **settings}
    with pytest.raises(ValueError, match=f"^{message}"):
        layer_stats(model, tok, LAYER, corpus()[:10], cache_dir=tmp_path, progress=False, **kwargs)


def test_stats_command_never_replaces_a_file_and_makes_no_folder_for_a_refused_run(tok, tmp_path, monkeypatch,
                                                                                    capsys):
    from collabedit_secure.cli import main

    monkeypatch.setenv("COLLABEDIT_CACHE", str(tmp_path / "cache"))
    tiny_model("gpt2", tok).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    documents = tmp_path / "corpus.txt"
    documents.write_text("\n".join(corpus()[:12]) + "\n")
    hparams = tmp_path / "h.yaml"
    hparams.write_text("layers: [1]\nv_loss_layer: 3\nmom2_n_samples: 12\nmom2_batch_size: 4\n")
    out = tmp_path / "out"
    argv = ["stats", "--model", str(tmp_path / "gpt2"), "--corpus", str(documents), "--hparams", str(hparams),
            "--out", str(out)]

    assert main([*argv, "--layers", "7"]) == 2
    assert "layers [7] out of range" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--layers", "1"]) == 0
    (written,) = out.glob("*.npz")
    before = written.read_bytes()
    assert main([*argv, "--layers", "0", "1"]) == 2
    assert f"{written} already exist(s)" in capsys.readouterr().err
    assert written.read_bytes() == before and len(list(out.glob("*.npz"))) == 1  # nothing replaced, nothing added


def test_stats_file_prefers_the_hparams_sample_count_and_never_guesses(tmp_path):
    from collabedit_secure.editing import MemitHparams
    from collabedit_secure.pipeline import stats_file

    hparams = MemitHparams(layers=[1], v_loss_layer=3, mom2_n_samples=100)
    name = "transformer.h.1.mlp.c_proj"
    with pytest.raises(FileNotFoundError, match=f"expected {name}_float32_mom2_100.npz"):
        stats_file(tmp_path, name, hparams)
    (tmp_path / f"{name}_float32_mom2_50.npz").touch()
    (tmp_path / "transformer.h.10.mlp.c_proj_float32_mom2_100.npz").touch()  # another layer
    assert stats_file(tmp_path, name, hparams).name == f"{name}_float32_mom2_50.npz"  # the only one
    (tmp_path / f"{name}_float64_mom2_70.npz").touch()
    with pytest.raises(ValueError, match="several statistics .*_mom2_50.npz, .*_mom2_70.npz"):
        stats_file(tmp_path, name, hparams)
    (tmp_path / f"{name}_float32_mom2_100.npz").touch()
    assert stats_file(tmp_path, name, hparams).name == f"{name}_float32_mom2_100.npz"
