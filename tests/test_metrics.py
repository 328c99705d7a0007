"""cings.metrics against hand-worked SQuAD v1.1 / FlashRAG / Self-RAG cases and the official functions re-typed."""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cings.metrics import (
    accuracy,
    conflict_outcome,
    exact_match,
    f1,
    fever_label,
    match,
    metrics_table_markdown,
    normalize_answer,
    paired_difference,
    rouge_l,
    score_predictions,
)

# --- reference: the official SQuAD v1.1 evaluate script's functions, re-typed verbatim -----------------


def ref_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def ref_f1_score(prediction, ground_truth):
    prediction_tokens = ref_normalize_answer(prediction).split()
    ground_truth_tokens = ref_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def ref_exact_match_score(prediction, ground_truth):
    return ref_normalize_answer(prediction) == ref_normalize_answer(ground_truth)


def ref_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


# --- hand-worked EM / F1 (SQuAD v1.1) ----------------------------------------------------------------------

EM_F1_CASES = [
    # prediction, golds, EM, F1
    ("the Denver Broncos", ["Denver Broncos"], 1, 1.0),
    ("Broncos", ["Denver Broncos"], 0, 2 / 3),  # P=1, R=1/2
    ("Denver Broncos won", ["Denver Broncos"], 0, 0.8),  # P=2/3, R=1
    ("denver broncos", ["Denver Broncos!"], 1, 1.0),
    ("Carolina Panthers", ["Denver Broncos"], 0, 0.0),
    ("", ["Denver Broncos"], 0, 0.0),
    ("", [""], 1, 0.0),  # both empty: EM 1, official F1 0 (num_same == 0)
    ("the", ["a"], 1, 0.0),  # both normalise to ""
    ("A", [""], 1, 0.0),
    ("...", [""], 1, 0.0),
    ("the the the", [""], 1, 0.0),
    ("Denver Denver", ["Denver"], 0, 2 / 3),  # Counter overlap 1: P=1/2, R=1
    ("Denver", ["Denver Denver"], 0, 2 / 3),  # P=1, R=1/2
    ("a b c d", ["c d e f"], 0, 4 / 7),  # "b c d" vs "c d e f": P=2/3, R=1/2
    ("The Cat sat.", ["the cat sat"], 1, 1.0),
    ("1,000", ["1000"], 1, 1.0),
    ("twenty-five", ["twentyfive"], 1, 1.0),
    ("twenty-five", ["twenty five"], 0, 0.0),  # "twentyfive" vs "twenty", "five"
    ("Theater", ["theater"], 1, 1.0),  # "the" inside a word is kept
    ("The Theater", ["theater"], 1, 1.0),
    ("Beyoncé", ["beyoncé"], 1, 1.0),
    ("Beyonce", ["Beyoncé"], 0, 0.0),  # accents are kept
    ("Ångström", ["ångström"], 1, 1.0),  # unicode lower-casing
    ("Über-cool", ["übercool"], 1, 1.0),
    ("« Paris »", ["paris"], 0, 0.5),  # « » are not ASCII punctuation: 3 tokens, P=1/3, R=1
    ("“Paris”", ["Paris"], 0, 0.0),  # curly quotes kept: one token "“paris”"
    ("New York City", ["New York"], 0, 0.8),
    ("York New", ["New York"], 0, 1.0),  # bag of tokens
    ("Denver Broncos", ["Carolina Panthers", "Broncos"], 0, 2 / 3),  # max over golds
    ("Broncos", ["Denver Broncos", "broncos"], 1, 1.0),
    ("Super Bowl 50", ["Super Bowl L"], 0, 2 / 3),  # P=R=2/3
    ("an apple a day", ["apple day"], 1, 1.0),
    ("the answer is Denver", ["Denver Broncos"], 0, 0.4),  # P=1/3, R=1/2
    ("Martin Luther King, Jr.", ["Martin Luther King Jr"], 1, 1.0),
    ("U.S.", ["US"], 1, 1.0),
    ("it's", ["its"], 1, 1.0),
    ("tHe  GREAT\tGatsby", ["great gatsby"], 1, 1.0),
    ("Denver Broncos Denver Broncos", ["Denver Broncos"], 0, 2 / 3),  # P=2/4, R=1
    ("x y", ["y z w"], 0, 0.4),  # P=1/2, R=1/3
    ("Denver", [], 0, 0.0),  # no golds
]


@pytest.mark.parametrize("prediction, golds, em, f1_expected", EM_F1_CASES)
def test_em_f1_hand_worked(prediction, golds, em, f1_expected):
    assert exact_match(prediction, golds) == em
    assert f1(prediction, golds) == pytest.approx(f1_expected)
    if golds:  # the official script agrees on every hand-worked case
        assert em == ref_metric_max_over_ground_truths(ref_exact_match_score, prediction, golds)
        assert f1_expected == pytest.approx(ref_metric_max_over_ground_truths(ref_f1_score, prediction, golds))


