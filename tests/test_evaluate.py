"""`cings evaluate` on prediction files: metrics, and clear errors for bad files."""

import json
import re

import pytest

from cings.evaluate import evaluate_file, read_predictions
from cings.records import RecordError


def write(tmp_path, rows, name="pred.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_metrics_file_holds_percentages_n_and_conflict_rates(tmp_path):
    rows = [{"id": "1", "prediction": "The Denver Broncos", "answers": ["Denver Broncos"], "parametric_answers": ["Carolina"]},
            {"id": "2", "prediction": "Carolina Panthers", "answers": ["Denver Broncos"], "parametric_answers": ["Carolina"]},
            {"id": "3", "prediction": "no idea", "answers": ["Paris"], "parametric_answers": ["Lyon"]},
            {"id": "4", "prediction": "Paris, not Lyon", "answers": ["Paris"], "parametric_answers": ["Lyon"]}]
    metrics, table = evaluate_file(write(tmp_path, rows), tmp_path / "m.json")
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["n"] == 4 and saved["acc"] == 50.0 and saved["em"] == 25.0
    assert saved["context_rate"] == 50.0 and saved["memory_rate"] == 50.0
    assert saved["both_rate"] == 25.0 and saved["neither_rate"] == 25.0
    lo, hi = saved["acc_ci"]
    assert lo <= 50.0 <= hi
    assert "acc" in table.read_text()


def test_bad_prediction_files_are_clear_errors(tmp_path):
    with pytest.raises(RecordError, match=r"pred.jsonl:2: field 'prediction' is missing"):
        read_predictions(write(tmp_path, [{"id": "1", "prediction": "x", "answers": []}, {"id": "2", "answers": []}]))
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match="no predictions"):
        read_predictions(empty)


def test_the_metrics_file_keeps_full_precision(tmp_path):
    rows = [{"id": str(i), "prediction": "Paris" if i < 3 else "Lyon", "answers": ["Paris"]} for i in range(7)]
    _, table = evaluate_file(write(tmp_path, rows), tmp_path / "m.json", bootstrap=100)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["acc"] == 100 * 3 / 7 and any(round(x, 4) != x for x in saved["acc_ci"])
    assert "42.9 [" in table.read_text()


