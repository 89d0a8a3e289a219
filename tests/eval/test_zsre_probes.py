"""zsRE probes: teacher forcing on the answer's own ids, which is MEMIT's text round trip wherever
that round trip is exact (byte-level BPE) and stays right where it is not (SentencePiece-style)."""

from __future__ import annotations

import pytest
import torch

from collabedit_secure.eval.datasets import load_zsre
from collabedit_secure.eval.zsre import answer_probes, evaluate_zsre, record_probes
from tests.editing.conftest import RELATIONS, make_sentencepiece_style_tokenizer, make_tokenizer, tiny_model

QUESTION = "The mother tongue of Danielle Darrieux is"


def memit_text_probes(tok, question: str, answer: str) -> list[tuple[tuple[int, ...], int]]:
    """MEMIT's eval_utils_zsre: question + decode(t[:i]) re-tokenised, against tok(decode(t[i]))[0]."""
    t = tok(" " + answer, add_special_tokens=False)["input_ids"]
    return [(tuple(tok(question + tok.decode(t[:i]))["input_ids"]), tok(tok.decode(t[i]), add_special_tokens=False)
             ["input_ids"][0]) for i in range(len(t))]


def test_byte_level_probes_are_memits_on_the_real_file(shared_data, tiny_tok):
    records = load_zsre(shared_data / "zsre" / "zsre_mend_eval-6.json", tiny_tok)
    compared = 0
    for record in records:
        rewrite = record["requested_rewrite"]
        answer = rewrite["target_new"]["str"]
        want = memit_text_probes(tiny_tok, rewrite["prompt"].format(rewrite["subject"]), answer)
        want += [p for q in record["paraphrase_prompts"] for p in memit_text_probes(tiny_tok, q, answer)]
        want += [(tuple(tiny_tok(n["prompt"])["input_ids"]), tiny_tok(n["target"])["input_ids"][0])
                 for n in record["neighborhood_prompts"]]
        probes = record_probes(record, tiny_tok)
        got = [(p.prefix, p.expected) for name in ("rewrite", "paraphrase", "neighborhood") for p in probes[name]]
        assert got == want
        compared += len(got)
    assert compared > 100


def test_sentencepiece_probes_follow_the_question():
    tok = make_sentencepiece_style_tokenizer()
    head = tok(QUESTION)["input_ids"]
    whole = tok(QUESTION + " Autonomous University of Madrid")["input_ids"]
    assert whole[: len(head)] == head and head[0] == tok.bos_token_id
    answer_ids = whole[len(head):]
    probes = answer_probes(tok, QUESTION, "Autonomous University of Madrid")
    assert [(p.prefix, p.expected) for p in probes] == [
        (tuple(head + answer_ids[:i]), answer_ids[i]) for i in range(len(answer_ids))]
    # MEMIT's round trip has nothing to work with here: " " + answer alone starts with a lone "▁",
    # which decodes to no text at all (the previous text-based probes raised on it).
    alone = tok(" Autonomous University of Madrid", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone[0]) == "▁" and tok.decode(alone[:1]) == ""
    assert alone[1:] == answer_ids


def hand_flags(model, tok, question: str, answer: str) -> list[bool]:
    """Teacher forcing by hand: one unpadded pass over tok(question) + T, T the answer's ids after it."""
    head = tok(question)["input_ids"]
    whole = tok(question + " " + answer)["input_ids"]
    assert whole[: len(head)] == head
    answer_ids = whole[len(head):]
    with torch.no_grad():
        predicted = model(torch.tensor([whole])).logits[0].argmax(-1).tolist()
    return [predicted[len(head) - 1 + i] == token for i, token in enumerate(answer_ids)]


def answer_starting_with_the_models_guess(model, tok, question: str) -> str | None:
    """A multi-token answer whose first token is the model's argmax after `question`, if that is a word."""
    ids = tok(question)["input_ids"]
    with torch.no_grad():
        guess = int(model(torch.tensor([ids])).logits[0, -1].argmax())
    word = tok.decode([guess]).strip()
    answer = word + " of Madrid"
    if word.isalpha() and tok(question + " " + answer)["input_ids"][len(ids)] == guess:
        return answer
    return None


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_accuracies_match_teacher_forcing_by_hand(family):
    tok = make_tokenizer() if family == "gpt2" else make_sentencepiece_style_tokenizer()
    subject = "Danielle Darrieux"
    questions = [t.format(subject) for t in RELATIONS]
    for seed in range(50):
        model = tiny_model(family, tok, torch.float64, seed=seed)
        guessed = [(q, a) for q in questions if (a := answer_starting_with_the_models_guess(model, tok, q))]
        nq = [(q, a) for q in questions if (a := answer_starting_with_the_models_guess(model, tok, q + "?"))]
        if guessed and any(q != guessed[0][0] for q, _ in nq):
            break
    else:
        pytest.fail("no seed makes the model guess a word after two of the questions")
    question, answer = guessed[0]
    loc, loc_answer = next((q, a) for q, a in nq if q != question)
    paraphrase = next(q for q in questions if q not in (question, loc))
    record = {
        "case_id": 0,
        "requested_rewrite": {"prompt": question.replace(subject, "{}"), "subject": subject,
                              "target_new": {"str": answer}, "target_true": {"str": "<|endoftext|>"}},
        "paraphrase_prompts": [paraphrase], "neighborhood_prompts": [],
        "loc": loc, "loc_ans": loc_answer,
    }
    per_case, _ = evaluate_zsre(model, tok, [record])
    want = {"rewrite": hand_flags(model, tok, question, answer),
            "paraphrase": hand_flags(model, tok, paraphrase, answer),
            "neighborhood": hand_flags(model, tok, record["loc"] + "?", loc_answer)}
    for name, flags in want.items():
        assert per_case[0][f"{name}_prompts_correct"] == flags, name
        assert len(flags) >= 3
    assert want["rewrite"][0] and not all(want["rewrite"] + want["paraphrase"] + want["neighborhood"])