def test_hand_worked_case_count():
    assert len(EM_F1_CASES) >= 30


def test_gold_may_be_a_plain_string():
    assert exact_match("The Broncos", "broncos") == 1.0
    assert f1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert isinstance(f1("x", ["y"]), float) and isinstance(exact_match("x", ["y"]), float)


@pytest.mark.parametrize("raw, expected", [
    ("The Theater", "theater"),
    ("theory of an apple", "theory of apple"),
    ("A", ""),
    ("!!!", ""),
    ("an.", ""),  # punctuation goes first, then the article
    ("the's", "thes"),  # official order: "the's" -> "thes", which is no article
    ("the-end", "theend"),
    ("a-b", "ab"),
    ("A.B.", "ab"),
    ("1,000", "1000"),
    ("twenty-five", "twentyfive"),
    ("Café au lait", "café au lait"),
    ("é a", "é"),
    ("ça", "ça"),  # no \b between ç and a
    ("  a  b  ", "b"),
    ("The\nEnd", "end"),
    ("“Paris”", "“paris”"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected
    assert ref_normalize_answer(raw) == expected


# --- agreement with the official script on random strings ---------------------------------------------

_PIECES = ["the", "The", "a", "A", "an", "AN", "theater", "ant", "Denver", "broncos", "1,000", "twenty-five",
           "é", "Ça", "ß", "İ", "x", "'", "-", ".", ",", "!", "“", "«", "_", "(", ")", " ", "  ", "\t", "\n", "\u00a0"]
_texts = st.one_of(st.text(max_size=30), st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))


@settings(max_examples=400, deadline=None)
@given(prediction=_texts, golds=st.lists(_texts, min_size=1, max_size=3))
def test_agrees_with_official_squad_v11(prediction, golds):
    assert normalize_answer(prediction) == ref_normalize_answer(prediction)
    assert exact_match(prediction, golds) == float(
        ref_metric_max_over_ground_truths(ref_exact_match_score, prediction, golds))
    assert f1(prediction, golds) == ref_metric_max_over_ground_truths(ref_f1_score, prediction, golds)


@settings(max_examples=200, deadline=None)
@given(prediction=_texts, gold=_texts)
def test_acc_agrees_with_flashrag_for_non_empty_golds(prediction, gold):
    flashrag = float(ref_normalize_answer(gold) in ref_normalize_answer(prediction))
    if ref_normalize_answer(gold):
        assert accuracy(prediction, [gold]) == flashrag
    else:
        assert accuracy(prediction, [gold]) == 0.0  # our documented deviation


# --- acc (FlashRAG) and match (Self-RAG) --------------------------------------------------------------


@pytest.mark.parametrize("prediction, golds, expected", [
    ("The Broncos won", ["Broncos"], 1.0),
    ("the Denver  Broncos!", ["denver broncos"], 1.0),
    ("concatenate", ["cat"], 1.0),  # plain substring, no word boundaries
    ("Denver", ["Denver Broncos"], 0.0),
    ("Answer: 1,000 people", ["1000"], 1.0),
    ("Paris", ["London", "paris"], 1.0),
    ("anything", ["the"], 0.0),  # gold normalises to "": never contained
    ("", [""], 0.0),
    ("X", [], 0.0),
    ("broncos", "Broncos", 1.0),
])
def test_accuracy(prediction, golds, expected):
    assert accuracy(prediction, golds) == expected


@pytest.mark.parametrize("prediction, golds, expected", [
    ("The Broncos won", ["Broncos"], 1.0),
    ("the broncos won", ["Broncos"], 0.0),  # case-sensitive
    ("Denver Broncos.", ["Denver Broncos"], 1.0),
    ("Denver-Broncos", ["Denver Broncos"], 0.0),  # raw strings, no normalisation
    ("1,000", ["1000"], 0.0),
    ("anything", [""], 0.0),  # blank golds never match
    ("any thing", [" "], 0.0),
    ("Paris", ["London", "Par"], 1.0),
])
def test_match_is_raw_case_sensitive_substring(prediction, golds, expected):
    assert match(prediction, golds) == expected


# --- ROUGE-L ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, golds, expected", [
    ("the cat sat on the mat", ["the cat is on the mat"], 0.75),  # LCS "cat on mat" = 3 of 4 and 4
    ("police killed the gunman", ["police kill the gunman"], 2 / 3),  # LCS 2 of 3 and 3
    ("a b c d e", ["b d f"], 4 / 7),  # "b c d e" vs "b d f": LCS 2, P=1/2, R=2/3
    ("x y z", ["z y x"], 1 / 3),  # order matters, unlike F1
    ("same words here", ["Same words, here."], 1.0),
    ("x y", ["p q"], 0.0),
    ("", ["x"], 0.0),
    ("x", [""], 0.0),
    ("x y z", ["p q", "x q z"], 2 / 3),  # max over golds
])
def test_rouge_l(prediction, golds, expected):
    assert rouge_l(prediction, golds) == pytest.approx(expected)


