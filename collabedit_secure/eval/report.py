"""One entry point for evaluation, the JSON report, and the plain-text comparison table."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from collabedit_secure.eval.conflict import evaluate_conflict
from collabedit_secure.eval.consistency import ConsistencyReference
from collabedit_secure.eval.context_window import check_context
from collabedit_secure.eval.counterfact import evaluate_counterfact
from collabedit_secure.eval.zsre import evaluate_zsre
from collabedit_secure.files import json_safe, share_as_umask_allows

REPORT_VERSION = 1
TABLE_COLUMNS = ("efficacy", "generalization", "specificity", "score", "fluency", "consistency")
KINDS = ("counterfact", "zsre", "conflict")


@contextmanager
def _eval_mode(model):
    # Dropout would make every metric random; restore the caller's mode afterwards.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate_dataset(
    model,
    tok,
    records: list[dict],
    kind: str = "counterfact",
    fluency: bool = True,
    max_out_len: int = 100,
    seed: int = 0,
    batch_size: int = 64,
    gen_batch_size: int = 128,
    consistency: ConsistencyReference | None = None,
) -> tuple[list[dict], dict]:
    """Evaluate `records` (as from `load_dataset`) on `model`; returns (per_case, summary).

    kind 'counterfact': probability metrics, plus fluency (generation entropy) when `fluency`, and
    consistency (MEMIT's reference score of those generations) against `consistency`'s snippets.
    kind 'zsre': token accuracies (`fluency` is ignored: zsRE has no generation prompts).
    kind 'conflict': the CounterFact metrics on the conflict requests (no neighbourhood, no fluency),
    plus the conflict probe (p_conf vs p_obj, see `eval.conflict`) merged into each case and the summary.
    Every prompt must fit the model's context (PromptTooLongError, naming the record, before any scoring).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation kind {kind!r}; expected one of {KINDS}")
    if consistency is not None and kind != "counterfact":
        raise ValueError(f"consistency is a CounterFact metric (it scores generations); this dataset is {kind}")
    check_context(model, tok, records, kind, fluency=fluency and kind == "counterfact", max_out_len=max_out_len)
    started = time.perf_counter()
    with _eval_mode(model):
        if kind == "zsre":
            per_case, summary = evaluate_zsre(model, tok, records, batch_size=batch_size)
        else:
            per_case, summary = evaluate_counterfact(
                model, tok, records, fluency=fluency and kind == "counterfact", max_out_len=max_out_len,
                seed=seed, batch_size=batch_size, gen_batch_size=gen_batch_size, consistency=consistency,
            )
            if kind == "conflict":
                _merge_conflict_probe(model, tok, records, per_case, summary, batch_size)
    summary["eval_time_s"] = time.perf_counter() - started
    return per_case, summary


def _merge_conflict_probe(model, tok, records, per_case, summary, batch_size) -> None:
    probe_cases, probe_summary = evaluate_conflict(model, tok, records, batch_size=batch_size)
    for case, probe in zip(per_case, probe_cases):
        case.update({k: v for k, v in probe.items() if k != "case_id"})
    summary.update({k: v for k, v in probe_summary.items() if k != "n_cases"})


def write_report(path, per_case: list[dict], summary: Mapping, meta: Mapping) -> Path:
    """Write {"version", "meta", "summary", "cases"} as JSON, atomically (temp file + rename).

    `meta` records what produced the numbers, written as given plus n_cases and written_at.
    `collabedit eval` gives model, dataset, kind, n_records, round_prompts (null if none), `edit`
    (from the model directory's edit_meta.json: schedule, layers, method, n_requests, base_model,
    model_fingerprint, those it has; null for a model that `collabedit edit` did not write) and
    `fluency` ({seed, max_out_len}; null when fluency did not run).
    Non-finite floats are written as null so that any JSON reader can parse the file.
    """
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
    report = {
        "version": REPORT_VERSION,
        "meta": {**meta, "n_cases": len(per_case), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "summary": summary,
        "cases": per_case,
    }
    text = json.dumps(json_safe(report), indent=1, allow_nan=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text + "\n")
        share_as_umask_allows(Path(temp))  # mkstemp's 0600 would hide the report from other users
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    return path


def format_value(value) -> str:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy and torch scalars
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and not 1e-2 <= abs(value) < 1e6:
        return f"{value:.3e}"
    return f"{value:.2f}"


COVERAGE_REASONS = {  # why a metric can be over fewer cases than the run has
    "efficacy": "the others have no such prompts",
    "generalization": "the others have no such prompts",
    "specificity": "the others have no such prompts",
    "consistency": "the others have no attribute snippets for their relation and new object",
}


def coverage_notes(summaries: Mapping[str, Mapping]) -> list[str]:
    """A line for each metric that is over fewer cases than the run has, so that a mean over 3 cases
    is not read as one over 6. (Fluency is over every case or, when it is off, none: records without
    generation prompts are refused when it is on.)"""
    notes = {}
    for summary in summaries.values():
        counts, total = summary.get("n", {}), summary.get("n_cases")
        for metric, reason in COVERAGE_REASONS.items():
            if metric in counts and counts[metric] < total:
                notes[metric] = f"note: {metric} is over {counts[metric]} of {total} cases ({reason})"
    return list(notes.values())


def format_summary_table(summaries: Mapping[str, Mapping], extra_columns: Sequence[str] = ()) -> str:
    """Aligned plain-text table, one row per method: efficacy, generalization, specificity, score,
    fluency, then `extra_columns` (e.g. "wall_time_s", "delta_rel_err_vs_global"); "-" where absent."""
    if not summaries:
        raise ValueError("no summaries to tabulate")
    columns = list(TABLE_COLUMNS) + [c for c in extra_columns if c not in TABLE_COLUMNS]
    rows = [["method", *columns]]
    rows += [[str(method), *(format_value(summary.get(c)) for c in columns)] for method, summary in summaries.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
