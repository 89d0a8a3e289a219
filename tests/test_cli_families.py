"""Every model family the project claims (adapters.FAMILIES), through `collabedit stats`, `edit` and
`eval` as a user calls them, on tiny random-weight models saved as HF directories; and models that
fail to load, refused in one line (issue 42, item 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from collabedit_secure.cli import main
from collabedit_secure.editing.adapters import FAMILIES
from tests.editing.conftest import corpus, make_tokenizer

# 4 layers, 32 wide, 128 positions (MultiCounterFact's longest paraphrase prompts are ~70 tokens here).
_LLAMA_LIKE = dict(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                   intermediate_size=48, max_position_embeddings=128)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=4, n_embd=32, n_head=2, n_positions=128),
    "gptj": lambda: transformers.GPTJConfig(n_layer=4, n_embd=32, n_head=2, n_positions=128, rotary_dim=8),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
                                                   intermediate_size=64, max_position_embeddings=128),
    "llama": lambda: transformers.LlamaConfig(**_LLAMA_LIKE),
    "mistral": lambda: transformers.MistralConfig(**_LLAMA_LIKE),
    "qwen2": lambda: transformers.Qwen2Config(**_LLAMA_LIKE),
    "gemma": lambda: transformers.GemmaConfig(**{**_LLAMA_LIKE, "num_key_value_heads": 1, "head_dim": 16}),
    "phi3": lambda: transformers.Phi3Config(**_LLAMA_LIKE),
    # GELU rather than OPT's ReLU: a random ReLU MLP has units that never fire on a small corpus, and
    # MEMIT's solve needs C0 of full rank.
    "opt": lambda: transformers.OPTConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, ffn_dim=64,
                                          max_position_embeddings=128, word_embed_proj_dim=32,
                                          activation_function="gelu"),
    "falcon": lambda: transformers.FalconConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
                                                max_position_embeddings=128),
    "bloom": lambda: transformers.BloomConfig(n_layer=4, hidden_size=32, n_head=2),  # ALiBi: no position limit
    "gpt_bigcode": lambda: transformers.GPTBigCodeConfig(n_layer=4, n_embd=32, n_head=2, n_positions=128),
}

HPARAMS = ("layers: [1, 2]\nv_loss_layer: 3\nv_num_grad_steps: 4\nmom2_update_weight: 50\n"
           "context_template_length_params: [[4, 5]]\n")


def save_tiny_model(family: str, folder: Path, tok=None) -> Path:
    """A random-weight model of the family and the tests' byte-level BPE tokenizer, as an HF directory."""
    tok = tok or make_tokenizer()
    config = CONFIGS[family]()
    config.update(dict(vocab_size=len(tok), bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.2))
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.model_max_length = 128  # BLOOM states no context: C0's document length comes from here
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread (two threads on shared cores mostly wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A corpus file (66 documents), tiny hparams, and one record in MultiCounterFact's exact schema
    (written here, so these tests need no dataset); C0's cache in tmp_path."""
    monkeypatch.setenv("COLLABEDIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "corpus.txt").write_text("\n".join(sorted(set(corpus()))))
    (tmp_path / "hparams.yaml").write_text(HPARAMS)
    (tmp_path / "cf.json").write_text(json.dumps([COUNTERFACT_RECORD]))
    return tmp_path


COUNTERFACT_RECORD = {
    "case_id": 0, "pararel_idx": 0,
    "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103", "subject": "Danielle Darrieux",
                          "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"}},
    "paraphrase_prompts": ["She grew up in Bordeaux. Danielle Darrieux's mother tongue is",
                           "Danielle Darrieux spoke from birth the language"],
    "neighborhood_prompts": ["The mother tongue of Jean Gabin is", "Michel Piccoli's mother tongue is"],
    "attribute_prompts": ["The mother tongue of Helen Mirren is", "Emma Thompson's mother tongue is"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is", "Where Danielle Darrieux is from, people speak"],
}


def test_every_claimed_family_is_tested_here():
    assert set(CONFIGS) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_stats_edit_and_eval_on_every_family(family, tok, inputs, capsys):
    base = save_tiny_model(family, inputs / family, tok)
    stats, edited, report = inputs / "stats", inputs / "edited", inputs / "report.json"
    hparams = str(inputs / "hparams.yaml")
    assert main(["stats", "--model", str(base), "--layers", "1", "2", "--corpus", str(inputs / "corpus.txt"),
                 "--hparams", hparams, "--out", str(stats)]) == 0
    files = sorted(p.name for p in stats.glob("*.npz"))
    rewrite = FAMILIES[family].rewrite
    assert files == [f"{rewrite.format(layer)}_float32_mom2_66.npz" for layer in (1, 2)]
    assert main(["edit", "--model", str(base), "--requests", str(inputs / "cf.json"), "--hparams", hparams,
                 "--stats", str(stats), "--out", str(edited)]) == 0
    meta = json.loads((edited / "edit_meta.json").read_text())
    assert sorted(meta["stats_files"]) == [rewrite.format(layer) for layer in (1, 2)]
    assert all(Path(source.split(" (")[0]).parent == stats.resolve() for source in meta["stats_files"].values())
    # Only the edited projections moved.
    before, after = load_file(base / "model.safetensors"), load_file(edited / "model.safetensors")
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    assert changed == [rewrite.format(layer) + ".weight" for layer in (1, 2)]
    assert main(["eval", "--model", str(edited), "--dataset", str(inputs / "cf.json"), "--fluency-tokens", "24",
                 "--json", str(report)]) == 0
    summary = json.loads(report.read_text())["summary"]
    assert summary["n"]["efficacy"] == 1 and "fluency" in summary
    assert "error" not in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The one `collabedit: error:` line of a failed command (progress bars aside), no traceback."""
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("collabedit: error: ")
    return errors[0]


def _break_widths(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 64}))


def _add_layers(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layer": 6}))


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


@pytest.mark.parametrize("command", ["stats", "edit", "eval"])
@pytest.mark.parametrize("damage, message", [
    (_break_widths, "config.json and the weights differ in size (52 tensor(s); transformer.h.0.attn.c_attn.bias "
                    "is (96,) in the checkpoint, (192,) by config.json)"),
    (_add_layers, "the checkpoint lacks 24 tensor(s) that config.json describes (first: "
                  "transformer.h.4.attn.c_attn.bias); does config.json belong to these weights?"),
    (_truncate_weights, "the weights do not load (Error while deserializing header: incomplete metadata, "
                        "file not fully covered)"),
], ids=["widths", "layers", "truncated"])
def test_a_model_that_fails_to_load_is_one_line_and_exit_2(command, damage, message, tok, inputs, capsys):
    base = save_tiny_model("gpt2", inputs / "gpt2", tok)
    damage(base)
    out = inputs / "out"
    argv = {"stats": ["stats", "--layers", "1", "--corpus", str(inputs / "corpus.txt"), "--out", str(out)],
            "edit": ["edit", "--requests", str(inputs / "cf.json"), "--corpus", str(inputs / "corpus.txt"),
                     "--out", str(out)],
            "eval": ["eval", "--dataset", str(inputs / "cf.json"), "--json", str(out)]}[command]
    assert main([*argv, "--model", str(base)]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"collabedit: error: --model {base}: {message}"
    assert not out.exists()


@pytest.mark.parametrize("field, template, message", [
    # OPT has no `mlp` module: a template for one, though no computation reads it, is checked.
    ("mlp_module_tmp", "model.decoder.layers.{}.mlp", "model has no module 'model.decoder.layers.0.mlp' "
     "(OPTForCausalLM): check the hparams' mlp_module_tmp (or leave it out for the opt default)"),
    ("rewrite_module_tmp", "model.decoder.layers.{}.mlp.fc2", "model has no module 'model.decoder.layers.0.mlp.fc2' "
     "(OPTForCausalLM): check the hparams' rewrite_module_tmp (or leave it out for the opt default)"),
])
def test_every_template_given_is_checked_against_the_model(field, template, message, tok, inputs, capsys):
    base = save_tiny_model("opt", inputs / "opt", tok)
    hparams = inputs / "opt.yaml"
    hparams.write_text(HPARAMS + f"{field}: '{template}'\n")
    out = inputs / "out"
    assert main(["edit", "--model", str(base), "--requests", str(inputs / "cf.json"), "--hparams", str(hparams),
                 "--corpus", str(inputs / "corpus.txt"), "--out", str(out)]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"collabedit: error: {message}"
    assert not out.exists()


def test_opt_350m_layout_is_refused_by_name(tok, inputs, capsys):
    """OPT-350m projects 1024-wide blocks to 512-wide embeddings: its unembedding is not ln_f then lm_head."""
    base = inputs / "opt"
    save_tiny_model("opt", base, tok)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "do_layer_norm_before": False}))
    assert main(["stats", "--model", str(base), "--layers", "1", "--corpus", str(inputs / "corpus.txt"),
                 "--out", str(inputs / "out")]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        "collabedit: error: OPT with do_layer_norm_before false or word_embed_proj_dim != hidden_size (OPT-350m's "
        "layout: a project_out between the last block and lm_head) is not supported")


def test_an_unclaimed_family_runs_with_the_four_templates_memit_reads(tok, inputs, capsys):
    """StableLM is not in FAMILIES: refused with what to give, then edited once the hparams give it."""
    base = inputs / "stablelm"
    config = transformers.StableLmConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                                         vocab_size=len(tok), bos_token_id=0, eos_token_id=0, pad_token_id=0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tok.save_pretrained(base)
    argv = ["edit", "--model", str(base), "--requests", str(inputs / "cf.json"), "--corpus",
            str(inputs / "corpus.txt")]
    assert main([*argv, "--out", str(inputs / "refused")]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"collabedit: error: unknown model family 'stablelm'; supported: {', '.join(sorted(FAMILIES))} (or give "
        "the module templates MEMIT reads in the hparams: rewrite_module_tmp, layer_module_tmp, ln_f_module, "
        "lm_head_module)")
    hparams = inputs / "stablelm.yaml"
    hparams.write_text(HPARAMS + "rewrite_module_tmp: model.layers.{}.mlp.down_proj\nlayer_module_tmp: "
                                 "model.layers.{}\nln_f_module: model.norm\nlm_head_module: lm_head\n")
    assert main([*argv, "--hparams", str(hparams), "--out", str(inputs / "edited")]) == 0
    meta = json.loads((inputs / "edited" / "edit_meta.json").read_text())
    assert meta["hparams"]["layers"] == [1, 2] and meta["hparams"]["mlp_module_tmp"] is None
