import pytest

from cings.jsonl import RecordError
from cings.retrieval.metrics import dpr_tokens, first_gold_rank, has_answer, retrieval_table_markdown, score_retrieval


def test_dpr_tokens_are_words_or_single_symbols_lowercased_after_nfd():
    # NFD splits ö into o + a combining mark, which stays inside the word as DPR's \p{M} keeps it.
    assert dpr_tokens("Röntgen won 1,000 SEK!") == ["ro\u0308ntgen", "won", "1", ",", "000", "sek", "!"]


@pytest.mark.parametrize("answers, text, expected", [
    (["Wilhelm Conrad Röntgen"], "awarded to WILHELM CONRAD RÖNTGEN, of Germany", True),   # case, accents
    (["Röntgen"], "Ro\u0308ntgen (decomposed already)", True),                              # NFC vs NFD input
    (["cat"], "concatenate", False),                                                       # whole tokens only
    (["24–10"], "won 24–10 over", True),
    (["24-10"], "won 24–10 over", False),                                                  # a different dash
    (["U.S."], "the U.S. army", True),
    (["Denver Broncos"], "Broncos of Denver", False),                                      # in order
    (["", "  "], "anything", False),                                                       # no tokens: never
    ("Paris", "Paris, France", True),                                                      # one answer as a string
])
def test_has_answer_follows_dpr_string_matching(answers, text, expected):
    assert has_answer(answers, text) is expected


def test_first_gold_rank():
    assert first_gold_rank([False, None, True, True]) == 3 and first_gold_rank([False]) is None


def rows():
    # Hand-worked: gold at rank 1, rank 3, nowhere, and a record that names no gold (answers only).
    return [
        {"id": "a", "answers": ["Paris"], "contexts": [{"text": "Paris is big", "gold": True}, {"text": "x", "gold": False},
                                                       {"text": "y", "gold": False}]},
        {"id": "b", "answers": ["Lyon"], "contexts": [{"text": "no", "gold": False}, {"text": "Lyon is on the Rhône",
                                                                                     "gold": False},
                                                      {"text": "gold one", "gold": True}]},
        {"id": "c", "answers": ["Nice"], "contexts": [{"text": "a", "gold": False}, {"text": "b", "gold": False}],
         "meta": {"retrieval": {"gold_passages": 1}}},
        {"id": "d", "answers": ["Nice"], "contexts": [{"text": "Nice, a city"}, {"text": "z"}, {"text": "w"}]},
    ]


def test_recall_mrr_and_has_answer_on_a_hand_worked_case():
    result = score_retrieval(rows(), bootstrap=0)
    assert result["depth"] == 3 and result["n_with_gold"] == 3 and result["n_with_answers"] == 4
    assert result["recall@1"] == pytest.approx(100 / 3)
    assert result["recall@3"] == pytest.approx(200 / 3)
    assert result["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    # has_answer: a at 1, b at 2, c never, d at 1
    assert result["has_answer@1"] == pytest.approx(50.0)
    assert result["has_answer@3"] == pytest.approx(75.0)
    assert "ci" not in result["definitions"] and "recall@1_ci" not in result


def test_intervals_bracket_the_values_and_the_table_reads_them():
    result = score_retrieval(rows(), bootstrap=200, seed=3)
    for key in ("recall@1", "recall@3", "has_answer@3"):
        lo, hi = result[f"{key}_ci"]
        assert 0 <= lo <= result[key] <= hi <= 100
    lo, hi = result["mrr_ci"]
    assert 0 <= lo <= result["mrr"] <= hi <= 1
    table = retrieval_table_markdown(result)
    assert table.splitlines()[0].startswith("| recall@1 (n=3) | 33.3 [")
    assert [line.split(" (")[0] for line in table.splitlines()] == [
        "| recall@1", "| recall@3", "| mrr", "| has_answer@1", "| has_answer@3"]


def test_rows_without_passages_to_score_give_none_and_bad_ones_are_named():
    # cings generate's docs carry title and gold only: not retrieval output.
    assert score_retrieval([{"id": "x", "answers": ["a"], "docs": [{"title": "t", "gold": True}]}]) is None
    assert score_retrieval([{"id": "x", "answers": ["a"]}]) is None
    with pytest.raises(RecordError, match=r"row 1 \(id 'x'\): field 'contexts\[0\].gold' must be a boolean, not a string"):
        score_retrieval([{"id": "x", "contexts": [{"text": "t", "gold": "yes"}]}])


def test_ks_cover_the_standard_cutoffs_below_the_depth():
    row = {"id": "x", "contexts": [{"text": "t", "gold": i == 11} for i in range(12)]}
    result = score_retrieval([row], bootstrap=0)
    assert [k for k in result if k.startswith("recall@")] == ["recall@1", "recall@5", "recall@10", "recall@12"]
    assert result["recall@10"] == 0 and result["recall@12"] == 100 and result["mrr"] == pytest.approx(1 / 12)
