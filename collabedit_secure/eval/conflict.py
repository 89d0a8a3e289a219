"""Knowledge-conflict probe (spec 2.9): does the model prefer the conflicting object or the true one?

For each conflict record, p(o) = exp(-NLL(o | x)) with the per-token mean NLL of `target_nll`,
for o = conflict_object and o = object (the original true object, the request's target_true), on
the rewrite prompt and on the relation's probe prompts (the paraphrase prompts that
`load_conflict(..., round_prompts)` builds). The summary reports mean(p_conf - p_obj) ×100 and the
percentage of cases with p_conf > p_obj, on the rewrite prompt and averaged over the probes.
"""

from __future__ import annotations

import math

from collabedit_secure.eval.counterfact import batched_nll, mean_std


def _probabilities(nll: dict, prefixes: list[str], target: str) -> list[float]:
    return [math.exp(-nll[(prefix, target)]) for prefix in prefixes]


def evaluate_conflict(model, tok, records: list[dict], batch_size: int = 64) -> tuple[list[dict], dict]:
    """Per-case p_conf and p_obj (rewrite prompt and probe mean) and their summary."""
    for index, record in enumerate(records):
        if "conflict_object" not in record:
            raise ValueError(f"record {index}: no 'conflict_object'; load the file with load_conflict")
    jobs = []
    for record in records:
        rewrite = record["requested_rewrite"]
        prefixes = {
            "rewrite": [rewrite["prompt"].format(rewrite["subject"])],
            "probe": list(record["paraphrase_prompts"]),
        }
        targets = {"conf": record["conflict_object"]["str"], "obj": rewrite["target_true"]["str"]}
        jobs.append((record["case_id"], prefixes, targets))
    pairs = [(p, t) for _, prefixes, targets in jobs for ps in prefixes.values() for p in ps for t in targets.values()]
    nll = batched_nll(model, tok, pairs, batch_size)
    per_case = []
    for case_id, prefixes, targets in jobs:
        case = {"case_id": case_id, "conflict_object": targets["conf"], "object": targets["obj"]}
        for where, ps in prefixes.items():
            for name, target in targets.items():
                values = _probabilities(nll, ps, target)
                case[f"{where}_p_{name}"] = sum(values) / len(values) if values else None
        per_case.append(case)
    return per_case, summarize_conflict(per_case)


def summarize_conflict(per_case: list[dict]) -> dict:
    """mean(p_conf - p_obj) ×100 and % of cases with p_conf > p_obj, per prompt kind."""
    summary: dict = {"n_cases": len(per_case)}
    for where in ("rewrite", "probe"):
        gaps = [c[f"{where}_p_conf"] - c[f"{where}_p_obj"] for c in per_case if c[f"{where}_p_conf"] is not None]
        summary[f"{where}_conflict_gap"] = 100.0 * mean_std(gaps)[0] if gaps else None
        summary[f"{where}_conflict_wins"] = 100.0 * sum(g > 0 for g in gaps) / len(gaps) if gaps else None
    return summary
