"""Dataset loaders. Every format is turned into plain dicts in the CounterFact schema:

    {"case_id", "requested_rewrite": {"prompt" (one "{}"), "subject", "target_new": {"str"},
     "target_true": {"str"}, ...}, "paraphrase_prompts", "neighborhood_prompts",
     "attribute_prompts", "generation_prompts", ...extra fields kept}

so the editing core and the metrics see one shape. zsRE is transformed exactly as MEMIT's
`dsets/zsre.py` does; the knowledge-conflict format of CollabEdit becomes one request per record.
"""

from __future__ import annotations

import json
from pathlib import Path

from collabedit_secure.editing.tokens import continuation_ids

ZSRE_TARGET_TRUE = "<|endoftext|>"  # MEMIT's placeholder: zsRE has no "old" object to compare with
NQ_PREFIX = "nq question: "


class DatasetFormatError(ValueError):
    """A dataset file or record does not have the expected schema."""


def read_json(path):
    """A JSON file's content; every failure names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise DatasetFormatError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path}: not valid JSON ({err})") from None


def read_json_list(path) -> list:
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetFormatError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    if not data:
        raise DatasetFormatError(f"{path}: the list of records is empty")
    return data


def field_at(record, path: str, where: str, kind=str):
    """record["a"]["b"] for path "a.b", with an error naming the record and the missing field."""
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DatasetFormatError(f"{where}: missing field {path!r}")
        value = value[key]
    if not isinstance(value, kind):
        raise DatasetFormatError(f"{where}: field {path!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _text(record, path: str, where: str) -> str:
    """A string field that must not be blank (a blank subject, target or prompt means nothing to score)."""
    value = field_at(record, path, where)
    if not value.strip():
        raise DatasetFormatError(f"{where}: field {path!r} is empty")
    return value


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def record_label(index: int, record) -> str:
    case = record.get("case_id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (case_id {case})" if case is not None else "")


def _check_prompt_template(prompt: str, where: str) -> None:
    # The editing core formats the prompt with the subject: exactly one bare "{}" and no other braces.
    if prompt.count("{}") != 1 or prompt.replace("{}", "").count("{") or prompt.replace("{}", "").count("}"):
        raise DatasetFormatError(f"{where}: prompt {prompt!r} must contain exactly one '{{}}' and no other braces")


def _string_list(record, key: str, where: str, required: bool) -> list[str]:
    if key not in record:
        if required:
            raise DatasetFormatError(f"{where}: missing field {key!r}")
        return []
    values = record[key]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise DatasetFormatError(f"{where}: field {key!r} must be a list of strings")
    _no_blank(values, key, where)
    return values


def _no_blank(prompts: list[str], key: str, where: str) -> None:
    # A blank prompt tokenises to nothing (or to one space): there is no position to score from.
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise DatasetFormatError(f"{where}: {key}[{i}] is an empty prompt")


def validate_counterfact_records(records: list) -> list[dict]:
    """Check CounterFact-schema records (as loaded, or built in memory); fill absent optional lists.

    Required: integer case_id (unique), requested_rewrite.{prompt, subject, target_new.str,
    target_true.str}, paraphrase_prompts, neighborhood_prompts. attribute_prompts and
    generation_prompts default to [] (fluency needs the latter, see `require_generation_prompts`).
    Subjects, targets and prompts must not be blank.
    """
    seen: dict[int, int] = {}
    out = []
    for index, record in enumerate(records):
        where = record_label(index, record)
        if not isinstance(record, dict):
            raise DatasetFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        case_id = field_at(record, "case_id", where, int)
        if case_id in seen:
            raise DatasetFormatError(f"{where}: duplicate case_id {case_id} (also record {seen[case_id]})")
        seen[case_id] = index
        field_at(record, "requested_rewrite.prompt", where)
        for path in ("requested_rewrite.subject", "requested_rewrite.target_new.str",
                     "requested_rewrite.target_true.str"):
            _text(record, path, where)
        _check_prompt_template(record["requested_rewrite"]["prompt"], where)
        clean = dict(record)
        clean["paraphrase_prompts"] = _string_list(record, "paraphrase_prompts", where, required=True)
        clean["neighborhood_prompts"] = _neighborhood(record, where)
        clean["attribute_prompts"] = _string_list(record, "attribute_prompts", where, required=False)
        clean["generation_prompts"] = _string_list(record, "generation_prompts", where, required=False)
        out.append(clean)
    return out


def _neighborhood(record, where: str) -> list:
    # CounterFact: a list of prompts; zsRE (after transform): a list of {"prompt", "target"}.
    if "neighborhood_prompts" not in record:
        raise DatasetFormatError(f"{where}: missing field 'neighborhood_prompts'")
    values = record["neighborhood_prompts"]
    ok = isinstance(values, list) and all(
        isinstance(v, str)
        or (isinstance(v, dict) and isinstance(v.get("prompt"), str) and isinstance(v.get("target"), str))
        for v in values
    )
    if not ok:
        raise DatasetFormatError(
            f"{where}: field 'neighborhood_prompts' must be a list of strings or of {{'prompt', 'target'}} objects"
        )
    _no_blank([v if isinstance(v, str) else v["prompt"] for v in values], "neighborhood_prompts", where)
    return values


def require_generation_prompts(records: list[dict]) -> None:
    """Fluency samples from every record's generation_prompts: check they exist before any scoring."""
    for index, record in enumerate(records):
        if not record.get("generation_prompts"):
            raise DatasetFormatError(f"{record_label(index, record)}: no 'generation_prompts', which fluency "
                                     "samples from (skip fluency with --no-fluency)")


