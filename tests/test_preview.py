import io

from cings.preview import mark_trained, preview
from cings.records import Context, Record
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
