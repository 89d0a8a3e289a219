"""The `collabedit` commands end to end on the embedded default (real model, real C0, real edits)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from collabedit_secure.cli import main
from collabedit_secure.editing.covariance import StatsMismatchError
from collabedit_secure.eval.report import evaluate_dataset
from collabedit_secure.pipeline import covariances, default_hparams, load_model

pytestmark = pytest.mark.slow


def test_simulate_collabedit_equals_global_and_writes_the_table(default_world, tmp_path, capsys):
    out = tmp_path / "sim.json"
    status = main(["simulate", "--parties", "3", "--edits-per-party", "2",
                   "--methods", "collabedit,global,ta,sa,ties", "--no-fluency", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    # The default schedule is true MEMIT, with the hparams shipped for it.
    assert report["config"]["schedule"] == "sequential"
    assert report["config"]["hparams"]["mom2_update_weight"] == 900  # default-world.yaml
    assert report["config"]["fluency_max_len"] == 40  # the embedded world's recorded length
    methods = report["methods"]
    assert set(methods) == {"collabedit", "global", "ta", "sa", "ties"}
    assert methods["collabedit"]["delta_rel_err_vs_global"] <= 1e-9
    assert methods["collabedit"]["efficacy"] == pytest.approx(methods["global"]["efficacy"])
    assert report["n_edits"] == 6 and len(report["context_templates"]) == 2
    table = capsys.readouterr().out
    assert "delta_rel_err_vs_global" in table and "ties" in table


def test_simulate_parallel_uses_its_hparams_and_reports_the_unedited_model(default_world, tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert main(["simulate", "--parties", "2", "--edits-per-party", "2", "--schedule", "parallel",
                 "--methods", "global,none", "--fluency-tokens", "16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["hparams"]["mom2_update_weight"] == 800  # default-world-parallel.yaml
    unedited, edited = report["methods"]["none"], report["methods"]["global"]
    assert unedited["wall_time_s"] == 0.0 and unedited["efficacy"] < edited["efficacy"]
    # On the embedded world, consistency is scored against the world's own facts, for every edit.
    assert report["consistency_reference"] == "world"
    for method in ("none", "global"):
        scores = [case["reference_score"] for case in report["cases"][method]]
        assert report["methods"][method]["n"]["consistency"] == 4 and all(0 <= s <= 1 for s in scores)
        assert report["methods"][method]["consistency"] == pytest.approx(25 * sum(scores))
    assert capsys.readouterr().out.count("consistency") == 1  # the table's column


def test_simulate_two_rounds_with_the_dynamic_covariance(default_world, tmp_path, capsys):
    out = tmp_path / "sim.json"
    assert main(["simulate", "--parties", "2", "--edits-per-party", "1", "--rounds", "2",
                 "--methods", "collabedit,global", "--no-fluency", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["rounds"] == 2 and report["n_edits"] == 4
    # Every edited record once per method, placed by round and party: what forgetting is read from.
    cases = report["cases"]["collabedit"]
    assert [(c["round"], c["party"]) for c in cases] == [(r, p) for r in (1, 2) for p in (1, 2)]
    assert len({c["case_id"] for c in cases}) == 4
    for index, summary in enumerate(report["methods"]["collabedit"]["by_round"]):
        in_round = [c["rewrite_success"] for c in cases if c["round"] == index + 1]
        assert summary["n_cases"] == 2 and summary["efficacy"] == pytest.approx(100 * sum(in_round) / 2)
    printed = capsys.readouterr().out
    assert "by the round each edit was made in" in printed and "collabedit r2" in printed
    collab = report["methods"]["collabedit"]
    by_round = collab["delta_rel_err_vs_global_by_round"]
    assert len(by_round) == 2 and collab["delta_rel_err_vs_global"] == max(by_round)
    assert by_round[0] <= 1e-9
    # Round 2 builds on float32 weights that may differ by one ulp where the two round-1 updates
    # round differently; a method that lost C_acc or a round would be off by far more.
    assert by_round[1] <= 1e-6

    # Held in float64, round 2 builds on the round-1 updates as computed: equal to the invariant's bound.
    assert main(["simulate", "--parties", "2", "--edits-per-party", "1", "--rounds", "2", "--float64-weights",
                 "--methods", "collabedit,global", "--no-fluency", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["float64_weights"]
    assert max(report["methods"]["collabedit"]["delta_rel_err_vs_global_by_round"]) <= 1e-9


@pytest.mark.parametrize("option, value, message", [
    ("--parties", "0", "must be >= 1, got 0"),
    ("--edits-per-party", "-1", "must be >= 1, got -1"),
    ("--rounds", "x", "expected a whole number, got 'x'"),
    ("--fluency-tokens", "2.5", "expected a whole number, got '2.5'"),
])
def test_simulate_counts_are_checked_as_arguments(option, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err


def test_simulate_rejects_bad_arguments(capsys, monkeypatch):
    forbid_work(monkeypatch)
    assert main(["simulate", "--parties", "1001", "--edits-per-party", "1"]) == 2
    assert "the embedded world has 1000 subjects; 1001 parties x 1 edits x 1 rounds need 1001" \
        in capsys.readouterr().err
    assert main(["simulate", "--methods", "collabedit,bogus"]) == 2
    assert "unknown method" in capsys.readouterr().err


def forbid_work(monkeypatch) -> None:
    """Make every command's first piece of real work fail the test: model loading (simulate keeps
    its own reference to load_model) and the kernel benchmark."""
    import collabedit_secure.bench.kernels as bench
    import collabedit_secure.bench.privacy as bench_privacy
    import collabedit_secure.pipeline as pipeline
    import collabedit_secure.simulate as simulate

    def must_not_run(*args, **kwargs):
        pytest.fail("work started before the input was checked")

    for module, name in ((pipeline, "load_model"), (simulate, "load_model"), (bench, "run"),
                         (bench_privacy, "run")):
        monkeypatch.setattr(module, name, must_not_run)


@pytest.mark.parametrize("argv", [
    ["edit", "--model", "default", "--requests", "{missing}", "--out", "o"],
    ["edit", "--model", "default", "--requests", "{present}", "--stats", "{missing}", "--out", "o"],
    ["eval", "--model", "default", "--dataset", "{missing}", "--json", "o.json"],
    ["simulate", "--dataset", "{missing}"],
    ["simulate", "--hparams", "{missing}"],
    ["stats", "--model", "default", "--layers", "0", "--corpus", "{missing}", "--out", "o"],
    ["stats", "--model", "default", "--layers", "0", "--hparams", "{missing}", "--out", "o"],
])
def test_missing_input_paths_fail_before_any_model_loads(argv, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    present = tmp_path / "requests.json"
    present.write_text("[]")
    argv = [a.format(missing=tmp_path / "nope", present=present) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"no such {'directory' if '--stats' in argv else 'file'}: {tmp_path / 'nope'}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--json", "{dir}"], "{dir} is a directory; give a file name"),
    (["eval", "--model", "default", "--dataset", "{present}", "--json", "{dir}"], "is a directory"),
    (["bench", "kernels", "--json", "{dir}"], "is a directory"),
    (["bench", "privacy", "--plot", "{dir}"], "is a directory"),
    (["bench", "privacy", "--parties", "1,2"], "every party count must be >= 2, got 1"),
    (["bench", "privacy", "--modes", "plain,fhe"], "modes are a comma-separated subset of plain,mask,he"),
    (["simulate", "--json", "{present}/results.json"], "cannot write {present}/results.json"),
    (["edit", "--model", "default", "--requests", "{present}", "--out", "{present}/edited"],
     "cannot write {present}/edited: {present} is not a directory"),
    (["stats", "--model", "default", "--layers", "0", "--out", "{present}"], "{present} is a file, not a directory"),
    (["edit", "--model", "default", "--requests", "{dir}", "--out", "o"], "{dir} is a directory, not a file"),
    (["edit", "--model", "default", "--requests", "{present}", "--stats", "{dir}", "--corpus", "{present}",
      "--out", "o"], "argument --corpus: not allowed with argument --stats"),
    (["simulate", "--seed", str(2**64)], "argument --seed: must be between 0 and 2**63 - 1"),
    (["simulate", "--seed", "-1"], "argument --seed: must be between 0 and 2**63 - 1"),
])
def test_bad_paths_and_arguments_fail_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    present = tmp_path / "requests.json"
    present.write_text("[]")
    fill = {"dir": tmp_path, "present": present}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**fill) for a in argv])
    assert exit_info.value.code == 2
    assert message.format(**fill) in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["edit", "--model", "{model}", "--requests", "{present}", "--out", "o"],
     "C0 for '{model}' needs --corpus FILE (one document per line) or --stats DIR"),
    (["simulate", "--model", "{model}", "--dataset", "{present}"],
     "C0 for '{model}' needs --corpus FILE (one document per line) or --stats DIR"),
    (["simulate", "--model", "{model}", "--corpus", "{present}"], "--model {model} needs --dataset"),
])
def test_other_models_need_their_own_corpus_before_any_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    present = tmp_path / "file.json"
    present.write_text("[]")
    fill = {"model": tmp_path / "my-model", "present": present}
    fill["model"].mkdir()
    (fill["model"] / "config.json").write_text('{"model_type": "gpt2"}')
    assert main([a.format(**fill) for a in argv]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--dataset", "{cf}", "--consistency", "{memit}", "--no-fluency", "--json", "o.json"],
     "consistency scores the fluency generations of a CounterFact dataset: drop --no-fluency"),
    (["eval", "--dataset", "{zsre}", "--consistency", "{memit}", "--json", "o.json"], "{zsre} is zsre"),
    (["eval", "--dataset", "{cf}", "--consistency", "{empty}", "--json", "o.json"],
     "{empty}/attribute_snippets.json: no such file"),
    (["simulate", "--consistency", "{memit}", "--no-fluency"], "consistency scores the fluency generations: drop"),
    (["simulate", "--dataset", "{cf}", "--parties", "2", "--edits-per-party", "2", "--consistency", "{empty}"],
     "{empty}/attribute_snippets.json: no such file"),
])
def test_consistency_inputs_are_checked_before_any_model_loads(argv, message, shared_data, tmp_path, capsys,
                                                               monkeypatch):
    forbid_work(monkeypatch)
    memit, empty = tmp_path / "memit", tmp_path / "empty"
    empty.mkdir()
    memit.mkdir()
    (memit / "attribute_snippets.json").write_text('[{"relation_id": "P1", "target_id": "Q1", "samples": '
                                                   '[{"name": "x", "text": "x y"}]}]')
    (memit / "tfidf_vocab.json").write_text('{"word": 0}')
    np.save(memit / "idf.npy", np.array([1.5]))
    fill = {"cf": shared_data / "counterfact" / "multi_counterfact-30.json", "memit": memit, "empty": empty,
            "zsre": shared_data / "zsre" / "zsre_mend_eval-6.json"}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "eval":
        argv[1:1] = ["--model", "default"]
    assert main(argv) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not Path("o.json").exists()
    with pytest.raises(SystemExit):
        main(["eval", "--model", "default", "--dataset", str(fill["cf"]), "--consistency", str(tmp_path / "nope"),
              "--json", "o.json"])
    assert f"{tmp_path / 'nope'} is neither 'world' nor a directory" in capsys.readouterr().err


def test_a_local_model_directory_through_stats_edit_and_simulate(default_world, tmp_path):
    """The world model as any HF directory: no world corpus, no world records, hparams by file."""
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text("base: default-world\nv_num_grad_steps: 10\n")  # the pipeline, not the edit's quality
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(default_world.corpus_texts()[:96]) + "\n")
    dataset = tmp_path / "cases.json"
    dataset.write_text(json.dumps(default_world.records[:40]))
    model = str(default_world.model_dir)
    common = ["--model", model, "--hparams", str(hparams)]

    stats = tmp_path / "stats"
    assert main(["stats", *common, "--layers", "0", "1", "2", "--corpus", str(corpus), "--out", str(stats)]) == 0
    assert len(list(stats.glob("*_mom2_96.npz"))) == 3
    # The files hold MEMIT's raw sum and count; importing them gives the C0 computing it gives.
    loaded = load_model(model)
    hp = default_hparams(loaded, hparams)
    imported, _ = covariances(loaded, hp, stats_dir=stats)
    computed, _ = covariances(loaded, hp, corpus=str(corpus), n_samples=96, progress=False)
    for name, c0 in imported.items():
        with np.load(stats / f"{name}_float32_mom2_96.npz") as npz:
            raw_sum, count = npz["mom2.mom2"], int(npz["mom2.count"])
        torch.testing.assert_close(c0, torch.from_numpy(raw_sum).double() / count, rtol=1e-12, atol=0)
        torch.testing.assert_close(c0, computed[name], rtol=1e-6, atol=1e-9)
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps(default_world.records[:2]))
    edited = tmp_path / "edited"
    assert main(["edit", *common, "--requests", str(requests), "--stats", str(stats), "--out", str(edited)]) == 0
    meta = json.loads((edited / "edit_meta.json").read_text())
    assert meta["base_model"] == model and all(Path(f).parent == stats for f in meta["stats_files"].values())
    # Each file says which layer it is of: one renamed to another layer's name is refused.
    first, second = (stats / f"transformer.h.{i}.mlp.c_proj_float32_mom2_96.npz" for i in (0, 1))
    second.write_bytes(first.read_bytes())
    with pytest.raises(StatsMismatchError, match=r"holds the statistics of transformer.h.0.mlp.c_proj, not of "
                                                 r"transformer.h.1.mlp.c_proj \(a renamed file\?\)"):
        covariances(loaded, hp, stats_dir=stats)

    out = tmp_path / "sim.json"
    assert main(["simulate", *common, "--dataset", str(dataset), "--corpus", str(corpus), "--parties", "2",
                 "--edits-per-party", "2", "--methods", "collabedit,global", "--no-fluency", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == model and report["config"]["corpus"] == str(corpus)
    assert report["config"]["fluency_max_len"] == 100  # MEMIT's, for any model but the embedded one
    assert all(f"{corpus} corpus" in source for source in report["c0"].values())
    assert report["methods"]["collabedit"]["delta_rel_err_vs_global"] <= 1e-9


def test_simulate_names_an_over_long_evaluation_prompt_before_editing(default_world, tmp_path, capsys,
                                                                      monkeypatch):
    import collabedit_secure.simulate as simulate

    monkeypatch.setattr(simulate, "edit", lambda *a, **k: pytest.fail("edited before the prompts were checked"))
    records = json.loads(json.dumps(default_world.records[:4]))
    records[3]["neighborhood_prompts"][0] = "The pet of " + "Alice " * 200 + "is a"
    dataset = tmp_path / "cases.json"
    dataset.write_text(json.dumps(records))
    assert main(["simulate", "--dataset", str(dataset), "--parties", "2", "--edits-per-party", "2",
                 "--no-fluency"]) == 2
    err = capsys.readouterr().err
    assert f"case_id {records[3]['case_id']}): neighborhood prompt 'The pet of Alice" in err
    assert "more than the model's context of" in err


def test_edit_never_writes_over_an_existing_directory(tmp_path, capsys, monkeypatch):
    import collabedit_secure.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    requests = tmp_path / "requests.json"
    requests.write_text("[]")
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", "--model", str(model_dir), "--requests", str(requests), "--out", str(model_dir)])
    assert exit_info.value.code == 2
    assert f"{model_dir} already exists and is not an empty directory" in capsys.readouterr().err
    assert (model_dir / "model.safetensors").read_bytes() == b"weights"


BAD_FILES = {
    "not json": ("[{", "not valid JSON"),
    "unknown format": ('[{"case_id": 1}]', "unknown dataset format"),
    "counterfact without {}": (json.dumps([{"case_id": 0, "requested_rewrite": {
        "prompt": "no placeholder", "subject": "x", "target_new": {"str": "a"}, "target_true": {"str": "b"}},
        "paraphrase_prompts": [], "neighborhood_prompts": []}]), "{}"),
    "counterfact empty target": (json.dumps([{"case_id": 0, "requested_rewrite": {
        "prompt": "{} is", "subject": "x", "target_new": {"str": " "}, "target_true": {"str": "b"}},
        "paraphrase_prompts": [], "neighborhood_prompts": []}]), "target_new.str' is empty"),
    "zsre subject not in src": (json.dumps([{"subject": "Zed", "src": "Who made it?", "rephrase": "r",
                                            "answers": ["A"], "loc": "nq question: q", "loc_ans": "a"}]),
                                "does not occur in src"),
}


@pytest.mark.parametrize("command", ["edit", "eval", "simulate"])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_dataset_files_fail_before_any_model_loads(command, case, tmp_path, capsys, monkeypatch):
    import collabedit_secure.pipeline as pipeline
    import collabedit_secure.simulate as simulate

    def must_not_load(*args, **kwargs):
        pytest.fail("model loaded before the input was checked")

    monkeypatch.setattr(pipeline, "load_model", must_not_load)
    monkeypatch.setattr(simulate, "load_model", must_not_load)
    text, expected = BAD_FILES[case]
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    argv = {"edit": ["edit", "--model", "default", "--requests", str(bad), "--out", str(tmp_path / "o")],
            "eval": ["eval", "--model", "default", "--dataset", str(bad), "--json", str(tmp_path / "o.json")],
            "simulate": ["simulate", "--dataset", str(bad), "--json", str(tmp_path / "o.json")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and str(bad) in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.json").exists()


def test_edit_writes_loadable_model_delta_and_meta(default_world, tmp_path):
    from transformers import AutoModelForCausalLM

    from collabedit_secure.editing.delta import EditDelta
    from collabedit_secure.eval.nll import target_nll

    records = default_world.records[:3]
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps(records))
    out = tmp_path / "edited"
    assert main(["edit", "--model", "default", "--requests", str(requests), "--schedule", "parallel",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "edit_meta.json").read_text())
    assert meta["schedule"] == "parallel"
    assert meta["request_ids"] == [[str(r["case_id"]) for r in records]]
    assert meta["context_templates"] and meta["stats_files"]
    edited = AutoModelForCausalLM.from_pretrained(out)
    base, tok = default_world.load_model()
    delta = EditDelta.load(out / "delta")
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {p.relative_to(out): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes == {p: (0o777 if (out / p).is_dir() else 0o666) & ~mask for p in modes}  # safetensors: 0600
    for name, update in delta.weights.items():  # the saved model is the base plus exactly this delta
        module = edited.get_submodule(name)
        changed = (module.weight - base.get_submodule(name).weight).detach()
        assert float(changed.detach().abs().max()) > 0
        wanted = update.T.to(changed.dtype)  # float32 storage: W0 + ΔW rounds to the weights' precision
        assert float(torch.linalg.norm(changed - wanted) / torch.linalg.norm(wanted)) < 1e-4
    prompts = [r["requested_rewrite"]["prompt"].format(r["requested_rewrite"]["subject"]) for r in records]
    new = [r["requested_rewrite"]["target_new"]["str"] for r in records]
    assert float(target_nll(edited, tok, prompts, new).mean()) < float(target_nll(base, tok, prompts, new).mean())


def test_edit_rejects_a_bad_request_file(default_world, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "no placeholder here", "subject": "x",
                                "target_new": {"str": "y"}, "target_true": {"str": "z"}}]))
    assert main(["edit", "--model", "default", "--requests", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"collabedit: error: {bad}: edit request 0: prompt must contain exactly one '{{}}'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_stats_exports_memit_layout(default_world, tmp_path):
    from collabedit_secure.editing.covariance import import_memit_stats

    assert main(["stats", "--model", "default", "--layers", "0", "--samples", "64", "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob("*.npz"))
    assert [f.name for f in files] == ["transformer.h.0.mlp.c_proj_float32_mom2_64.npz"]
    stat = import_memit_stats(files[0])
    assert stat.count > 64 and stat.mom2.shape[0] == stat.mom2.shape[1]
    with np.load(files[0]) as raw:  # MEMIT's tally reads it back only with its sample_size argument
        assert int(raw["sample_size"]) == 64


def test_an_edited_checkpoint_keeps_its_dtype_and_its_tokenizer(tmp_path):
    """A bfloat16 checkpoint is written back in bfloat16, and its tokenizer as it was stored (the
    edit pads with EOS on the right, as MEMIT does, but must not save that into the model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from collabedit_secure.editing.delta import DeltaMismatchError, EditDelta
    from tests.editing.conftest import corpus, make_tokenizer, tiny_model

    tok = make_tokenizer()
    base = tmp_path / "base"
    tiny_model("llama", tok).to(torch.bfloat16).save_pretrained(base)
    tok.pad_token = None
    tok.save_pretrained(base)
    settings = json.loads((base / "tokenizer_config.json").read_text())
    (base / "tokenizer_config.json").write_text(json.dumps({**settings, "padding_side": "left"}))
    (tmp_path / "corpus.txt").write_text("\n".join(corpus()))
    (tmp_path / "hparams.yaml").write_text("base: llama\nlayers: [1, 2]\nv_loss_layer: 3\nv_num_grad_steps: 2\n"
                                           "mom2_update_weight: 50\ncontext_template_length_params: [[4, 5]]\n")
    (tmp_path / "requests.json").write_text(json.dumps(
        [{"prompt": "The mother tongue of {} is", "subject": "Lyon", "target_new": "English"}]))
    out = tmp_path / "edited"
    assert main(["edit", "--model", str(base), "--requests", str(tmp_path / "requests.json"), "--hparams",
                 str(tmp_path / "hparams.yaml"), "--corpus", str(tmp_path / "corpus.txt"), "--out", str(out)]) == 0
    assert json.loads((out / "edit_meta.json").read_text())["saved_dtype"] == "bfloat16"
    edited = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in edited.parameters()} == {torch.bfloat16}
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.pad_token is None and saved.padding_side == "left"
    assert saved("The mother tongue of Lyon").input_ids == tok("The mother tongue of Lyon").input_ids
    delta = EditDelta.load(out / "delta")
    with pytest.raises(DeltaMismatchError, match=r"computed on float32 weights and the model holds bfloat16"):
        delta.apply(AutoModelForCausalLM.from_pretrained(base))
    delta.apply(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32))