def require_consistency_fields(records: list[dict]) -> None:
    """Consistency looks its snippets up by relation and new object: every record must name both."""
    for index, record in enumerate(records):
        where = f"{record_label(index, record)} (consistency needs it)"
        field_at(record, "requested_rewrite.relation_id", where, (str, int))
        field_at(record, "requested_rewrite.target_new.id", where, (str, int))


def prefixed_errors(path, build):
    # Errors from inside a record name the file too, so a person knows where to look.
    try:
        return build()
    except DatasetFormatError as err:
        if str(err).startswith(str(path)):
            raise
        raise DatasetFormatError(f"{path}: {err}") from None


def load_counterfact(path) -> list[dict]:
    """CounterFact or MultiCounterFact JSON (a list of records), validated."""
    return prefixed_errors(path, lambda: validate_counterfact_records(read_json_list(path)))


def _zsre_fields(index: int, record: dict) -> tuple[str, str, str, list, str, str, str]:
    """A zsRE record's fields, validated (everything that needs no tokenizer)."""
    where = f"zsRE record {index}"
    subject, src, rephrase, loc, loc_ans = (_text(record, key, where) for key in
                                            ("subject", "src", "rephrase", "loc", "loc_ans"))
    answers = field_at(record, "answers", where, list)
    if not answers or not all(isinstance(a, str) for a in answers) or not answers[0].strip():
        raise DatasetFormatError(
            f"{where}: field 'answers' must be a non-empty list of strings, the first one not blank")
    if src.count(subject) != 1:  # MEMIT replaces every occurrence by "{}": the prompt needs exactly one
        found = "does not occur" if subject not in src else f"occurs {src.count(subject)} times"
        raise DatasetFormatError(f"{where}: subject {subject!r} {found} in src {src!r}; it must occur once")
    if not loc.startswith(NQ_PREFIX):
        raise DatasetFormatError(f"{where}: loc {loc!r} must start with {NQ_PREFIX!r}")
    prompt = src.replace(subject, "{}")
    _check_prompt_template(prompt, where)
    return subject, src, rephrase, answers, loc, loc_ans, prompt


def zsre_record(index: int, record: dict, tok) -> dict:
    """One MEND-split zsRE record in MEMIT's CounterFact-shaped form (spec 3.2)."""
    subject, src, rephrase, answers, loc, loc_ans, prompt = _zsre_fields(index, record)
    # The answer's ids as they follow the question (for byte-level BPE MEMIT's tok(" " + loc_ans));
    # the text pairs are MEMIT's record form, evaluation reads loc and loc_ans (eval/zsre.py).
    answer_ids = continuation_ids(tok, loc + "?", " " + loc_ans)
    neighborhood = [
        {"prompt": loc + "?" + tok.decode(answer_ids[:i]), "target": tok.decode(answer_ids[i])}
        for i in range(len(answer_ids))
    ]
    return {
        "case_id": index,
        "requested_rewrite": {
            "prompt": prompt,
            "subject": subject,
            "target_new": {"str": answers[0]},
            "target_true": {"str": ZSRE_TARGET_TRUE},
        },
        "paraphrase_prompts": [rephrase],
        "neighborhood_prompts": neighborhood,
        "attribute_prompts": [],
        "generation_prompts": [],
        "src": src,
        "loc": loc,
        "loc_ans": loc_ans,
    }


def load_zsre(path, tok) -> list[dict]:
    """zsRE (MEND eval split) JSON; `tok` splits loc_ans into the per-token neighbourhood prompts."""
    if tok is None:
        raise DatasetFormatError(f"{path}: zsRE records need a tokenizer to build neighbourhood prompts")
    return prefixed_errors(path, lambda: [zsre_record(i, r, tok) for i, r in enumerate(read_json_list(path))])


