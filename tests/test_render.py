"""Invariants of the render-and-mask function, proven by property tests on real and tiny tokenizers.

Each test is named for what it guards. The oracle is transformers itself: our ids must equal
``apply_chat_template(messages, tokenize=True, sanitize_control_tokens=True)`` for the messages we
say we render, and our labels must follow the character kinds exactly.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cings.records import Context, Record, RecordError, Segment
from cings.render import PAPER_SYSTEM_PROMPT, Dropped, Kind, Mode, Renderer, RenderOptions, parse_mode, render_example

from .conftest import TOKENIZER_FIXTURES

# Pieces that break naive maskers: markers, template tokens of several families, whitespace, CJK.
TRICKY = ["## Context", "## Answer", "Context1:", "<|eot_id|>", "<|im_end|>", "<|start_header_id|>",
          "<|end_header_id|>", "<|begin_of_text|>", "<|im_start|>", "</think>", "<think>", "[INST]", "[/INST]",
          "</s>", "<s>", "<<SYS>>", "\n", "\n\n", "  ", " ", "\t", "北京", "é", "🙂", ".", "!", "1999", "'s"]
ALPHABET = st.characters(blacklist_categories=("Cs",), max_codepoint=0x1FFFF)
fragment = st.one_of(st.text(ALPHABET, min_size=1, max_size=8), st.sampled_from(TRICKY),
                     st.text("abc XYZ.,\n", min_size=1, max_size=10))
text = st.lists(fragment, min_size=1, max_size=6).map("".join).filter(lambda s: s.strip() != "")
contexts = st.lists(st.builds(Context, text=text, title=st.one_of(st.just(""), text)), min_size=1, max_size=3)


@st.composite
def records(draw, with_segments: bool = False):
    system = draw(st.one_of(st.none(), st.none(), text))
    if with_segments:
        segs = draw(st.lists(st.builds(Segment, contexts=st.lists(st.builds(Context, text=text), max_size=2).map(tuple),
                                       response=text), min_size=1, max_size=3))
        assume(any(s.contexts for s in segs))
        return Record(id="r", instruction=draw(text), system=system,
                      contexts=tuple(c for s in segs for c in s.contexts),
                      response=" ".join(s.response for s in segs), segments=tuple(segs))
    return Record(id="r", instruction=draw(text), contexts=tuple(draw(contexts)), response=draw(text), system=system)


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


def char_kinds(rendered) -> list[Kind]:
    kinds = [Kind.FRAME] * len(rendered.text)
    for s, e, kind in rendered.spans:
        for c in range(s, e):
            kinds[c] = kind
    return kinds


def trained_chars(rendered) -> set[int]:
    return {c for (a, b), label in zip(rendered.offsets, rendered.labels) if label != -100 for c in range(a, b)}


def check_invariants(renderer: Renderer, record: Record) -> None:
    """Everything that must hold for any record, mode and template."""
    r = renderer.render(record, with_offsets=True)
    assert not isinstance(r, Dropped)
    mode, trainable = renderer.options.mode, renderer.options.trainable()
    kinds = char_kinds(r)
    assert len(r.labels) == len(r.input_ids) == len(r.offsets)
    assert all(label in (-100, tok) for label, tok in zip(r.labels, r.input_ids))

    # Exact with respect to the template: the same ids as transformers' own sanitized encoding.
    messages = r.messages
    if not r.truncated:
        assert renderer.layout(record).messages == messages
    content = "".join(m["content"] for m in messages)
    nonspecial = [t for t in renderer.control_tokens
                  if not any(a.content == t and a.special for a in renderer.tokenizer.added_tokens_decoder.values())]
    if not any(t in content for t in nonspecial):  # Qwen3 rewrites '</think>' content; transformers cannot sanitize it
        oracle = renderer.tokenizer.apply_chat_template(
            messages, chat_template=renderer.template, tokenize=True, sanitize_control_tokens=True,
            **dict(renderer.options.template_kwargs))["input_ids"]
        assert r.input_ids == oracle

    # Text in a record never becomes a control token.
    control_ids = {renderer.tokenizer.convert_tokens_to_ids(t) for t in renderer.control_tokens}
    for (a, b), tok in zip(r.offsets, r.input_ids):
        if tok in control_ids:
            assert all(kinds[c] in (Kind.FRAME, Kind.EOT) for c in range(a, b)), "record text became a control token"

    trained = trained_chars(r)
    want = {c for c, k in enumerate(kinds) if k in trainable}
    masked = {c for c, k in enumerate(kinds) if k is not Kind.FRAME and k not in trainable}
    assert not trained & masked, "a trained token covers masked record text"
    # Characters the tokenizer maps to no token at all (SmolLM2's GGUF vocabulary lacks some control
    # bytes) cannot be trained; every other response character must be.
    covered = {c for a, b in r.offsets for c in range(a, b)}
    assert want & covered <= trained, "some response (or end-of-turn) text is not trained"
    assert all(kinds[c] is Kind.FRAME for c in trained - want), "only template text may ride along"
    assert any(k is Kind.EOT for k in kinds), "the end-of-turn token must be present and trained"

    has_context = any(k is Kind.CONTEXT for k in kinds)
    if mode is Mode.NO_CONTEXT:
        assert not has_context
        # Not rendered at all: the turns hold exactly the instruction and the response.
        user, assistant = messages[-2]["content"], messages[-1]["content"]
        assert user.strip() == record.instruction.strip() and assistant == record.response.strip()
    else:
        assert has_context
        ctx_pos = [c for c, k in enumerate(kinds) if k is Kind.CONTEXT]
        answer_start = min(c for c, k in enumerate(kinds) if k is Kind.ANSWER)
        if mode is Mode.INPUT_CONTEXT:
            # Before the assistant turn: the template text of the assistant header lies between.
            assert max(ctx_pos) < answer_start
            assert any(kinds[c] is Kind.FRAME for c in range(max(ctx_pos), answer_start))
        if mode is Mode.NO_MASK:
            assert set(ctx_pos) & covered <= trained
        if mode is Mode.CONTEXT:
            assert not set(ctx_pos) & trained


@pytest.fixture(params=TOKENIZER_FIXTURES)
def any_tokenizer(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("mode", list(Mode))
@PROPERTY
@given(record=records())
def test_mask_invariants_hold_for_random_records(any_tokenizer, mode, record):
    check_invariants(_renderer(any_tokenizer, mode), record)


@pytest.mark.parametrize("mode", [Mode.CONTEXT, Mode.NO_MASK])
@PROPERTY
@given(record=records(with_segments=True))
def test_segments_train_exactly_the_answer_segments(any_tokenizer, mode, record):
    renderer = _renderer(any_tokenizer, mode)
    check_invariants(renderer, record)
    r = renderer.render(record, with_offsets=True)
    answers = [r.text[s:e].strip() for s, e, k in r.spans if k is Kind.ANSWER]
    assert answers == [s.response.strip() for s in record.segments]
    n_markers = sum(1 for _, _, k in r.spans if k is Kind.ANSWER_MARKER)
    assert n_markers == sum(1 for s in record.segments if s.contexts)


SLOW_PROPERTY = settings(PROPERTY, max_examples=400)


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(Mode))
@SLOW_PROPERTY
@given(record=records())
def test_mask_invariants_hold_for_many_random_records(any_tokenizer, mode, record):
    check_invariants(_renderer(any_tokenizer, mode), record)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [Mode.CONTEXT, Mode.NO_MASK])
@SLOW_PROPERTY
@given(record=records(with_segments=True))
def test_segment_invariants_hold_for_many_random_records(any_tokenizer, mode, record):
    check_invariants(_renderer(any_tokenizer, mode), record)


@pytest.mark.slow
@SLOW_PROPERTY
@given(record=records(), max_length=st.integers(min_value=60, max_value=400))
def test_truncated_records_keep_every_invariant(any_tokenizer, record, max_length):
    renderer = _renderer(any_tokenizer, Mode.CONTEXT, max_length=max_length, system_prompt=None)
    r = renderer.render(record)
    if isinstance(r, Dropped):
        assert r.reason in ("too_long", "no_room_for_context")
        return
    assert len(r.input_ids) <= max_length
    check_invariants(renderer, record)


@PROPERTY
@given(record=records())
def test_train_markers_trains_the_answer_marker_only(tiny_bpe, record):
    renderer = _renderer(tiny_bpe, Mode.CONTEXT, train_markers=True)
    check_invariants(renderer, record)
    r = renderer.render(record, with_offsets=True)
    trained = trained_chars(r)
    (s, e), = [(s, e) for s, e, k in r.spans if k is Kind.ANSWER_MARKER]
    assert r.text[s:e] == " ## Answer" and set(range(s + 1, e)) <= trained


@pytest.mark.parametrize("train_markers", [False, True])
@settings(PROPERTY, max_examples=25)
@given(record=st.one_of(records(), records(with_segments=True)))
def test_a_context_loss_weight_of_0_is_context_and_of_1_is_no_mask(any_tokenizer, train_markers, record):
    """λ keeps the ids; 0 and 1 give exactly the labels of context and no_mask, each at weight 1; between,
    no_mask's labels with weight 1 where context trains and λ on the rest (passages and markers)."""
    context = _renderer(any_tokenizer, Mode.CONTEXT, train_markers=train_markers).render(record)
    no_mask = _renderer(any_tokenizer, Mode.NO_MASK).render(record)
    assert context.loss_weights is None and no_mask.loss_weights is None
    for weight, labels in ((0.0, context.labels), (1.0, no_mask.labels), (0.4, no_mask.labels)):
        r = _renderer(any_tokenizer, Mode.CONTEXT, train_markers=train_markers, context_loss_weight=weight).render(record)
        assert r.input_ids == context.input_ids == no_mask.input_ids
        assert r.labels == labels
        want = [1.0 if c != -100 else weight if n != -100 and weight else 0.0 for c, n in zip(context.labels, no_mask.labels)]
        assert r.loss_weights == want
        assert [w > 0 for w in r.loss_weights] == [label != -100 for label in r.labels]


