import gzip
import json
import re

import pytest

from cings.dataset import render_manifest, tokenize_records, write_tokenized
from cings.records import Context, Record
from cings.render import Renderer, RenderOptions


def records():
    ok = Record(id="ok", instruction="Who won?", contexts=(Context(text="Denver won the game."),), response="Denver")
    cut = Record(id="cut", instruction="Who won?", contexts=(Context(text="word " * 200),), response="Denver")
    huge = Record(id="huge", instruction="Who won?", contexts=(Context(text="x"),), response="word " * 200)
    return [ok, cut, huge]


def test_every_example_is_counted_kept_cut_or_dropped_by_reason(tiny_bpe):
    renderer = Renderer(tiny_bpe, RenderOptions(mode="context", max_length=120, system_prompt=None))
    dataset, stats = tokenize_records(records(), renderer, progress=False)
    assert stats.examples_in == 3 and stats.examples_out == 2
    assert stats.dropped == {"too_long": 1} and stats.truncated == 1
    assert dataset["id"] == ["ok", "cut"]
    assert stats.tokens == sum(len(x) for x in dataset["input_ids"])
    assert stats.trained_tokens == sum(sum(label != -100 for label in x) for x in dataset["labels"])
    assert all(len(x) <= 120 for x in dataset["input_ids"])
    for ids, labels in zip(dataset["input_ids"], dataset["labels"]):
        assert len(ids) == len(labels) and any(label != -100 for label in labels)


def test_parallel_map_gives_the_same_rows(tiny_bpe):
    renderer = Renderer(tiny_bpe, RenderOptions(mode="no_mask", max_length=120, system_prompt=None))
    many = [Record(id=str(i), instruction=f"Question {i}?", contexts=(Context(text=f"Passage {i}."),), response=f"Answer {i}")
            for i in range(40)]
    one, s1 = tokenize_records(many, renderer, progress=False, batch_size=7)
    two, s2 = tokenize_records(many, renderer, progress=False, batch_size=7, num_proc=2)
    assert one["input_ids"] == two["input_ids"] and one["labels"] == two["labels"] and s1 == s2


def test_jsonl_and_dataset_folder_outputs(tmp_path, tiny_bpe):
    renderer = Renderer(tiny_bpe, RenderOptions(mode="context", max_length=120, system_prompt=None))
    dataset, stats = tokenize_records(records(), renderer, progress=False)
    manifest = render_manifest(renderer, "tiny", "in.jsonl", stats)
    path = write_tokenized(dataset, tmp_path / "out.jsonl", manifest)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["id", "input_ids", "labels"]] * 2
    assert json.loads(path.read_text())["stats"]["dropped"] == {"too_long": 1}
    import datasets

    write_tokenized(dataset, tmp_path / "ds", manifest)
    loaded = datasets.load_from_disk(str(tmp_path / "ds"))
    assert loaded["input_ids"] == dataset["input_ids"]
    assert json.loads((tmp_path / "ds" / "cings_stats.json").read_text())["options"]["mode"] == "context"


GOOD = {"instruction": "Who won?", "contexts": [{"title": "SB", "text": "Denver won the game. " * 20}], "response": "Denver"}


def faulty_inputs(tmp_path):
    """A .jsonl.gz cut short and a plain file with a 0xff byte on line 2, each with the message expected."""
    lines = [json.dumps({"id": f"q{i}", **GOOD}) for i in range(300)]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(whole[:-40])  # the end-of-stream marker and the last rows are gone
    raw = [line.encode() for line in lines[:3]]
    raw[1] = raw[1].replace(b"Denver won", b"Denver \xff won", 1)
    binary = tmp_path / "bytes.jsonl"
    binary.write_bytes(b"\n".join(raw) + b"\n")
    return [(truncated, rf"{re.escape(str(truncated))}:\d+: the \.gz stream ends early: the file is truncated"),
            (binary, rf"{re.escape(str(binary))}:2: not UTF-8 text \(byte 0xff at byte \d+ of the line\)")]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from .conftest import build_tiny_bpe

    path = tmp_path_factory.mktemp("tok")
    build_tiny_bpe().save_pretrained(path)
    return str(path)


def test_cli_tokenize_of_a_truncated_gz_or_a_bad_byte_names_file_and_line(tmp_path, tok_dir, capsys):
    from cings.cli import main

    for path, expected in faulty_inputs(tmp_path):
        out = tmp_path / f"{path.name}.tok.jsonl"
        code = main(["tokenize", "--input", str(path), "--tokenizer", tok_dir, "--output", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err
        assert re.search(rf"^cings tokenize: error: {expected}", err, re.M), err
        assert not out.exists()  # nothing half-written from the rows read before the fault
