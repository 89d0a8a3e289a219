"""`collabedit eval --dataset` on the plain request list that `collabedit edit --requests` takes.

A plain request has one prompt and no paraphrase, neighbourhood or generation prompts, so it is
evaluated as a CounterFact record with only its rewrite prompt: efficacy (p(target_new) >
p(target_true)) and the probability margin; generalization and specificity have no cases, and
fluency does not run.
"""

from __future__ import annotations

from pathlib import Path

from collabedit_secure.eval.datasets import DatasetFormatError, validate_counterfact_records


def plain_eval_records(path: Path, round_prompts=None, consistency: bool = False) -> list[dict] | None:
    """The requests in `path` as CounterFact records if it is a plain request list, else None."""
    from collabedit_secure.pipeline import _plain_requests  # the same reader, and checks, as `edit`

    requests = _plain_requests(path)
    if requests is None:
        return None
    if round_prompts is not None or consistency:
        option = "--round-prompts" if round_prompts is not None else "--consistency"
        raise DatasetFormatError(f"{path}: {option} needs a conflict or CounterFact dataset; a plain request "
                                 "list has only its rewrite prompts")
    missing = [r.case_id for r in requests if r.target_true is None]
    if missing:
        raise DatasetFormatError(f"{path}: edit request {missing[0]!r} has no 'target_true': eval scores an edit "
                                 "as p(target_new) > p(target_true), so every request needs both")
    # CounterFact ids are integers; string ids keep their place in the list instead.
    integer_ids = all(isinstance(r.case_id, int) for r in requests)
    records = [{"case_id": r.case_id if integer_ids else index,
                "requested_rewrite": {"prompt": r.prompt, "subject": r.subject,
                                      "target_new": {"str": r.target_new.strip()},
                                      "target_true": {"str": r.target_true.strip()}},
                "paraphrase_prompts": [], "neighborhood_prompts": []}
               for index, r in enumerate(requests)]
    try:
        return validate_counterfact_records(records)
    except DatasetFormatError as err:
        raise DatasetFormatError(f"{path}: {err}") from None