def test_a_context_loss_weight_weighs_the_passage_and_its_markers(tiny_bpe):
    r = _renderer(tiny_bpe, Mode.CONTEXT, context_loss_weight=0.25).render(rec(), with_offsets=True)
    by_weight: dict = {}
    for (a, b), w in zip(r.offsets, r.loss_weights):
        by_weight[w] = by_weight.get(w, "") + r.text[a:b]
    assert by_weight[0.25] == "## Context Super Bowl 50 The Denver Broncos defeated the Carolina Panthers. ## Answer"
    assert by_weight[1.0] == " Denver Broncos<|im_end|>"
    assert r.num_trained == sum(w > 0 for w in r.loss_weights)


def test_a_context_loss_weight_is_checked_and_recorded_only_when_set():
    assert "context_loss_weight" not in RenderOptions().to_dict()  # older manifests and runs stay comparable
    assert RenderOptions(context_loss_weight=1).to_dict()["context_loss_weight"] == 1.0
    assert RenderOptions(mode="cings", context_loss_weight=0.5).weighted() == {Kind.MARKER, Kind.CONTEXT, Kind.ANSWER_MARKER}
    assert RenderOptions(train_markers=True, context_loss_weight=0.5).weighted() == {Kind.MARKER, Kind.CONTEXT}
    assert RenderOptions(context_loss_weight=0).weighted() == frozenset()
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="context_loss_weight must be a number from 0 to 1"):
            RenderOptions(context_loss_weight=bad)
    for mode in ("no_mask", "input_context", "no_context"):
        with pytest.raises(ValueError, match=f"passage in the answer of mode context, not mode '{mode}'"):
            RenderOptions(mode=mode, context_loss_weight=0.5)


