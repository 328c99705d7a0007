"""Batches of tokenized examples: pad ids, pad labels with -100, attention masks from lengths.

The reference padded labels with the pad id (0, which is "!" in Llama-3) and built the attention
mask as "id != pad id", hiding every real "!". Here the mask comes from each row's length, so the
pad id's value never matters, and labels are padded with -100 so padding is never trained.

Rows rendered with a context_loss_weight carry ``loss_weights`` (one float a token); every collator
carries them to the trainer beside the labels, 0.0 wherever a label is -100 (padding, a packed
sequence's first token), so ``CingsTrainer`` can weigh each token's cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .masking import IGNORE_INDEX

__all__ = ["Collator", "PackingCollator", "make_collator", "pad_batch", "pad_id_for"]


def pad_id_for(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (Llama-3 has no pad token), else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def pad_batch(features: Sequence[dict[str, Sequence[int]]], pad_token_id: int, *, padding_side: str = "right",
              pad_to_multiple_of: int | None = None, require_trained: bool = True) -> dict[str, Any]:
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if not features:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(f["input_ids"]) for f in features]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, (feature, n) in enumerate(zip(features, lengths)):
        span = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, span] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
        mask[row, span] = 1
        if "labels" in feature:
            if len(feature["labels"]) != n:
                raise ValueError(f"row {row}: {len(feature['labels'])} labels for {n} input ids")
            labels[row, span] = torch.as_tensor(feature["labels"], dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask}
    if any("labels" in f for f in features):
        # A batch with nothing to learn gives a silent zero loss (anchors.md §3): fail loudly instead.
        if require_trained and not bool((labels != IGNORE_INDEX).any()):
            raise ValueError(f"a batch with no trained tokens: every label is {IGNORE_INDEX}")
        batch["labels"] = labels
        weights = _weights(features)
        if weights is not None:
            padded = torch.zeros((len(features), width), dtype=torch.float32)
            for row, (w, n) in enumerate(zip(weights, lengths)):
                padded[row, slice(width - n, width) if padding_side == "left" else slice(0, n)] = w
            batch["loss_weights"] = _checked(padded, labels)
    return batch


def _weights(features: Sequence[dict[str, Any]]) -> list[Any] | None:
    """Each row's ``loss_weights`` as a float tensor, or None when no row has them."""
    import torch

    have = ["loss_weights" in f for f in features]
    if not any(have):
        return None
    if not all(have):
        raise ValueError("some rows have loss_weights and some do not: a batch is weighted throughout or not at all")
    out = []
    for row, f in enumerate(features):
        if len(f["loss_weights"]) != len(f["input_ids"]):
            raise ValueError(f"row {row}: {len(f['loss_weights'])} loss weights for {len(f['input_ids'])} input ids")
        out.append(torch.as_tensor(f["loss_weights"], dtype=torch.float32))
    return out


def _checked(weights: Any, labels: Any) -> Any:
    """A label is trained exactly where its weight is above 0 (a hand-edited file could break that)."""
    if bool(((weights > 0) != (labels != IGNORE_INDEX)).any()) or bool((weights < 0).any()):
        raise ValueError("loss_weights must be above 0 exactly where a label is trained and 0 elsewhere"
                         " (tokenize the records again rather than editing weights by hand)")
    return weights


@dataclass
class Collator:
    """A ``data_collator`` for transformers/TRL trainers over ``input_ids``/``labels`` rows."""

    pad_token_id: int
    padding_side: str = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return pad_batch(features, self.pad_token_id, padding_side=self.padding_side,
                         pad_to_multiple_of=self.pad_to_multiple_of)


class PackingCollator:
    """Padding-free packing: a micro batch becomes one row, position ids restart per sequence.

    transformers' ``DataCollatorWithFlattening`` does the flattening; its separator label (IGNORE_INDEX) at
    each sequence start keeps a sequence from being predicted from the one before it. That label is the
    target of no position even when an example runs alone (a target is predicted from the token before
    it), so no trained token is lost: the packed row has exactly the trained targets
    (``labels[:, 1:] != IGNORE_INDEX``) of its examples run one by one.

    Examples are never cut: each micro batch's examples go whole, in order, into its one row (its length
    is their sum; an example longer than max_length was truncated when it was rendered, never split
    here), so no chunk of an example can lose its first trained token or be left all masked.

    The row has no attention mask, on purpose: in transformers (5.23) SDPA and eager attention keep
    packed sequences apart (a block-diagonal causal mask built from the restarting position ids) only
    when there is no attention mask and no KV cache. Every forward over such a row must pass
    ``use_cache=False`` (CingsTrainer.compute_loss does); tests/test_packing.py proves both.
    """

    def __init__(self) -> None:
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        if not bool((batch["labels"] != IGNORE_INDEX).any()):
            raise ValueError(f"a batch with no trained tokens: every label is {IGNORE_INDEX}")
        weights = _weights(features)
        if weights is not None:
            for w in weights:
                w[:1] = 0.0  # the flattening's separator label at each sequence start
            batch["loss_weights"] = _checked(torch.cat(weights)[None], batch["labels"])
        return batch


def make_collator(pad_token_id: int, *, packing: bool = False):
    return PackingCollator() if packing else Collator(pad_token_id=pad_token_id)
