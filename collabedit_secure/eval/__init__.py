"""Evaluation: dataset loaders, CounterFact / zsRE / conflict metrics, fluency, reports.

Entry points: `load_dataset(path, tok)` -> (kind, records), then
`evaluate_dataset(model, tok, records, kind)` -> (per_case, summary), then `write_report`.
"""

from collabedit_secure.eval.datasets import DatasetFormatError, load_conflict, load_counterfact, load_dataset, load_zsre
from collabedit_secure.eval.report import evaluate_dataset, format_summary_table, write_report

__all__ = [
    "DatasetFormatError",
    "evaluate_dataset",
    "format_summary_table",
    "load_conflict",
    "load_counterfact",
    "load_dataset",
    "load_zsre",
    "write_report",
]