_CACHE: dict = {}


def _renderer(tokenizer, mode, **kw) -> Renderer:
    key = (id(tokenizer), mode, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = Renderer(tokenizer, RenderOptions(mode=mode, **kw))
    return _CACHE[key]


def rec(**kw) -> Record:
    base = dict(id="q", instruction="Who won Super Bowl 50?",
                contexts=(Context(title="Super Bowl 50", text="The Denver Broncos defeated the Carolina Panthers."),),
                response="Denver Broncos")
    base.update(kw)
    return Record(**base)


def trained_text(r) -> str:
    chars = sorted(trained_chars(r))
    return "".join(r.text[c] for c in chars)


# ---------------------------------------------------------------- the paper's format

def test_context_mode_renders_the_paper_format(llama3):
    r = render_example(rec(), "context", llama3, with_offsets=True)
    assert r.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n## Context Super Bowl 50 The Denver Broncos"
                           " defeated the Carolina Panthers. ## Answer Denver Broncos<|eot_id|>")
    assert PAPER_SYSTEM_PROMPT in r.text
    assert trained_text(r) == " Denver Broncos<|eot_id|>"
    assert llama3.decode([t for t in r.labels if t != -100]) == " Denver Broncos<|eot_id|>"


def test_several_passages_are_numbered_as_the_paper_does(tiny_bpe):
    two = rec(contexts=(Context(text="First\npassage."), Context(title="T", text="Second.")))
    r = render_example(two, "context", tiny_bpe)
    assert "## Context1: First passage.\n\nContext2: T Second. ## Answer Denver Broncos<|im_end|>" in r.text
    never = render_example(two, "context", tiny_bpe, RenderOptions(numbering="never"))
    assert "## Context First passage.\n\nT Second. ## Answer" in never.text
    one = render_example(rec(), "context", tiny_bpe, RenderOptions(numbering="always"))
    assert "## Context1: Super Bowl 50 The Denver" in one.text