def conflict_record(index: int, record: dict, round_prompts: dict | None = None) -> dict:
    """One CollabEdit knowledge-conflict record as a request toward `new_object`.

    target_true is the original true `object`; `conflict_object`, `object`, `true_objects` and
    `type` are kept for the conflict experiment (spec 2.9). With `round_prompts` ({relation_id:
    [templates]}), the relation's probe prompts become the paraphrase prompts.
    """
    where = f"conflict record {index}"
    relation_id = field_at(record, "edit.relation.id", where)
    prompt = field_at(record, "edit.relation.prompt", where)
    subject, new_object, true_object, conflict_object = (_text(record, path, where) for path in (
        "edit.subject.label", "edit.new_object", "edit.object.label", "edit.conflict_object.label"))
    true_objects = field_at(record, "true_objects", where, list)
    _check_prompt_template(prompt, where)
    probes = []
    if round_prompts is not None:
        if relation_id not in round_prompts:
            raise DatasetFormatError(f"{where}: relation {relation_id!r} has no entry in the round prompts")
        probes = [template.format(subject) for template in round_prompts[relation_id]]
    return {
        "case_id": index,
        "requested_rewrite": {
            "prompt": prompt,
            "relation_id": relation_id,
            "subject": subject,
            "target_new": {"str": new_object},
            "target_true": {"str": true_object, "id": record["edit"]["object"].get("id")},
        },
        "paraphrase_prompts": probes,
        "neighborhood_prompts": [],
        "attribute_prompts": [],
        "generation_prompts": [],
        "conflict_object": {"str": conflict_object, "id": record["edit"]["conflict_object"].get("id")},
        "true_objects": [field_at(o, "label", f"{where} true_objects[{i}]") for i, o in enumerate(true_objects)],
        "type": record.get("type"),
        "relation_query": record["edit"]["relation"].get("query"),
    }


def load_round_prompts(path) -> dict[str, list[str]]:
    """CollabEdit's round_prompts.json: {relation_id: [templates with one "{}"]}."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object {{relation_id: [prompts]}}")
    for relation, templates in data.items():
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise DatasetFormatError(f"{path}: relation {relation!r} must map to a list of strings")
        for template in templates:
            _check_prompt_template(template, f"{path}: relation {relation!r}")
    return data


def load_conflict(path, round_prompts=None) -> list[dict]:
    """CollabEdit knowledge-conflict JSON (e.g. easy_conflict_1000_p1.json); `round_prompts` a dict or path."""
    if round_prompts is not None and not isinstance(round_prompts, dict):
        round_prompts = load_round_prompts(round_prompts)
    records = read_json_list(path)
    return prefixed_errors(path, lambda: [conflict_record(i, r, round_prompts) for i, r in enumerate(records)])


def detect_format(records: list) -> str:
    """'counterfact', 'zsre' or 'conflict', from the first record's keys."""
    first = records[0]
    if not isinstance(first, dict):
        raise DatasetFormatError(f"record 0: expected a JSON object, got {type(first).__name__}")
    keys = set(first)
    if "requested_rewrite" in keys:
        return "counterfact"
    if {"src", "answers", "loc", "loc_ans"} <= keys:
        return "zsre"
    if isinstance(first.get("edit"), dict) and "new_object" in first["edit"]:
        return "conflict"
    raise DatasetFormatError(
        f"unknown dataset format: record 0 has keys {sorted(keys)}; expected CounterFact "
        "('requested_rewrite'), zsRE ('src', 'answers', 'loc', 'loc_ans') or conflict ('edit.new_object')"
    )


def check_dataset(path, fluency: bool = False, round_prompts=None, consistency: bool = False) -> str:
    """Validate a dataset file without a model (so bad input fails before weights load); its format.

    `fluency`: CounterFact records must have generation prompts; `consistency`: and name their relation
    and new object's id. `round_prompts` (a path): only for conflict files, and every record's relation
    must have probe prompts there.
    """
    records = read_json_list(path)
    kind = prefixed_errors(path, lambda: detect_format(records))
    _only_conflict_has_rounds(path, kind, round_prompts)
    rounds = load_round_prompts(round_prompts) if round_prompts is not None else None

    def counterfact():
        checked = validate_counterfact_records(records)
        if fluency:
            require_generation_prompts(checked)
        if consistency:
            require_consistency_fields(checked)

    validate = {
        "counterfact": counterfact,
        "zsre": lambda: [_zsre_fields(i, r) for i, r in enumerate(records)],
        "conflict": lambda: [conflict_record(i, r, rounds) for i, r in enumerate(records)],
    }[kind]
    prefixed_errors(path, validate)
    return kind


def _only_conflict_has_rounds(path, kind: str, round_prompts) -> None:
    if round_prompts is not None and kind != "conflict":
        raise DatasetFormatError(f"{path}: round prompts only apply to conflict datasets, and this one is {kind}")


def load_dataset(path, tok=None, round_prompts=None) -> tuple[str, list[dict]]:
    """Load any supported format, detected from content; returns (format name, records).

    The format name is what `evaluate_dataset(kind=...)` takes ('counterfact', 'zsre', 'conflict').
    `round_prompts` (conflict files only) become each record's probe prompts, see `load_conflict`.
    """
    kind = prefixed_errors(path, lambda: detect_format(read_json_list(path)))
    _only_conflict_has_rounds(path, kind, round_prompts)
    if kind == "counterfact":
        return kind, load_counterfact(path)
    if kind == "zsre":
        return kind, load_zsre(path, tok)
    return kind, load_conflict(path, round_prompts)