def _ref_lcs(a, b):
    @lru_cache(maxsize=None)
    def go(i, j):
        if i == len(a) or j == len(b):
            return 0
        return go(i + 1, j + 1) + 1 if a[i] == b[j] else max(go(i + 1, j), go(i, j + 1))
    return go(0, 0)


_words = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=8).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(prediction=_words, gold=_words)
def test_rouge_l_against_recursive_lcs(prediction, gold):
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    lcs = _ref_lcs(tuple(p), tuple(g))
    expected = 0.0 if lcs == 0 else 2 * lcs / (len(p) + len(g))  # F with P=lcs/|p|, R=lcs/|g|
    assert rouge_l(prediction, [gold]) == pytest.approx(expected)
    assert rouge_l(prediction, [gold]) == pytest.approx(rouge_l(gold, [prediction]))
    assert rouge_l(prediction, [gold]) <= f1(prediction, [gold]) + 1e-12  # LCS never beats bag overlap


# --- FEVER and knowledge conflict ----------------------------------------------------------------------


@pytest.mark.parametrize("text, label", [
    ("SUPPORTS", "SUPPORTS"), ("true", "SUPPORTS"), ("Yes", "SUPPORTS"), ("supported", "SUPPORTS"),
    ("True. The claim is supported.", "SUPPORTS"),
    ("REFUTES", "REFUTES"), ("false", "REFUTES"), ("No.", "REFUTES"), ("The claim is not true.", "REFUTES"),
    ("NOT ENOUGH INFO", "NOT ENOUGH INFO"), ("not enough info", "NOT ENOUGH INFO"),
    ("NOT_ENOUGH_INFO", "NOT ENOUGH INFO"), ("nei", "NOT ENOUGH INFO"),
    ("Nothing", None), ("banana", None), ("", None),
])
def test_fever_label(text, label):
    assert fever_label(text) == label


def test_fever_scoring_maps_both_vocabularies():
    rows = [{"prediction": "true", "answers": ["SUPPORTS"]},
            {"prediction": "False.", "answers": ["REFUTES"]},
            {"prediction": "yes", "answers": ["false"]},
            {"prediction": "maybe", "answers": ["NOT ENOUGH INFO"]}]
    out = score_predictions(rows, fever=True, bootstrap=0)
    assert (out["acc"], out["em"], out["f1"], out["match"]) == (50.0, 50.0, 50.0, 50.0)
    assert "fever" in out["definitions"]
    assert score_predictions(rows, bootstrap=0)["em"] == 0.0  # without the mapping nothing matches


@pytest.mark.parametrize("prediction, outcome", [
    ("Paris", "context"), ("The answer is paris.", "context"), ("London", "memory"),
    ("Paris or London", "both"), ("Rome", "neither"), ("", "neither"),
])
def test_conflict_outcome(prediction, outcome):
    assert conflict_outcome(prediction, ["Paris"], ["London"]) == outcome


# --- aggregation ---------------------------------------------------------------------------------------


def _rows(flags, source=None):
    return [{"prediction": "Denver" if ok else "Carolina", "answers": ["Denver"],
             **({"meta": {"source": source}} if source else {})} for ok in flags]


