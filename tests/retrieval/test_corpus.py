import gzip
import json

import pytest

from cings.jsonl import RecordError
from cings.retrieval.corpus import IdChecker, Passage, corpus_layout, iter_corpus


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def passages(path):
    return [p for _, p in iter_corpus(path)]


def test_jsonl_passages_with_and_without_ids_and_flashrag_contents(tmp_path):
    path = write(tmp_path / "c.jsonl", [json.dumps({"id": 7, "title": " Paris ", "text": " The capital. ", "url": "x"}),
                                        "",
                                        json.dumps({"id": "b", "contents": '"Lyon"\nA city on the Rhône.'})])
    assert passages(path) == [Passage("7", "Paris", "The capital."), Passage("b", "Lyon", "A city on the Rhône.")]
    plain = write(tmp_path / "p.jsonl.gz", [])
    plain.write_bytes(gzip.compress(json.dumps({"text": "no id, no title"}).encode()))
    assert passages(plain) == [Passage(None, "", "no id, no title")]


def test_dpr_tsv_with_its_quoting_and_any_column_order(tmp_path):
    # psgs_w100.tsv quotes fields holding quotes, doubling them, as csv writes them.
    path = write(tmp_path / "psgs_w100.tsv", ["id\ttext\ttitle",
                                              '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron',
                                              "2\tPlain text here\tSecond"])
    assert passages(path) == [Passage("1", "Aaron", 'Aaron Aaron ( or ; "Ahärôn") is a prophet'),
                              Passage("2", "Second", "Plain text here")]
    reordered = write(tmp_path / "r.tsv", ["title\tid\ttext", "T\t9\tbody"])
    assert passages(reordered) == [Passage("9", "T", "body")]
    wheres = [w for w, _ in iter_corpus(path)]
    assert wheres == [f"{path}:2", f"{path}:3"]


@pytest.mark.parametrize("lines, message", [
    ([json.dumps({"id": "a", "title": "t"})], "field 'text' is missing (a passage needs 'text', or FlashRAG's 'contents')"),
    ([json.dumps({"text": "  "})], "field 'text' must not be empty"),
    ([json.dumps({"text": 3})], "field 'text' must be a string, not a number"),
    ([json.dumps({"id": True, "text": "x"})], "field 'id' must be a non-empty string or an integer, not a boolean"),
    (["[1]"], "a passage must be a JSON object, not a list"),
])
def test_bad_jsonl_passages_name_file_and_line(tmp_path, lines, message):
    path = write(tmp_path / "c.jsonl", [json.dumps({"text": "fine"})] + lines)
    with pytest.raises(RecordError) as info:
        passages(path)
    assert str(info.value) == f"{path}:2: {message}"


def test_bad_tsv_rows_name_file_and_line(tmp_path):
    path = write(tmp_path / "c.tsv", ["id\ttext\ttitle", "1\tok\tT", "2\tonly two"])
    with pytest.raises(RecordError, match=rf"^{path}:3: 2 fields, the header has 3"):
        passages(path)
    headless = write(tmp_path / "h.tsv", ["1\tok\tT"])
    with pytest.raises(RecordError, match=r":1: the header .* does not name a 'text' column"):
        passages(headless)


def test_layout_comes_from_the_name():
    assert corpus_layout("a/psgs_w100.tsv.gz") == "tsv" and corpus_layout("c.jsonl.xz") == "jsonl"
    with pytest.raises(RecordError, match="the name says neither"):
        corpus_layout("corpus.txt")


def test_ids_all_or_none_and_never_repeated(tmp_path):
    checker = IdChecker()
    checker.add("c.jsonl:1", Passage("a", "", "x"))
    with pytest.raises(RecordError, match=r"^c.jsonl:2: this passage has no 'id' and the first \(c.jsonl:1\) does"):
        checker.add("c.jsonl:2", Passage(None, "", "y"))
    path = write(tmp_path / "c.jsonl", [json.dumps({"id": i, "text": "t"}) for i in ("a", "b", "c", "b")])
    checker = IdChecker()
    for where, passage in iter_corpus(path):
        checker.add(where, passage)
    assert checker.repeated()
    assert checker.first_repeat(path) == f"{path}:4: id 'b' repeats the passage at {path}:2"
