"""Consistency: MEMIT's reference score (RS, spec 3.1).

Do an edited model's generations about a subject read like text about subjects that truly have the
new object? Per record, RS is the TF-IDF cosine similarity between its generated texts (joined) and
all attribute snippets for (relation_id, target_new.id) (joined): in CounterFact, Wikipedia snippets
about other subjects that have o*. MEMIT vectorises with scikit-learn's TfidfVectorizer, its idf and
vocabulary loaded from `idf.npy` and `tfidf_vocab.json` (fitted on Wikipedia); those files and
`attribute_snippets.json` sit together in MEMIT's `data/dsets/`, and `ConsistencyReference.load`
reads such a directory. The embedded world is its own reference: the snippets are its true facts,
the vectorizer is fitted on its corpus.

A record whose (relation, new object) has no snippets gets None, where MEMIT would divide 0 by 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from collabedit_secure.eval.datasets import DatasetFormatError, field_at, read_json

if TYPE_CHECKING:  # scikit-learn takes seconds to import: only runs that score consistency pay for it
    from sklearn.feature_extraction.text import TfidfVectorizer

SNIPPETS_FILE, IDF_FILE, VOCAB_FILE = "attribute_snippets.json", "idf.npy", "tfidf_vocab.json"
WORLD = "world"


@dataclass
class ConsistencyReference:
    """The snippets per (relation_id, target_id) and the vectorizer that compares texts with them."""

    snippets: dict[tuple[str, str], list[str]]
    vectorizer: TfidfVectorizer
    source: str

    @classmethod
    def load(cls, directory) -> ConsistencyReference:
        """MEMIT's three files from one directory, each checked before any model runs."""
        directory = Path(directory)
        if not directory.is_dir():
            raise DatasetFormatError(f"{directory}: not a directory (expected MEMIT's {SNIPPETS_FILE}, "
                                     f"{IDF_FILE} and {VOCAB_FILE})")
        return cls(load_attribute_snippets(directory / SNIPPETS_FILE), load_tfidf(directory),
                   str(directory.resolve()))

    @classmethod
    def from_world(cls, records: list[dict], corpus: list[str]) -> ConsistencyReference:
        """The embedded world's own: each fact stated once, the vectorizer fitted on the world corpus."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        return cls(world_snippets(records), TfidfVectorizer().fit(corpus), WORLD)

    def score(self, record: dict, generated_texts: list[str]) -> float | None:
        rewrite = record["requested_rewrite"]
        key = (str(rewrite["relation_id"]), str(rewrite["target_new"]["id"]))
        texts = self.snippets.get(key)
        return tfidf_similarity(" ".join(generated_texts), " ".join(texts), self.vectorizer) if texts else None


def consistency_reference(source) -> ConsistencyReference:
    """'world' (the embedded world's own reference; builds the world if it is not cached) or a
    directory holding MEMIT's attribute_snippets.json, idf.npy and tfidf_vocab.json."""
    if str(source) == WORLD:
        from collabedit_secure.world import load_default

        bundle = load_default(progress=True)
        return ConsistencyReference.from_world(bundle.records, bundle.corpus_texts())
    return ConsistencyReference.load(source)


def tfidf_similarity(text_a: str, text_b: str, vectorizer: TfidfVectorizer) -> float | None:
    """Cosine similarity of the two texts' TF-IDF vectors; None if either has no word in the vocabulary."""
    a, b = vectorizer.transform([text_a, text_b]).toarray()
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return None
    return float(a @ b / (norm_a * norm_b))


def load_attribute_snippets(path) -> dict[tuple[str, str], list[str]]:
    """MEMIT's `attribute_snippets.json`: [{relation_id, target_id, samples: [{name, text}]}]."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetFormatError(f"{path}: expected a JSON list of snippet groups, got a JSON {type(data).__name__}")
    snippets: dict[tuple[str, str], list[str]] = defaultdict(list)
    for index, group in enumerate(data):
        where = f"{path}: entry {index}"
        relation = field_at(group, "relation_id", where, (str, int))
        target = field_at(group, "target_id", where, (str, int))
        for number, sample in enumerate(field_at(group, "samples", where, list)):
            snippets[str(relation), str(target)].append(field_at(sample, "text", f"{where}, sample {number}"))
    if not snippets:
        raise DatasetFormatError(f"{path}: no snippets")
    return dict(snippets)


def load_tfidf(directory) -> TfidfVectorizer:
    """A TfidfVectorizer with MEMIT's idf (`idf.npy`) and vocabulary (`tfidf_vocab.json`, word -> column)."""
    directory = Path(directory)
    vocab = read_json(directory / VOCAB_FILE)
    if not isinstance(vocab, dict) or not vocab:
        raise DatasetFormatError(f"{directory / VOCAB_FILE}: expected a non-empty JSON object of word -> column")
    if any(type(column) is not int for column in vocab.values()) or sorted(vocab.values()) != list(range(len(vocab))):
        raise DatasetFormatError(f"{directory / VOCAB_FILE}: the columns must be the integers 0..{len(vocab) - 1}, "
                                 "each once")
    if not (directory / IDF_FILE).is_file():
        raise DatasetFormatError(f"{directory / IDF_FILE}: no such file")
    try:
        idf = np.load(directory / IDF_FILE, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetFormatError(f"{directory / IDF_FILE}: not a readable npy array ({err})") from None
    if idf.shape != (len(vocab),) or idf.dtype.kind != "f" or not (np.isfinite(idf) & (idf > 0)).all():
        raise DatasetFormatError(f"{directory / IDF_FILE}: expected {len(vocab)} positive finite floats (one per "
                                 f"vocabulary word), got {idf.dtype} of shape {idf.shape}")
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(vocabulary=vocab)
    vectorizer.idf_ = idf.astype(np.float64)
    return vectorizer


def world_snippets(records: list[dict]) -> dict[tuple[str, str], list[str]]:
    """One snippet per world fact, "<prompt with subject> <true object>.", under (relation, true object):
    the world has a record for every fact, so these are all the subjects that truly have each object."""
    snippets: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in records:
        rewrite = record["requested_rewrite"]
        text = f"{rewrite['prompt'].format(rewrite['subject'])} {rewrite['target_true']['str']}."
        snippets[str(rewrite["relation_id"]), str(rewrite["target_true"]["id"])].append(text)
    return dict(snippets)


def add_consistency(records: list[dict], per_case: list[dict], reference: ConsistencyReference) -> None:
    """Add `reference_score` to each case from the `generated_texts` fluency left there."""
    for record, case in zip(records, per_case):
        case["reference_score"] = reference.score(record, case["generated_texts"])