def test_three_of_four_is_75_percent():
    out = score_predictions(_rows([1, 1, 1, 0]), bootstrap=0)
    assert out["n"] == 4 and out["n_without_answers"] == 0
    assert out["acc"] == out["em"] == out["f1"] == out["match"] == 75.0
    assert not any(k.endswith("_ci") for k in out) and "by_source" not in out
    assert score_predictions(_rows([1, 0, 0]), bootstrap=0)["acc"] == pytest.approx(100 / 3, abs=1e-4)


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    rows = _rows([1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 5)
    a = score_predictions(rows, bootstrap=300, seed=7)
    lo, hi = a["acc_ci"]
    assert lo <= a["acc"] <= hi and 0 <= lo < hi <= 100
    assert a == score_predictions(rows, bootstrap=300, seed=7)
    assert a["acc_ci"] != score_predictions(rows, bootstrap=300, seed=8)["acc_ci"]
    assert "B=300, seed=7" in a["definitions"]["ci"]
    assert score_predictions(_rows([1, 1, 1]), bootstrap=50)["acc_ci"] == [100.0, 100.0]


def test_rows_without_answers_are_excluded_and_counted():
    rows = _rows([1, 0]) + [{"prediction": "x", "answers": []}, {"prediction": "y"}]
    out = score_predictions(rows, bootstrap=0)
    assert (out["n"], out["n_without_answers"], out["acc"]) == (2, 2, 50.0)
    empty = score_predictions([{"prediction": "x", "answers": []}], bootstrap=10)
    assert empty["n"] == 0 and empty["acc"] is None and "acc_ci" not in empty


def test_conflict_rates():
    rows = [{"prediction": p, "answers": ["Paris"], "parametric_answers": ["London"]}
            for p in ["Paris", "paris!", "London", "Rome"]] + _rows([1])
    out = score_predictions(rows, bootstrap=100)
    assert out["n"] == 5 and out["n_conflict"] == 4
    assert (out["context_rate"], out["memory_rate"], out["both_rate"], out["neither_rate"]) == (50.0, 25.0, 0.0, 25.0)
    assert out["context_rate_ci"][0] <= 50.0 <= out["context_rate_ci"][1]
    assert "conflict" in out["definitions"]
    assert "context_rate" not in score_predictions(_rows([1]), bootstrap=0)


def test_per_source_breakdown():
    rows = _rows([1, 1], "nq") + [{**r, "meta": {"data_source": "tqa"}} for r in _rows([1, 0, 0, 0])]
    out = score_predictions(rows, bootstrap=20)
    assert out["acc"] == pytest.approx(50.0)
    assert set(out["by_source"]) == {"nq", "tqa"}
    assert out["by_source"]["nq"]["acc"] == 100.0 and out["by_source"]["tqa"]["acc"] == 25.0
    assert out["by_source"]["tqa"]["n"] == 4 and "acc_ci" in out["by_source"]["tqa"]
    assert "by_source" not in score_predictions(_rows([1, 0], "nq"), bootstrap=0)
    assert "by_source" not in score_predictions(rows, bootstrap=0, by=None)
    mixed = score_predictions(_rows([1], "nq") + _rows([0]), bootstrap=0)
    assert set(mixed["by_source"]) == {"nq", "unknown"}


def test_definitions_metric_selection_and_rouge():
    out = score_predictions(_rows([1]), rouge=True, bootstrap=0)
    assert out["rouge_l"] == 100.0
    assert set(out["definitions"]) == {"normalizer", "acc", "em", "f1", "match", "rouge_l"}
    assert "SQuAD v1.1" in out["definitions"]["normalizer"] and "FlashRAG" in out["definitions"]["acc"]
    only = score_predictions(_rows([1]), metrics=("em",), bootstrap=0)
    assert "em" in only and "acc" not in only
    with pytest.raises(ValueError, match="unknown metric"):
        score_predictions(_rows([1]), metrics=("bleu",))


def test_markdown_table():
    run = {"n": 10, "acc": 51.234, "acc_ci": [48.14, 54.26], "em": 40.0}
    table = metrics_table_markdown(run)
    assert "| acc | 51.2 [48.1, 54.3] |" in table and "| em | 40.0 |" in table and "| n | 10 |" in table
    side = metrics_table_markdown({"base": run, "cings": score_predictions(_rows([1, 1, 1, 0]), bootstrap=0)})
    lines = side.splitlines()
    assert lines[0] == "| metric | base | cings |" and lines[1] == "|---|---:|---:|"
    assert "| acc | 51.2 [48.1, 54.3] | 75.0 |" in lines and "| f1 | – | 75.0 |" in lines


def test_figures_keep_full_precision_and_only_tables_round():
    out = score_predictions(_rows([1, 0, 0, 1, 0, 1, 0]), bootstrap=200)
    assert out["acc"] == 100 * 3 / 7  # 42.857142857142854, not 42.8571
    assert any(round(x, 4) != x for x in out["acc_ci"])
    assert "| acc | 42.9 [" in metrics_table_markdown(out)


def test_paired_difference_by_hand():
    # b - a per question: +1, 0, 0, -1, +1 -> mean 0.2, sd sqrt(((0.8^2)*2 + 0.2^2*2 + 1.2^2)/4) = sqrt(0.7)
    d = paired_difference([0, 1, 0, 1, 0], [1, 1, 0, 0, 1])
    assert d["n"] == 5 and d["diff"] == pytest.approx(20.0)
    half = 1.96 * (0.7 ** 0.5) / 5 ** 0.5
    assert d["lo"] == pytest.approx(100 * (0.2 - half)) and d["hi"] == pytest.approx(100 * (0.2 + half))
    same = paired_difference([1, 0, 1], [1, 0, 1])
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "n": 3}


def test_paired_difference_refuses_unpaired_scores():
    with pytest.raises(ValueError, match="same records"):
        paired_difference([1, 0], [1])
