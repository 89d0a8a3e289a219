"""CounterFact / MultiCounterFact metrics, as MEMIT's `eval_utils_counterfact.py` (spec 3.1).

For each prompt x, NLL(o|x) is the per-token mean NLL of " " + o after x (`target_nll`).
- efficacy (rewrite) and generalisation (paraphrase) succeed where NLL(o_true) > NLL(o_new);
- specificity (neighbourhood) succeeds where NLL(o_true) < NLL(o_new);
- the *_diff magnitudes are exp(-NLL(o_new)) - exp(-NLL(o_true)), sign flipped for neighbourhood.
Per record: the mean over its prompts. Summary: the mean over records, ×100, and `score`, the
harmonic mean of the three success percentages.

All prompts of all records go to the model in one batched `target_nll` call, deduplicated (it
sorts them by length, so that batches carry little padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from collabedit_secure.eval.consistency import ConsistencyReference, add_consistency
from collabedit_secure.eval.datasets import (
    require_consistency_fields, require_generation_prompts, validate_counterfact_records,
)
from collabedit_secure.eval.fluency import generate_texts, ngram_entropy
from collabedit_secure.eval.nll import target_nll

PROMPT_SETS = ("rewrite", "paraphrase", "neighborhood")
PAPER_NAMES = {  # summary key -> name used in the CollabEdit / MEMIT papers
    "rewrite_success": "efficacy",
    "paraphrase_success": "generalization",
    "neighborhood_success": "specificity",
    "ngram_entropy": "fluency",
    "reference_score": "consistency",
}


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean of non-negative values; 0 if any value is 0 (the limit, as scipy's hmean)."""
    if not values:
        raise ValueError("harmonic_mean needs at least one value")
    if any(v < 0 or math.isnan(v) for v in values):
        raise ValueError(f"harmonic_mean needs non-negative numbers, got {list(values)}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def prompt_set_metrics(nll_pairs: Sequence[tuple[float, float]], neighborhood: bool) -> dict:
    """Success rate and mean magnitude over one prompt set, from (NLL(o_new), NLL(o_true)) pairs.

    Returns {"success": ..., "diff": ..., "nll": [...]}; success and diff are None for an empty set.
    """
    nll = [{"target_new": float(new), "target_true": float(true)} for new, true in nll_pairs]
    if not nll_pairs:
        return {"success": None, "diff": None, "nll": nll}
    sign = -1.0 if neighborhood else 1.0
    wins = [(true < new) if neighborhood else (true > new) for new, true in nll_pairs]
    diffs = [sign * (math.exp(-new) - math.exp(-true)) for new, true in nll_pairs]
    return {"success": sum(wins) / len(wins), "diff": sum(diffs) / len(diffs), "nll": nll}


def record_metrics(rewrite, paraphrase, neighborhood) -> dict:
    """Per-record metrics from the (NLL(o_new), NLL(o_true)) pairs of each prompt set."""
    out = {}
    for name, pairs in zip(PROMPT_SETS, (rewrite, paraphrase, neighborhood)):
        metrics = prompt_set_metrics(pairs, neighborhood=(name == "neighborhood"))
        out[f"{name}_success"] = metrics["success"]
        out[f"{name}_diff"] = metrics["diff"]
        out[f"{name}_prompts_nll"] = metrics["nll"]
    return out


def record_prompts(record: dict) -> dict[str, list[str]]:
    """The prefixes of each prompt set of a validated CounterFact record."""
    rewrite = record["requested_rewrite"]
    neighborhood = record["neighborhood_prompts"]
    if any(not isinstance(p, str) for p in neighborhood):
        raise ValueError(
            f"case_id {record['case_id']}: neighbourhood prompts with their own targets are zsRE-style; "
            "evaluate them with kind='zsre'"
        )
    return {
        "rewrite": [rewrite["prompt"].format(rewrite["subject"])],
        "paraphrase": list(record["paraphrase_prompts"]),
        "neighborhood": list(neighborhood),
    }


def batched_nll(model, tok, pairs: list[tuple[str, str]], batch_size: int = 64) -> dict[tuple[str, str], float]:
    """NLL of every distinct (prefix, target) pair, in one `target_nll` call."""
    unique = sorted(set(pairs))  # a fixed order, whatever the set's
    if not unique:
        return {}
    values = target_nll(model, tok, [p for p, _ in unique], [t for _, t in unique], batch_size=batch_size)
    return dict(zip(unique, values.tolist()))


def counterfact_nll_pairs(model, tok, records: list[dict], batch_size: int = 64) -> list[dict]:
    """For each record, {prompt set: [(NLL(o_new), NLL(o_true)), ...]}."""
    prompts = [record_prompts(r) for r in records]
    rewrites = [r["requested_rewrite"] for r in records]
    targets = [(rw["target_new"]["str"], rw["target_true"]["str"]) for rw in rewrites]
    wanted = [
        (prefix, target)
        for sets, pair in zip(prompts, targets)
        for prefixes in sets.values()
        for prefix in prefixes
        for target in pair
    ]
    nll = batched_nll(model, tok, wanted, batch_size)
    return [
        {name: [(nll[(p, new)], nll[(p, true)]) for p in prefixes] for name, prefixes in sets.items()}
        for sets, (new, true) in zip(prompts, targets)
    ]


def evaluate_counterfact(
    model,
    tok,
    records: list[dict],
    fluency: bool = True,
    max_out_len: int = 100,
    seed: int = 0,
    batch_size: int = 64,
    gen_batch_size: int = 128,
    consistency: ConsistencyReference | None = None,
) -> tuple[list[dict], dict]:
    """Per-record metrics and their summary for CounterFact-schema records; with `consistency`, the
    reference score of the fluency generations too."""
    records = validate_counterfact_records(records)
    if consistency is not None and not fluency:
        raise ValueError("consistency scores the fluency generations: it needs fluency on")
    if fluency:  # before the scoring, not after minutes of it
        require_generation_prompts(records)
    if consistency is not None:
        require_consistency_fields(records)
    per_case = []
    for record, pairs in zip(records, counterfact_nll_pairs(model, tok, records, batch_size)):
        metrics = record_metrics(pairs["rewrite"], pairs["paraphrase"], pairs["neighborhood"])
        per_case.append({"case_id": record["case_id"], **_request_summary(record), **metrics})
    if fluency:
        add_fluency(model, tok, records, per_case, max_out_len, seed, gen_batch_size)
    if consistency is not None:
        add_consistency(records, per_case, consistency)
    return per_case, summarize_counterfact(per_case)


def _request_summary(record: dict) -> dict:
    rewrite = record["requested_rewrite"]
    return {
        "prompt": rewrite["prompt"].format(rewrite["subject"]),
        "target_new": rewrite["target_new"]["str"],
        "target_true": rewrite["target_true"]["str"],
    }


def add_fluency(model, tok, records, per_case, max_out_len=100, seed=0, batch_size=128) -> None:
    """Generate from every record's generation prompts in one batched run; add ngram_entropy per case."""
    require_generation_prompts(records)
    prompts = [p for r in records for p in r["generation_prompts"]]
    texts = generate_texts(model, tok, prompts, max_out_len=max_out_len, seed=seed, batch_size=batch_size)
    start = 0
    for record, case in zip(records, per_case):
        count = len(record["generation_prompts"])
        case["generated_texts"] = texts[start : start + count]
        case["ngram_entropy"] = ngram_entropy(case["generated_texts"])
        start += count


def mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def summarize_metrics(per_case: list[dict], keys: Sequence[str]) -> dict:
    """Mean ×100 over the cases that have each key (None-valued entries skipped), with stds, and in
    `n` how many cases each mean is over (fewer than n_cases where records lack a prompt set)."""
    summary: dict = {"n_cases": len(per_case), "std": {}, "n": {}}
    for key in keys:
        values = [case[key] for case in per_case if case.get(key) is not None]
        summary["n"][key] = len(values)
        if values:
            mean, std = mean_std(values)
            summary[key], summary["std"][key] = 100.0 * mean, 100.0 * std
        else:
            summary[key] = None
    return summary


def summarize_counterfact(per_case: list[dict]) -> dict:
    """MEMIT-style summary plus the paper names (efficacy, generalization, specificity, fluency,
    consistency, score).

    score is the harmonic mean of the three success rates, each over the cases that have its prompts.
    """
    if not per_case:
        raise ValueError("no cases to summarise")
    keys = [f"{name}_{kind}" for kind in ("success", "diff") for name in PROMPT_SETS] + ["ngram_entropy"]
    if any("reference_score" in case for case in per_case):  # computed (if for no case, n says so)
        keys.append("reference_score")
    summary = summarize_metrics(per_case, keys)
    successes = [summary[f"{name}_success"] for name in PROMPT_SETS]
    summary["score"] = harmonic_mean(successes) if None not in successes else None
    for key, paper_name in PAPER_NAMES.items():
        if key not in summary:
            continue
        summary[paper_name] = summary[key]
        summary["n"][paper_name] = summary["n"][key]
    return summary