def test_a_corpus_file_is_one_document_per_newline(tmp_path):
    from collabedit_secure.pipeline import read_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("page one\x0cstill page one\r\n\nline two \u2028 still two\n  \nthree")
    assert read_corpus(str(corpus), loaded=None) == ["page one\x0cstill page one", "line two \u2028 still two", "three"]


@pytest.mark.parametrize("argv, message", [
    (["--layers", "0", "6"], "layers [6] out of range: default has 6 layers (0-5)"),
    (["--layers", "-1"], "layers [-1] out of range"),
    (["--layers", "0", "--samples", "0"], "argument --samples: must be >= 1, got 0"),
    (["--layers", "0", "--corpus", "{empty}"], "corpus file {empty} has no text"),
])
def test_stats_rejects_bad_layers_and_samples(default_world, argv, message, tmp_path, capsys):
    out = tmp_path / "stats"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    argv = [a.format(empty=empty) for a in argv]
    try:
        status = main(["stats", "--model", "default", *argv, "--out", str(out)])
    except SystemExit as exit_info:  # argparse rejects it before the command runs
        status = exit_info.code
    assert status == 2
    assert message.format(empty=empty) in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("override, message", [
    ("layers: [7]", "layers [7] out of range for a model with 6 layers"),
    ("v_loss_layer: 9", "v_loss_layer 9 out of range for a model with 6 layers"),
])
def test_edit_rejects_hparams_beyond_the_models_depth(default_world, override, message, tmp_path, capsys):
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(f"base: default-world\n{override}\n")
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([{"prompt": "The pet of {} is a", "subject": "Alice", "target_new": {"str": "dog"}}]))
    out = tmp_path / "o"
    assert main(["edit", "--model", "default", "--hparams", str(hparams), "--requests", str(requests),
                 "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_eval_on_real_counterfact_file(default_world, shared_data, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "default", "--dataset", str(shared_data / "counterfact/multi_counterfact-30.json"),
                 "--no-fluency", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["summary"]["n_cases"] == 30 and len(report["cases"]) == 30


def test_world_build_checks_and_prints_the_shipped_world(default_world, capsys):
    assert main(["world", "build"]) == 0
    out = capsys.readouterr().out
    assert f"{default_world.root} (shipped reference build, every file checked" in out
    k = default_world.knowledge
    assert f"rewrite {k['rewrite']:.1%}" in out and f"of {k['records_checked']} records" in out
    assert f"{default_world.config.train_dtype} matmuls" in out


def test_world_build_options_of_training_need_train(capsys):
    assert main(["world", "build", "--out", "anywhere"]) == 2
    assert "--out and --threads apply to training: add --train" in capsys.readouterr().err


def test_world_build_train_out_reuses_a_build_and_refuses_other_directories(default_world, tmp_path, capsys,
                                                                             monkeypatch):
    import collabedit_secure.world as world
    from collabedit_secure.world import config as world_config

    # The reference is a build of the default config in its own precision: on a CPU of the other
    # precision, --train would make (and so look for) another build.
    monkeypatch.setattr(world_config, "native_train_dtype", lambda: default_world.config.train_dtype)
    assert main(["world", "build", "--train", "--out", str(default_world.root)]) == 0
    assert f"{default_world.root} (reused)" in capsys.readouterr().out
    # The thread count reaches the build's config but not the world's identity: the build is reused.
    configs = []
    real_open_or_build = world.open_or_build
    monkeypatch.setattr(world, "open_or_build", lambda out, config=None: (configs.append(config),
                                                                          real_open_or_build(out, config))[1])
    assert main(["world", "build", "--train", "--out", str(default_world.root), "--threads", "1"]) == 0
    assert [c.threads for c in configs] == [1]
    assert f"{default_world.root} (reused)" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["world", "build", "--train", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path} holds other files, not a build of the world" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("keep me too")
    assert main(["world", "build", "--train", "--out", str(tmp_path / "file")]) == 2
    assert f"{tmp_path / 'file'} is a file" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me too"


@pytest.mark.parametrize("value, message", [("0", "must be >= 1, got 0"), ("two", "expected a whole number")])
def test_world_build_threads_are_checked_as_arguments(value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["world", "build", "--train", "--threads", value])
    assert exit_info.value.code == 2
    assert f"argument --threads: {message}" in capsys.readouterr().err


def test_console_script_runs(default_world):
    console_script = Path(sys.executable).parent / "collabedit"  # what `pip install` put beside python
    done = subprocess.run([str(console_script), "world", "build"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(default_world.model_dir) in done.stdout


def test_interrupted_stats_exit_quietly_and_resume(tmp_path):
    """Ctrl-C (a real SIGINT) while C0 is computed: exit 130 with one line, no traceback; the rerun
    continues from the checkpoint and writes the file."""
    import signal
    import time

    from tests.editing.conftest import corpus, make_tokenizer, tiny_model

    tok = make_tokenizer()
    base = tmp_path / "gpt2"
    tiny_model("gpt2", tok).save_pretrained(base)
    tok.save_pretrained(base)
    (tmp_path / "corpus.txt").write_text("\n".join(corpus() * 30))  # 370 batches; the first checkpoint at 20
    command = [str(Path(sys.executable).parent / "collabedit"), "stats", "--model", str(base), "--layers", "1",
               "--corpus", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "out")]
    env = {**os.environ, "COLLABEDIT_CACHE": str(tmp_path / "cache")}
    # A shell runs background jobs with SIGINT ignored, and children inherit that: give the command
    # the disposition it has when a user starts it in a terminal.
    running = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((tmp_path / "cache" / "stats").glob("*.partial.npz")):
        assert running.poll() is None and time.monotonic() < deadline, "finished before its first checkpoint"
        time.sleep(0.02)
    running.send_signal(signal.SIGINT)
    _, err = running.communicate(timeout=60)
    assert running.returncode == 130 and "Traceback" not in err
    assert "collabedit stats: interrupted (C0 statistics checkpointed so far resume on the next run)" in err
    assert not (tmp_path / "out").exists()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("*.npz"))) == 1
    assert not list((tmp_path / "cache" / "stats").glob("*.partial.npz"))


def test_a_terminated_world_build_leaves_nothing_behind(tmp_path):
    """SIGTERM (kill's default) unwinds the installed command like Ctrl-C: the temporary build folder
    goes, and no half-built world is left at --out."""
    import signal
    import time

    running = subprocess.Popen([str(Path(sys.executable).parent / "collabedit"), "world", "build", "--train",
                                "--out", str(tmp_path / "w")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".w.building-*")):
        assert running.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(1.0)  # into the build
    running.send_signal(signal.SIGTERM)
    _, err = running.communicate(timeout=120)
    assert running.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.lock"]


def test_version_is_the_installed_distribution_s(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"collabedit {version('collabedit-secure')}"


def test_eval_conflict_with_round_prompts_reports_the_probe(default_world, shared_data, tmp_path):
    conflict = tmp_path / "conflict.json"
    conflict.write_text(json.dumps(json.loads((shared_data / "conflict/easy_conflict_1000_p1.json").read_text())[:4]))
    rounds = shared_data / "conflict/round_prompts.json"
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "default", "--dataset", str(conflict), "--round-prompts", str(rounds),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["kind"] == "conflict" and report["meta"]["round_prompts"] == str(rounds)
    cases, summary = report["cases"], report["summary"]
    gaps = [c["probe_p_conf"] - c["probe_p_obj"] for c in cases]  # every case was probed
    assert summary["probe_conflict_gap"] == pytest.approx(100 * sum(gaps) / len(gaps), rel=1e-9)
    assert summary["probe_conflict_wins"] == pytest.approx(100 * sum(g > 0 for g in gaps) / len(gaps))
    assert all(0 < c[f"probe_p_{k}"] < 1 for c in cases for k in ("conf", "obj"))
    # the probes are other prompts than the rewrite prompt: their probabilities differ
    assert [c["probe_p_conf"] for c in cases] != [c["rewrite_p_conf"] for c in cases]


def _cf(**changes):
    record = {"case_id": 0, "requested_rewrite": {"prompt": "{} is", "subject": "x", "target_new": {"str": "a"},
                                                  "target_true": {"str": "b"}},
              "paraphrase_prompts": ["x is"], "neighborhood_prompts": ["y is"], "generation_prompts": ["x"]}
    return json.dumps([{**record, **changes}])


def test_a_rejected_run_leaves_no_output_folders_behind(tmp_path, capsys):
    out = tmp_path / "new" / "a" / "b" / "out.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--json", str(out), "--dataset", str(tmp_path / "nope.json")])
    assert exit_info.value.code == 2 and "no such file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_an_unusable_cache_is_a_clean_error(tmp_path, capsys, monkeypatch):
    from collabedit_secure.world import WorldConfig

    monkeypatch.setenv("COLLABEDIT_CACHE", str(tmp_path))
    lock = tmp_path / f"world-{WorldConfig().cache_key()}.lock"
    lock.mkdir()  # the cache cannot be locked for a build: an OSError, not a traceback
    assert main(["world", "build", "--train"]) == 2
    assert str(lock) in capsys.readouterr().err


