import pytest
import torch

from cings.collate import Collator, pad_batch, pad_id_for
from cings.records import Context, Record
from cings.render import render_example


def test_ref_labels_are_padded_with_minus_100_and_real_bangs_are_attended(llama3):
    """The reference padded labels with id 0 ('!' in Llama-3) and masked attention where id == 0."""
    bang = llama3.convert_tokens_to_ids("!")
    assert bang == 0
    short = render_example(Record(id="a", instruction="Say hi!", contexts=(Context(text="Hello!"),), response="Hello!"),
                           "context", llama3)
    long = render_example(Record(id="b", instruction="Say hi loudly, please!", contexts=(Context(text="Hello there!!"),),
                                 response="Hello there, friend!"), "context", llama3)
    batch = Collator(pad_token_id=0)([{"input_ids": r.input_ids, "labels": r.labels} for r in (short, long)])
    n = len(short.input_ids)
    assert batch["labels"][0, n:].eq(-100).all()
    assert batch["attention_mask"][0, :n].eq(1).all() and batch["attention_mask"][0, n:].eq(0).all()
    assert bang in short.input_ids  # a real "!" ... and it is attended
    assert batch["attention_mask"][0, :n][torch.tensor(short.input_ids) == bang].eq(1).all()
    assert batch["labels"][0, :n].tolist() == short.labels


def test_left_padding_for_generation_and_multiple_of():
    batch = pad_batch([{"input_ids": [5, 6]}, {"input_ids": [7, 8, 9]}], 1, padding_side="left", pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 1, 5, 6], [1, 7, 8, 9]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert "labels" not in batch


def test_a_batch_with_no_trained_token_fails_loudly():
    with pytest.raises(ValueError, match="no trained tokens"):
        pad_batch([{"input_ids": [1, 2], "labels": [-100, -100]}], 0)
    with pytest.raises(ValueError, match="3 labels for 2 input ids"):
        pad_batch([{"input_ids": [1, 2], "labels": [1, 2, 3]}], 0)


def test_pad_id_falls_back_to_eos(llama3, qwen3):
    assert pad_id_for(llama3) == llama3.convert_tokens_to_ids("<|eot_id|>")
    assert pad_id_for(qwen3) == qwen3.convert_tokens_to_ids("<|endoftext|>")


def test_packing_flattens_a_batch_with_the_one_ignore_index():
    from cings.collate import PackingCollator, make_collator
    from cings.masking import IGNORE_INDEX

    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9]}]
    batch = make_collator(0, packing=True)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]  # restart per sequence: no attention across
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    with pytest.raises(ValueError, match=f"every label is {IGNORE_INDEX}"):
        PackingCollator()([{"input_ids": [1, 2], "labels": [IGNORE_INDEX, IGNORE_INDEX]}])
    assert isinstance(make_collator(0), Collator)


def test_no_training_module_spells_the_ignore_index_itself():
    """-100 in code is masking.IGNORE_INDEX; a second spelling could drift from the one the labels use."""
    import io
    import tokenize

    from .conftest import ROOT

    for name in ("collate.py", "trainer.py", "train.py", "runs.py", "dataset.py"):
        source = (ROOT / "src" / "cings" / name).read_text()
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)]
        spelled = [a.start[0] for a, b in zip(tokens, tokens[1:]) if a.string == "-" and b.string == "100"]
        assert not spelled, f"{name}: lines {spelled}"


def test_loss_weights_are_padded_with_0_and_packed_with_0_at_each_sequence_start():
    from cings.collate import PackingCollator
    from cings.masking import IGNORE_INDEX as X

    rows = [{"input_ids": [5, 6, 7], "labels": [X, 6, 7], "loss_weights": [0.0, 0.5, 1.0]},
            {"input_ids": [8, 9], "labels": [X, 9], "loss_weights": [0.0, 1.0]}]
    right = Collator(pad_token_id=0)(rows)
    assert right["loss_weights"].dtype == torch.float32
    assert right["loss_weights"].tolist() == [[0.0, 0.5, 1.0], [0.0, 1.0, 0.0]]
    left = pad_batch(rows, 0, padding_side="left")
    assert left["loss_weights"].tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 1.0]]
    assert left["labels"].tolist() == [[X, 6, 7], [X, X, 9]]
    packed = PackingCollator()(rows)
    assert packed["loss_weights"].tolist() == [[0.0, 0.5, 1.0, 0.0, 1.0]]
    assert packed["labels"].tolist() == [[X, 6, 7, X, 9]]
    assert "loss_weights" not in Collator(pad_token_id=0)([{k: r[k] for k in ("input_ids", "labels")} for r in rows])


@pytest.mark.parametrize("packing", [False, True])
def test_loss_weights_must_match_the_labels(packing):
    from cings.collate import make_collator
    from cings.masking import IGNORE_INDEX as X

    collate = make_collator(0, packing=packing)
    good = {"input_ids": [5, 6, 7], "labels": [X, 6, 7], "loss_weights": [0.0, 0.5, 1.0]}
    for bad, message in (({"loss_weights": [0.0, 0.0, 1.0]}, "above 0 exactly where a label is trained"),
                         ({"labels": [X, X, 7]}, "above 0 exactly where a label is trained"),
                         ({"loss_weights": [0.0, 1.0]}, "2 loss weights for 3 input ids")):
        with pytest.raises(ValueError, match=message):
            collate([good, {**good, **bad}])
    with pytest.raises(ValueError, match="weighted throughout or not at all"):
        collate([good, {k: good[k] for k in ("input_ids", "labels")}])
