"""Metric logic on hand-made values: no model involved."""

from __future__ import annotations

import math

import pytest

from collabedit_secure.eval.counterfact import (
    harmonic_mean,
    prompt_set_metrics,
    record_metrics,
    summarize_counterfact,
)
from collabedit_secure.eval.fluency import ngram_entropy, ngram_entropy_bits, text_ngram_entropy, word_tokens
from collabedit_secure.eval.zsre import summarize_zsre


def test_harmonic_mean_known_values():
    assert harmonic_mean([1.0, 2.0, 4.0]) == pytest.approx(3 / (1 + 1 / 2 + 1 / 4))  # = 12/7
    assert harmonic_mean([50.0, 50.0, 50.0]) == pytest.approx(50.0)
    assert harmonic_mean([100.0, 0.0, 80.0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        harmonic_mean([1.0, -1.0])
    with pytest.raises(ValueError, match="at least one"):
        harmonic_mean([])


def test_rewrite_success_and_diff_from_nll():
    # pairs are (NLL(o_new), NLL(o_true)); success where the new target is likelier (smaller NLL).
    pairs = [(1.0, 2.0), (3.0, 0.5)]
    metrics = prompt_set_metrics(pairs, neighborhood=False)
    assert metrics["success"] == 0.5
    expected_diff = ((math.exp(-1) - math.exp(-2)) + (math.exp(-3) - math.exp(-0.5))) / 2
    assert metrics["diff"] == pytest.approx(expected_diff)
    assert metrics["nll"] == [{"target_new": 1.0, "target_true": 2.0}, {"target_new": 3.0, "target_true": 0.5}]


def test_neighborhood_success_is_reversed():
    # neighbourhood prompts should keep the true object: success where NLL(o_true) < NLL(o_new).
    metrics = prompt_set_metrics([(1.0, 2.0), (3.0, 0.5), (4.0, 1.0)], neighborhood=True)
    assert metrics["success"] == pytest.approx(2 / 3)
    gaps = [math.exp(-2) - math.exp(-1), math.exp(-0.5) - math.exp(-3), math.exp(-1) - math.exp(-4)]
    expected_diff = sum(gaps) / 3
    assert metrics["diff"] == pytest.approx(expected_diff)


def test_equal_nll_is_not_a_success_either_way():
    assert prompt_set_metrics([(1.0, 1.0)], neighborhood=False)["success"] == 0.0
    assert prompt_set_metrics([(1.0, 1.0)], neighborhood=True)["success"] == 0.0


def test_summary_means_times_100_and_score():
    case_a = record_metrics([(1.0, 2.0)], [(1.0, 2.0), (2.0, 1.0)], [(2.0, 1.0)] * 4)
    case_b = record_metrics([(2.0, 1.0)], [(1.0, 2.0), (1.0, 2.0)], [(1.0, 2.0), (2.0, 1.0)])
    # ES: (1 + 0)/2 = 50; PS: (0.5 + 1)/2 = 75; NS: (1 + 0.5)/2 = 75
    summary = summarize_counterfact([case_a, case_b])
    assert summary["rewrite_success"] == pytest.approx(50.0)
    assert summary["paraphrase_success"] == pytest.approx(75.0)
    assert summary["neighborhood_success"] == pytest.approx(75.0)
    assert summary["score"] == pytest.approx(3 / (1 / 50 + 1 / 75 + 1 / 75))
    assert (summary["efficacy"], summary["generalization"], summary["specificity"]) == (50.0, 75.0, 75.0)
    assert summary["std"]["rewrite_success"] == pytest.approx(50.0)
    assert summary["n_cases"] == 2
    assert summary["ngram_entropy"] is None and summary["fluency"] is None


def test_summary_without_neighbourhood_has_no_score():
    summary = summarize_counterfact([record_metrics([(1.0, 2.0)], [], [])])
    assert summary["rewrite_success"] == 100.0
    assert summary["paraphrase_success"] is None and summary["score"] is None


def test_summary_counts_the_cases_behind_each_mean():
    full = record_metrics([(1.0, 2.0)], [(1.0, 2.0)], [(2.0, 1.0)])
    no_paraphrase = record_metrics([(2.0, 1.0)], [], [(1.0, 2.0)])
    summary = summarize_counterfact([full, no_paraphrase])
    assert summary["n"]["efficacy"] == summary["n"]["specificity"] == 2 and summary["n"]["generalization"] == 1
    assert summary["n"]["paraphrase_success"] == 1 and summary["n"]["fluency"] == 0
    # efficacy 50 and specificity 50 over both cases, generalization 100 over the one that has it
    assert summary["score"] == pytest.approx(3 / (1 / 50 + 1 / 100 + 1 / 50))


def test_zsre_summary():
    cases = [
        {"rewrite_acc": 1.0, "paraphrase_acc": 0.5, "neighborhood_acc": 0.25},
        {"rewrite_acc": 0.0, "paraphrase_acc": 0.5, "neighborhood_acc": 0.75},
    ]
    summary = summarize_zsre(cases)
    assert (summary["efficacy"], summary["generalization"], summary["specificity"]) == (50.0, 50.0, 50.0)
    with pytest.raises(ValueError, match="no cases"):
        summarize_zsre([])


def test_word_tokens_split_sentences_and_punctuation():
    assert word_tokens("Hello world. It isn't here!") == ["Hello", "world", ".", "It", "is", "n't", "here", "!"]


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams ab, ba, ab -> freqs 2/3, 1/3; trigrams aba, bab -> 1/2, 1/2
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))  # 0.9183 bits
    h3 = 1.0
    assert ngram_entropy_bits(["a", "b", "a", "b"], 2) == pytest.approx(h2)
    assert text_ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    # "a b c d": 3 distinct bigrams (log2 3), 2 distinct trigrams (1 bit)
    assert text_ngram_entropy("a b c d") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    # a repeated word has one bigram and one trigram type: zero entropy; one word has no n-grams
    assert text_ngram_entropy("the the the the") == 0.0
    assert text_ngram_entropy("hi") == 0.0
    assert ngram_entropy(["a b a b", "the the the the"]) == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 4)
    with pytest.raises(ValueError, match="at least one text"):
        ngram_entropy([])
