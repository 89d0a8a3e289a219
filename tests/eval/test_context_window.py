"""Prompts longer than the model's context: a named error before any forward pass, never truncation."""

from __future__ import annotations

import json

import pytest
import torch

from collabedit_secure.eval.datasets import load_conflict, load_counterfact, load_zsre
from collabedit_secure.eval.fluency import generate_texts
from collabedit_secure.eval.nll import PromptTooLongError, target_nll
from collabedit_secure.eval.report import evaluate_dataset

LONG = "word " * 300  # well over the tiny model's 256 positions


@pytest.fixture
def forwards(tiny_model):
    """How many forward passes the tiny model ran inside the test."""
    calls = []
    handle = tiny_model.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


def _evaluate_error(model, tok, records, kind, **kwargs) -> str:
    with pytest.raises(PromptTooLongError) as err:
        evaluate_dataset(model, tok, records, kind=kind, **kwargs)
    return str(err.value)


def test_long_counterfact_paraphrase_is_named_before_any_scoring(shared_data, tiny_model, tiny_tok, forwards):
    records = load_counterfact(shared_data / "counterfact" / "multi_counterfact-30.json")[:3]
    records[1] = {**records[1], "paraphrase_prompts": [records[1]["paraphrase_prompts"][0], LONG]}
    message = _evaluate_error(tiny_model, tiny_tok, records, "counterfact", fluency=False)
    case_id = records[1]["case_id"]
    assert message.startswith(f"record 1 (case_id {case_id}): paraphrase prompt 'word word")
    assert "(1500 characters) with target" in message
    assert message.endswith("more than the model's context of 256 tokens")
    assert forwards == []


def test_long_generation_prompt_and_max_out_len_are_named(shared_data, tiny_model, tiny_tok):
    records = load_counterfact(shared_data / "counterfact" / "multi_counterfact-30.json")[:2]
    records[0] = {**records[0], "generation_prompts": [LONG]}
    assert "record 0 (case_id 0): generation prompt 'word" in _evaluate_error(
        tiny_model, tiny_tok, records, "counterfact")
    evaluate_dataset(tiny_model, tiny_tok, records, fluency=False)  # fluency off: the prompt is never fed
    message = _evaluate_error(tiny_model, tiny_tok, records[1:], "counterfact", max_out_len=300)
    assert message == "the fluency sample length (--fluency-tokens, max_out_len) is 300 tokens, more than the model's " \
                      "context of 256 tokens"


def test_long_zsre_rephrase_is_named(shared_data, tiny_model, tiny_tok, forwards):
    records = load_zsre(shared_data / "zsre" / "zsre_mend_eval-6.json", tiny_tok)
    records[2] = {**records[2], "paraphrase_prompts": [LONG]}
    assert _evaluate_error(tiny_model, tiny_tok, records, "zsre").startswith(
        "record 2 (case_id 2): paraphrase prompt 'word word")
    assert forwards == []


def test_long_conflict_object_counts_against_the_rewrite_prompt(shared_data, tiny_model, tiny_tok, forwards):
    records = load_conflict(shared_data / "conflict" / "easy_conflict_1000_p1.json")[:3]
    records[2] = json.loads(json.dumps(records[2]))
    records[2]["conflict_object"]["str"] = LONG.strip()  # only the conflict probe scores this target
    message = _evaluate_error(tiny_model, tiny_tok, records, "conflict")
    assert message.startswith("record 2 (case_id 2): rewrite prompt ")
    assert "with target 'word word" in message
    assert forwards == []


def test_target_nll_refuses_rather_than_indexing_past_the_positions(tiny_model, tiny_tok):
    with pytest.raises(PromptTooLongError, match=r"^prompt 'word .*with target 'English' is \d+ tokens, more than "
                                                 r"the model's context of 256 tokens$"):
        target_nll(tiny_model, tiny_tok, ["Paris is", LONG], ["French", "English"])


def test_generation_batches_mixing_prompt_lengths_fit_a_short_context(tiny_tok):
    """A long prompt batched with a short one runs on past its own max_out_len; its positions must not
    leave the context. Reference: the same weights with twice the positions, unclamped."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def model(positions):
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=len(tiny_tok), n_positions=positions, n_embd=32, n_layer=2, n_head=2,
                            bos_token_id=tiny_tok.eos_token_id, eos_token_id=tiny_tok.eos_token_id)
        return GPT2LMHeadModel(config).eval()

    short_context, long_context = model(32), model(64)
    state = short_context.state_dict()
    state["transformer.wpe.weight"] = torch.cat([state["transformer.wpe.weight"],
                                                 long_context.transformer.wpe.weight.detach()[32:]])
    long_context.load_state_dict(state)
    words = ("Paris is the capital of France and Rome is the capital of Italy. " * 3).split()
    long = next(" ".join(words[:n]) for n in range(len(words), 0, -1)
                if len(tiny_tok(" ".join(words[:n]))["input_ids"]) <= 30)
    prompts = ["Paris is", long]  # alone each fits; batched, the long one runs 30 steps past its prompt
    expected = generate_texts(long_context, tiny_tok, prompts, max_out_len=32, seed=1)
    assert generate_texts(short_context, tiny_tok, prompts, max_out_len=32, seed=1) == expected
