"""zsRE metrics, as MEMIT's `eval_utils_zsre.py` (spec 3.2): teacher-forced next-token accuracy.

For a target t = tok(" " + answer), prompt i is `question + decode(t[:i])` and is correct when the
argmax next token after its last real token equals the first token of tok(decode(t[i])). The
per-record value is the mean over target tokens; the summary the mean over records, ×100.
Neighbourhood prompts (built by the loader from `loc`/`loc_ans`) already carry their targets.
"""

from __future__ import annotations

import torch

from collabedit_secure.eval.counterfact import summarize_metrics
from collabedit_secure.eval.datasets import validate_counterfact_records
from collabedit_secure.eval.nll import check_fits, context_limit, quoted

ACC_KEYS = ("rewrite_acc", "paraphrase_acc", "neighborhood_acc")
PAPER_NAMES = {"rewrite_acc": "efficacy", "paraphrase_acc": "generalization", "neighborhood_acc": "specificity"}


def teacher_forced_prompts(question: str, target: str, tok) -> list[tuple[str, str]]:
    """(prefix, expected next-token text) for every token of " " + target."""
    # A target is a continuation: no BOS, even for tokenizers that add one to whole texts.
    ids = tok(" " + target.strip(), add_special_tokens=False)["input_ids"]
    return [(question + tok.decode(ids[:i]), tok.decode(ids[i])) for i in range(len(ids))]


@torch.no_grad()
def next_token_correct(model, tok, pairs: list[tuple[str, str]], batch_size: int = 64) -> dict[tuple[str, str], bool]:
    """Whether the argmax next token after each prefix is the first token of its target text."""
    unique = sorted(set(pairs), key=lambda p: (len(p[0]), p))
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    limit = context_limit(model)
    out = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        prefix_ids = [tok(prefix)["input_ids"] for prefix, _ in chunk]
        if not all(prefix_ids):
            empty = [prefix for (prefix, _), ids in zip(chunk, prefix_ids) if not ids]
            raise ValueError(f"a zsRE prompt tokenises to nothing: {empty}")
        for (prefix, _), ids in zip(chunk, prefix_ids):
            check_fits(len(ids), limit, f"zsRE prompt {quoted(prefix)}")
        expected = [_first_token(tok, target) for _, target in chunk]
        width = max(len(ids) for ids in prefix_ids)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(prefix_ids):  # right padding, read at the last real token
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        last = torch.tensor([len(ids) - 1 for ids in prefix_ids], device=logits.device)
        predicted = logits[torch.arange(len(chunk), device=logits.device), last].argmax(-1).tolist()
        out.update({pair: p == e for pair, p, e in zip(chunk, predicted, expected)})
    return out


def _first_token(tok, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target text {text!r} tokenises to nothing")
    return ids[0]


def record_pairs(record: dict, tok) -> dict[str, list[tuple[str, str]]]:
    """The (prefix, target token text) pairs of each prompt set of a loaded zsRE record."""
    rewrite = record["requested_rewrite"]
    answer = rewrite["target_new"]["str"]
    neighborhood = record["neighborhood_prompts"]
    if any(not isinstance(n, dict) for n in neighborhood):
        raise ValueError(
            f"case_id {record['case_id']}: zsRE neighbourhood prompts must be {{'prompt', 'target'}} objects "
            "(load the file with load_zsre)"
        )
    return {
        "rewrite": teacher_forced_prompts(rewrite["prompt"].format(rewrite["subject"]), answer, tok),
        "paraphrase": [pair for q in record["paraphrase_prompts"] for pair in teacher_forced_prompts(q, answer, tok)],
        "neighborhood": [(n["prompt"], n["target"]) for n in neighborhood],
    }


def evaluate_zsre(model, tok, records: list[dict], batch_size: int = 64) -> tuple[list[dict], dict]:
    """Per-record token accuracies and their summary (×100) for records from `load_zsre`."""
    records = validate_counterfact_records(records)
    pairs = [record_pairs(r, tok) for r in records]
    correct = next_token_correct(model, tok, [p for sets in pairs for ps in sets.values() for p in ps], batch_size)
    per_case = []
    for record, sets in zip(records, pairs):
        case = {"case_id": record["case_id"], "prompt": record["requested_rewrite"]["prompt"]}
        for name, set_pairs in sets.items():
            flags = [correct[p] for p in set_pairs]
            case[f"{name}_prompts_correct"] = flags
            case[f"{name}_acc"] = sum(flags) / len(flags) if flags else None
        per_case.append(case)
    return per_case, summarize_zsre(per_case)


def summarize_zsre(per_case: list[dict]) -> dict:
    """Mean accuracies ×100, with the paper names (efficacy, generalization, specificity)."""
    if not per_case:
        raise ValueError("no cases to summarise")
    summary = summarize_metrics(per_case, ACC_KEYS)
    for key, paper_name in PAPER_NAMES.items():
        summary[paper_name] = summary[key]
    return summary
