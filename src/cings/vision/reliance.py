"""Does a VLM read the image? Two measurements that explain a POPE score, whichever way it falls.

- :func:`image_reliance`: the loss of each record's answer with its own image and with another
  record's image (a fixed derangement). A model that ignores the picture scores both alike; the gap
  is how much the answer depends on the image.
- :func:`presence_auc`: for every scene and every kind, the logit of "Yes" minus that of "No" (their
  first tokens) at the first answer position of "Is there a KIND in the image?"; the AUC of that score against the truth
  (0.5: the answer does not depend on what is there; 1: it always ranks a present kind above an
  absent one). Unlike POPE accuracy it needs no threshold, so a model biased towards "yes" still
  shows what it can tell apart.

Both run without a cache (plain forwards) and in eval mode.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

__all__ = ["image_reliance", "presence_auc", "auc", "derangement"]


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney statistic)."""
    if not positives or not negatives:
        raise ValueError("auc needs at least one positive and one negative score")
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def derangement(n: int, seed: int = 0) -> list[int]:
    """A permutation of range(n) with no fixed point (so no record keeps its own image)."""
    if n < 2:
        raise ValueError("a derangement needs at least two items")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    result = [0] * n
    for k in range(n):  # one cycle through a shuffled order: everyone gets the next one's image
        result[order[k]] = order[(k + 1) % n]
    return result


def _load(model_dir: str | Path, model: Any, processor: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = processor or AutoProcessor.from_pretrained(model_dir)
    model = model or LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, processor


def image_reliance(model_dir: str | Path, records: list[dict[str, Any]], images: list[Any], *, seed: int = 0,
                   batch_size: int = 16, model: Any = None, processor: Any = None) -> dict[str, float]:
    """Mean answer loss (nats per trained token) with each record's own image and with another's."""
    import torch
    import torch.nn.functional as F

    from .build import IMAGE_TOKEN
    from .data import ROLES, ConversationRenderer

    model, processor = _load(model_dir, model, processor)
    tok = processor.tokenizer
    renderer = ConversationRenderer(tok, IMAGE_TOKEN, int(model.config.image_seq_length))
    rendered = []
    for record in records:
        got = renderer.render([{"role": ROLES[c["from"]], "content": c["value"]} for c in record["conversations"]])
        if isinstance(got, str):
            raise ValueError(f"record {record.get('id')!r}: cannot be rendered ({got})")
        rendered.append(got)
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(model.dtype)
    other = derangement(len(records), seed)
    sums = {"own": 0.0, "other": 0.0}
    tokens = 0
    with torch.no_grad():
        for start in range(0, len(rendered), batch_size):
            chunk = rendered[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (row_ids, row_labels) in enumerate(chunk):  # right padding, never trained
                ids[i, :len(row_ids)] = torch.tensor(row_ids)
                labels[i, :len(row_labels)] = torch.tensor(row_labels)
                mask[i, :len(row_ids)] = 1
            target = labels[:, 1:]
            tokens += int((target != -100).sum())
            rows = range(start, start + len(chunk))
            for name, which in (("own", list(rows)), ("other", [other[i] for i in rows])):
                logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels[which], use_cache=False).logits
                sums[name] += F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100,
                                              reduction="sum").item()
    return {"own_image_loss": sums["own"] / tokens, "other_image_loss": sums["other"] / tokens,
            "records": len(records), "tokens": tokens}


def presence_auc(model_dir: str | Path, images: list[Any], present: list[set[str]], kinds: Sequence[str], *,
                 question: str = "Is there a {} in the image?", model: Any = None, processor: Any = None) -> dict[str, Any]:
    """AUC of logit("Yes") - logit("No") against presence, over every (image, kind)."""
    import torch

    from .build import IMAGE_TOKEN
    from .data import ConversationRenderer

    model, processor = _load(model_dir, model, processor)
    tok = processor.tokenizer
    # the first token decides, as it does when POPE is answered with one forward
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    if yes == no:
        raise ValueError("'Yes' and 'No' start with the same token in this tokenizer: the first answer token cannot tell them apart")
    renderer = ConversationRenderer(tok, IMAGE_TOKEN, int(model.config.image_seq_length))
    prompts = [renderer.prompt_ids([{"role": "user", "content": f"{IMAGE_TOKEN}\n{question.format(k)}"}]) for k in kinds]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding: the last position is every prompt's answer position
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    pos, neg = [], []
    with torch.no_grad():
        for image, there in zip(images, present):
            pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"].to(model.dtype)
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels.repeat(len(kinds), 1, 1, 1),
                           use_cache=False).logits[:, -1].float()
            for kind, score in zip(kinds, (logits[:, yes] - logits[:, no]).tolist()):
                (pos if kind in there else neg).append(score)
    return {"auc": auc(pos, neg), "mean_score_present": sum(pos) / len(pos), "mean_score_absent": sum(neg) / len(neg),
            "pairs": len(pos) + len(neg)}
