"""Adapters, hparams, requests, token indices, templates, targets, deltas: real forward passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from collabedit_secure.editing import (
    DeltaMismatchError, EditDelta, EditRequest, HparamsError, MemitHparams, ModelAdapter, RequestError,
    UnsupportedModelError, edit, layer_stats, requests_from_records,
)
from collabedit_secure.editing.context import generate_context_templates
from collabedit_secure.editing.keys import compute_keys
from collabedit_secure.editing.targets import TargetCache, compute_z
from collabedit_secure.editing.tokens import continuation_ids, subject_last_index
from collabedit_secure.eval.nll import target_nll
from collabedit_secure.kernels import NotPositiveDefiniteError

from .conftest import (
    RELATIONS, SUBJECTS, corpus, make_sentencepiece_style_tokenizer, random_c0, tiny_hparams, tiny_model,
    tiny_requests,
)

FAMILIES = ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_keys_have_mlp_width(family, tok):
    model = tiny_model(family, tok)
    adapter = ModelAdapter.from_model(model)
    templates = [["{}"], ["The. {}"]]
    keys, cur_z = compute_keys(model, tok, adapter, tiny_requests(2), [1, 2], templates, z_layer=2)
    mlp_width = {"gpt2": 4 * 32, "gptj": 4 * 32, "gpt_neox": 64}.get(family, 48)
    assert keys[1].shape == (mlp_width, 2) and keys[2].dtype == torch.float64
    assert cur_z.shape == (32, 2)
    assert adapter.weight_out_in(model, 1).shape == (32, mlp_width)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_edit_leaves_the_model_as_it_was_and_names_its_layers(family, tok):
    model = tiny_model(family, tok)
    hp = tiny_hparams()
    adapter = ModelAdapter.from_model(model, hp)
    c0 = {l: random_c0(adapter.key_dim(model, l), l) for l in hp.layers}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = edit(model, tok, [tiny_requests(3)], hp, c0, schedule="sequential")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert set(result.delta.weights) == {adapter.rewrite_name(l) for l in hp.layers}
    assert result.delta.metadata["context_templates"][0] == ["{}"]


def test_unknown_family_is_named(tok):
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2)
    config.model_type = "bert"
    with pytest.raises(UnsupportedModelError, match="unknown model family 'bert'.*gpt2.*llama"):
        ModelAdapter.from_config(config)


def test_edit_refuses_nothing_to_do(tok):
    model = tiny_model("gpt2", tok)
    with pytest.raises(ValueError, match="at least one party"):
        edit(model, tok, [], tiny_hparams(), {})
    with pytest.raises(ValueError, match="party 1 has no edit requests"):
        edit(model, tok, [tiny_requests(1), []], tiny_hparams(), {})
    first, second = tiny_requests(2)
    twin = EditRequest(0, second.prompt, second.subject, second.target_new)  # "case0" vs 0 are fine...
    other = EditRequest("0", second.prompt, second.subject, second.target_new)  # ...0 vs "0" are not
    with pytest.raises(RequestError, match="edit requests 0 and '0' share the id '0'"):
        edit(model, tok, [[first, twin], [other]], tiny_hparams(), {})


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("long_part", ["prompt", "target"])
def test_an_edit_longer_than_the_context_is_named_before_any_target_is_optimised(family, long_part, tok,
                                                                                  monkeypatch):
    import collabedit_secure.editing.targets as targets

    monkeypatch.setattr(targets, "compute_z", lambda *a, **k: pytest.fail("compute_z ran before the check"))
    model = tiny_model(family, tok)  # 64 positions
    hp = tiny_hparams()
    c0 = {l: random_c0(ModelAdapter.from_model(model, hp).key_dim(model, l), l) for l in hp.layers}
    words = " ".join(["Paris"] * 70)
    long = EditRequest("long", "The mother tongue of {} is" + (" " + words if long_part == "prompt" else ""),
                       "Lyon", words if long_part == "target" else "French")
    with pytest.raises(RequestError, match=r"^edit request 'long': prompt 'The mother tongue of Lyon is.* with a "
                                           r"context template and its target is \d+ tokens, more than the "
                                           r"model's context of 64 tokens$"):
        edit(model, tok, [tiny_requests(2), [long]], hp, c0)


@pytest.mark.parametrize("defect", ["rank-deficient", "indefinite", "nan"])
def test_an_unusable_c0_is_refused_before_any_target_is_optimised(defect, tok, monkeypatch):
    import collabedit_secure.editing.targets as targets

    monkeypatch.setattr(targets, "compute_z", lambda *a, **k: pytest.fail("compute_z ran before the check"))
    model = tiny_model("gpt2", tok)
    hp = tiny_hparams()
    adapter = ModelAdapter.from_model(model, hp)
    c0 = {l: random_c0(adapter.key_dim(model, l), l) for l in hp.layers}
    bad_layer = hp.layers[-1]
    if defect == "rank-deficient":  # a key dimension the corpus never reached
        c0[bad_layer][:, 5] = 0.0
        c0[bad_layer][5, :] = 0.0
    elif defect == "indefinite":
        c0[bad_layer][3, 3] = -1.0
    else:
        c0[bad_layer][0, 1] = float("nan")
    expected = "NaN or Inf" if defect == "nan" else r"not positive definite \(leading minor \d+ of \d+\)"
    error = ValueError if defect == "nan" else NotPositiveDefiniteError
    with pytest.raises(error, match=rf"^lambda C0 \+ C_acc for layer {adapter.rewrite_name(bad_layer)} .*{expected}"):
        edit(model, tok, [tiny_requests(2)], hp, c0)


def test_hparams_yaml_round_trip(tmp_path):
    hp = MemitHparams.builtin("gpt-j-6b")
    hp.to_yaml(tmp_path / "h.yaml")
    assert MemitHparams.from_yaml(tmp_path / "h.yaml") == hp
    assert hp.layers == [3, 4, 5, 6, 7, 8] and hp.mom2_update_weight == 15000


def test_hparams_accepts_easyedit_file(tmp_path):
    text = Path(MemitHparams.builtin.__code__.co_filename).parent / "hparams" / "gpt2-xl.yaml"
    easyedit = 'alg_name: "MEMIT"\nmodel_name: "./hugging_cache/gpt2-xl"\nstats_dir: "./data/stats"\n' \
               "device: 0\nmodel_parallel: false\n" + text.read_text().replace("v_lr: 0.5", "v_lr: 5e-1")
    (tmp_path / "e.yaml").write_text(easyedit)
    hp = MemitHparams.from_yaml(tmp_path / "e.yaml")
    assert hp.v_lr == 0.5 and hp.layers == [13, 14, 15, 16, 17]
    (tmp_path / "bad.yaml").write_text(easyedit + "v_lrr: 1\n")
    with pytest.raises(HparamsError, match="unknown MEMIT hyperparameter.*v_lrr"):
        MemitHparams.from_yaml(tmp_path / "bad.yaml")


def test_hparams_file_overrides_a_shipped_base(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: gpt-j-6b\nmom2_update_weight: 300\nlayers: [3, 4]\n")
    hp = MemitHparams.from_yaml(tmp_path / "mine.yaml")
    expected = {**MemitHparams.builtin("gpt-j-6b").to_dict(), "mom2_update_weight": 300.0, "layers": [3, 4]}
    assert hp.to_dict() == expected
    (tmp_path / "bad.yaml").write_text("base: gpt-k\n")
    with pytest.raises(HparamsError, match="bad.yaml: no shipped hparams 'gpt-k'; available: default-world"):
        MemitHparams.from_yaml(tmp_path / "bad.yaml")


@pytest.mark.parametrize("text, problem", [
    ("base: default-world\nlayers: [0]\nlayers: [0, 1, 2, 3]\n", r"'layers' is given twice"),
    ("base: ../hparams/default-world\n", r"no shipped hparams '../hparams/default-world'; available: default-world"),
    ("base: default-world\ncontext_template_seed: 100000000000000000000000\n",
     r"context_template_seed must be between 0 and 2\*\*63 - 1"),
    ("base: default-world\nmom2_dataset: 5\n", r"mom2_dataset must be a name \(a string\), got 5"),
])
def test_hparams_files_that_would_be_misread_are_refused(text, problem, tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text(text)
    with pytest.raises(HparamsError, match=f"^{path}: .*{problem}"):
        MemitHparams.from_yaml(path)


def test_hparams_checks_against_the_model_name_their_file(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text("base: default-world\nlayers: [0, 1, 9]\n")
    with pytest.raises(HparamsError, match=rf"^{path}: layers \[0, 1, 9\] out of range for a model with 6 layers \(0-5\)"):
        MemitHparams.from_yaml(path).validate_for(6)
    with pytest.raises(HparamsError, match=r"^hparams layers \[1, 2\] out of range for a model with 2 layers"):
        tiny_hparams().validate_for(2)  # made in code: no file to name


def test_a_module_template_the_model_lacks_names_its_hparams_field(tok):
    model = tiny_model("gpt2", tok)
    with pytest.raises(UnsupportedModelError, match=r"no module 'transformer.h.0.mlp.down'.*check the hparams' "
                                                     r"rewrite_module_tmp \(or leave it out for the gpt2 default\)"):
        ModelAdapter.from_model(model, tiny_hparams(rewrite_module_tmp="transformer.h.{}.mlp.down"))


def test_hparams_lambda_per_layer_from_yaml(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: default-world\nmom2_update_weight: [100, 8e2, '3200']\n")
    hp = MemitHparams.from_yaml(tmp_path / "mine.yaml")
    assert hp.mom2_update_weight == [100.0, 800.0, 3200.0] and hp.layer_lambdas() == [100.0, 800.0, 3200.0]
    assert MemitHparams.builtin("default-world").layer_lambdas() == [900.0] * 3
    (tmp_path / "short.yaml").write_text("base: default-world\nmom2_update_weight: [100, 800]\n")
    with pytest.raises(HparamsError, match=r"short.yaml: mom2_update_weight lists 2 values for 3 layers \[0, 1, 2\]"):
        MemitHparams.from_yaml(tmp_path / "short.yaml")


def test_every_shipped_hparams_file_loads():
    folder = Path(MemitHparams.builtin.__code__.co_filename).parent / "hparams"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert {"default-world", "default-world-parallel", "gpt2-xl", "gpt-j-6b", "llama"} <= set(names)
    loaded = {name: MemitHparams.builtin(name) for name in names}
    parallel, sequential = loaded["default-world-parallel"].to_dict(), loaded["default-world"].to_dict()
    assert {k for k in parallel if parallel[k] != sequential[k]} == {"mom2_update_weight", "v_early_stop_loss"}


def test_embedded_default_hparams_follow_the_schedule():
    from collabedit_secure.pipeline import LoadedModel, default_hparams

    loaded = LoadedModel(model=None, tok=None, name="default (/cache/world-0123/model)", embedded=True)
    assert default_hparams(loaded, schedule="parallel") == MemitHparams.builtin("default-world-parallel")
    assert default_hparams(loaded, schedule="sequential") == MemitHparams.builtin("default-world")
    assert default_hparams(loaded).mom2_update_weight == 900


def test_hparams_validation():
    with pytest.raises(HparamsError, match="layers must be a non-empty"):
        tiny_hparams(layers=[])
    with pytest.raises(HparamsError, match="fact_token 'last'"):
        tiny_hparams(fact_token="last")
    with pytest.raises(HparamsError, match="v_loss_layer 9 out of range.*4 layers"):
        tiny_hparams(v_loss_layer=9).validate_for(4)
    with pytest.raises(HparamsError, match="edit_dtype must be float32 or float64, got 'float16'"):
        tiny_hparams(edit_dtype="float16")


@pytest.mark.parametrize("field, value, problem", [
    ("v_num_grad_steps", "20", None),  # YAML strings that are integers are taken
    ("mom2_n_samples", "1e5", None),  # YAML 1.1 reads 1e5 as a string
    ("v_num_grad_steps", 2.5, "v_num_grad_steps must be an integer, got 2.5"),
    ("v_loss_layer", True, "v_loss_layer must be an integer, got True"),
    ("mom2_n_samples", "many", "mom2_n_samples must be an integer, got 'many'"),
    ("context_template_length_params", [10, 5], r"list of \[max_tokens, count\] pairs"),
    ("context_template_length_params", [[10.5, 5]], "max_tokens >= 1"),
])
def test_hparams_types_are_checked_on_arrival(field, value, problem):
    if problem is None:
        assert isinstance(getattr(tiny_hparams(**{field: value}), field), int)
        return
    with pytest.raises(HparamsError, match=problem):
        tiny_hparams(**{field: value})


@pytest.mark.parametrize("field, value, problem", [
    ("layers", [True, 2], r"layers must be non-negative integers, got \[True, 2\]"),
    ("context_template_length_params", [[True, 5]], r"context_template_length_params entries are \[max_tokens"),
    ("rewrite_module_tmp", "transformer.h.0.mlp.c_proj", "rewrite_module_tmp must be a module path with exactly one '{}'"),
    ("mlp_module_tmp", "transformer.h.{}.{}", "mlp_module_tmp must be a module path with exactly one '{}'"),
    ("ln_f_module", "transformer.h.{}.ln", "ln_f_module must be a module path with no '{}'"),
    ("v_lr", float("nan"), "v_lr must be a finite number, got nan"),
    ("mom2_update_weight", float("inf"), "mom2_update_weight must be finite and > 0, got inf"),
    ("mom2_update_weight", [50.0, 0.0], "mom2_update_weight must be finite and > 0, got 0.0"),
    ("mom2_update_weight", [50.0], r"mom2_update_weight lists 1 values for 2 layers \[1, 2\]; give one per layer"),
    ("mom2_update_weight", [50.0, "a"], r"mom2_update_weight must be a number or a list of numbers"),
    ("mom2_update_weight", True, r"mom2_update_weight must be a number or a list of numbers"),
    ("mom2_n_samples", -5, "mom2_n_samples must be >= 1, got -5"),
    ("mom2_batch_size", 0, "mom2_batch_size must be >= 1, got 0"),
    ("mom2_max_length", 0, r"mom2_max_length must be >= 1 \(or null"),
    ("layer_selection", "random", "layer_selection 'random' is not supported"),
    ("mom2_adjustment", "yes", "mom2_adjustment must be true or false, got 'yes'"),
    ("v_early_stop_loss", -0.01, "v_early_stop_loss must be >= 0, got -0.01"),
    ("v_early_stop_loss", "low", "v_early_stop_loss must be a number, got 'low'"),
])
def test_hparams_out_of_range_are_named(field, value, problem):
    with pytest.raises(HparamsError, match=f"^{problem}"):
        tiny_hparams(**{field: value})


def test_hparams_templates_longer_than_the_context_are_named():
    hp = tiny_hparams(context_template_length_params=[[10, 5], [200, 5]])
    with pytest.raises(HparamsError, match="asks for 200-token templates; the model's context is 128 tokens"):
        hp.validate_for(4, context=128)
    hp.validate_for(4, context=None)  # a model that does not say


@pytest.mark.parametrize("text, problem", [
    ("base: default-world\nlayers: [1\n", r"not valid YAML at line 3, column 1: expected ',' or ']'"),
    (b"layers: [1]\nv_loss_layer: 2 \xff\n", "not UTF-8 text"),
])
def test_hparams_files_that_do_not_parse_are_named(text, problem, tmp_path):
    path = tmp_path / "h.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(HparamsError, match=f"^{path}: {problem}"):
        MemitHparams.from_yaml(path)


def test_hparams_of_another_algorithm_are_refused():
    with pytest.raises(HparamsError, match="ROME hyperparameters"):
        MemitHparams.from_dict({"alg_name": "ROME", "layers": [5], "v_loss_layer": 47})
    assert MemitHparams.from_dict({"alg_name": "memit", "layers": [5], "v_loss_layer": 47}).layers == [5]


def test_a_misnamed_lm_head_is_replaced_loudly(tok, caplog):
    model = tiny_model("gpt2", tok)
    with caplog.at_level("WARNING", logger="collabedit_secure.editing.adapters"):
        adapter = ModelAdapter.from_model(model, tiny_hparams(lm_head_module="transformer.wtee"))
    assert adapter.templates.lm_head == "lm_head" and "transformer.wtee" in caplog.text


def test_context_templates_with_a_stray_brace_are_refused():
    from collabedit_secure.editing.context import check_templates

    for template in ["Because of this } we. {}", "A { b. {}", "{} {}"]:
        with pytest.raises(ValueError, match="exactly one"):
            check_templates([["{}"], [template]])


@pytest.mark.parametrize("prompt,subject,target,problem", [
    ("The capital of France is", "France", "Paris", "exactly one"),
    ("{} and {} are", "A", "B", "exactly one"),
    ("{} speaks", " ", "French", "subject is empty"),
    ("{} speaks", "Tom", "  ", "target_new is empty"),
    ("{} speaks", "Tom", "{x}", "brace"),
])
def test_request_validation(prompt, subject, target, problem):
    with pytest.raises(RequestError, match=f"'c7'.*{problem}"):
        EditRequest("c7", prompt, subject, target)


def test_request_from_raw_prompt_and_record():
    with pytest.raises(RequestError, match="'z1'.*'Lyon' does not occur"):
        EditRequest.from_raw_prompt("z1", "Where is Paris?", "Lyon", "France")
    record = {"case_id": 3, "requested_rewrite": {"prompt": "{} plays", "subject": "Tom",
              "target_new": {"str": "piano"}, "target_true": {"str": "guitar"}}}
    (request,) = requests_from_records([record])
    assert request.target_new == " piano" and request.target_true == "guitar"
    with pytest.raises(RequestError, match="3.*lacks field 'subject'"):
        EditRequest.from_record({"case_id": 3, "requested_rewrite": {"prompt": "{} x", "target_new": {"str": "y"}}})
    # A hand-written request file may give targets as plain strings.
    plain = EditRequest.from_record({"case_id": 4, "requested_rewrite": {"prompt": "{} x", "subject": "Tom",
                                                                         "target_new": "y", "target_true": "z"}})
    assert (plain.target_new, plain.target_true) == (" y", "z")
    for bad, field in (({"target_new": 5}, "target_new"), ({"target_new": {"id": "Q1"}}, "target_new"),
                       ({"target_new": "y", "prompt": 7}, "prompt")):
        rewrite = {"prompt": "{} x", "subject": "Tom", **bad}
        with pytest.raises(RequestError, match=f"^edit request 5: {field} must be a string"):
            EditRequest.from_record({"case_id": 5, "requested_rewrite": rewrite})
    with pytest.raises(RequestError, match="case_id must be an integer or a string, got list"):
        EditRequest.from_record({"case_id": [1], "requested_rewrite": {"prompt": "{} x", "subject": "Tom",
                                                                       "target_new": "y"}})


def test_requests_that_share_a_key_are_named():
    from collabedit_secure.editing.requests import shared_keys

    requests = [EditRequest("a", "{} is a citizen of", "Tom", "France"),
                EditRequest("b", "{} plays the", "Tom", "piano"),  # same key: nothing before the subject
                EditRequest("c", "The mother tongue of {} is", "Tom", "French"),  # another key
                EditRequest("d", "The mother tongue of {} is", "Ann", "French"),
                EditRequest("e", "The mother tongue of {} is", "Ann", "French")]
    assert shared_keys(requests) == [
        "edit requests 'a', 'b' give 'Tom' different targets from the same key (the prompt up to the "
        "subject is the same): the solve fits their average, and neither may take fully",
        "edit requests 'd', 'e' repeat one edit of 'Ann'",
    ]
    assert shared_keys(requests[1:4]) == []


def test_edit_warns_about_requests_that_share_a_key(tok, caplog):
    model = tiny_model("gpt2", tok)
    hp = tiny_hparams(v_num_grad_steps=2)
    c0 = {l: random_c0(ModelAdapter.from_model(model, hp).key_dim(model, l), l) for l in hp.layers}
    first, second = tiny_requests(2)
    clash = EditRequest("clash", first.prompt, first.subject, "Rome")  # a party's edit vs another's
    with caplog.at_level("WARNING", logger="collabedit_secure.editing.memit"):
        edit(model, tok, [[first, second], [clash]], hp, c0, templates=[["{}"]])
    assert f"edit requests 'case0', 'clash' give {first.subject!r} different targets" in caplog.text


def test_subject_index_same_under_left_and_right_padding(gpt2_f64, tok):
    adapter = ModelAdapter.from_model(gpt2_f64)
    templates = [["{}"], ["Because of the long story. {}", "I. {}"]]
    requests = tiny_requests(3)
    tok.padding_side = "right"
    right, z_right = compute_keys(gpt2_f64, tok, adapter, requests, [1], templates, 2)
    tok.padding_side = "left"
    try:
        left, z_left = compute_keys(gpt2_f64, tok, adapter, requests, [1], templates, 2)
    finally:
        tok.padding_side = "right"
    assert torch.allclose(left[1], right[1], rtol=1e-10, atol=1e-12)
    assert torch.allclose(z_left, z_right, rtol=1e-10, atol=1e-12)


def test_keys_average_within_each_context_type_then_across_types(gpt2_f64, tok):
    """MEMIT's two-level mean, read back with a plain hook, one unpadded text at a time: with groups
    of one and three texts the key is (k_bare + mean(k_a, k_b, k_c)) / 2, not the mean of all four."""
    adapter = ModelAdapter.from_model(gpt2_f64)
    request = tiny_requests(2)[1]
    templates = [["{}"], ["Because of the long story. {}", "I. {}", "You know. {}"]]
    keys, _ = compute_keys(gpt2_f64, tok, adapter, [request], [1], templates, 2)

    captured = []
    module = gpt2_f64.transformer.h[1].mlp.c_proj
    handle = module.register_forward_pre_hook(lambda _, args: captured.append(args[0][0]))
    per_text = []
    try:
        for context in [t for group in templates for t in group]:
            text = context.format(request.prompt).format(request.subject)
            subject_end = context.format(request.prompt).index("{}") + len(request.subject)
            encoded = tok(text, return_offsets_mapping=True, return_tensors="pt")
            index = next(i for i, (start, end) in enumerate(encoded["offset_mapping"][0].tolist())
                         if start < subject_end <= end)
            captured.clear()
            with torch.no_grad():
                gpt2_f64(input_ids=encoded["input_ids"])
            per_text.append(captured[0][index])
    finally:
        handle.remove()
    bare, contexts = per_text[0], torch.stack(per_text[1:])
    expected = (bare + contexts.mean(0)) / 2
    assert torch.allclose(keys[1][:, 0], expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(keys[1][:, 0], torch.stack(per_text).mean(0), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["byte-level", "sentencepiece-style"])
def test_subject_index_is_the_subjects_last_token(kind, tok):
    tokenizer = tok if kind == "byte-level" else make_sentencepiece_style_tokenizer()
    for context in ["{}", "Because of the long story. {}", "I. {}"]:
        for relation in RELATIONS:
            for subject in SUBJECTS:
                template = context.format(relation)
                text = template.format(subject)
                subject_end = template.index("{}") + len(subject)
                offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
                index = subject_last_index(tokenizer, template, subject)
                start, end = offsets[index]  # the token holding the subject's last character
                assert start < subject_end <= end, (kind, text, index, offsets)


@pytest.mark.parametrize("kind, subject, rest", [("byte-level", "Google", "r"), ("sentencepiece-style", "Pari", "sian")])
def test_subject_index_finds_a_token_that_runs_past_the_subject(kind, subject, rest, tok):
    """A subject that ends inside a token ("Google" in "Googler"): the text up to the subject's end
    tokenises apart from the prompt, and only the offsets find the token holding its last character."""
    tokenizer = tok if kind == "byte-level" else make_sentencepiece_style_tokenizer()
    template = "The mother tongue of {}" + rest + " is"
    offsets = tokenizer(template.format(subject), return_offsets_mapping=True)["offset_mapping"]
    last_char = template.index("{}") + len(subject) - 1
    holding = [i for i, (start, end) in enumerate(offsets) if start <= last_char < end]
    assert holding and offsets[holding[0]][1] > last_char + 1  # the case exists: a token spans the end
    prefix_rule = len(tokenizer("The mother tongue of " + subject)["input_ids"]) - 1
    assert prefix_rule != holding[0]
    assert subject_last_index(tokenizer, template, subject) == holding[0]


@pytest.mark.parametrize("kind", ["byte-level", "sentencepiece-style"])
def test_targets_are_the_tokens_that_follow_the_prompt(kind, tok):
    tokenizer = tok if kind == "byte-level" else make_sentencepiece_style_tokenizer()
    prompt = "The mother tongue of Danielle Darrieux is"
    ids = continuation_ids(tokenizer, prompt, " French")
    whole = tokenizer(prompt + " French", add_special_tokens=False)["input_ids"]
    assert whole[-len(ids):] == ids and tokenizer.decode(ids).strip() == "French"
    alone = tokenizer(" French", add_special_tokens=False)["input_ids"]
    if kind == "byte-level":
        assert ids == alone  # MEMIT's tokenisation, where it is right
    else:
        assert tokenizer.convert_ids_to_tokens(alone)[0] == "▁" and ids == alone[1:]  # no lone "▁"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_compute_z_reads_each_prompt_followed_by_its_target(family, tok):
    """What the model is fed while z is optimised: every context + prompt, then the target's tokens as they
    follow it in one text (all but the last, which is only predicted). Captured at the embedding."""
    tokenizer = tok if family == "gpt2" else make_sentencepiece_style_tokenizer()
    model = tiny_model(family, tokenizer)
    request = EditRequest("c", "The mother tongue of {} is", "Danielle Darrieux", "Autonomous University of Madrid")
    templates = [["{}"], ["The. {}", "Because Lyon. {}"]]
    fed = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: fed.append(args[0].tolist()))
    try:
        compute_z(model, tokenizer, ModelAdapter.from_model(model), tiny_hparams(v_num_grad_steps=1), request,
                  templates)
    finally:
        hook.remove()
    rows = [row[: len(row) - next(i for i, t in enumerate(reversed(row)) if t != tokenizer.pad_token_id)]
            for row in fed[0]]  # right padding stripped
    texts = [c.format(request.prompt).format(request.subject) for group in templates for c in group]
    wanted = [tokenizer(t + request.target_new)["input_ids"][:-1] for t in texts]
    assert len(wanted[0]) - len(tokenizer(texts[0])["input_ids"]) >= 3  # a multi-token target
    assert rows[:-1] == wanted
    assert rows[-1] == tokenizer("Danielle Darrieux is a")["input_ids"]  # the KL prompt


def test_a_tokenizer_that_appends_eos_is_refused(tok):
    from tokenizers import processors

    tokenizer = make_sentencepiece_style_tokenizer()
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    assert tokenizer("Lyon is")["input_ids"][-1] == eos
    model = tiny_model("llama", tokenizer)
    with pytest.raises(ValueError, match=r"the tokenizer appends special tokens after the text \('</s>'\)"):
        edit(model, tokenizer, [tiny_requests(1)], tiny_hparams(), {})


def test_a_model_directory_without_tokenizer_files_is_refused(tok, tmp_path):
    from collabedit_secure.pipeline import load_model

    tiny_model("gpt2", tok).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"the tokenizer of '{tmp_path}' turns text into no tokens"):
        load_model(str(tmp_path))


def test_a_local_model_is_named_by_its_absolute_path_and_never_taken_for_the_default(tok, tmp_path, monkeypatch):
    from collabedit_secure.pipeline import default_hparams, load_model

    folder = tmp_path / "default-gpt2"  # a name that starts like the embedded default's
    tiny_model("gpt2", tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    loaded = load_model("default-gpt2")
    assert loaded.name == str(folder.resolve()) and not loaded.embedded
    # Its family's file (gpt2-xl, layers 13-17 of 48), at the same relative depth of these 4 layers.
    assert default_hparams(loaded).layers == [1]


def test_request_subject_is_stripped_so_text_and_index_agree(tok):
    request = EditRequest("c", "The mother tongue of {} is", " Danielle Darrieux ", "French")
    assert request.subject == "Danielle Darrieux"
    assert request.text() == "The mother tongue of Danielle Darrieux is"
    raw = EditRequest.from_raw_prompt("c", "Where is Lyon located?", " Lyon ", "France")
    assert (raw.prompt, raw.subject) == ("Where is {} located?", "Lyon")


def test_context_templates_deterministic(gpt2_f64, tok):
    a = generate_context_templates(gpt2_f64, tok, seed=3, length_params=[[6, 5]])
    b = generate_context_templates(gpt2_f64, tok, seed=3, length_params=[[6, 5]])
    c = generate_context_templates(gpt2_f64, tok, seed=4, length_params=[[6, 5]])
    assert a == b and a != c
    assert a[0] == ["{}"] and len(a[1]) == 5 and all(t.endswith(". {}") for t in a[1])


def test_compute_z_raises_target_probability(gpt2_f64, tok):
    hp = tiny_hparams(v_num_grad_steps=10)
    adapter = ModelAdapter.from_model(gpt2_f64, hp)
    request = tiny_requests(1)[0]
    result = compute_z(gpt2_f64, tok, adapter, hp, request, [["{}"]])
    assert result.losses[-1] < result.losses[0] - 0.1, result.losses
    assert (result.z - result.z_init).norm() <= hp.clamp_norm_factor * result.z_init.norm() * (1 + 1e-9)


def test_compute_z_stops_at_the_early_stop_loss(gpt2_f64, tok):
    """MEMIT's rule: a pass whose loss is below the threshold ends the optimisation, unstepped."""
    adapter = ModelAdapter.from_model(gpt2_f64, tiny_hparams())
    request = tiny_requests(1)[0]
    full = compute_z(gpt2_f64, tok, adapter, tiny_hparams(v_num_grad_steps=8, v_early_stop_loss=0), request, [["{}"]])
    assert len(full.losses) == 8 and min(full.losses) > 0
    threshold = (full.losses[3] + full.losses[4]) / 2  # between the 4th and 5th losses, which fall
    assert full.losses[3] > threshold > full.losses[4]
    hp = tiny_hparams(v_num_grad_steps=8, v_early_stop_loss=threshold)
    early = compute_z(gpt2_f64, tok, adapter, hp, request, [["{}"]])
    assert early.losses == full.losses[:5]
    assert not torch.equal(early.z, full.z)
    assert tiny_hparams(v_early_stop_loss="2e-2").v_early_stop_loss == 0.02  # YAML 1.1's string


