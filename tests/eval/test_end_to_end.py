"""Metrics, fluency and the report on a tiny random GPT-2 with the real-format data files."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import torch

from collabedit_secure.eval.counterfact import prompt_set_metrics, record_prompts
from collabedit_secure.eval.datasets import load_counterfact, load_dataset, load_zsre
from collabedit_secure.eval.fluency import _clean_text, generate_texts, ngram_entropy
from collabedit_secure.eval.nll import target_nll
from collabedit_secure.eval.report import evaluate_dataset, format_summary_table, write_report
from collabedit_secure.eval.zsre import next_token_correct, text_probe


@pytest.fixture(scope="module")
def counterfact(shared_data):
    return load_counterfact(shared_data / "counterfact" / "multi_counterfact-30.json")


@pytest.fixture(scope="module")
def counterfact_eval(tiny_model, tiny_tok, counterfact):
    return evaluate_dataset(tiny_model, tiny_tok, counterfact, kind="counterfact", max_out_len=24)


def test_counterfact_eval_cases_score_and_generations(counterfact_eval, counterfact):
    per_case, summary = counterfact_eval
    assert len(per_case) == len(counterfact) == summary["n_cases"]
    assert [c["case_id"] for c in per_case] == [r["case_id"] for r in counterfact]
    rates = [summary[key] for key in ("efficacy", "generalization", "specificity")]
    assert summary["score"] == pytest.approx(3 / sum(1 / r for r in rates) if min(rates) > 0 else 0.0)
    for record, case in zip(counterfact, per_case):  # each case holds its own record's generations
        prompts = record["generation_prompts"]
        assert len(case["generated_texts"]) == len(prompts) == 10
        assert all(text.startswith(_clean_text(prompt)) for text, prompt in zip(case["generated_texts"], prompts))
        assert case["ngram_entropy"] == ngram_entropy(case["generated_texts"])
    assert summary["fluency"] == pytest.approx(100 * sum(c["ngram_entropy"] for c in per_case) / len(per_case))


def test_batched_eval_matches_unbatched_nll(counterfact_eval, counterfact, tiny_model, tiny_tok):
    # The eval dedups and reorders all prompts of all records; a record scored alone must agree.
    per_case, _ = counterfact_eval
    for index in (0, 17):
        record, case = counterfact[index], per_case[index]
        new = record["requested_rewrite"]["target_new"]["str"]
        true = record["requested_rewrite"]["target_true"]["str"]
        for name, prefixes in record_prompts(record).items():
            nll_new = target_nll(tiny_model, tiny_tok, prefixes, [new] * len(prefixes), batch_size=1)
            nll_true = target_nll(tiny_model, tiny_tok, prefixes, [true] * len(prefixes), batch_size=1)
            expected = prompt_set_metrics(list(zip(nll_new.tolist(), nll_true.tolist())), name == "neighborhood")
            assert case[f"{name}_success"] == expected["success"]
            assert case[f"{name}_diff"] == pytest.approx(expected["diff"], rel=1e-5, abs=1e-9)


def test_counterfact_success_reaches_100_when_model_prefers_target(tiny_model, tiny_tok, counterfact):
    # Pick, for one record, the likelier of two candidate targets as target_new: efficacy must be 100.
    record = json.loads(json.dumps(counterfact[0]))
    rewrite = record["requested_rewrite"]
    prompt = [rewrite["prompt"].format(rewrite["subject"])]
    candidates = ["English", "French"]
    nll = [target_nll(tiny_model, tiny_tok, prompt, [c]).item() for c in candidates]
    likelier, other = sorted(candidates, key=lambda c: nll[candidates.index(c)])
    rewrite["target_new"]["str"], rewrite["target_true"]["str"] = likelier, other
    per_case, summary = evaluate_dataset(tiny_model, tiny_tok, [record], fluency=False)
    assert per_case[0]["rewrite_success"] == 1.0 and summary["efficacy"] == 100.0


def test_zsre_eval_shapes_ranges_and_direct_check(shared_data, tiny_model, tiny_tok):
    records = load_zsre(shared_data / "zsre" / "zsre_mend_eval-6.json", tiny_tok)
    per_case, summary = evaluate_dataset(tiny_model, tiny_tok, records, kind="zsre")
    assert len(per_case) == 6 == summary["n_cases"]
    for key in ("efficacy", "generalization", "specificity"):
        assert 0.0 <= summary[key] <= 100.0
    answer_tokens = len(tiny_tok(" " + records[0]["requested_rewrite"]["target_new"]["str"])["input_ids"])
    assert len(per_case[0]["rewrite_prompts_correct"]) == answer_tokens
    assert len(per_case[0]["neighborhood_prompts_correct"]) == len(records[0]["neighborhood_prompts"])
    rewrite = records[0]["requested_rewrite"]  # cases name their prompt and target as CounterFact's do
    assert per_case[0]["prompt"] == rewrite["prompt"].format(rewrite["subject"])
    assert per_case[0]["target_new"] == rewrite["target_new"]["str"]


def _question_with_word_prediction(model, tok):
    # A question whose greedy next token is a lone " word" token, so that the answer round-trips.
    # (A random tied-embedding GPT-2 tends to repeat its last token, so prompts end in a word.)
    for subject in ("Watts Humphrey", "Danielle Darrieux", "Paris", "Rome", "Hugo Weaving", "France", "Italy"):
        src = f"The mother tongue of {subject} is"
        predicted = model(torch.tensor([tok(src)["input_ids"]])).logits[0, -1].argmax().item()
        answer = tok.decode([predicted]).strip()
        if answer and tok(" " + answer)["input_ids"] == [predicted]:
            return subject, src, answer
    pytest.fail("no probe question gives a round-tripping word prediction")


def test_zsre_accuracy_reaches_100_on_the_models_own_prediction(tiny_model, tiny_tok):
    # Make the answer the model's own greedy next token: every rewrite prompt is then correct.
    subject, src, answer = _question_with_word_prediction(tiny_model, tiny_tok)
    record = {
        "case_id": 0,
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": subject,
                              "target_new": {"str": answer}, "target_true": {"str": "<|endoftext|>"}},
        "paraphrase_prompts": [src], "neighborhood_prompts": [{"prompt": src, "target": " " + answer}],
    }
    per_case, summary = evaluate_dataset(tiny_model, tiny_tok, [record], kind="zsre")
    assert (summary["efficacy"], summary["generalization"], summary["specificity"]) == (100.0, 100.0, 100.0)
    answer_id = tiny_tok(" " + answer)["input_ids"][0]
    other = next(w for w in (" English", " French", " Paris") if tiny_tok(w)["input_ids"][0] != answer_id)
    probes = [text_probe(tiny_tok, src, " " + answer), text_probe(tiny_tok, src, other)]
    assert next_token_correct(tiny_model, tiny_tok, probes) == [True, False]


def test_conflict_records_evaluate_without_neighbourhood(shared_data, tiny_model, tiny_tok):
    _, records = load_dataset(shared_data / "conflict" / "easy_conflict_1000_p1.json")
    per_case, summary = evaluate_dataset(tiny_model, tiny_tok, records[:20], kind="conflict")
    assert len(per_case) == 20 and 0.0 <= summary["efficacy"] <= 100.0
    assert summary["specificity"] is None and summary["score"] is None


def test_fluency_generation_is_deterministic_and_batch_independent(tiny_model, tiny_tok):
    prompts = ["Danielle Darrieux's mother tongue is", "Paris", "The mother tongue of Léon Blum is"]
    first = generate_texts(tiny_model, tiny_tok, prompts, max_out_len=20, seed=3)
    assert generate_texts(tiny_model, tiny_tok, prompts, max_out_len=20, seed=3) == first
    assert generate_texts(tiny_model, tiny_tok, prompts, max_out_len=20, seed=4) != first
    # Greedy (top_k=1) sampling exercises left padding: batched equals one by one.
    greedy = generate_texts(tiny_model, tiny_tok, prompts, max_out_len=20, top_k=1)
    assert greedy == [generate_texts(tiny_model, tiny_tok, [p], max_out_len=20, top_k=1)[0] for p in prompts]
    # max_out_len bounds the sample: a longer budget extends the same greedy continuation. Text is
    # compared, not token counts, and only by prefix: a random model may emit special tokens or
    # non-ASCII bytes that decode (after ASCII folding) to nothing, so not every sample must grow.
    longer = generate_texts(tiny_model, tiny_tok, prompts, max_out_len=30, top_k=1)
    assert all(long.startswith(short) for long, short in zip(longer, greedy))
    assert any(len(long) > len(short) for long, short in zip(longer, greedy))


def test_evaluate_dataset_restores_training_mode_and_rejects_unknown_kind(tiny_model, tiny_tok, counterfact):
    tiny_model.train()
    try:
        evaluate_dataset(tiny_model, tiny_tok, counterfact[:2], fluency=False)
        assert tiny_model.training
    finally:
        tiny_model.eval()
    with pytest.raises(ValueError, match="unknown evaluation kind 'mcf'"):
        evaluate_dataset(tiny_model, tiny_tok, counterfact[:2], kind="mcf")
    with pytest.raises(ValueError, match="zsRE-style"):
        zsre_like = dict(counterfact[0], neighborhood_prompts=[{"prompt": "a", "target": "b"}])
        evaluate_dataset(tiny_model, tiny_tok, [zsre_like], fluency=False)


def test_write_report_round_trip(tmp_path, counterfact_eval):
    per_case, summary = counterfact_eval
    meta = {"model": "tiny-gpt2", "n_edits": 30, "schedule": "parallel", "method": "global"}
    path = write_report(tmp_path / "out" / "report.json", per_case, {**summary, "bad": float("nan")}, meta)
    report = json.loads(path.read_text())
    assert report["meta"]["model"] == "tiny-gpt2" and report["meta"]["schedule"] == "parallel"
    assert report["meta"]["n_cases"] == 30 and len(report["cases"]) == 30
    assert report["summary"]["score"] == pytest.approx(summary["score"])
    assert report["summary"]["bad"] is None
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() makes it, not mkstemp's 0600
    with pytest.raises(TypeError, match="cannot write a object"):
        write_report(tmp_path / "x.json", [{"v": object()}], {}, {})


def test_table_values_are_formatted_whatever_their_kind():
    import numpy as np

    from collabedit_secure.eval.report import format_value

    assert [format_value(v) for v in (5, 99.12345, np.float32(99.12345), torch.tensor(0.5), float("nan"), None,
                                      3.6e-14, "x")] == ["5", "99.12", "99.12", "0.50", "-", "-", "3.600e-14", "x"]


def test_summary_table_is_aligned(counterfact_eval):
    _, summary = counterfact_eval
    table = format_summary_table(
        {"global": {**summary, "wall_time_s": 12.5}, "TIES": {"efficacy": 3.0, "delta_rel_err_vs_global": 0.00042}},
        extra_columns=["wall_time_s", "delta_rel_err_vs_global"],
    )
    lines = table.splitlines()
    assert lines[0].split() == ["method", "efficacy", "generalization", "specificity", "score", "fluency",
                                "consistency", "wall_time_s", "delta_rel_err_vs_global"]
    assert len({len(line) for line in lines}) == 1  # every row padded to the same width
    assert lines[2].split()[0] == "global" and f"{summary['efficacy']:.2f}" in lines[2]
    assert lines[3].split() == ["TIES", "3.00", "-", "-", "-", "-", "-", "-", "4.200e-04"]
    assert not math.isnan(summary["score"])


def test_conflict_probe_matches_direct_probabilities(shared_data, tiny_model, tiny_tok):
    from collabedit_secure.eval.datasets import load_conflict

    records = load_conflict(shared_data / "conflict" / "easy_conflict_1000_p1.json",
                            shared_data / "conflict" / "round_prompts.json")[:5]
    per_case, summary = evaluate_dataset(tiny_model, tiny_tok, records, kind="conflict")
    record, case = records[2], per_case[2]
    prompt = record["requested_rewrite"]["prompt"].format(record["requested_rewrite"]["subject"])
    p_conf = math.exp(-target_nll(tiny_model, tiny_tok, [prompt], [record["conflict_object"]["str"]]).item())
    probes = record["paraphrase_prompts"]
    true_object = record["requested_rewrite"]["target_true"]["str"]
    p_obj = torch.exp(-target_nll(tiny_model, tiny_tok, probes, [true_object] * len(probes)))
    assert case["rewrite_p_conf"] == pytest.approx(p_conf, rel=1e-5)
    assert case["probe_p_obj"] == pytest.approx(p_obj.mean().item(), rel=1e-5)
    gaps = [c["rewrite_p_conf"] - c["rewrite_p_obj"] for c in per_case]
    assert summary["rewrite_conflict_gap"] == pytest.approx(100 * sum(gaps) / 5)
    assert summary["rewrite_conflict_wins"] == 100 * sum(g > 0 for g in gaps) / 5
    assert 0.0 <= summary["generalization"] <= 100.0  # probes double as paraphrase prompts


def test_eval_of_a_model_that_gives_nan_fails_and_writes_no_report(shared_data, tiny_model, tiny_tok, tmp_path,
                                                                   capsys):
    import copy

    from collabedit_secure.cli import main

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.transformer.h[0].mlp.c_proj.weight.fill_(float("nan"))
    broken.save_pretrained(tmp_path / "broken")
    tiny_tok.save_pretrained(tmp_path / "broken")
    dataset = shared_data / "counterfact" / "multi_counterfact-30.json"
    assert main(["eval", "--model", str(tmp_path / "broken"), "--dataset", str(dataset), "--no-fluency",
                 "--json", str(tmp_path / "report.json")]) == 2
    captured = capsys.readouterr()
    assert "collabedit: error: the model's output is NaN or Inf on prompt" in captured.err
    assert captured.out == "" and not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("kind, fluency", [("counterfact", False), ("counterfact", True), ("zsre", False)])
def test_a_model_that_computes_nan_is_named_not_scored(kind, fluency, shared_data, tiny_model, tiny_tok):
    """NaN compares False with everything: scored, a broken model would read as one that fails every prompt."""
    import copy

    from collabedit_secure.eval.nll import NonFiniteModelError

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_proj.weight[0, 0] = float("nan")
    if kind == "zsre":
        records = load_zsre(shared_data / "zsre" / "zsre_mend_eval-6.json", tiny_tok)
    else:
        records = load_counterfact(shared_data / "counterfact" / "multi_counterfact-30.json")[:3]
    with pytest.raises(NonFiniteModelError, match=r"the model's output is NaN or Inf on prompt '.+': its weights"):
        evaluate_dataset(broken, tiny_tok, records, kind=kind, fluency=fluency, max_out_len=24)