def test_simulate_wants_generation_prompts_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import collabedit_secure.simulate as simulate

    monkeypatch.setattr(simulate, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    dataset = tmp_path / "cf.json"
    dataset.write_text(_cf(generation_prompts=[]))
    assert main(["simulate", "--dataset", str(dataset), "--json", str(tmp_path / "o.json")]) == 2
    assert "skip fluency with --no-fluency" in capsys.readouterr().err


def _zsre(**changes):
    record = {"subject": "Zed", "src": "Who made Zed?", "rephrase": "Who built Zed?", "answers": ["A"],
              "loc": "nq question: q", "loc_ans": "a"}
    return json.dumps([{**record, **changes}])


def _conflict(new_object):
    return json.dumps([{"edit": {"relation": {"id": "P1", "prompt": "{} is"}, "subject": {"label": "x"},
                                 "new_object": new_object, "object": {"label": "b"},
                                 "conflict_object": {"label": "c"}}, "true_objects": []}])


EVAL_BAD_INPUTS = {  # dataset text (or bytes), extra arguments, expected message
    "round prompts for counterfact": (_cf(), ["--round-prompts", "{rounds}"],
                                      "round prompts only apply to conflict datasets, and this one is counterfact"),
    "conflict empty new_object": (_conflict(""), [], "conflict record 0: field 'edit.new_object' is empty"),
    "counterfact empty subject": (_cf(requested_rewrite={"prompt": "{} is", "subject": "", "target_new": {"str": "a"},
                                                         "target_true": {"str": "b"}}), [],
                                  "record 0 (case_id 0): field 'requested_rewrite.subject' is empty"),
    "counterfact empty paraphrase": (_cf(paraphrase_prompts=[""]), [], "paraphrase_prompts[0] is an empty prompt"),
    "counterfact empty neighbour": (_cf(neighborhood_prompts=[" "]), [], "neighborhood_prompts[0] is an empty prompt"),
    "no generation prompts under fluency": (_cf(generation_prompts=[]), [],
                                            "no 'generation_prompts', which fluency samples from (skip fluency "
                                            "with --no-fluency)"),
    "zsre empty rephrase": (_zsre(rephrase=""), [], "zsRE record 0: field 'rephrase' is empty"),
    "zsre empty subject": (_zsre(subject=""), [], "zsRE record 0: field 'subject' is empty"),
    "zsre subject twice": (_zsre(src="Zed made Zed?"), [], "subject 'Zed' occurs 2 times in src 'Zed made Zed?'"),
    "not utf-8": ('[{"src": "café"}]'.encode("latin-1"), [], "not UTF-8 text"),
}


@pytest.mark.parametrize("case", sorted(EVAL_BAD_INPUTS))
def test_eval_rejects_bad_input_before_the_model_loads(case, shared_data, tmp_path, capsys, monkeypatch):
    import collabedit_secure.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    content, extra, expected = EVAL_BAD_INPUTS[case]
    bad = tmp_path / "bad.json"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    extra = [a.format(rounds=shared_data / "conflict/round_prompts.json") for a in extra]
    out = tmp_path / "o.json"
    assert main(["eval", "--model", "default", "--dataset", str(bad), *extra, "--json", str(out)]) == 2
    assert f"collabedit: error: {bad}: " in (err := capsys.readouterr().err) and expected in err
    assert not out.exists()


def test_eval_rejects_a_corrupt_edit_meta_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import collabedit_secure.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    (tmp_path / "edit_meta.json").write_text("{")
    dataset = tmp_path / "data.json"
    dataset.write_text(_cf())
    assert main(["eval", "--model", str(tmp_path), "--dataset", str(dataset), "--json", str(tmp_path / "o.json")]) == 2
    assert f"{tmp_path / 'edit_meta.json'}: not valid JSON" in capsys.readouterr().err


def test_eval_report_records_the_edit_and_the_fluency_settings(default_world, tmp_path):
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps(default_world.records[:2]))
    edited = tmp_path / "edited"
    assert main(["edit", "--model", "default", "--requests", str(requests), "--schedule", "parallel",
                 "--out", str(edited)]) == 0
    edit_meta = json.loads((edited / "edit_meta.json").read_text())
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(edited), "--dataset", str(requests), "--json", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["edit"] == {"schedule": "parallel", "n_requests": 2, "base_model": edit_meta["base_model"],
                            "model_fingerprint": edit_meta["model_fingerprint"],
                            "layers": edit_meta["hparams"]["layers"], "method": "MEMIT"}
    assert meta["edit"]["base_model"].startswith("default (") and meta["edit"]["model_fingerprint"]
    assert meta["fluency"] == {"seed": 0, "max_out_len": 100}
    assert main(["eval", "--model", "default", "--dataset", str(requests), "--fluency-tokens", "30",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["meta"]["fluency"] == {"seed": 0, "max_out_len": 30}
    assert main(["eval", "--model", "default", "--dataset", str(requests), "--no-fluency", "--json", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert meta["edit"] is None and meta["fluency"] is None and meta["round_prompts"] is None


def test_a_plain_request_list_names_an_item_that_is_not_an_object(tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([{"prompt": "{} is a", "subject": "Zed", "target_new": "b"}, "x"]))
    assert main(["edit", "--model", "default", "--requests", str(requests), "--out", str(tmp_path / "o")]) == 2
    assert f"{requests}: edit request 1: expected a JSON object, got str" in capsys.readouterr().err


def test_a_plain_request_list_names_ids_that_read_alike(tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    requests = tmp_path / "requests.json"
    item = {"prompt": "{} is a", "subject": "Zed", "target_new": "b"}
    requests.write_text(json.dumps([{**item, "case_id": "1"}, {**item, "subject": "Ann"}]))  # the 2nd is id 1
    assert main(["edit", "--model", "default", "--requests", str(requests), "--out", str(tmp_path / "o")]) == 2
    assert f"{requests}: edit requests '1' and 1 share the id '1'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["edit", "stats", "simulate"])
@pytest.mark.parametrize("text, message", [
    ("base: default-world\nlayers: [1\n", "not valid YAML at line 3, column 1"),
    ("base: default-world\nmom2_batch_size: 0\n", "mom2_batch_size must be >= 1, got 0"),
    ("base: default-world\nrewrite_module_tmp: transformer.h.0.mlp.c_proj\n",
     "rewrite_module_tmp must be a module path with exactly one '{}'"),
])
def test_bad_hparams_files_fail_before_any_model_loads(command, text, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    hparams = tmp_path / "h.yaml"
    hparams.write_text(text)
    requests = tmp_path / "requests.json"
    requests.write_text("[]")
    argv = {"edit": ["edit", "--model", "default", "--requests", str(requests), "--out", str(tmp_path / "o")],
            "stats": ["stats", "--model", "default", "--layers", "0", "--out", str(tmp_path / "o")],
            "simulate": ["simulate"]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--hparams", str(hparams)])
    assert exit_info.value.code == 2
    assert f"argument --hparams: {hparams}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--methods", "global,none,global"], "method(s) ['global'] listed more than once"),
    (["stats", "--model", "default", "--layers", "0", "1", "0", "--out", "{dir}/o"], "--layers lists [0] more than once"),
    (["eval", "--model", "default", "--dataset", "{file}", "--json", "{file}"],
     "--json {file} is the --dataset file; writing the results would replace it"),
    (["simulate", "--dataset", "{file}", "--json", "{file}"], "--json {file} is the --dataset file"),
    (["simulate", "--dataset", "{file}"], "the dataset has 1 records with distinct subjects; 10 parties x 20 "
                                          "edits x 1 rounds need 200"),
])
def test_contradictory_arguments_fail_before_any_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    present = tmp_path / "cf.json"
    present.write_text(_cf())
    fill = {"file": present, "dir": tmp_path}
    assert main([a.format(**fill) for a in argv]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert present.read_text() == _cf() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["edit", "stats", "simulate"])
@pytest.mark.parametrize("model, message", [
    ("{dir}/nope", "--model {dir}/nope: no such model directory"),
    ("nobody/has-this-model", "--model nobody/has-this-model: no such directory, and no model of that name in the "
                              "local hub cache"),
])
def test_a_model_that_is_not_there_is_named_first(command, model, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    model = model.format(dir=tmp_path)
    requests = tmp_path / "requests.json"
    requests.write_text("[]")
    argv = {"edit": ["edit", "--requests", str(requests), "--out", str(tmp_path / "o")],
            "stats": ["stats", "--layers", "0", "--out", str(tmp_path / "o")],
            "simulate": ["simulate", "--dataset", str(requests)]}[command]
    assert main([*argv, "--model", model]) == 2  # before its corpus, C0 or dataset are asked for
    assert message.format(dir=tmp_path) in capsys.readouterr().err


@pytest.mark.parametrize("command", ["edit", "stats"])
def test_a_corpus_that_is_not_utf8_is_named_before_any_model_loads(command, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"one document\nan\xff other\n")
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([{"prompt": "{} is a", "subject": "Zed", "target_new": "b"}]))
    argv = {"edit": ["edit", "--requests", str(requests)], "stats": ["stats", "--layers", "0"]}[command]
    assert main([*argv, "--model", "default", "--corpus", str(corpus), "--out", str(tmp_path / "o")]) == 2
    assert f"corpus file {corpus}: not UTF-8 text (invalid start byte at byte 15)" in capsys.readouterr().err


def test_stats_asks_only_for_what_it_takes(tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    assert main(["stats", "--model", str(model), "--layers", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs --corpus FILE (one document per line); the world corpus belongs to --model default" in err
    assert "--stats" not in err  # stats makes statistics; it takes none


@pytest.mark.parametrize("output, inputs, message", [
    ("{model}/config.json", ["eval", "--model", "{model}", "--dataset", "{cf}"],
     "--json {model}/config.json is a file of the --model directory {model}; writing the results would replace it"),
    ("{hp}", ["simulate", "--hparams", "{hp}"], "--json {hp} is the --hparams file"),
    ("{corpus}", ["simulate", "--corpus", "{corpus}"], "--json {corpus} is the --corpus file"),
    ("{model}/config.json", ["simulate", "--model", "{model}", "--dataset", "{cf}", "--corpus", "{corpus}"],
     "is a file of the --model directory"),
])
def test_results_never_land_on_an_input(output, inputs, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2"}')
    fill = {"model": model, "cf": tmp_path / "cf.json", "hp": tmp_path / "h.yaml", "corpus": tmp_path / "c.txt"}
    fill["cf"].write_text(_cf())
    fill["hp"].write_text("base: default-world\n")
    fill["corpus"].write_text("a document\n")
    before = {path: path.read_text() for path in (model / "config.json", fill["hp"], fill["corpus"])}
    assert main([a.format(**fill) for a in [*inputs, "--json", output]]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert {path: path.read_text() for path in before} == before


@pytest.mark.parametrize("item, message", [
    ({"tagret_true": "b"}, "edit request 0: unknown field(s) 'tagret_true'; a plain request has case_id, "
                           "prompt, relation_id, subject, target_new, target_true (prompt, subject and target_new "
                           "required)"),
    ({"subject": None}, "edit request 0: no 'subject'; a plain request has"),
])
def test_a_plain_request_with_a_misspelt_or_missing_field_is_refused(item, message, tmp_path, capsys, monkeypatch):
    forbid_work(monkeypatch)
    request = {"prompt": "{} is a", "subject": "Zed", "target_new": "a", **item}
    request = {k: v for k, v in request.items() if v is not None}
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([request]))
    assert main(["edit", "--model", "default", "--requests", str(requests), "--out", str(tmp_path / "o")]) == 2
    assert f"{requests}: {message}" in capsys.readouterr().err


def test_a_config_without_a_model_type_is_named(tmp_path):
    from collabedit_secure.pipeline import load_model

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"^--model {tmp_path}: config.json does not describe a model transformers "
                                         "knows"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("what, message", [
    ("file", "a file, not a model directory"),
    ("empty dir", "not an HF model directory (no config.json)"),
])
def test_a_model_path_that_is_not_a_model_directory_is_named(what, message, tmp_path):
    from collabedit_secure.pipeline import load_model

    path = tmp_path / "model"
    path.write_text("{}") if what == "file" else path.mkdir()
    with pytest.raises(ValueError, match=rf"^--model {path}: {re.escape(message)}"):
        load_model(str(path))


def test_simulate_reports_cases_without_paraphrases_or_neighbours(default_world, tmp_path, capsys):
    dataset = tmp_path / "cf.json"
    record = {**default_world.records[0], "paraphrase_prompts": [], "neighborhood_prompts": []}
    dataset.write_text(json.dumps([record]))
    out = tmp_path / "sim.json"
    assert main(["simulate", "--dataset", str(dataset), "--parties", "1", "--edits-per-party", "1",
                 "--methods", "none", "--no-fluency", "--json", str(out)]) == 0
    unedited = json.loads(out.read_text())["methods"]["none"]
    assert unedited["generalization"] is None and unedited["specificity"] is None and unedited["score"] is None
    assert unedited["n"]["efficacy"] == 1 and unedited["n"]["generalization"] == unedited["n"]["specificity"] == 0
    printed = capsys.readouterr().out
    assert "note: generalization is over 0 of 1 cases (the others have no such prompts)" in printed
    assert "fluency is over" not in printed  # off, not missing
    model, tok = default_world.load_model()
    _, expected = evaluate_dataset(model, tok, [record], fluency=False)
    assert unedited["efficacy"] == expected["efficacy"]