@pytest.mark.parametrize("family", FAMILIES)
def test_compute_z_replays_the_constant_blocks_bit_for_bit(family, tok, monkeypatch):
    """The blocks up to z_layer run once and are replayed: z, z_init and every loss are those of
    passes that run every block, and the model's blocks run as before afterwards."""
    import contextlib

    from collabedit_secure.editing import targets

    model = tiny_model(family, tok, torch.float64)
    hp = tiny_hparams(v_num_grad_steps=6)
    adapter = ModelAdapter.from_model(model, hp)
    request, templates = tiny_requests(1)[0], [["{}"], ["Because {}", "So {}"]]
    block = model.get_submodule(adapter.layer_name(0))
    runs = []  # a module inside the block runs only when the block really computes
    next(block.children()).register_forward_hook(lambda *_: runs.append(1))
    replayed = compute_z(model, tok, adapter, hp, request, templates)
    assert len(runs) == 1 and "forward" not in block.__dict__
    monkeypatch.setattr(targets, "replay_outputs", lambda *_: contextlib.nullcontext())
    full = compute_z(model, tok, adapter, hp, request, templates)
    assert len(runs) == 1 + len(full.losses) > 2
    assert replayed.losses == full.losses
    assert torch.equal(replayed.z, full.z) and torch.equal(replayed.z_init, full.z_init)


