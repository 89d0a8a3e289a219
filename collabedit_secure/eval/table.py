"""The table `collabedit eval` prints: one row per metric, the model's value and, given `--base`, the
unedited model's beside it and the change."""

from __future__ import annotations

from collections.abc import Mapping

from collabedit_secure.eval.report import TABLE_COLUMNS, format_value

HIDDEN = {"n_cases", "eval_time_s"}  # shown in the footer, not as metrics


def metric_names(*summaries: Mapping) -> list[str]:
    """The paper's metrics first, then every other number a summary has (zsRE's and the conflict
    probe's); a metric no model has a value for is left out."""
    names = [m for m in TABLE_COLUMNS if any(s.get(m) is not None for s in summaries)]
    for summary in summaries:
        for key, value in summary.items():
            if key in HIDDEN or key in names or value is None or isinstance(value, (dict, list, str, bool)):
                continue
            names.append(key)
    return names


def eval_table(summary: Mapping, base: Mapping | None = None) -> str:
    """Aligned plain text: metric, cases it is over, the model's value (and base, change)."""
    shown = [summary] if base is None else [summary, base]
    header = ["metric", "n", "model"] + (["base", "change"] if base is not None else [])
    rows = [header]
    for name in metric_names(*shown):
        row = [name, format_value(summary.get("n", {}).get(name)), format_value(summary.get(name))]
        if base is not None:
            row += [format_value(base.get(name)), _change(summary.get(name), base.get(name))]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _change(value, before) -> str:
    if not isinstance(value, (int, float)) or not isinstance(before, (int, float)):
        return "-"
    text = format_value(value - before)
    return text if text.startswith("-") else "+" + text  # "-" alone: no number (NaN)


def footer(model: str, summary: Mapping, base_model: str | None = None, base: Mapping | None = None) -> str:
    lines = [f"model: {model} ({summary.get('n_cases')} cases, {summary.get('eval_time_s', 0):.1f}s)"]
    if base is not None:
        lines.append(f"base:  {base_model} ({base.get('n_cases')} cases, {base.get('eval_time_s', 0):.1f}s)")
    return "\n".join(lines)
