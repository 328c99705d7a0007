"""Decoding rules (greedy, CAD, AdaCAD), one step rule each, over one batched greedy loop.

A *step rule* receives the next-token logits of every branch, for the rows still decoding, and
returns scores whose argmax is the next token. Greedy has one branch, the prompt. The contrastive
rules have two: branch 0 is the prompt with its documents, branch 1 the same record without them
(:meth:`cings.prompts.PromptBuilder.build_pair`). :func:`decode` owns the rest: each branch is its
own left-padded batch with its own KV cache and its own positions (the attention mask's cumsum, so
a padded row's first token is at position 0 in both), both branches are fed the chosen token, and
a finished row leaves every branch.

- CAD (Shi et al., 2024): ``(1+α)·log p(y|c,x,y<t) − α·log p(y|x,y<t)``. On log-softmax, as
  transformers' ``UnbatchedClassifierFreeGuidanceLogitsProcessor`` with ``guidance_scale = 1+α``;
  the authors' code sums raw logits, which differs from this by a constant per row and step, so
  the argmax is the same.
- AdaCAD (Wang et al., 2025): the same with ``α_t = JSD(p_ctx ‖ p_noctx) + offset`` per row and
  step, JSD in nats (at most ln 2).
- Back-off ``τ`` (both rules): a row whose JSD at this step is below ``τ`` takes its token from
  the without-context distribution. There the passage barely changes the prediction, and the
  contrast mostly amplifies the noise between two near-equal distributions; the closed-book
  model's own choice is the stable one. ``τ = 0`` never backs off (JSD ≥ 0), ``τ > ln 2`` always
  does, which is closed-book greedy decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .prefix_cache import PrefixCache

__all__ = ["DECODINGS", "Contrastive", "adacad_alpha", "decode", "greedy_decode", "jsd"]

DECODINGS = ("greedy", "cad", "adacad")

StepRule = Callable[[Sequence[Any]], Any]


def jsd(logits_p: Any, logits_q: Any) -> Any:
    """Jensen-Shannon divergence, in nats, between the softmaxes of two ``rows x vocab`` logit tensors; one
    value per row, in [0, ln 2].

    AdaCAD's code clamps the mixture at 1e-9 before its log; here the mixture's log is taken exactly
    (``logaddexp`` of the two log-probabilities), which differs from it only where both are below 1e-9.
    """
    import torch

    lp, lq = (torch.log_softmax(x.float(), dim=-1) for x in (logits_p, logits_q))
    lm = torch.logaddexp(lp, lq) - math.log(2.0)

    def kl(la: Any) -> Any:
        # 0 · log 0 = 0: a token with no probability (a -inf logit) adds nothing.
        return torch.where(la > -math.inf, la.exp() * (la - lm), 0.0).sum(-1)

    return (0.5 * (kl(lp) + kl(lq))).clamp(min=0.0)  # rounding can leave -1e-9 at identical inputs


def adacad_alpha(logits_ctx: Any, logits_noctx: Any, offset: float = 0.0) -> Any:
    """AdaCAD's per-row weight ``α_t = JSD(p_ctx ‖ p_noctx) + offset``."""
    return jsd(logits_ctx, logits_noctx) + offset


@dataclass(frozen=True)
class Contrastive:
    """The CAD / AdaCAD step rule: ``alpha`` fixed (CAD), or None for AdaCAD's ``JSD + offset`` per row;
    ``backoff`` is τ (see the module notes)."""

    alpha: float | None = 1.0
    offset: float = 0.0
    backoff: float = 0.0

    def __call__(self, logits: Sequence[Any]) -> Any:
        import torch

        ctx, noctx = logits
        lp_ctx, lp_noctx = torch.log_softmax(ctx.float(), dim=-1), torch.log_softmax(noctx.float(), dim=-1)
        divergence = jsd(ctx, noctx) if self.alpha is None or self.backoff > 0 else None
        alpha = (divergence + self.offset if self.alpha is None else torch.full_like(lp_ctx[:, 0], self.alpha))[:, None]
        scores = (1 + alpha) * lp_ctx - alpha * lp_noctx
        if self.backoff > 0:
            scores = torch.where((divergence < self.backoff)[:, None], lp_noctx, scores)
        return scores