def test_a_repeated_id_is_refused_naming_both_lines(tmp_path, capsys):
    from cings.cli import main

    rows = [{"id": "a", "prediction": "x", "answers": ["x"]}, {"id": "b", "prediction": "y", "answers": ["x"]},
            {"id": "a", "prediction": "x", "answers": ["x"]}]
    out = tmp_path / "m.json"
    out.write_text("old")
    assert main(["evaluate", "--predictions", str(write(tmp_path, rows)), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pred.jsonl:3: id 'a' repeats line 1" in err and "Traceback" not in err
    assert out.read_text() == "old"


@pytest.mark.parametrize("line, said", [
    ('{"id": "1", "prediction": "x", "answers": [42]}', "pred.jsonl:2: field 'answers' must be a list of strings; item 0 is a number"),
    ('{"id": "1", "prediction": "x", "answers": [null]}', "pred.jsonl:2: field 'answers' must be a list of strings; item 0 is null"),
    ('{"id": "1", "prediction": "x", "answers": "x"}', "pred.jsonl:2: field 'answers' must be a list of strings, not a string"),
    ('{"id": "1", "prediction": "x", "answers": ["x"], "parametric_answers": [1]}',
     "pred.jsonl:2: field 'parametric_answers' must be a list of strings; item 0 is a number"),
    ('{"id": 1, "prediction": "x", "answers": ["x"]}', "pred.jsonl:2: field 'id' must be a string, not a number"),
    ("null", "pred.jsonl:2: a prediction must be a JSON object, not null"),
    ("[1, 2]", "pred.jsonl:2: a prediction must be a JSON object, not a list"),
])
def test_a_malformed_row_names_file_line_and_field(tmp_path, capsys, line, said):
    from cings.cli import main

    path = tmp_path / "pred.jsonl"
    path.write_text('{"id": "0", "prediction": "x", "answers": ["x"]}\n' + line + "\n")
    assert main(["evaluate", "--predictions", str(path), "--output", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_a_truncated_gzip_or_non_utf8_file_is_named_by_line(tmp_path, capsys):
    import gzip

    from cings.cli import main

    body = "".join(json.dumps({"id": str(i), "prediction": "Paris " * 50, "answers": ["Paris"]}) + "\n" for i in range(200))
    whole = gzip.compress(body.encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "0", "prediction": "x", "answers": ["x"]}\n{"id": "1", "prediction": "caf\xe9", "answers": ["x"]}\n')
    for path, said in ((tmp_path / "cut.jsonl.gz", r"cut\.jsonl\.gz:\d+: .*truncated"), (latin, r"latin\.jsonl:2: not UTF-8")):
        assert main(["evaluate", "--predictions", str(path), "--output", str(tmp_path / "m.json")]) == 1
        err = capsys.readouterr().err
        assert re.search(said, err) and "Traceback" not in err, err


def _row(i, prediction, answers=("Paris",), docs="gold"):
    return {"id": i, "prediction": prediction, "answers": list(answers), "settings": {"docs": docs}}


def test_closed_book_pairs_count_neutral_regressions_and_context_gains(tmp_path, capsys):
    from cings.cli import main

    # a: right both ways; b: right closed-book, broken by the passage (regression); c: fixed by it (gain);
    # d: wrong both ways; e: no answers (counted apart); f: only with documents; g: only closed-book.
    with_docs = [_row("a", "Paris"), _row("b", "Lyon"), _row("c", "It is Paris."), _row("d", "Rome"),
                 _row("e", "x", answers=()), _row("f", "Paris")]
    closed = [_row(i, p, a, docs="none") for i, p, a in [("g", "Paris", ("Paris",)), ("d", "Nice", ("Paris",)),
                                                         ("c", "Lyon", ("Paris",)), ("b", "paris!", ("Paris",)),
                                                         ("a", "Paris", ("Paris",)), ("e", "y", ())]]
    out = tmp_path / "m.json"
    assert main(["evaluate", "--predictions", str(write(tmp_path, with_docs)), "--closed-book",
                 str(write(tmp_path, closed, "cb.jsonl")), "--output", str(out), "--bootstrap", "0"]) == 0
    saved = json.loads(out.read_text())
    assert saved["neutral_regressions"] == {"count": 1, "rate": 25.0, "ids": ["b"]}
    assert saved["context_gains"] == {"count": 1, "rate": 25.0, "ids": ["c"]}
    assert {k: v for k, v in saved["closed_book"].items() if k != "predictions"} == \
        {"n_paired": 4, "n_paired_without_answers": 1, "only_with_documents": 1, "only_closed_book": 1}
    assert saved["acc"] == 60.0 and "neutral_regressions" in saved["definitions"]["context_effects"]
    assert "| neutral regressions (of 4 paired) | 1 (25.0%) |" in (tmp_path / "m.md").read_text()
    assert "neutral regressions" in capsys.readouterr().out


def test_closed_book_files_that_do_not_pair_are_refused(tmp_path):
    here = write(tmp_path, [_row("a", "Paris"), _row("b", "Lyon")])
    with pytest.raises(RecordError, match=r"cb.jsonl:1: --closed-book rows were generated with --docs gold"):
        evaluate_file(here, tmp_path / "m.json", closed_book=write(tmp_path, [_row("a", "Paris")], "cb.jsonl"))
    with pytest.raises(RecordError, match=r"pred.jsonl:2: id 'b' has answers \['Lyon'\] here and \['Paris'\] in .*cb2"
                                          r".jsonl:1: the two files are not the same records"):
        evaluate_file(write(tmp_path, [_row("a", "Paris"), _row("b", "Lyon", answers=("Lyon",))]), tmp_path / "m.json",
                      closed_book=write(tmp_path, [_row("b", "Paris", docs="none")], "cb2.jsonl"))
    with pytest.raises(RecordError, match="no record with answers shares an id"):
        evaluate_file(here, tmp_path / "m.json", closed_book=write(tmp_path, [_row("z", "Paris", docs="none")], "cb3.jsonl"))
    assert not (tmp_path / "m.json").exists()


def test_rows_with_their_retrieved_passages_also_score_the_retrieval(tmp_path):
    # Hand-worked: the gold passage at rank 1 and at rank 2; the answer in passage 1 of row 1 and in none of row 2.
    rows = [{"id": "1", "prediction": "Paris", "answers": ["Paris"],
             "contexts": [{"id": "a", "text": "Paris is the capital.", "gold": True}, {"text": "Lyon.", "gold": False}]},
            {"id": "2", "prediction": "Rome", "answers": ["Nice"],
             "contexts": [{"text": "Lyon.", "gold": False}, {"text": "Rome.", "gold": True}]}]
    metrics, table = evaluate_file(write(tmp_path, rows), tmp_path / "m.json", bootstrap=0)
    retrieval = json.loads((tmp_path / "m.json").read_text())["retrieval"]
    assert (retrieval["recall@1"], retrieval["recall@2"], retrieval["mrr"]) == (50.0, 100.0, 0.75)
    assert (retrieval["has_answer@1"], retrieval["has_answer@2"]) == (50.0, 50.0)
    assert "| recall@1 (n=2) | 50.0 |" in table.read_text() and metrics["acc"] == 50.0
    # cings generate's rows name their documents by title and gold only: no retrieval block, nothing else changes.
    plain = [{"id": "1", "prediction": "Paris", "answers": ["Paris"], "docs": [{"title": "P", "gold": True}]}]
    assert "retrieval" not in evaluate_file(write(tmp_path, plain, "p.jsonl"), tmp_path / "p.json", bootstrap=0)[0]
    bad = [{"id": "1", "prediction": "x", "answers": ["x"], "contexts": [{"text": 3}]}]
    with pytest.raises(RecordError, match=r"b.jsonl: row 1 \(id '1'\): field 'contexts\[0\].text' must be a string"):
        evaluate_file(write(tmp_path, bad, "b.jsonl"), tmp_path / "b.json")
