"""zsRE metrics (spec 3.2): teacher-forced next-token accuracy on the answer's tokens.

For a question q and answer a, P = tok(q) (with the special tokens the tokenizer adds, e.g. a BOS)
and T = the ids of " " + a as they follow q in one text (`continuation_ids`). Probe i feeds P + T[:i]
and is correct when the argmax next token is T[i]. The per-record value is the mean over probes, the
summary the mean over records, ×100. Neighbourhood probes do the same for the NQ question
`loc + "?"` and its answer `loc_ans`.

MEMIT builds the probes as text: q + decode(T[:i]), re-tokenised, against the first token of
tok(decode(T[i])). Wherever that round trip gives back P + T[:i] and T[i] the two are the same
forward pass; ids avoid the cases where it does not: every SentencePiece tokenizer (decode drops
a word's leading "▁", and " " + a tokenised alone gains a lone "▁"), and BPE pieces of a partial word
that re-merge differently.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from collabedit_secure.editing.tokens import continuation_ids
from collabedit_secure.eval.counterfact import summarize_metrics
from collabedit_secure.eval.datasets import validate_counterfact_records
from collabedit_secure.eval.nll import check_finite, check_fits, context_limit, quoted
from collabedit_secure.progress import progress, shown

ACC_KEYS = ("rewrite_acc", "paraphrase_acc", "neighborhood_acc")
PAPER_NAMES = {"rewrite_acc": "efficacy", "paraphrase_acc": "generalization", "neighborhood_acc": "specificity"}


class Probe(NamedTuple):
    """One teacher-forced step: feed `prefix`, expect `expected` next; `prompt` names it in errors."""

    prompt: str
    prefix: tuple[int, ...]
    expected: int


def answer_probes(tok, question: str, answer: str) -> list[Probe]:
    """One probe per token of " " + answer after `question`."""
    head, ids = _prompt_and_continuation(tok, question, " " + answer.strip())
    return [Probe(question, tuple(head + ids[:i]), ids[i]) for i in range(len(ids))]


def text_probe(tok, prompt: str, target: str) -> Probe:
    """A neighbourhood pair given as text (MEMIT's record form): the target's first token after the prompt."""
    head, ids = _prompt_and_continuation(tok, prompt, target)
    return Probe(prompt, tuple(head), ids[0])


def _prompt_and_continuation(tok, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    head = tok(prompt)["input_ids"]
    if not head:
        raise ValueError(f"a zsRE prompt tokenises to nothing: {prompt!r}")
    ids = continuation_ids(tok, prompt, continuation)
    if not ids:
        raise ValueError(f"zsRE target {continuation.strip()!r} tokenises to nothing")
    return head, ids


@torch.no_grad()
def next_token_correct(model, tok, probes: list[Probe], batch_size: int = 64) -> list[bool]:
    """Whether the argmax next token after each probe's prefix is its expected token, in order."""
    unique = sorted({(p.prefix, p.expected): p for p in probes}.values(), key=lambda p: (len(p.prefix), p))
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    limit = context_limit(model)
    correct = {}
    batches = range(0, len(unique), batch_size)
    for start in progress(batches, desc="eval: zsRE probes", unit="batch", enabled=shown("eval"), leave=False):
        chunk = unique[start : start + batch_size]
        for probe in chunk:
            check_fits(len(probe.prefix), limit, f"zsRE prompt {quoted(probe.prompt)}")
        width = max(len(p.prefix) for p in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, probe in enumerate(chunk):  # right padding, read at the last real token
            input_ids[row, : len(probe.prefix)] = torch.tensor(probe.prefix)
            attention[row, : len(probe.prefix)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        last = torch.tensor([len(p.prefix) - 1 for p in chunk], device=logits.device)
        next_logits = logits[torch.arange(len(chunk), device=logits.device), last]
        check_finite(next_logits, lambda row: chunk[row].prompt)  # argmax of NaN names a token all the same
        predicted = next_logits.argmax(-1).tolist()
        correct.update({(p.prefix, p.expected): got == p.expected for p, got in zip(chunk, predicted)})
    return [correct[(p.prefix, p.expected)] for p in probes]


def record_probes(record: dict, tok) -> dict[str, list[Probe]]:
    """The probes of each prompt set of a zsRE record (from `load_zsre`, or built by hand)."""
    rewrite = record["requested_rewrite"]
    answer = rewrite["target_new"]["str"]
    probes = {
        "rewrite": answer_probes(tok, rewrite["prompt"].format(rewrite["subject"]), answer),
        "paraphrase": [p for q in record["paraphrase_prompts"] for p in answer_probes(tok, q, answer)],
    }
    if "loc" in record and "loc_ans" in record:  # load_zsre keeps the NQ question and answer
        probes["neighborhood"] = answer_probes(tok, record["loc"] + "?", record["loc_ans"])
        return probes
    neighborhood = record["neighborhood_prompts"]
    if any(not isinstance(n, dict) for n in neighborhood):
        raise ValueError(
            f"case_id {record['case_id']}: zsRE neighbourhood prompts must be {{'prompt', 'target'}} objects "
            "(load the file with load_zsre)"
        )
    probes["neighborhood"] = [text_probe(tok, n["prompt"], n["target"]) for n in neighborhood]
    return probes


def evaluate_zsre(model, tok, records: list[dict], batch_size: int = 64) -> tuple[list[dict], dict]:
    """Per-record token accuracies and their summary (×100) for records from `load_zsre`."""
    records = validate_counterfact_records(records)
    sets = [record_probes(r, tok) for r in records]
    flat = [p for record_sets in sets for probes in record_sets.values() for p in probes]
    flags = iter(next_token_correct(model, tok, flat, batch_size))
    per_case = []
    for record, record_sets in zip(records, sets):
        rewrite = record["requested_rewrite"]
        case = {"case_id": record["case_id"], "prompt": rewrite["prompt"].format(rewrite["subject"]),
                "target_new": rewrite["target_new"]["str"]}  # as CounterFact's cases name them
        for name, probes in record_sets.items():
            correct = [next(flags) for _ in probes]
            case[f"{name}_prompts_correct"] = correct
            case[f"{name}_acc"] = sum(correct) / len(correct) if correct else None
        per_case.append(case)
    return per_case, summarize_zsre(per_case)


def summarize_zsre(per_case: list[dict]) -> dict:
    """Mean accuracies ×100, with the paper names (efficacy, generalization, specificity)."""
    if not per_case:
        raise ValueError("no cases to summarise")
    summary = summarize_metrics(per_case, ACC_KEYS)
    for key, paper_name in PAPER_NAMES.items():
        summary[paper_name] = summary[key]
        summary["n"][paper_name] = summary["n"][key]
    return summary
