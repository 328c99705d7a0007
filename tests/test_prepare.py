"""`cings prepare` as users run it: bad input gives clear errors (or is skipped and counted), never a traceback."""

import json
import os

import pytest

from cings.cli import main
from cings.prepare import prepare
from cings.records import RecordError, read_records

DPR_ROW = {"question": "Who?", "answers": ["Me"], "ctxs": [{"title": "T", "text": "Me, myself."}]}


def write(tmp_path, lines, name="in.jsonl"):
    path = tmp_path / name
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines), encoding="utf-8")
    return path


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("lines, expected", [
    ([DPR_ROW, '{"question": "Who?", '], ":2: not valid JSON"),
    ([DPR_ROW, {"answers": ["x"], "ctxs": []}], ":2: field 'question' is missing"),
    ([{**DPR_ROW, "ctxs": "not a list"}], ":1: field 'ctxs' must be a list, not a string"),
    ([{**DPR_ROW, "ctxs": [{"title": "T", "text": 5}]}], ":1: field 'ctxs[0].text' must be a string, not a number"),
    ([DPR_ROW, {**DPR_ROW, "answers": [["nested"]]}], ":2: field 'answers[0]' must be a string, not a list"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, capsys, lines, expected):
    path = write(tmp_path, lines)
    code, err = run(capsys, "prepare", "--format", "dpr", "--input", str(path), "--output", str(tmp_path / "o.jsonl"))
    assert code == 1 and f"{path}{expected}" in err and "Traceback" not in err


def test_on_error_skip_counts_instead(tmp_path, capsys):
    path = write(tmp_path, [DPR_ROW, '{"question": ', {"answers": ["x"], "ctxs": []}, {**DPR_ROW, "question": "Again?"}])
    out = tmp_path / "o.jsonl"
    code, err = run(capsys, "prepare", "--format", "dpr", "--input", str(path), "--output", str(out), "--on-error", "skip",
                    "--no-progress")
    assert code == 0 and len(list(read_records(out))) == 2
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["records_in"] == 4 and summary["dropped"] == {"malformed": 2}
    assert summary["errors"][0].startswith(f"{path}:2: not valid JSON")
    assert "malformed 2" in err


def test_empty_file_unknown_format_and_unreadable_file(tmp_path, capsys):
    empty = write(tmp_path, [], name="empty.jsonl")
    code, err = run(capsys, "prepare", "--format", "dpr", "--input", str(empty), "--output", str(tmp_path / "o.jsonl"))
    assert code == 1 and f"{empty}: the file is empty" in err
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--format", "nope", "--input", str(empty), "--output", "o.jsonl"])
    assert info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    code, err = run(capsys, "prepare", "--format", "squad", "--input", str(tmp_path / "missing.json"), "--output", "o.jsonl")
    assert code == 1 and "missing.json: no such file" in err
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    code, err = run(capsys, "prepare", "--format", "dpr", "--input", str(broken), "--output", "o.jsonl")
    assert code == 1 and f"{broken}:1: cannot decompress (Not a gzipped file" in err
    if os.geteuid() != 0:  # root reads anything
        locked = write(tmp_path, [DPR_ROW], name="locked.jsonl")
        locked.chmod(0)
        code, err = run(capsys, "prepare", "--format", "dpr", "--input", str(locked), "--output", "o.jsonl")
        assert code == 1 and "cannot read" in err


def test_a_squad_file_that_is_not_squad(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"version": "1"}))
    with pytest.raises(RecordError, match="field 'data' must be a list of articles"):
        prepare("squad", [path])
    path.write_text('{"data": [')
    with pytest.raises(RecordError, match=r"x.json:1: not valid JSON"):
        prepare("squad", [path])


def test_repeated_ids_across_inputs_are_errors(tmp_path):
    a = write(tmp_path, [{"id": "1", "question": "Q", "answers": ["A"], "ctxs": []}], name="a.jsonl")
    b = write(tmp_path, [{"id": "1", "question": "Q2", "answers": ["B"], "ctxs": []}], name="b.jsonl")
    with pytest.raises(RecordError, match=r"b.jsonl:1: field 'id' repeats id '1' first seen at .*a.jsonl:1"):
        prepare("dpr", [a, b])
    records, stats = prepare("dpr", [a, b], on_error="skip")
    assert len(records) == 1 and stats.dropped == {"malformed": 1}


def test_output_uses_exactly_the_grounded_fields(tmp_path, capsys):
    path = write(tmp_path, [DPR_ROW])
    out = tmp_path / "o.jsonl"
    run(capsys, "prepare", "--format", "dpr", "--input", str(path), "--output", str(out), "--no-progress")
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(row) <= {"id", "instruction", "contexts", "response", "system", "answers", "parametric_answers", "meta",
                        "segments"}
    assert set(row) >= {"id", "instruction", "contexts", "response", "answers", "meta"}
