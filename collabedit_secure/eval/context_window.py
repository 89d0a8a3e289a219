"""Every prompt an evaluation feeds the model must fit the model's context.

Too long is an error, never a silent truncation (a cut prompt would score another question).
`check_context` tokenises all prompts before the first forward pass, so that a long record fails at
once and by name instead of as an IndexError inside the embedding after minutes of scoring.
"""

from __future__ import annotations

from collabedit_secure.eval.counterfact import record_prompts
from collabedit_secure.eval.datasets import record_label, validate_counterfact_records
from collabedit_secure.eval.nll import check_fits, context_limit, quoted
from collabedit_secure.eval.zsre import record_probes


def check_context(model, tok, records: list[dict], kind: str, fluency: bool = False, max_out_len: int = 100) -> None:
    """Raise PromptTooLongError naming the record and prompt when anything exceeds the model's context."""
    limit = context_limit(model)
    if limit is None:
        return
    if fluency:
        check_fits(max_out_len, limit, "the fluency sample length (--fluency-tokens, max_out_len)")
    for index, record in enumerate(validate_counterfact_records(records)):
        for what, length in _lengths(tok, record, kind, fluency):
            check_fits(length, limit, f"{record_label(index, record)}: {what}")


def _lengths(tok, record: dict, kind: str, fluency: bool):
    """(description, token count) of every sequence the metrics of `kind` build from the record."""
    def count(text, special=True):
        return len(tok(text, add_special_tokens=special)["input_ids"])

    if kind == "zsre":
        for name, probes in record_probes(record, tok).items():
            for probe in probes:
                yield f"{name} prompt {quoted(probe.prompt)}", len(probe.prefix)
    else:
        targets = [record["requested_rewrite"][k]["str"] for k in ("target_new", "target_true")]
        if "conflict_object" in record:
            targets.append(record["conflict_object"]["str"])
        longest = max(targets, key=lambda t: count(" " + t.strip(), special=False))
        extra = count(" " + longest.strip(), special=False)
        for name, prefixes in record_prompts(record).items():
            for prefix in prefixes:
                yield f"{name} prompt {quoted(prefix)} with target {quoted(longest)}", count(prefix) + extra
    if fluency:
        for prompt in record["generation_prompts"]:
            yield f"generation prompt {quoted(prompt)}", count(prompt)
