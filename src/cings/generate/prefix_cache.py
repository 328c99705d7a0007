"""The prompt head every record shares, prefilled once: each batch starts from a copy of its KV cache.

Every prompt of a run opens with the same tokens (the system prompt, the user turn's header, often
an instruction's fixed words): SmolLM2's CINGS prompts share 41 of ~240 tokens on SQuAD. They are
run through the model once, at batch 1, and each batch starts from that cache repeated over its rows;
only the rest of each prompt (its *suffix*) is prefilled per batch.

A batch's row is then ``[shared head][pads][suffix]``: the suffixes are left-padded *after* the head,
so the pads sit in the middle of the row. That is exact in transformers 5.23 (tested against the
whole prompts, token for token): the causal part of the mask comes from the cache length and the
column index (``create_causal_mask``: ``q_offset`` from the cache, ``kv_idx <= q_idx``), the padding
part is a per-column lookup in the 2D attention mask wherever its zeros are, and the positions are
passed explicitly, as the attention mask's cumsum — the head at 0..P-1 and each suffix right after it,
as the whole prompt would have them. A pad query attends to the head, so no query row is all masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["PrefixCache", "shared_prefix_length"]


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """The longest token prefix all ``prompts`` share, cut so that every prompt keeps one token of its own:
    the first new token is predicted from a prompt's last token, which must go through the model."""
    if not prompts:
        return 0
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@dataclass
class PrefixCache:
    """The shared head's token ids and its keys and values per layer (batch 1)."""

    ids: tuple[int, ...]
    layers: list[tuple[Any, Any]]

    @classmethod
    def build(cls, model: Any, ids: Sequence[int]) -> "PrefixCache":
        import torch
        from transformers import DynamicCache

        cache = DynamicCache()
        tensor = torch.tensor([list(ids)], device=model.device)
        with torch.no_grad():
            # logits_to_keep=1: the head's logits are never used; one row of them is the least to compute.
            model(input_ids=tensor, attention_mask=torch.ones_like(tensor), position_ids=torch.arange(len(ids),
                  device=model.device)[None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cls(tuple(ids), [(layer.keys, layer.values) for layer in cache.layers])

    def __len__(self) -> int:
        return len(self.ids)

    def suffix(self, prompt: Sequence[int]) -> list[int]:
        """What ``prompt`` adds after the head (refused when it does not start with it)."""
        if tuple(prompt[:len(self.ids)]) != self.ids or len(prompt) <= len(self.ids):
            raise ValueError("a prompt does not extend the shared prefix it was batched with")
        return list(prompt[len(self.ids):])

    def cache_for(self, rows: int) -> Any:
        """A fresh cache holding the head for ``rows`` rows (the stored head is never written to)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, (keys, values) in enumerate(self.layers):
            cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), index)
        return cache
