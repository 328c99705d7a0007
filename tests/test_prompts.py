"""The four document settings x three layouts, checked on the rendered prompt strings (Llama-3.1)."""

import pytest

from cings.prompts import DOCS, LAYOUTS, PromptBuilder, select_docs
from cings.records import Context, Record
from cings.render import PAPER_SYSTEM_PROMPT, RenderOptions

RECORD = Record(id="q", instruction="Who won Super Bowl 50?", response="Denver Broncos", answers=("Denver Broncos",),
                contexts=(Context(title="NFL", text="The league has 32 teams.", gold=False),
                          Context(title="SB50", text="Denver won.", gold=True),
                          Context(title="SB50 game", text="The Denver Broncos beat the Carolina Panthers 24-10.", gold=True),
                          Context(title="Panthers", text="Carolina is in the NFC.", gold=False)))

HEAD = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + PAPER_SYSTEM_PROMPT +
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
ASSISTANT = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
GOLD = "SB50 game The Denver Broncos beat the Carolina Panthers 24-10."

EXPECTED = {
    ("none", "prefill"): HEAD + "Who won Super Bowl 50?" + ASSISTANT,
    ("gold", "prefill"): HEAD + "Who won Super Bowl 50?" + ASSISTANT + f"## Context {GOLD} ## Answer",
    ("gold+distractors", "prefill"): HEAD + "Who won Super Bowl 50?" + ASSISTANT +
        f"## Context1: {GOLD}\n\nContext2: NFL The league has 32 teams.\n\nContext3: Panthers Carolina is in the NFC. ## Answer",
    ("topk", "prefill"): HEAD + "Who won Super Bowl 50?" + ASSISTANT +
        "## Context1: NFL The league has 32 teams.\n\nContext2: SB50 Denver won.\n\nContext3: SB50 game The Denver Broncos"
        " beat the Carolina Panthers 24-10. ## Answer",
    ("none", "input"): HEAD + "Who won Super Bowl 50?" + ASSISTANT,
    ("gold", "input"): HEAD + f"Who won Super Bowl 50?\n\n## Context {GOLD}" + ASSISTANT,
    ("gold+distractors", "input"): HEAD + f"Who won Super Bowl 50?\n\n## Context1: {GOLD}\n\nContext2: NFL The league has 32"
        " teams.\n\nContext3: Panthers Carolina is in the NFC." + ASSISTANT,
    ("topk", "input"): HEAD + "Who won Super Bowl 50?\n\n## Context1: NFL The league has 32 teams.\n\nContext2: SB50 Denver"
        " won.\n\nContext3: SB50 game The Denver Broncos beat the Carolina Panthers 24-10." + ASSISTANT,
}
RAW_HEAD = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
EXPECTED |= {
    ("none", "raw"): RAW_HEAD + "Answer the given question.\nQuestion: Who won Super Bowl 50?" + ASSISTANT,
    ("gold", "raw"): RAW_HEAD + f"Answer the given question using provided context.\nContext: {GOLD}\n"
        "Question: Who won Super Bowl 50?" + ASSISTANT,
    ("gold+distractors", "raw"): RAW_HEAD + f"Answer the given question using provided context.\nContext: {GOLD}\n"
        "Context: NFL The league has 32 teams.\nContext: Panthers Carolina is in the NFC.\nQuestion: Who won Super Bowl 50?" + ASSISTANT,
    ("topk", "raw"): RAW_HEAD + "Answer the given question using provided context.\nContext: NFL The league has 32 teams.\n"
        "Context: SB50 Denver won.\nContext: SB50 game The Denver Broncos beat the Carolina Panthers 24-10.\n"
        "Question: Who won Super Bowl 50?" + ASSISTANT,
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("docs", DOCS)
def test_every_docs_setting_and_layout_renders_as_specified(llama3, docs, layout):
    ndocs = 1 if docs in ("none", "gold") else 3
    prompt = PromptBuilder(llama3, RenderOptions(), layout=layout, docs=docs, ndocs=ndocs).build(RECORD)
    assert prompt.text == EXPECTED[(docs, layout)]
    # The ids are exactly the tokens of that text: what generation continues from.
    assert prompt.input_ids == llama3(prompt.text, add_special_tokens=False)["input_ids"]


def test_gold_picks_the_longest_gold_passage_and_gold_k_takes_them_in_order():
    assert select_docs(RECORD, "gold", 1) == (RECORD.contexts[2],)
    assert select_docs(RECORD, "gold", 2) == (RECORD.contexts[1], RECORD.contexts[2])
    assert select_docs(RECORD, "gold+distractors", 2) == (RECORD.contexts[2], RECORD.contexts[0])
    assert select_docs(RECORD, "topk", 2) == RECORD.contexts[:2]
    no_gold = Record(id="n", instruction="Q", response="A", contexts=(Context(text="x"),))
    assert select_docs(no_gold, "gold", 1) is None and select_docs(no_gold, "topk", 5) == no_gold.contexts
    with pytest.raises(ValueError, match="--docs must be one of"):
        select_docs(RECORD, "all", 1)


def test_records_without_gold_are_skipped_with_a_reason(llama3):
    no_gold = Record(id="n", instruction="Q", response="A", contexts=(Context(text="x"),))
    result = PromptBuilder(llama3, RenderOptions(), docs="gold").build(no_gold)
    assert result.reason == "no_gold_passage"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_pair_for_context_aware_decoding_is_the_prompt_and_its_closed_book_prompt(llama3, layout):
    with_docs, without = PromptBuilder(llama3, RenderOptions(), layout=layout, docs="gold").build_pair(RECORD)
    assert with_docs.text == EXPECTED[("gold", layout)] and without.text == EXPECTED[("none", layout)]
    assert without.input_ids == llama3(without.text, add_special_tokens=False)["input_ids"] and without.docs == ()


def test_the_pair_is_the_same_two_builds_on_any_tokenizer(tiny_bpe):
    no_gold = Record(id="n", instruction="Q", response="A", contexts=(Context(text="x"),))
    for layout in LAYOUTS:
        builder = PromptBuilder(tiny_bpe, RenderOptions(system_prompt=None), layout=layout)
        closed = PromptBuilder(tiny_bpe, RenderOptions(system_prompt=None), layout=layout, docs="none")
        with_docs, without = builder.build_pair(RECORD)
        assert with_docs.input_ids == builder.build(RECORD).input_ids
        assert without.input_ids == closed.build(RECORD).input_ids and without.input_ids != with_docs.input_ids
        assert builder.build_pair(no_gold).reason == "no_gold_passage"


def test_stop_tokens_are_the_templates_end_of_turn(llama3, qwen3):
    assert PromptBuilder(llama3, RenderOptions()).stop_token_ids() == [llama3.convert_tokens_to_ids("<|eot_id|>")]
    assert qwen3.convert_tokens_to_ids("<|im_end|>") in PromptBuilder(qwen3, RenderOptions()).stop_token_ids()


def test_qwen3_prefill_keeps_the_empty_think_block_in_the_prompt(qwen3):
    prompt = PromptBuilder(qwen3, RenderOptions(), docs="gold").build(RECORD)
    assert prompt.text.endswith(f"<|im_start|>assistant\n<think>\n\n</think>\n\n## Context {GOLD} ## Answer")


def test_topk_takes_the_highest_scores_first_and_file_order_without_scores():
    ranked = Record(id="s", instruction="Q", response="A",
                    contexts=(Context(text="low", score=0.1), Context(text="high", score=0.9),
                              Context(text="tie-first", score=0.5), Context(text="tie-second", score=0.5)))
    assert [c.text for c in select_docs(ranked, "topk", 3)] == ["high", "tie-first", "tie-second"]
    assert select_docs(RECORD, "topk", 2) == RECORD.contexts[:2]  # no scores: as given


def test_topk_refuses_a_record_where_only_some_passages_have_a_score(tmp_path):
    from cings.records import RecordError, read_records, write_records

    path = tmp_path / "r.jsonl"
    write_records([Record(id="m", instruction="Q", response="A",
                          contexts=(Context(text="a", score=2.0), Context(text="b")))], path)
    record = next(read_records(path))
    with pytest.raises(RecordError, match=r"r.jsonl:1: contexts: --docs topk ranks passages by 'score', but 1 of 2"):
        select_docs(record, "topk", 1)
