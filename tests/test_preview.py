import io
import re

import pytest

from cings.preview import mark_trained, preview, preview_file
from cings.records import Context, Record, RecordError
from cings.render import Renderer, RenderOptions, render_example

REC = Record(id="q", instruction="Who won?", contexts=(Context(title="SB", text="Denver beat Carolina."),), response="Denver")


def test_plain_marks_exactly_the_trained_text(llama3):
    r = render_example(REC, "context", llama3, with_offsets=True)
    marked = mark_trained(r)
    assert marked.endswith("## Context SB Denver beat Carolina. ## Answer[[ Denver<|eot_id|>]]")
    assert marked.count("[[") == 1


def test_preview_prints_header_examples_and_legend(llama3):
    out = io.StringIO()
    shown = preview([REC, REC, REC], Renderer(llama3, RenderOptions(mode="no_mask")), n=2, plain=True, stream=out)
    text = out.getvalue()
    assert shown == 2 and text.count("── q · mode no_mask") == 2
    assert "[[## Context SB Denver beat Carolina. ## Answer Denver<|eot_id|>]]" in text
    assert text.rstrip().splitlines()[-1].startswith("legend: [[...]] = trained")


def test_colour_preview_highlights_the_response(llama3):
    out = io.StringIO()
    preview([REC], Renderer(llama3, RenderOptions()), n=1, stream=out, color=True)
    text = out.getvalue()
    green = "\x1b[1;30;42m"  # bold black on green: the trained run
    assert f"{green} Denver<|eot_id|>\x1b[0m" in text
    assert text.count(green) == 2  # the trained run, and the legend's sample
    assert "legend:" in text and "masked context" in text


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from .conftest import build_tiny_bpe

    path = tmp_path_factory.mktemp("tok")
    build_tiny_bpe().save_pretrained(path)
    return str(path)


def test_preview_file_of_an_empty_file_names_it(tmp_path, tiny_bpe):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    out = io.StringIO()
    with pytest.raises(RecordError, match=f"^{re.escape(str(empty))}: no records$"):
        preview_file(empty, Renderer(tiny_bpe), stream=out)
    assert out.getvalue() == ""  # refused before any table is printed


def test_cli_preview_of_an_empty_file_says_so(tmp_path, tok_dir, capsys):
    from cings.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    code = main(["preview", "--input", str(empty), "--tokenizer", tok_dir])
    err = capsys.readouterr().err
    assert code != 0 and f"{empty}: no records" in err and "Traceback" not in err


def test_cli_preview_of_a_truncated_gz_or_a_bad_byte_names_file_and_line(tmp_path, tok_dir, capsys):
    from cings.cli import main

    from .test_dataset import faulty_inputs

    for path, expected in faulty_inputs(tmp_path):
        code = main(["preview", "--input", str(path), "--tokenizer", tok_dir, "-n", "1000", "--plain"])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err
        assert re.search(rf"^cings preview: error: {expected}", err, re.M), err
