"""EasyEdit's MEMIT hparams as a user hands them to the commands (issue 42, item 1), and the defaults
without --hparams, scaled to the model's depth (item 2). Tiny random-weight HF models, real records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from collabedit_secure.cli import main
from collabedit_secure.editing.hparams import MemitHparams
from collabedit_secure.pipeline import scale_to_depth
from tests.test_cli_families import inputs, one_thread, save_tiny_model, tok  # noqa: F401 (fixtures)

# EasyEdit's hparams/MEMIT/gpt2-xl.yaml, every field as it has it, at a 4-layer model's numbers.
EASYEDIT = """alg_name: "MEMIT"
model_name: "./hugging_cache/gpt2-xl"
stats_dir: "./data/stats"
device: 0
layers: [1, 2]
clamp_norm_factor: 0.75
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 4
v_lr: 5e-1
v_loss_layer: 3
v_weight_decay: 0.5
kl_factor: 0.0625
mom2_adjustment: true
mom2_update_weight: 50
rewrite_module_tmp: "transformer.h.{}.mlp.c_proj"
layer_module_tmp: "transformer.h.{}"
mlp_module_tmp: "transformer.h.{}.mlp"
attn_module_tmp: "transformer.h.{}.attn"
ln_f_module: "transformer.ln_f"
lm_head_module: "transformer.wte"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
model_parallel: false
batch_size: 1
max_length: 40
fp16: false
"""

IGNORED = [
    "fp16 is ignored: the model is edited in float32 and saved in its checkpoint's dtype",
    "max_length is ignored: EasyEdit's generation length in its own evaluation; see eval --fluency-tokens",
    "batch_size is ignored: EasyEdit's batching of its requests; an edit takes every request of --requests",
]
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture
def user(tok, inputs, monkeypatch):
    """A user's working folder: a tiny GPT-2, EasyEdit's YAML, and paths relative to it as EasyEdit's are."""
    monkeypatch.chdir(inputs)
    save_tiny_model("gpt2", inputs / "gpt2", tok)
    (inputs / "easyedit.yaml").write_text(EASYEDIT)
    return inputs


def notes(err: str) -> list[str]:
    return [line.removeprefix("collabedit: note: ") for line in err.splitlines() if line.startswith("collabedit: note:")]


def test_an_easyedit_yaml_runs_stats_and_edit_with_its_nested_stats_dir(user, capsys):
    """`stats` writes EasyEdit's `<stats_dir>/<model>/<dataset>_stats/` layout; `edit` finds it from the
    YAML's stats_dir and model_name, and says that the file's sample count is not mom2_n_samples."""
    nested = Path("data/stats/gpt2-xl/wikipedia_stats")
    assert main(["stats", "--model", "gpt2", "--layers", "1", "2", "--corpus", "corpus.txt", "--hparams",
                 "easyedit.yaml", "--device", "cpu", "--out", str(nested)]) == 0
    assert notes(capsys.readouterr().err) == [
        "easyedit.yaml's stats_dir ./data/stats is not read by stats, which writes to --out",
        "--device cpu overrides easyedit.yaml's device: 0", *(f"easyedit.yaml: {line}" for line in IGNORED)]
    assert main(["edit", "--model", "gpt2", "--requests", "cf.json", "--hparams", "easyedit.yaml", "--device", "cpu",
                 "--out", "edited"]) == 0
    files = [nested.resolve() / f"transformer.h.{layer}.mlp.c_proj_float32_mom2_66.npz" for layer in (1, 2)]
    assert notes(capsys.readouterr().err) == [
        "--device cpu overrides easyedit.yaml's device: 0", *(f"easyedit.yaml: {line}" for line in IGNORED),
        *(f"{Path('data/stats') / 'gpt2-xl/wikipedia_stats' / f.name}: statistics of 66 samples; the hparams' "
          "mom2_n_samples is 100000" for f in files)]
    meta = json.loads((user / "edited" / "edit_meta.json").read_text())
    assert meta["stats_files"] == {
        f"transformer.h.{layer}.mlp.c_proj": f"{f} (statistics of 66 samples; the hparams' mom2_n_samples is 100000)"
        for layer, f in zip((1, 2), files)}


