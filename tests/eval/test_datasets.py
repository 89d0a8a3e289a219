"""Loaders on the real-format files in ../shared/data, and precise rejection of malformed input."""

from __future__ import annotations

import json

import pytest

from collabedit_secure.eval.datasets import (
    DatasetFormatError,
    check_dataset,
    load_conflict,
    load_counterfact,
    load_dataset,
    load_round_prompts,
    load_zsre,
)


def _write(tmp_path, data, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _cf_record(case_id=0, **rewrite_overrides):
    rewrite = {
        "prompt": "The mother tongue of {} is",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English"},
        "target_true": {"str": "French"},
        **rewrite_overrides,
    }
    return {
        "case_id": case_id,
        "requested_rewrite": rewrite,
        "paraphrase_prompts": ["Danielle Darrieux, a native"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
    }


def test_multi_counterfact_real_file(shared_data):
    records = load_counterfact(shared_data / "counterfact" / "multi_counterfact-30.json")
    assert len(records) == 30
    first = records[0]
    assert first["case_id"] == 0
    assert first["requested_rewrite"]["subject"] == "Danielle Darrieux"
    assert first["requested_rewrite"]["target_new"]["str"] == "English"
    assert first["requested_rewrite"]["target_true"]["str"] == "French"
    assert first["pararel_idx"] == 2796  # extra fields are kept
    assert all(len(r["paraphrase_prompts"]) == 2 for r in records)
    assert all(len(r["neighborhood_prompts"]) == 10 for r in records)
    assert all(len(r["generation_prompts"]) == 10 for r in records)
    assert len({r["case_id"] for r in records}) == 30


def test_zsre_real_file_transform(shared_data, tiny_tok):
    raw = json.loads((shared_data / "zsre" / "zsre_mend_eval-6.json").read_text())
    records = load_zsre(shared_data / "zsre" / "zsre_mend_eval-6.json", tiny_tok)
    assert len(records) == 6
    first = records[0]
    rewrite = first["requested_rewrite"]
    assert rewrite["prompt"] == "What university did {} attend?"
    assert rewrite["subject"] == "Watts Humphrey"
    assert rewrite["target_new"]["str"] == "Illinois Institute of Technology"  # answers[0], the true answer
    assert rewrite["target_true"]["str"] == "<|endoftext|>"
    assert first["paraphrase_prompts"] == ["What university did Watts Humphrey take part in?"]
    for record, source in zip(records, raw):
        answer_ids = tiny_tok(" " + source["loc_ans"])["input_ids"]
        neighborhood = record["neighborhood_prompts"]
        assert len(neighborhood) == len(answer_ids)
        assert neighborhood[0]["prompt"] == source["loc"] + "?"
        assert "".join(n["target"] for n in neighborhood) == " " + source["loc_ans"]
        for i, item in enumerate(neighborhood):  # prompt i carries the first i answer tokens
            assert item["prompt"] == source["loc"] + "?" + tiny_tok.decode(answer_ids[:i])


def test_conflict_real_file(shared_data):
    records = load_conflict(shared_data / "conflict" / "easy_conflict_1000_p1.json")
    assert len(records) == 1000
    first = records[0]
    assert first["requested_rewrite"]["prompt"] == "{} has use(s), such as"
    assert first["requested_rewrite"]["subject"] == "fpart"
    assert first["requested_rewrite"]["target_new"]["str"] == "fraking"
    assert first["requested_rewrite"]["target_true"]["str"] == "data migration"
    assert first["conflict_object"]["str"] == "franking"
    assert first["true_objects"] == ["data synchronization", "data migration", "computer file management"]
    assert first["type"] == "1-3@P366"
    assert [r["case_id"] for r in records] == list(range(1000))


def test_conflict_with_round_prompts(shared_data):
    rounds = load_round_prompts(shared_data / "conflict" / "round_prompts.json")
    assert len(rounds) == 10 and all(len(v) == 10 for v in rounds.values())
    conflict = shared_data / "conflict"
    records = load_conflict(conflict / "easy_conflict_1000_p1.json", conflict / "round_prompts.json")
    first = records[0]
    assert len(first["paraphrase_prompts"]) == 10
    assert first["paraphrase_prompts"][0] == rounds["P366"][0].format("fpart")


def test_load_dataset_detects_every_format(shared_data, tiny_tok):
    assert load_dataset(shared_data / "counterfact" / "multi_counterfact-30.json")[0] == "counterfact"
    assert load_dataset(shared_data / "zsre" / "zsre_mend_eval-6.json", tiny_tok)[0] == "zsre"
    kind, records = load_dataset(shared_data / "conflict" / "easy_conflict_1000_p1.json")
    assert kind == "conflict" and len(records) == 1000
    with pytest.raises(DatasetFormatError, match="expected a JSON list of records, got a JSON dict"):
        load_dataset(shared_data / "conflict" / "round_prompts.json")
    with pytest.raises(DatasetFormatError, match="zsRE records need a tokenizer"):
        load_dataset(shared_data / "zsre" / "zsre_mend_eval-6.json")


def test_unknown_format_names_the_keys(tmp_path):
    path = _write(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(DatasetFormatError, match=r"unknown dataset format: record 0 has keys \['answer', 'question'\]"):
        load_dataset(path)


def test_missing_nested_field_names_record_and_field(tmp_path):
    bad = _cf_record(case_id=7)
    del bad["requested_rewrite"]["target_new"]["str"]
    path = _write(tmp_path, [_cf_record(case_id=3), bad])
    message = r"record 1 \(case_id 7\): missing field 'requested_rewrite.target_new.str'"
    with pytest.raises(DatasetFormatError, match=message):
        load_counterfact(path)


@pytest.mark.parametrize(
    "records, message",
    [
        ([_cf_record(prompt="The mother tongue is")], r"record 0 \(case_id 0\): prompt .* exactly one '\{\}'"),
        ([_cf_record(prompt="{} and {} is")], "exactly one"),
        ([_cf_record(0), _cf_record(0)], r"record 1 \(case_id 0\): duplicate case_id 0 \(also record 0\)"),
        ([{**_cf_record(), "case_id": "0"}], "field 'case_id' must be int, got str"),
        ([{k: v for k, v in _cf_record().items() if k != "paraphrase_prompts"}], "missing field 'paraphrase_prompts'"),
        ([{**_cf_record(), "neighborhood_prompts": [3]}], "'neighborhood_prompts' must be a list"),
        ([_cf_record(subject="")], r"record 0 \(case_id 0\): field 'requested_rewrite.subject' is empty"),
        ([{**_cf_record(), "paraphrase_prompts": ["ok", " "]}], r"paraphrase_prompts\[1\] is an empty prompt"),
        ([{**_cf_record(), "neighborhood_prompts": [""]}], r"neighborhood_prompts\[0\] is an empty prompt"),
        ([{**_cf_record(), "generation_prompts": [""]}], r"generation_prompts\[0\] is an empty prompt"),
        ([], "the list of records is empty"),
    ],
)
def test_malformed_counterfact_rejected(tmp_path, records, message):
    with pytest.raises(DatasetFormatError, match=message):
        load_counterfact(_write(tmp_path, records))


def _zsre(**overrides):
    record = {
        "subject": "Watts Humphrey",
        "src": "What university did Watts Humphrey attend?",
        "rephrase": "What university did Watts Humphrey take part in?",
        "answers": ["Illinois Institute of Technology"],
        "loc": "nq question: who played desmond doss father in hacksaw ridge",
        "loc_ans": "Hugo Weaving",
    }
    return {**record, **overrides}


@pytest.mark.parametrize(
    "record, message",
    [
        (_zsre(subject="Nobody"), r"zsRE record 1: subject 'Nobody' does not occur in src"),
        (_zsre(loc="who played desmond doss"), r"zsRE record 1: loc .* must start with 'nq question: '"),
        (_zsre(answers=[]), "zsRE record 1: field 'answers' must be a non-empty list"),
        (_zsre(answers=["A", 5]), "zsRE record 1: field 'answers' must be a non-empty list of strings"),
        ({k: v for k, v in _zsre().items() if k != "rephrase"}, "zsRE record 1: missing field 'rephrase'"),
        (_zsre(subject=""), "zsRE record 1: field 'subject' is empty"),
        (_zsre(rephrase=" "), "zsRE record 1: field 'rephrase' is empty"),
        (_zsre(loc_ans=""), "zsRE record 1: field 'loc_ans' is empty"),
        (_zsre(src="What university did Watts Humphrey attend? Watts Humphrey"),
         r"zsRE record 1: subject 'Watts Humphrey' occurs 2 times in src .*; it must occur once"),
    ],
)
def test_malformed_zsre_rejected(tmp_path, tiny_tok, record, message):
    path = _write(tmp_path, [_zsre(), record])
    with pytest.raises(DatasetFormatError, match=message) as err:
        load_zsre(path, tiny_tok)
    assert str(path) in str(err.value)  # the file is named too


def test_malformed_conflict_and_json_rejected(tmp_path, shared_data):
    record = json.loads((shared_data / "conflict" / "easy_conflict_1000_p1.json").read_text())[0]
    del record["edit"]["conflict_object"]
    with pytest.raises(DatasetFormatError, match="conflict record 0: missing field 'edit.conflict_object.label'"):
        load_conflict(_write(tmp_path, [record]))
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        load_dataset(broken)
    with pytest.raises(DatasetFormatError, match="no such file"):
        load_dataset(tmp_path / "absent.json")


def _error(path, **kwargs) -> str:
    with pytest.raises(DatasetFormatError) as err:
        check_dataset(path, **kwargs)
    return str(err.value)


@pytest.mark.parametrize("record, problem", [
    (_zsre(subject=""), "field 'subject' is empty"),
    (_zsre(src="Who is Watts Humphrey, Watts Humphrey?"),
     "subject 'Watts Humphrey' occurs 2 times in src 'Who is Watts Humphrey, Watts Humphrey?'; it must occur once"),
    (_zsre(rephrase=""), "field 'rephrase' is empty"),
])
def test_check_dataset_rejects_bad_zsre_without_a_tokenizer(tmp_path, record, problem):
    path = _write(tmp_path, [record])
    assert _error(path) == f"{path}: zsRE record 0: {problem}"


@pytest.mark.parametrize("field, value", [
    ("new_object", ""), ("subject", {"label": " "}), ("object", {"label": ""}), ("conflict_object", {"label": ""}),
])
def test_blank_conflict_fields_fail_the_up_front_check(tmp_path, shared_data, field, value):
    records = json.loads((shared_data / "conflict" / "easy_conflict_1000_p1.json").read_text())[:3]
    records[1]["edit"][field] = value
    path = _write(tmp_path, records)
    label = "edit.new_object" if field == "new_object" else f"edit.{field}.label"
    assert _error(path) == f"{path}: conflict record 1: field '{label}' is empty"


def test_fluency_needs_generation_prompts_before_any_model(tmp_path):
    path = _write(tmp_path, [{**_cf_record(0), "generation_prompts": ["Danielle Darrieux"]}, _cf_record(4)])
    assert check_dataset(path) == "counterfact"  # without fluency they are optional
    assert _error(path, fluency=True) == (f"{path}: record 1 (case_id 4): no 'generation_prompts', which "
                                          "fluency samples from (skip fluency with --no-fluency)")


def test_round_prompts_are_checked_with_the_conflict_file(tmp_path, shared_data):
    conflict = shared_data / "conflict" / "easy_conflict_1000_p1.json"
    rounds = shared_data / "conflict" / "round_prompts.json"
    assert check_dataset(conflict, round_prompts=rounds) == "conflict"
    counterfact = _write(tmp_path, [_cf_record()])
    assert _error(counterfact, round_prompts=rounds) == (
        f"{counterfact}: round prompts only apply to conflict datasets, and this one is counterfact")
    partial = json.loads(rounds.read_text())
    del partial["P136"]  # record 1's relation
    partial_path = _write(tmp_path, partial, "rounds.json")
    assert _error(conflict, round_prompts=partial_path) == (
        f"{conflict}: conflict record 1: relation 'P136' has no entry in the round prompts")
    records = load_dataset(conflict, round_prompts=rounds)[1]
    assert records[0]["paraphrase_prompts"][0] == json.loads(rounds.read_text())["P366"][0].format("fpart")


def test_non_utf8_files_are_named(tmp_path):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('[{"src": "café"}]'.encode("latin-1"))
    assert _error(latin1) == f"{latin1}: not UTF-8 text (byte 13: invalid continuation byte)"
    with pytest.raises(DatasetFormatError, match="not UTF-8 text") as err:
        load_round_prompts(latin1)
    assert str(err.value).startswith(f"{latin1}: ")
