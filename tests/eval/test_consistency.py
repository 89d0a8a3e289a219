"""Consistency (MEMIT's reference score): TF-IDF similarity on hand-made cases, MEMIT's file formats
and their errors, and the metric wired into CounterFact evaluation."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from collabedit_secure.eval.consistency import (
    ConsistencyReference, consistency_reference, load_attribute_snippets, load_tfidf, tfidf_similarity,
    world_snippets,
)
from collabedit_secure.eval.datasets import DatasetFormatError, load_counterfact
from collabedit_secure.eval.report import coverage_notes, evaluate_dataset, format_summary_table


def write_memit_files(directory, vocab: dict, idf, snippets: list) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tfidf_vocab.json").write_text(json.dumps(vocab))
    np.save(directory / "idf.npy", np.asarray(idf))
    (directory / "attribute_snippets.json").write_text(json.dumps(snippets))


def test_similarity_on_a_hand_computed_case(tmp_path):
    """vocab (cat, dog, pet), idf (1, 2, 1): "pet cat cat" -> (2, 0, 1), "cat dog" -> (1, 2, 0); cosine
    2 / (sqrt 5 · sqrt 5) = 0.4. Case, one-letter words and words outside the vocabulary do not count."""
    write_memit_files(tmp_path, {"cat": 0, "dog": 1, "pet": 2}, [1.0, 2.0, 1.0], [])
    vectorizer = load_tfidf(tmp_path)
    assert tfidf_similarity("Pet cat, a CAT!", "cat dog zebra", vectorizer) == pytest.approx(0.4, abs=1e-15)
    assert tfidf_similarity("cat", "cat cat", vectorizer) == pytest.approx(1.0)
    assert tfidf_similarity("pet", "dog", vectorizer) == 0.0
    assert tfidf_similarity("a zebra", "cat", vectorizer) is None  # no word to compare: not a number


def test_memit_files_load_to_the_vectorizer_they_were_fitted_as(tmp_path):
    texts = ["The pet of Ana Lind is a cat.", "Ana Lind speaks French.", "The capital of France is Paris."]
    fitted = TfidfVectorizer().fit(texts)
    write_memit_files(tmp_path, {w: int(i) for w, i in fitted.vocabulary_.items()}, fitted.idf_,
                      [{"relation_id": "P1", "target_id": "Q2", "samples": [{"name": "x", "text": texts[0]}]}])
    loaded = load_tfidf(tmp_path)
    probe = ["a cat speaks French in Paris", "the pet is a cat"]
    np.testing.assert_allclose(loaded.transform(probe).toarray(), fitted.transform(probe).toarray(), rtol=1e-15)


def test_snippets_group_by_relation_and_target_with_ids_as_text(tmp_path):
    path = tmp_path / "attribute_snippets.json"
    path.write_text(json.dumps([
        {"relation_id": "P27", "target_id": "Q30", "samples": [{"name": "A", "text": "A is American."}]},
        {"relation_id": "P27", "target_id": "Q30", "samples": [{"name": "B", "text": "B lives in Ohio."}]},
        {"relation_id": 17, "target_id": 142, "samples": [{"name": "C", "text": "C is French."}]},
    ]))
    assert load_attribute_snippets(path) == {("P27", "Q30"): ["A is American.", "B lives in Ohio."],
                                             ("17", "142"): ["C is French."]}


@pytest.mark.parametrize("vocab, idf, message", [
    (["cat"], [1.0], "expected a non-empty JSON object of word -> column"),
    ({"cat": 0, "dog": 2}, [1.0, 1.0], r"the columns must be the integers 0\.\.1, each once"),
    ({"cat": 0, "dog": 0}, [1.0, 1.0], "each once"),
    ({"cat": 0, "dog": "1"}, [1.0, 1.0], "each once"),
    ({"cat": 0, "dog": 1}, [1.0], r"expected 2 positive finite floats .* got float64 of shape \(1,\)"),
    ({"cat": 0, "dog": 1}, [1.0, float("nan")], "positive finite floats"),
    ({"cat": 0, "dog": 1}, [1.0, -2.0], "positive finite floats"),
    ({"cat": 0, "dog": 1}, [1, 2], "got int64"),
])
def test_bad_tfidf_files_are_named(tmp_path, vocab, idf, message):
    write_memit_files(tmp_path, vocab, idf, [])
    with pytest.raises(DatasetFormatError, match=message):
        load_tfidf(tmp_path)


def test_missing_or_unreadable_files_are_named(tmp_path):
    with pytest.raises(DatasetFormatError, match="not a directory"):
        ConsistencyReference.load(tmp_path / "absent")
    write_memit_files(tmp_path, {"cat": 0}, [1.0], [{"relation_id": "P1", "target_id": "Q1", "samples": []}])
    (tmp_path / "idf.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(DatasetFormatError, match=r"idf\.npy: not a readable npy array"):
        load_tfidf(tmp_path)
    (tmp_path / "idf.npy").unlink()
    with pytest.raises(DatasetFormatError, match=r"idf\.npy: no such file"):
        load_tfidf(tmp_path)
    with pytest.raises(DatasetFormatError, match="no snippets"):  # groups without samples
        load_attribute_snippets(tmp_path / "attribute_snippets.json")


@pytest.mark.parametrize("content, message", [
    ({"P1": []}, "expected a JSON list of snippet groups, got a JSON dict"),
    ([{"relation_id": "P1", "samples": []}], "entry 0: missing field 'target_id'"),
    ([{"relation_id": "P1", "target_id": "Q1", "samples": [{"name": "x"}]}], "entry 0, sample 0: missing field 'text'"),
    ([{"relation_id": ["P1"], "target_id": "Q1", "samples": []}], "'relation_id' must be str or int, got list"),
])
def test_bad_snippet_files_are_named(tmp_path, content, message):
    path = tmp_path / "attribute_snippets.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetFormatError, match=message):
        load_attribute_snippets(path)


def record(case_id: int, subject: str, relation: str, true: tuple[str, str], new: tuple[str, str]) -> dict:
    return {"case_id": case_id, "requested_rewrite": {
        "prompt": "The pet of {} is a", "subject": subject, "relation_id": relation,
        "target_true": {"str": true[0], "id": true[1]}, "target_new": {"str": new[0], "id": new[1]}}}


def test_world_snippets_are_every_subject_that_truly_has_the_object():
    records = [record(0, "Ana", "R1", ("cat", "O1"), ("dog", "O2")),
               record(1, "Ben", "R1", ("dog", "O2"), ("cat", "O1")),
               record(2, "Cy", "R1", ("dog", "O2"), ("cat", "O1"))]
    snippets = world_snippets(records)
    assert snippets == {("R1", "O1"): ["The pet of Ana is a cat."],
                        ("R1", "O2"): ["The pet of Ben is a dog.", "The pet of Cy is a dog."]}
    reference = ConsistencyReference(snippets, TfidfVectorizer().fit(["The pet of Ana is a cat.", "a dog"]), "test")
    # Ana's edit (to dog) is compared with Ben's and Cy's dog facts, never with Ana's own true fact.
    assert reference.score(records[0], ["Ana has a dog."]) > reference.score(records[0], ["Ana has a cat."])
    lonely = record(3, "Di", "R2", ("fish", "O5"), ("bird", "O6"))
    assert reference.score(lonely, ["Di has a bird."]) is None  # no snippets for (R2, O6)


@pytest.fixture(scope="module")
def counterfact(shared_data):
    return load_counterfact(shared_data / "counterfact" / "multi_counterfact-30.json")


def snippets_for(records: list[dict], skip: int = 0) -> list[dict]:
    """MEMIT-format snippets for each record's (relation, new object) but the first `skip` records'."""
    groups = {}
    for r in records[skip:]:
        rewrite = r["requested_rewrite"]
        groups[rewrite["relation_id"], rewrite["target_new"]["id"]] = [
            {"name": "someone", "text": f"{p} {rewrite['target_new']['str']}."} for p in r["attribute_prompts"]]
    taken = {(r["requested_rewrite"]["relation_id"], r["requested_rewrite"]["target_new"]["id"]) for r in records[:skip]}
    return [{"relation_id": rid, "target_id": tid, "samples": samples}
            for (rid, tid), samples in groups.items() if (rid, tid) not in taken]


def test_counterfact_eval_scores_consistency_of_its_generations(counterfact, tiny_model, tiny_tok, tmp_path):
    records = counterfact[:6]
    corpus = [p for r in counterfact for p in r["attribute_prompts"] + r["generation_prompts"]]
    fitted = TfidfVectorizer().fit(corpus)
    write_memit_files(tmp_path, {w: int(i) for w, i in fitted.vocabulary_.items()}, fitted.idf_,
                      snippets_for(records, skip=2))
    reference = consistency_reference(tmp_path)
    per_case, summary = evaluate_dataset(tiny_model, tiny_tok, records, max_out_len=20, consistency=reference)
    scored = [case["reference_score"] for case in per_case]
    uncovered = {(r["requested_rewrite"]["relation_id"], r["requested_rewrite"]["target_new"]["id"])
                 for r in records[:2]}
    for rec, case in zip(records, per_case):
        rewrite = rec["requested_rewrite"]
        if (rewrite["relation_id"], rewrite["target_new"]["id"]) in uncovered:
            assert case["reference_score"] is None
            continue
        snippets = reference.snippets[rewrite["relation_id"], rewrite["target_new"]["id"]]
        want = tfidf_similarity(" ".join(case["generated_texts"]), " ".join(snippets), fitted)
        assert case["reference_score"] == pytest.approx(want) and 0.0 <= want <= 1.0
    values = [s for s in scored if s is not None]
    assert summary["n"]["consistency"] == len(values) < len(records)
    assert summary["consistency"] == pytest.approx(100 * sum(values) / len(values))
    assert coverage_notes({"m": summary}) == [
        f"note: consistency is over {len(values)} of 6 cases (the others have no attribute snippets for "
        "their relation and new object)"]
    assert format_summary_table({"m": summary}).splitlines()[0].split()[-1] == "consistency"

    _, plain = evaluate_dataset(tiny_model, tiny_tok, records, max_out_len=20)
    assert "consistency" not in plain and "consistency" not in plain["n"]  # not asked for, not reported
    assert "consistency" not in " ".join(coverage_notes({"m": plain}))


def test_consistency_refuses_what_it_cannot_score(counterfact, tiny_model, tiny_tok):
    reference = ConsistencyReference({("P1", "Q1"): ["x"]}, TfidfVectorizer().fit(["some text here"]), "test")
    with pytest.raises(ValueError, match="consistency scores the fluency generations: it needs fluency on"):
        evaluate_dataset(tiny_model, tiny_tok, counterfact[:2], fluency=False, consistency=reference)
    unnamed = copy.deepcopy(counterfact[:2])
    del unnamed[1]["requested_rewrite"]["target_new"]["id"]
    with pytest.raises(DatasetFormatError, match=r"record 1 .*consistency needs it.*'requested_rewrite\.target_new\.id'"):
        evaluate_dataset(tiny_model, tiny_tok, unnamed, max_out_len=20, consistency=reference)
    with pytest.raises(ValueError, match="consistency is a CounterFact metric"):
        evaluate_dataset(tiny_model, tiny_tok, counterfact[:2], kind="conflict", consistency=reference)