def greedy_step(logits: Sequence[Any]) -> Any:
    return logits[0]  # the raw logits: argmax as plain greedy decoding has always taken it


class _Branch:
    """One left-padded batch with its own KV cache: the prompt, then one token a step.

    With a ``prefix`` (:class:`~cings.generate.prefix_cache.PrefixCache`), ``ids`` and ``mask`` are the
    prompts' suffixes after it: the cache starts as the prefix repeated over the rows, and the mask and
    positions cover the prefix's columns too, so every later step sees what the whole prompt gives."""

    def __init__(self, model: Any, ids: Any, mask: Any, prefix: PrefixCache | None = None):
        import torch
        from transformers import DynamicCache

        rows = ids.shape[0]
        self.model = model
        self.cache = prefix.cache_for(rows) if prefix is not None else DynamicCache()
        head = mask.new_ones((rows, len(prefix) if prefix is not None else 0))
        self.mask = torch.cat([head, mask], dim=1)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, head.shape[1]:]
        # logits_to_keep=1: the full prompt's logits (rows x length x vocab floats, gigabytes for a batch
        # of long prompts) would be computed only to be thrown away.
        self.logits = model(input_ids=ids, attention_mask=self.mask, position_ids=positions, past_key_values=self.cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1]

    def keep(self, rows: Any) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]

    def feed(self, token: Any) -> None:
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.logits = self.model(input_ids=token[:, None], attention_mask=self.mask,
                                 position_ids=self.mask.sum(-1, keepdim=True) - 1, past_key_values=self.cache,
                                 use_cache=True).logits[:, -1]


def decode(model: Any, batches: Sequence[tuple[Any, Any]], rule: StepRule, max_new_tokens: int,
           stop_ids: Sequence[int], prefixes: Sequence[PrefixCache | None] | None = None) -> list[list[int]]:
    """Decode ``batches`` (one ``(ids, mask)`` pair per branch, left-padded, the same rows in the same order)
    with ``rule``; returns each row's new tokens, its stop token included. ``prefixes`` (one per branch, or
    None) are prompt heads already prefilled, which that branch's ``ids`` continue.

    ``generate`` keeps finished rows computing until the longest one ends; on a CPU, where a decode
    step costs more the wider the batch, one rambling answer then makes a batch slower than decoding
    its rows one by one. Here a finished row leaves the batch and every branch's KV cache.
    """
    import torch

    rows = {ids.shape[0] for ids, _ in batches}
    if len(rows) != 1:
        raise ValueError(f"every branch needs the same rows; got {sorted(rows)}")
    if prefixes is not None and len(prefixes) != len(batches):
        raise ValueError(f"one prefix per branch: {len(prefixes)} for {len(batches)} branches")
    branches = [_Branch(model, ids, mask, prefix) for (ids, mask), prefix in zip(batches, prefixes or [None] * len(batches))]
    device = branches[0].logits.device
    stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
    alive = list(range(rows.pop()))
    out: list[list[int]] = [[] for _ in alive]
    for _ in range(max_new_tokens):
        token = rule([b.logits for b in branches]).argmax(-1)
        for row, t in zip(alive, token.tolist()):  # one device sync a step, not one per row
            out[row].append(t)
        finished = torch.isin(token, stop) | torch.tensor([len(out[row]) >= max_new_tokens for row in alive], device=device)
        if bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().flatten()
            for branch in branches:
                branch.keep(keep)
            token = token[keep]
            alive = [alive[j] for j in keep.tolist()]
        for branch in branches:
            branch.feed(token)
    return out


def greedy_decode(model: Any, ids: Any, mask: Any, max_new_tokens: int, stop_ids: Sequence[int]) -> list[list[int]]:
    """Greedy decoding of one left-padded batch (a finished row leaves it)."""
    return decode(model, [(ids, mask)], greedy_step, max_new_tokens, stop_ids)
