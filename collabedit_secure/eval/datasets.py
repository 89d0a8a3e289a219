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

ZSRE_TARGET_TRUE = "<|endoftext|>"  # MEMIT's placeholder: zsRE has no "old" object to compare with
NQ_PREFIX = "nq question: "


class DatasetFormatError(ValueError):
    """A dataset file or record does not have the expected schema."""


def read_json_list(path) -> list:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetFormatError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise DatasetFormatError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    if not data:
        raise DatasetFormatError(f"{path}: the list of records is empty")
    return data


def _field(record, path: str, where: str, kind=str):
    """record["a"]["b"] for path "a.b", with an error naming the record and the missing field."""
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise DatasetFormatError(f"{where}: missing field {path!r}")
        value = value[key]
    if not isinstance(value, kind):
        raise DatasetFormatError(f"{where}: field {path!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _where(index: int, record) -> str:
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
    return values


def validate_counterfact_records(records: list) -> list[dict]:
    """Check CounterFact-schema records (as loaded, or built in memory); fill absent optional lists.

    Required: integer case_id (unique), requested_rewrite.{prompt, subject, target_new.str,
    target_true.str}, paraphrase_prompts, neighborhood_prompts. attribute_prompts and
    generation_prompts default to [] (fluency needs the latter).
    """
    seen: dict[int, int] = {}
    out = []
    for index, record in enumerate(records):
        where = _where(index, record)
        if not isinstance(record, dict):
            raise DatasetFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        case_id = _field(record, "case_id", where, int)
        if case_id in seen:
            raise DatasetFormatError(f"{where}: duplicate case_id {case_id} (also record {seen[case_id]})")
        seen[case_id] = index
        for path in ("requested_rewrite.prompt", "requested_rewrite.subject"):
            _field(record, path, where)
        for path in ("requested_rewrite.target_new.str", "requested_rewrite.target_true.str"):
            if not _field(record, path, where).strip():
                raise DatasetFormatError(f"{where}: field {path!r} is empty")
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
    return values


def _prefixed_errors(path, build):
    # Errors from inside a record name the file too, so a person knows where to look.
    try:
        return build()
    except DatasetFormatError as err:
        if str(err).startswith(str(path)):
            raise
        raise DatasetFormatError(f"{path}: {err}") from None


def load_counterfact(path) -> list[dict]:
    """CounterFact or MultiCounterFact JSON (a list of records), validated."""
    return _prefixed_errors(path, lambda: validate_counterfact_records(read_json_list(path)))


def _zsre_fields(index: int, record: dict) -> tuple[str, str, str, list, str, str, str]:
    """A zsRE record's fields, validated (everything that needs no tokenizer)."""
    where = f"zsRE record {index}"
    subject = _field(record, "subject", where)
    src = _field(record, "src", where)
    rephrase = _field(record, "rephrase", where)
    answers = _field(record, "answers", where, list)
    loc = _field(record, "loc", where)
    loc_ans = _field(record, "loc_ans", where)
    if not answers or not isinstance(answers[0], str) or not answers[0].strip():
        raise DatasetFormatError(
            f"{where}: field 'answers' must be a non-empty list of strings, the first one not blank")
    if subject not in src:
        raise DatasetFormatError(f"{where}: subject {subject!r} does not occur in src {src!r}")
    if not loc.startswith(NQ_PREFIX):
        raise DatasetFormatError(f"{where}: loc {loc!r} must start with {NQ_PREFIX!r}")
    prompt = src.replace(subject, "{}")
    _check_prompt_template(prompt, where)
    return subject, src, rephrase, answers, loc, loc_ans, prompt


def zsre_record(index: int, record: dict, tok) -> dict:
    """One MEND-split zsRE record in MEMIT's CounterFact-shaped form (spec 3.2)."""
    subject, src, rephrase, answers, loc, loc_ans, prompt = _zsre_fields(index, record)
    answer_ids = tok(" " + loc_ans, add_special_tokens=False)["input_ids"]
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
    return _prefixed_errors(path, lambda: [zsre_record(i, r, tok) for i, r in enumerate(read_json_list(path))])


def conflict_record(index: int, record: dict, round_prompts: dict | None = None) -> dict:
    """One CollabEdit knowledge-conflict record as a request toward `new_object`.

    target_true is the original true `object`; `conflict_object`, `object`, `true_objects` and
    `type` are kept for the conflict experiment (spec 2.9). With `round_prompts` ({relation_id:
    [templates]}), the relation's probe prompts become the paraphrase prompts.
    """
    where = f"conflict record {index}"
    relation_id = _field(record, "edit.relation.id", where)
    prompt = _field(record, "edit.relation.prompt", where)
    subject = _field(record, "edit.subject.label", where)
    new_object = _field(record, "edit.new_object", where)
    true_object = _field(record, "edit.object.label", where)
    conflict_object = _field(record, "edit.conflict_object.label", where)
    true_objects = _field(record, "true_objects", where, list)
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
        "true_objects": [_field(o, "label", f"{where} true_objects[{i}]") for i, o in enumerate(true_objects)],
        "type": record.get("type"),
        "relation_query": record["edit"]["relation"].get("query"),
    }


def load_round_prompts(path) -> dict[str, list[str]]:
    """CollabEdit's round_prompts.json: {relation_id: [templates with one "{}"]}."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
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
    return _prefixed_errors(path, lambda: [conflict_record(i, r, round_prompts) for i, r in enumerate(records)])


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


def check_dataset(path) -> str:
    """Validate a dataset file without a model (so bad input fails before weights load); its format."""
    records = read_json_list(path)
    kind = _prefixed_errors(path, lambda: detect_format(records))
    validate = {
        "counterfact": lambda: validate_counterfact_records(records),
        "zsre": lambda: [_zsre_fields(i, r) for i, r in enumerate(records)],
        "conflict": lambda: [conflict_record(i, r) for i, r in enumerate(records)],
    }[kind]
    _prefixed_errors(path, validate)
    return kind


def load_dataset(path, tok=None) -> tuple[str, list[dict]]:
    """Load any supported format, detected from content; returns (format name, records).

    The format name is what `evaluate_dataset(kind=...)` takes ('counterfact', 'zsre', 'conflict').
    """
    kind = _prefixed_errors(path, lambda: detect_format(read_json_list(path)))
    if kind == "counterfact":
        return kind, load_counterfact(path)
    if kind == "zsre":
        return kind, load_zsre(path, tok)
    return kind, load_conflict(path)