def _half_precision_llama(tok):
    """bfloat16 weights with float32 rotary buffers, as from_pretrained(dtype=torch.bfloat16) loads it."""
    model = tiny_model("llama", tok)
    for parameter in model.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    return model


@pytest.mark.parametrize("edit_dtype", ["float32", "float64"])
def test_edit_leaves_a_mixed_precision_model_exactly_as_it_was(edit_dtype, tok):
    model = _half_precision_llama(tok)
    tensors = lambda: {n: t.clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    before = tensors()
    assert {t.dtype for t in before.values()} == {torch.bfloat16, torch.float32}
    hp = tiny_hparams(edit_dtype=edit_dtype, v_num_grad_steps=2)
    adapter = ModelAdapter.from_model(model, hp)
    c0 = {l: random_c0(adapter.key_dim(model, l), l) for l in hp.layers}
    edit(model, tok, [tiny_requests(1)], hp, c0, templates=[["{}"]], schedule="parallel")
    after = tensors()
    for name, value in before.items():
        assert after[name].dtype == value.dtype and torch.equal(after[name], value), name


def test_compute_z_optimises_delta_in_float32_on_a_bfloat16_model(tok):
    model = _half_precision_llama(tok)
    hp = tiny_hparams(v_num_grad_steps=5)
    adapter = ModelAdapter.from_model(model, hp)
    result = compute_z(model, tok, adapter, hp, tiny_requests(1)[0], [["{}"]])
    delta = (result.z - result.z_init).float()
    assert delta.norm() > 0
    assert not torch.equal(delta, delta.to(torch.bfloat16).float()), "delta rounded to bfloat16 steps"


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_lowers_target_nll(family, tok, tmp_path):
    model = tiny_model(family, tok, torch.float64)
    hp = tiny_hparams(layers=[1, 2], v_num_grad_steps=20, mom2_update_weight=1.0)
    adapter = ModelAdapter.from_model(model, hp)
    # The model's own C0: a random stand-in does not protect the positions where the answer is read,
    # and on the parallel-residual families (GPT-J, GPT-NeoX) the edit then undoes itself there.
    c0 = {l: layer_stats(model, tok, adapter.rewrite_name(l), corpus(), cache_dir=tmp_path, progress=False).moment()
          for l in hp.layers}
    requests = tiny_requests(1)
    prompts = [r.prompt.format(r.subject) for r in requests]
    targets = [r.target_new.strip() for r in requests]
    before = target_nll(model, tok, prompts, targets)
    delta = edit(model, tok, [requests], hp, c0, schedule="sequential").delta
    delta.apply(model)
    after = target_nll(model, tok, prompts, targets)
    delta.revert(model)
    assert (after < before - 0.03).all(), (before, after)


def test_delta_apply_revert_save_load(gpt2_f64, tok, tmp_path):
    hp = tiny_hparams()
    adapter = ModelAdapter.from_model(gpt2_f64, hp)
    c0 = {l: random_c0(adapter.key_dim(gpt2_f64, l), l) for l in hp.layers}
    delta = edit(gpt2_f64, tok, [tiny_requests(2)], hp, c0, schedule="parallel").delta
    name = adapter.rewrite_name(1)
    original = gpt2_f64.get_submodule(name).weight.detach().clone()
    loaded = EditDelta.load(delta.save(tmp_path / "d"))
    assert loaded.metadata == json.loads(json.dumps(delta.metadata, default=str))  # all of it, as JSON holds it
    assert loaded.weights.keys() == delta.weights.keys()
    assert all(torch.equal(loaded.weights[n], delta.weights[n]) for n in delta.weights)
    loaded.apply(gpt2_f64)
    edited = gpt2_f64.get_submodule(name).weight  # Conv1D: (in, out), so ΔW is transposed
    assert torch.allclose(edited - original, delta.weights[name].T)
    with pytest.raises(DeltaMismatchError, match="already applied to this model"):
        loaded.apply(gpt2_f64)
    with pytest.raises(DeltaMismatchError, match="fingerprint"):
        delta.apply(gpt2_f64)  # edited by the copy: not the base it was computed on
    loaded.revert(gpt2_f64)
    assert torch.equal(gpt2_f64.get_submodule(name).weight, original)
    other = tiny_model("gpt2", tok, torch.float64, seed=1)
    with pytest.raises(DeltaMismatchError, match="fingerprint"):
        delta.apply(other)


def test_delta_applies_and_reverts_only_on_its_own_models(tok, tmp_path):
    import copy

    model = tiny_model("gpt2", tok, torch.float64)
    base = copy.deepcopy(model)
    adapter = ModelAdapter.from_model(model, tiny_hparams())
    c0 = {l: random_c0(adapter.key_dim(model, l), l) for l in range(4)}
    upper = edit(model, tok, [tiny_requests(2)], tiny_hparams(layers=[2, 3]), c0, "parallel", templates=[["{}"]]).delta
    lower = edit(model, tok, [tiny_requests(2)], tiny_hparams(layers=[0, 1]), c0, "parallel", templates=[["{}"]]).delta
    lower.apply(model)
    with pytest.raises(DeltaMismatchError, match="other weights differ"):
        upper.apply(model)  # its layers are untouched, but its keys came from the old layers 0-1
    lower.revert(model)
    upper.apply(model)
    saved = EditDelta.load(upper.save(tmp_path / "upper"))  # records the edited weights' fingerprint
    edited_elsewhere = copy.deepcopy(model)  # as if loaded from disk: apply() never saw this object
    saved.revert(edited_elsewhere)
    for name in upper.weights:
        assert torch.allclose(edited_elsewhere.get_submodule(name).weight, base.get_submodule(name).weight)
    with pytest.raises(DeltaMismatchError, match="not edited .or already reverted."):
        saved.revert(base)
    with pytest.raises(DeltaMismatchError, match="is not that of the model this delta edited"):
        saved.revert(tiny_model("gpt2", tok, torch.float64, seed=1))
    unrecorded = EditDelta(upper.weights, {k: v for k, v in upper.metadata.items() if k != "edited_fingerprint"})
    with pytest.raises(DeltaMismatchError, match="nothing to revert"):
        unrecorded.revert(base)
    shallow = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok)))
    for action in (saved.apply, saved.revert):
        with pytest.raises(DeltaMismatchError, match=r"no transformer\.h\.2\.mlp\.c_proj\.weight"):
            action(shallow)


