import json

import pytest

from cings.records import Context, Record, RecordError, parse_record, read_records, write_records

GOOD = {"id": "q1", "instruction": "Who won?", "contexts": [{"title": "SB", "text": "Denver won.", "gold": True, "score": 1.5}],
        "response": "Denver", "answers": ["Denver", "Denver Broncos"], "meta": {"source": "test"}}


def write_lines(tmp_path, lines, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def error_of(tmp_path, lines):
    path = write_lines(tmp_path, lines)
    with pytest.raises(RecordError) as info:
        list(read_records(path))
    return str(info.value), path


def test_good_record_round_trips(tmp_path):
    path = write_lines(tmp_path, [json.dumps(GOOD)])
    (record,) = read_records(path)
    assert record.contexts == (Context(text="Denver won.", title="SB", gold=True, score=1.5),)
    assert record.answers == ("Denver", "Denver Broncos")
    assert record.source == f"{path}:1"
    out = tmp_path / "out.jsonl"
    write_records([record], out)
    assert list(read_records(out)) == [record]


def test_broken_json_names_file_and_line(tmp_path):
    message, path = error_of(tmp_path, [json.dumps(GOOD), '{"id": "q2", "instruction": '])
    assert message.startswith(f"{path}:2: not valid JSON")


def test_missing_field(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "response"}
    message, path = error_of(tmp_path, [json.dumps(bad)])
    assert message == f"{path}:1: field 'response' is missing"


def test_wrong_type_names_nested_field(tmp_path):
    bad = dict(GOOD, contexts=[{"text": "a"}, {"text": "b"}, {"text": 3}])
    message, path = error_of(tmp_path, [json.dumps(GOOD | {"id": "x"}), "", json.dumps(bad)])
    assert message == f"{path}:3: field 'contexts[2].text' must be a string, not a number"


def test_empty_response(tmp_path):
    message, path = error_of(tmp_path, [json.dumps(dict(GOOD, response="  \n"))])
    assert message == f"{path}:1: field 'response' must not be empty"


@pytest.mark.parametrize("patch, field", [
    ({"contexts": "Denver won."}, "contexts"),
    ({"answers": "Denver"}, "answers"),
    ({"answers": ["a", 1]}, "answers[1]"),
    ({"meta": []}, "meta"),
    ({"contexts": [{"text": "a", "gold": "yes"}]}, "contexts[0].gold"),
    ({"contexts": [{"text": "a", "score": "high"}]}, "contexts[0].score"),
    ({"contexts": [{"text": "a", "url": "x"}]}, "contexts[0].url"),
    ({"question": "Who?"}, "question"),
    ({"id": None}, "id"),
])
def test_bad_fields_are_named(tmp_path, patch, field):
    message, path = error_of(tmp_path, [json.dumps(dict(GOOD, **patch))])
    assert message.startswith(f"{path}:1: field '{field}'")


def test_not_an_object(tmp_path):
    message, path = error_of(tmp_path, ["[1, 2]"])
    assert message == f"{path}:1: a record must be a JSON object, not a list"


def test_duplicate_id(tmp_path):
    message, path = error_of(tmp_path, [json.dumps(GOOD), json.dumps(GOOD)])
    assert message == f"{path}:2: field 'id' repeats id 'q1' first seen on line 1"


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="no such file"):
        list(read_records(tmp_path / "nope.jsonl"))


def segmented(**patch):
    rec = {"id": "s", "instruction": "Tell me.", "response": "First part. Second part.",
           "contexts": [{"text": "p1"}, {"text": "p2"}],
           "segments": [{"contexts": [{"text": "p1"}], "response": "First part."},
                        {"contexts": [{"text": "p2"}], "response": "Second part."}]}
    rec.update(patch)
    return rec


def test_segments_must_agree_with_the_whole_record():
    record = parse_record(segmented())
    assert [s.response for s in record.segments] == ["First part.", "Second part."]
    with pytest.raises(RecordError, match="field 'segments' responses joined"):
        parse_record(segmented(response="First part. Other part."))
    with pytest.raises(RecordError, match="field 'segments' contexts joined"):
        parse_record(segmented(contexts=[{"text": "p1"}]))
    with pytest.raises(RecordError, match=r"field 'segments\[1\].response' must not be empty"):
        parse_record(segmented(segments=[{"contexts": [], "response": "x"}, {"contexts": [], "response": ""}]))


def test_integer_ids_become_strings():
    assert parse_record(dict(GOOD, id=7)).id == "7"


def test_gzip_input(tmp_path):
    import gzip

    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(GOOD) + "\n")
    assert [r.id for r in read_records(path)] == ["q1"]


def test_records_compare_by_value():
    a = parse_record(GOOD)
    b = Record(**{**a.__dict__})
    assert a == b


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.xz"])
def test_written_records_are_compressed_by_their_suffix_and_read_back(tmp_path, suffix):
    import gzip

    path = tmp_path / f"out{suffix}"
    written = [Record(id="1", instruction="Q?", response="A", contexts=(Context(text="A is here."),))]
    assert write_records(written, path) == 1
    assert [r.id for r in read_records(path)] == ["1"]
    if suffix == ".jsonl.gz":
        assert gzip.decompress(path.read_bytes()).startswith(b'{"id": "1"')


def test_a_context_may_carry_its_corpus_id(tmp_path):
    rec = dict(GOOD, contexts=[{"id": "wiki:17", "title": "SB", "text": "Denver won.", "score": 2.0}, {"id": 42, "text": "b"}])
    path = write_lines(tmp_path, [json.dumps(rec)])
    (record,) = read_records(path)
    assert [c.id for c in record.contexts] == ["wiki:17", "42"]
    assert record.to_dict()["contexts"][1] == {"id": "42", "text": "b"}
    assert "id" not in Context(text="no id").to_dict()
    for bad, said in ((True, "must be a non-empty string, not a boolean"), ("  ", "must be a non-empty string"),
                      ([1], "must be a non-empty string, not a list")):
        message, path = error_of(tmp_path, [json.dumps(dict(GOOD, contexts=[{"text": "a", "id": bad}]))])
        assert message == f"{path}:1: field 'contexts[0].id' {said}"