def test_custom_markers_and_title_separator(tiny_bpe):
    opts = RenderOptions(context_marker="<doc>", answer_marker="<ans>", title_separator=": ")
    r = render_example(rec(), "context", tiny_bpe, opts, with_offsets=True)
    assert "<doc> Super Bowl 50: The Denver Broncos defeated the Carolina Panthers. <ans> Denver Broncos" in r.text
    assert trained_text(r) == " Denver Broncos<|im_end|>"


def test_input_context_puts_passages_in_the_user_turn(llama3):
    r = render_example(rec(), "input_context", llama3, with_offsets=True)
    assert ("Who won Super Bowl 50?\n\n## Context Super Bowl 50 The Denver Broncos defeated the Carolina Panthers."
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nDenver Broncos<|eot_id|>") in r.text
    assert trained_text(r) == "Denver Broncos<|eot_id|>"


def test_no_context_mode_drops_passages_entirely(llama3):
    r = render_example(rec(), "no_context", llama3, with_offsets=True)
    assert "Panthers" not in r.text and "## Context" not in r.text
    assert trained_text(r) == "Denver Broncos<|eot_id|>"


def test_system_prompt_options(tiny_bpe):
    assert "<|im_start|>system" not in render_example(rec(), "context", tiny_bpe, RenderOptions(system_prompt=None)).text
    assert "<|im_start|>system\nBe brief.<|im_end|>" in render_example(rec(system="Be brief."), "context", tiny_bpe).text


def test_mode_aliases_and_unknown_mode():
    assert parse_mode("context_with_sp") is Mode.CONTEXT
    assert parse_mode("no_context") is Mode.NO_CONTEXT  # the reference masked context for this value
    assert parse_mode("input-side") is Mode.INPUT_CONTEXT
    assert parse_mode("NO_MASK") is Mode.NO_MASK
    with pytest.raises(ValueError, match="unknown mode 'contxt'.*no_context, input_context, context, no_mask"):
        parse_mode("contxt")


@pytest.mark.parametrize("typo, hint", [
    ("contxt", "(did you mean 'context'?)"),
    ("No-Contex", "(did you mean 'no_context'?)"),
    ("input_contxt", "(did you mean 'input_context'?)"),
    ("cigns", "(did you mean 'cings', i.e. context?)"),  # an alias is named with the mode it stands for
])
def test_unknown_mode_suggests_the_closest_mode_or_alias(typo, hint):
    with pytest.raises(ValueError) as info:
        parse_mode(typo)
    assert str(info.value).startswith(f"unknown mode {typo!r} {hint}: choose one of no_context, input_context")


def test_unknown_mode_far_from_every_name_gets_no_suggestion():
    with pytest.raises(ValueError) as info:
        parse_mode("zebra")
    assert str(info.value).startswith("unknown mode 'zebra': choose one of") and "did you mean" not in str(info.value)
    with pytest.raises(ValueError, match=r"did you mean 'no_mask'\?"):
        RenderOptions(mode="no-msk")  # recipes and options reach the same check


def test_empty_contexts_in_a_context_mode_is_an_error_naming_the_line(tiny_bpe):
    renderer = Renderer(tiny_bpe, RenderOptions(mode=Mode.CONTEXT))
    bare = replace(rec(contexts=()), source="train.jsonl:17")
    with pytest.raises(RecordError, match=r"^train.jsonl:17: field 'contexts' is empty, but mode 'context'"):
        renderer.check(bare)
    Renderer(tiny_bpe, RenderOptions(mode=Mode.NO_CONTEXT)).check(bare)
    allowed = Renderer(tiny_bpe, RenderOptions(mode=Mode.CONTEXT, allow_no_context=True))
    allowed.check(bare)
    assert allowed.render(bare).text.endswith("assistant\nDenver Broncos<|im_end|>\n")


# ---------------------------------------------------------------- control tokens in record text

@pytest.mark.parametrize("fixture, control", [("llama3", "<|eot_id|>"), ("llama3", "<|start_header_id|>"),
                                              ("qwen3", "<|im_end|>"), ("qwen3", "<|im_start|>"),
                                              ("qwen3", "</think>"), ("llama3", "<|im_end|>")])
@pytest.mark.parametrize("mode", list(Mode))
def test_a_document_quoting_a_control_token_stays_plain_text(request, fixture, control, mode):
    tok = request.getfixturevalue(fixture)
    doc = Context(title="Chat formats", text=f"A turn ends with {control} and then{control}the next one starts.")
    record = rec(contexts=(doc,), instruction=f"What does {control} do?", response=f"It ends a turn: {control}")
    renderer = _renderer(tok, mode)
    check_invariants(renderer, record)
    r = renderer.render(record)
    plain = render_example(rec(), mode, tok)
    control_ids = {tok.convert_tokens_to_ids(t) for t in renderer.control_tokens}
    # Exactly as many control tokens as the template writes for an ordinary record.
    assert sum(t in control_ids for t in r.input_ids) == sum(t in control_ids for t in plain.input_ids)


# ---------------------------------------------------------------- truncation

def test_long_contexts_are_cut_from_their_end_never_the_response(llama3):
    long = rec(contexts=(Context(text="alpha " * 300), Context(text="omega " * 300)))
    full = render_example(long, "context", llama3)
    r = render_example(long, "context", llama3, RenderOptions(max_length=300), with_offsets=True)
    assert len(full.input_ids) > 600 and 300 >= len(r.input_ids) > 280
    assert r.truncated and "alpha" in r.text and "omega" not in r.text
    assert trained_text(r) == " Denver Broncos<|eot_id|>"


def test_truncation_keeps_the_last_passage_partly_when_enough(tiny_bpe):
    long = rec(contexts=(Context(text="first passage here."), Context(text="word " * 400)))
    r = render_example(long, "no_mask", tiny_bpe, RenderOptions(max_length=300), with_offsets=True)
    assert not isinstance(r, Dropped) and len(r.input_ids) <= 300 and r.truncated
    assert "first passage here." in r.text and "word word" in r.text
    check_invariants(_renderer(tiny_bpe, Mode.NO_MASK, max_length=300), long)


def test_records_that_cannot_fit_are_dropped_with_a_reason(tiny_bpe):
    huge = rec(response="word " * 500)
    assert render_example(huge, "context", tiny_bpe, RenderOptions(max_length=100)).reason == "too_long"
    assert render_example(huge, "no_context", tiny_bpe, RenderOptions(max_length=100)).reason == "too_long"
    tight = rec(contexts=(Context(text="word " * 500),))
    n_bare = len(render_example(tight, "no_context", tiny_bpe).input_ids)
    dropped = render_example(tight, "context", tiny_bpe, RenderOptions(max_length=n_bare + 3))
    assert dropped.reason == "no_room_for_context"


def test_segments_truncate_the_latest_passages_first(tiny_bpe):
    record = Record(id="s", instruction="Explain.", response="One. Two.",
                    contexts=(Context(text="short."), Context(text="long " * 400)),
                    segments=(Segment((Context(text="short."),), "One."), Segment((Context(text="long " * 400),), "Two.")))
    r = render_example(record, "context", tiny_bpe, RenderOptions(max_length=200), with_offsets=True)
    assert len(r.input_ids) <= 200 and "## Context short. ## Answer One." in r.text
    assert trained_text(r).strip().startswith("One.") and "Two.<|im_end|>" in trained_text(r)


# ---------------------------------------------------------------- the reference implementation's bugs
# reference-notes.md §3: each of these would have failed on the authors' code.

def _token_kinds(r):
    kinds = char_kinds(r)
    return [{kinds[c] for c in range(a, b)} for a, b in r.offsets]


def test_ref_llama3_mask_is_not_shifted_by_the_header(llama3):
    """The reference masked '## Context' + header tokens and trained the last ~4 passage tokens."""
    r = render_example(rec(), "context", llama3, with_offsets=True)
    token_kinds = _token_kinds(r)
    passage = [i for i, k in enumerate(token_kinds) if Kind.CONTEXT in k]
    assert all(r.labels[i] == -100 for i in passage[-6:])
    first_answer = next(i for i, k in enumerate(token_kinds) if Kind.ANSWER in k)
    assert r.labels[first_answer] != -100 and llama3.decode([r.input_ids[first_answer]]) == " Denver"
    assert all(label == -100 for label in r.labels[:first_answer])


def test_ref_leading_whitespace_does_not_shift_the_mask(llama3):
    """The reference computed offsets on untrimmed content that the Llama-3 template trims."""
    spaced = rec(response="   Denver Broncos  \n", contexts=(Context(text="  \n The Denver Broncos won.\n "),))
    r = render_example(spaced, "context", llama3, with_offsets=True)
    assert trained_text(r) == " Denver Broncos<|eot_id|>"
    check_invariants(_renderer(llama3, Mode.CONTEXT), spaced)


def test_ref_system_and_user_turns_are_never_trained(llama3):
    """The reference restored header and end-of-turn labels in every turn, system and user included."""
    r = render_example(rec(), "context", llama3, with_offsets=True)
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    header = llama3.convert_tokens_to_ids("<|start_header_id|>")
    trained_ids = [t for t in r.labels if t != -100]
    assert trained_ids.count(eot) == 1 and trained_ids[-1] == eot
    assert header not in trained_ids


def test_ref_llama2_last_passage_token_is_masked(llama2):
    """The reference's Llama-2 arithmetic trained the last passage token."""
    r = render_example(rec(), "context", llama2, with_offsets=True)
    token_kinds = _token_kinds(r)
    last_passage = max(i for i, k in enumerate(token_kinds) if Kind.CONTEXT in k)
    assert r.labels[last_passage] == -100
    assert trained_text(r) == " Denver Broncos </s>"


def test_ref_qwen_stop_token_is_trained_and_the_trailing_newline_is_not(qwen3):
    """The reference's Qwen path masked <|im_end|>, so the model never learned to stop."""
    r = render_example(rec(), "context", qwen3, with_offsets=True)
    im_end = qwen3.convert_tokens_to_ids("<|im_end|>")
    assert r.labels[-2] == im_end and r.input_ids[-1] == qwen3.convert_tokens_to_ids("Ċ") and r.labels[-1] == -100
    assert trained_text(r) == " Denver Broncos<|im_end|>"


def test_ref_qwen_uses_the_cings_system_prompt_and_think_block_is_prompt(qwen3):
    """The reference used Qwen's default system prompt; the empty think block belongs to the prompt."""
    r = render_example(rec(), "context", qwen3, with_offsets=True)
    assert r.text.startswith(f"<|im_start|>system\n{PAPER_SYSTEM_PROMPT}<|im_end|>")
    assert "<think>\n\n</think>\n\n## Context" in r.text
    assert "think" not in trained_text(r)


def test_ref_prompt_before_the_first_trained_token_ends_at_the_answer_marker(llama3, qwen3):
    """Training must match inference: the prefill ends right after '## Answer' (no stray space/newline)."""
    for tok in (llama3, qwen3):
        r = render_example(rec(), "context", tok, with_offsets=True)
        first = next(i for i, label in enumerate(r.labels) if label != -100)
        assert r.text[:r.offsets[first][0]].endswith("Panthers. ## Answer")


def test_ref_no_context_mode_keeps_words_apart_and_handles_any_number_of_contexts(tiny_bpe):
    """The reference's context removal glued words ('is  yes' -> 'isyes') and crashed on 0 or 2+ contexts."""
    record = Record(id="s", instruction="Is it?", response="It is  yes. Really.",
                    contexts=(Context(text="a"), Context(text="b")),
                    segments=(Segment((Context(text="a"),), "It is  yes."), Segment((Context(text="b"),), "Really.")))
    for contexts in [(), (Context(text="a"),), record.contexts]:
        r = render_example(replace(record, contexts=contexts, segments=None), "no_context", tiny_bpe, with_offsets=True)
        assert trained_text(r) == "It is  yes. Really.<|im_end|>"
    r = render_example(record, "no_context", tiny_bpe, with_offsets=True)
    assert trained_text(r) == "It is  yes. Really.<|im_end|>"


def test_ref_labels_are_minus_100_never_a_token_id_where_masked(llama3):
    r = render_example(rec(), "context", llama3)
    masked = [label for label in r.labels if label == -100]
    assert len(masked) == len(r.labels) - r.num_trained and 0 not in r.labels


def test_renderer_needs_a_fast_tokenizer():
    class Slow:
        is_fast = False

    from cings.chat_frame import TemplateError

    with pytest.raises(TemplateError, match="not a fast tokenizer"):
        Renderer(Slow())