def test_target_cache_reuses_z_only_for_identical_weights_templates_and_hparams(tok):
    model = tiny_model("gpt2", tok, torch.float64)
    hp = tiny_hparams()
    adapter = ModelAdapter.from_model(model, hp)
    c0 = {l: random_c0(adapter.key_dim(model, l), l) for l in hp.layers}
    requests = tiny_requests(4)
    cache = TargetCache()

    uncached = edit(model, tok, [requests], hp, c0, schedule="sequential").delta
    edit(model, tok, [requests[:2], requests[2:]], hp, c0, schedule="sequential", target_cache=cache)  # two parties
    assert len(cache) == 4 and cache.hits == 0 and cache.reused_s == 0
    cached = edit(model, tok, [requests], hp, c0, schedule="sequential", target_cache=cache).delta
    assert cache.hits == 4  # the global edit reused every party's target
    for name, update in uncached.weights.items():  # reuse changes nothing, bit for bit
        assert torch.equal(cached.weights[name], update)
    assert cache.reused_s > 0

    cached.apply(model)  # other weights: every target is optimised again
    edit(model, tok, [requests[:1]], hp, c0, target_cache=cache, schedule="parallel")
    cached.revert(model)
    edit(model, tok, [requests[:1]], tiny_hparams(v_lr=0.1), c0, "parallel", target_cache=cache)  # other hparams
    templates = [["{}"], ["Because {}"]]
    edit(model, tok, [requests[:1]], hp, c0, "parallel", templates=templates, target_cache=cache)  # other templates
    assert cache.hits == 4 and len(cache) == 7