def test_memit_s_layout_is_found_under_the_model_s_name(user, capsys):
    """MEMIT's `data/stats/<model>/wikipedia_stats/`, the model named by its directory, given as --stats."""
    yaml = Path("memit.yaml")
    yaml.write_text("\n".join(line for line in EASYEDIT.splitlines()
                              if not line.startswith(("model_name", "stats_dir", "device"))))
    assert main(["stats", "--model", "gpt2", "--layers", "1", "2", "--corpus", "corpus.txt", "--hparams", str(yaml),
                 "--out", "data/stats/gpt2/wikipedia_stats"]) == 0
    assert main(["edit", "--model", "gpt2", "--requests", "cf.json", "--hparams", str(yaml), "--stats", "data/stats",
                 "--out", "edited"]) == 0
    meta = json.loads((user / "edited" / "edit_meta.json").read_text())
    assert {Path(source.split(" (")[0]).parent for source in meta["stats_files"].values()} == {
        (user / "data/stats/gpt2/wikipedia_stats").resolve()}


def test_statistics_missing_under_a_stats_dir_are_named_with_the_layouts_looked_in(user, capsys):
    Path("data/stats/gpt2-xl/wikipedia_stats").mkdir(parents=True)
    assert main(["edit", "--model", "gpt2", "--requests", "cf.json", "--hparams", "easyedit.yaml", "--device", "cpu",
                 "--out", "edited"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "collabedit: error: no statistics for transformer.h.1.mlp.c_proj in data/stats nor in data/stats/<model>/"
        "wikipedia_stats/ (MEMIT's and EasyEdit's layout; found for: gpt2-xl); expected "
        "transformer.h.1.mlp.c_proj_float32_mom2_100000.npz")
    assert not Path("edited").exists()


@pytest.mark.parametrize("option, value", [("--corpus", "corpus.txt"), ("--stats", "flat")])
def test_the_command_line_wins_over_stats_dir_and_says_so(option, value, user, capsys):
    assert main(["stats", "--model", "gpt2", "--layers", "1", "2", "--corpus", "corpus.txt", "--out", "flat"]) == 0
    assert main(["edit", "--model", "gpt2", "--requests", "cf.json", "--hparams", "easyedit.yaml", "--device", "cpu",
                 option, value, "--out", "edited"]) == 0
    assert f"{option} {value} overrides easyedit.yaml's stats_dir ./data/stats" in notes(capsys.readouterr().err)


def test_a_stats_dir_that_is_not_there_is_one_line(user, capsys):
    assert main(["edit", "--model", "gpt2", "--requests", "cf.json", "--hparams", "easyedit.yaml", "--device", "cpu",
                 "--out", "edited"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"collabedit: error: easyedit.yaml: stats_dir ./data/stats: no such directory (read from the current "
        f"directory, {user}); fix it, or give --stats DIR or --corpus FILE")
    assert not Path("edited").exists()


@needs_no_cuda
@pytest.mark.parametrize("setting, message", [
    ("device: 0", "device: 0: device 'cuda:0' needs CUDA"),
    ("model_parallel: true", "model_parallel: true: device 'auto' needs CUDA"),
])
@pytest.mark.parametrize("command", ["stats", "edit", "simulate"])
def test_an_easyedit_device_is_used_unless_the_command_line_names_one(setting, message, command, user, capsys):
    yaml = Path("gpu.yaml")
    yaml.write_text(EASYEDIT.replace("device: 0", "").replace("model_parallel: false", setting))
    argv = {"stats": ["stats", "--layers", "1", "--corpus", "corpus.txt", "--out", "out"],
            "edit": ["edit", "--requests", "cf.json", "--corpus", "corpus.txt", "--out", "out"],
            "simulate": ["simulate", "--dataset", "cf.json", "--parties", "1", "--edits-per-party", "1",
                         "--corpus", "corpus.txt", "--json", "out"]}[command]
    assert main([*argv, "--model", "gpt2", "--hparams", str(yaml)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"collabedit: error: gpu.yaml: {message}, and this machine has none")
    assert err[-1].endswith("; use --device cpu")
    assert not Path("out").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_an_easyedit_device_runs_the_edit_there(user, capsys):
    """EasyEdit's `device: 0` with no --device: the edit runs on cuda:0, with no notice of an override."""
    assert main(["stats", "--model", "gpt2", "--layers", "1", "2", "--corpus", "corpus.txt", "--hparams",
                 "easyedit.yaml", "--out", "data/stats/gpt2-xl/wikipedia_stats"]) == 0
    assert main(["edit", "--model", "gpt2", "--requests", "cf.json", "--hparams", "easyedit.yaml",
                 "--out", "edited"]) == 0
    assert not [line for line in notes(capsys.readouterr().err) if "overrides" in line]
    assert (user / "edited" / "delta").is_dir()


@pytest.mark.parametrize("value, message", [
    ("device: [0, 1]", "device must be a GPU index (EasyEdit's 0) or a device name, got [0, 1]"),
    ("model_parallel: 2", "model_parallel must be true or false, got 2"),
    ("stats_dir: 3", "stats_dir must be a path (a string), got 3"),
])
def test_bad_run_settings_are_refused_as_arguments(value, message, user, capsys):
    field = value.split(":")[0]
    Path("bad.yaml").write_text("\n".join([*(line for line in EASYEDIT.splitlines() if not line.startswith(field)),
                                           value]))
    with pytest.raises(SystemExit) as stop:
        main(["edit", "--model", "gpt2", "--requests", "cf.json", "--hparams", "bad.yaml", "--out", "out"])
    assert stop.value.code == 2
    assert f"argument --hparams: bad.yaml: {message}" in capsys.readouterr().err


def test_mom2_fields_that_change_nothing_here_are_named(user, capsys):
    Path("other.yaml").write_text(EASYEDIT.replace("mom2_adjustment: true", "mom2_adjustment: false")
                                  .replace('mom2_dtype: "float32"', 'mom2_dtype: "float16"'))
    assert main(["stats", "--model", "gpt2", "--layers", "1", "--corpus", "corpus.txt", "--hparams", "other.yaml",
                 "--device", "cpu", "--out", "out"]) == 0
    found = notes(capsys.readouterr().err)
    assert "other.yaml: mom2_adjustment false is ignored: C0 is always used, as in MEMIT's published runs" in found
    assert "other.yaml: mom2_dtype float16 is ignored: C0 is always accumulated in float64" in found


# ------------------------------------------------------------------ item 2: defaults fit the model

@pytest.mark.parametrize("shipped, depth, layers", [
    ("gpt2-xl", 48, [13, 14, 15, 16, 17]),  # its own depth: MEMIT's band as published
    ("gpt2-xl", 12, [3, 4]),
    ("gpt2-xl", 4, [1]),
    ("gpt-j-6b", 4, [0, 1]),
    ("llama", 80, [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]),
    ("qwen2-7b", 2, [0]),
])
def test_a_shipped_band_moves_to_the_same_relative_depth(shipped, depth, layers):
    scaled = scale_to_depth(MemitHparams.builtin(shipped), depth)
    assert scaled.layers == layers and scaled.v_loss_layer == depth - 1
    assert scaled.rewrite_module_tmp is None  # the model family's own module names


@pytest.mark.parametrize("family, shipped, layers", [
    ("gpt2", "gpt2-xl hparams", [1]),
    ("llama", "llama hparams", [0, 1]),
    ("opt", "gpt2-xl hparams (the opt family has no file of its own)", [1]),
])
def test_without_hparams_the_family_file_fits_a_small_model_and_says_which_layers(family, shipped, layers, tok,
                                                                                  inputs, capsys):
    """A user's first run: `stats` for the printed layers, then `edit` with no --hparams at all."""
    base = save_tiny_model(family, inputs / family, tok)
    stats = ["stats", "--model", str(base), "--corpus", str(inputs / "corpus.txt"), "--out", str(inputs / "stats")]
    assert main([*stats, "--layers", *map(str, layers)]) == 0
    assert main(["edit", "--model", str(base), "--requests", str(inputs / "cf.json"), "--stats",
                 str(inputs / "stats"), "--out", str(inputs / "edited")]) == 0
    depth = {"gpt2-xl": 48, "llama": 32}[shipped.split()[0]]
    assert (f"no --hparams: the shipped {shipped}, made for {depth} layers, at this model's 4: layers {layers}, "
            "v_loss_layer 3") in notes(capsys.readouterr().err)
    meta = json.loads((inputs / "edited" / "edit_meta.json").read_text())
    assert meta["hparams"]["layers"] == layers and meta["hparams"]["v_loss_layer"] == 3
