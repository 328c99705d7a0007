"""The summary beside each data output: one per output, never shared by two outputs in one folder."""

import json

import pytest

from cings.cli import main
from cings.summary import summary_path

ROW = {"question": "Who?", "answers": ["Me"], "ctxs": [{"title": "T", "text": "Me, myself."}]}


@pytest.mark.parametrize("output, expected", [
    ("d/x.jsonl", "d/x.summary.json"),
    ("d/x.v1.jsonl", "d/x.v1.summary.json"),
    ("d/x.v1.jsonl.gz", "d/x.v1.summary.json"),
    ("d/x.v1.JSONL", "d/x.v1.summary.json"),
    ("d/x.json", "d/x.summary.json"),
    ("d/train.2024.tok", "d/train.2024.tok.summary.json"),
    ("d/splits", "d/splits/summary.json"),
])
def test_summary_path_keeps_everything_but_the_jsonl_suffixes(output, expected):
    assert summary_path(output).as_posix() == expected


def test_two_outputs_sharing_a_stem_get_two_summaries(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "question": "Again?"}) + "\n", encoding="utf-8")
    for name in ("x.v1.jsonl", "x.v2.jsonl"):
        assert main(["prepare", "--format", "dpr", "--input", str(path), "--output", str(tmp_path / name),
                     "--no-progress"]) == 0
    err = capsys.readouterr().err
    v1 = json.loads((tmp_path / "x.v1.summary.json").read_text())
    v2 = json.loads((tmp_path / "x.v2.summary.json").read_text())
    assert v1["output"].endswith("x.v1.jsonl") and v2["output"].endswith("x.v2.jsonl")
    assert not (tmp_path / "x.summary.json").exists()
    assert f"summary: {tmp_path / 'x.v2.summary.json'}" in err
