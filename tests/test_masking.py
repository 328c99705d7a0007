"""The one straddling rule, on hand-made offsets (no tokenizer needed)."""

from cings.masking import Kind, OffsetTokens, assign_labels

TRAIN = frozenset({Kind.ANSWER, Kind.EOT})


def labels_for(spans, offsets, trainable=TRAIN):
    ids = list(range(100, 100 + len(offsets)))
    return assign_labels(ids, spans, trainable, OffsetTokens(ids, offsets))


def test_clean_seams_train_exactly_the_answer_tokens():
    # "P|ctx|ANS|E" : prompt 0-2, context 2-5, answer 5-8, eot 8-9
    spans = [(0, 2, Kind.PROMPT), (2, 5, Kind.CONTEXT), (5, 8, Kind.ANSWER), (8, 9, Kind.EOT)]
    offsets = [(0, 2), (2, 5), (5, 7), (7, 8), (8, 9)]
    assert labels_for(spans, offsets) == [-100, -100, 102, 103, 104]


def test_a_token_straddling_context_and_answer_is_never_trained():
    spans = [(0, 4, Kind.CONTEXT), (4, 8, Kind.ANSWER)]
    offsets = [(0, 3), (3, 6), (6, 8)]
    assert labels_for(spans, offsets) == [-100, -100, 102]


def test_a_token_straddling_template_text_and_answer_is_trained():
    # Llama-2: the template's space after [/INST] rides in the answer's first token (▁Paris).
    spans = [(0, 3, Kind.FRAME), (3, 8, Kind.ANSWER), (8, 9, Kind.FRAME)]
    offsets = [(0, 2), (2, 8), (8, 9)]
    assert labels_for(spans, offsets) == [-100, 101, -100]


def test_byte_split_characters_with_overlapping_offsets_are_all_trained():
    # One character split over two byte tokens: both carry the span (5, 6).
    spans = [(0, 5, Kind.PROMPT), (5, 7, Kind.ANSWER)]
    offsets = [(0, 5), (5, 6), (5, 6), (6, 7)]
    assert labels_for(spans, offsets) == [-100, 101, 102, 103]


def test_characters_without_tokens_are_skipped():
    spans = [(0, 2, Kind.PROMPT), (2, 6, Kind.ANSWER)]
    offsets = [(0, 2), (3, 6)]  # character 2 produced no token
    assert labels_for(spans, offsets) == [-100, 101]


def test_nothing_trainable_gives_all_minus_100():
    assert labels_for([(0, 4, Kind.PROMPT)], [(0, 4)]) == [-100]
