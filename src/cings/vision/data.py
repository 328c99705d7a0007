"""LLaVA-format records -> token ids, labels and an image path; the collator that adds pixels.

A record is LLaVA's: ``{"id", "image": "file relative to --image-folder" (optional), "conversations":
[{"from": "human"|"gpt"|"system", "value": ...}, ...]}``, in a JSON array (LLaVA's files) or JSONL.
``<image>`` in a human turn marks where the picture goes; it becomes the processor's count of image
tokens, so the ids here are exactly what ``LlavaProcessor`` would give.

Labels: only what the assistant writes is trained (its turns and their end-of-turn token); the
system prompt, every human turn, the image tokens and the template's own text are -100. The
spans come from the LM's chat template itself, rendered on growing prefixes of the conversation
(before assistant turn i, with the generation prompt; through turn i): the text between the two is
that turn as the template writes it. A template whose prefixes are not prefixes of the whole
conversation (one that rewrites earlier turns) is refused rather than masked by guesswork. The
character spans then become labels through :func:`cings.masking.assign_labels`, the one rule the
text path uses.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..chat_frame import control_pattern, control_tokens
from ..masking import IGNORE_INDEX, Kind, assign_labels

__all__ = ["VlmDataError", "ConversationRenderer", "VlmExample", "read_llava", "load_examples", "VlmCollator", "ROLES"]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_TRAINED = frozenset({Kind.ANSWER, Kind.EOT})


class VlmDataError(ValueError):
    pass


@dataclass
class VlmExample:
    id: str
    image: str | None  # absolute path, or None for a text-only record
    input_ids: list[int]
    labels: list[int]


@dataclass
class LoadStats:
    records: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    images: int = 0
    trained_tokens: int = 0
    tokens: int = 0

    def lines(self) -> list[str]:
        out = [f"{self.records} records, {self.kept} kept ({self.images} with an image), {self.tokens} tokens,"
               f" {self.trained_tokens} trained"]
        if self.dropped:
            out.append("dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())))
        return out


def read_llava(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for a LLaVA JSON array or a JSONL file; ``where`` names file and line/index."""
    from ..jsonl import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise VlmDataError(f"{path}: no such file")
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise VlmDataError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(rows, list):
            raise VlmDataError(f"{path}: a LLaVA data file is a JSON array of records")
        for i, row in enumerate(rows):
            yield f"{path}[{i}]", row
        return
    for where, _, row in iter_jsonl(path):
        yield where, row


def _conversation(where: str, row: Any) -> tuple[str, str | None, list[dict[str, str]]]:
    if not isinstance(row, dict):
        raise VlmDataError(f"{where}: a record is a JSON object")
    if "id" not in row:
        raise VlmDataError(f"{where}: field 'id' missing")
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise VlmDataError(f"{where}: field 'conversations' must be a non-empty list")
    messages = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise VlmDataError(f"{where}: conversations[{j}] needs 'from' (human/gpt/system) and a string 'value'")
        messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise VlmDataError(f"{where}: field 'conversations' has no gpt turn to train on")
    image = row.get("image")
    if image is not None and not isinstance(image, str):
        raise VlmDataError(f"{where}: field 'image' must be a path (string)")
    return str(row["id"]), image, messages


class ConversationRenderer:
    """A conversation -> (ids, labels), exact for the LM's chat template; see the module docstring."""

    def __init__(self, tokenizer: Any, image_token: str, image_tokens: int, max_length: int = 2048):
        if not getattr(tokenizer, "chat_template", None):
            raise VlmDataError("the tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_tokens = image_tokens
        self.max_length = max_length
        others = tuple(t for t in control_tokens(tokenizer, tokenizer.chat_template) if t != image_token)
        self._control = control_pattern(others)
        self._eot = self._control

    def _text(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def expand(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{**m, "content": m["content"].replace(self.image_token, self.image_token * self.image_tokens)}
                for m in messages]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The ids a model is given to answer the last turn: the conversation and the generation prompt."""
        text = self._text(self.expand(messages), True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def render(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]] | str:
        """``(ids, labels)``, or the reason the conversation is dropped (``too_long``, ``control_text``)."""
        if self._control is not None and any(self._control.search(m["content"]) for m in messages):
            return "control_text"  # a record spelling <|im_end|> would end its turn early
        messages = self.expand(messages)
        full = self._text(messages, False)
        spans: list[tuple[int, int, Kind]] = []
        pos = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._text(messages[:i], True) if i else self._text([], True)
            through = self._text(messages[:i + 1], False)
            if not full.startswith(before) or not full.startswith(through) or not through.startswith(before):
                raise VlmDataError("the chat template does not render a conversation's prefixes as prefixes of it"
                                   " (it rewrites earlier turns); cings cannot mask it exactly")
            self._mark_user(full, pos, len(before), messages[:i], spans)
            turn = full[len(before):len(through)]
            content = message["content"].strip()
            at = turn.find(content) if content else 0
            if at < 0:
                raise VlmDataError("the chat template changes the assistant's text; cings cannot mask it exactly")
            start, end = len(before) + at, len(before) + at + len(content)
            spans.append((len(before), start, Kind.FRAME))
            spans.append((start, end, Kind.ANSWER))
            tail = full[end:len(through)]
            match = self._eot.search(tail) if self._eot is not None else None
            eot = match.end() if match else len(tail.rstrip())
            spans.append((end, end + eot, Kind.EOT))
            pos = end + eot
        spans.append((pos, len(full), Kind.FRAME))
        spans = [s for s in spans if s[1] > s[0]]
        from ..masking import EncodingTokens

        backend = self.tokenizer.backend_tokenizer
        backend.encode_special_tokens = False
        tokens = EncodingTokens(backend.encode(full, add_special_tokens=False))
        ids = tokens.ids()
        if len(ids) > self.max_length:
            return "too_long"
        return ids, assign_labels(ids, spans, _TRAINED, tokens)

    def _mark_user(self, full: str, pos: int, stop: int, messages: list[dict[str, str]], spans: list) -> None:
        """Frame text up to ``stop``, with the non-assistant contents in it marked as prompt text."""
        for message in messages:
            content = message["content"].strip()
            if message["role"] == "assistant" or not content:
                continue
            at = full.find(content, pos, stop)
            if at < 0:
                continue  # already covered by an earlier turn's span, or rewritten: masked either way
            spans.append((pos, at, Kind.FRAME))
            spans.append((at, at + len(content), Kind.PROMPT))
            pos = at + len(content)
        spans.append((pos, stop, Kind.FRAME))


def load_examples(path: str | Path, image_folder: str | Path | None, renderer: ConversationRenderer) -> tuple[list[VlmExample], LoadStats]:
    """Every record rendered; a missing image or a bad field is an error naming the record, a record
    that cannot be trained (too long, control text, no trained token) is dropped and counted."""
    stats = LoadStats()
    seen: set[str] = set()
    out: list[VlmExample] = []
    folder = Path(image_folder) if image_folder else Path(path).parent
    for where, row in read_llava(path):
        stats.records += 1
        rid, image, messages = _conversation(where, row)
        if rid in seen:
            raise VlmDataError(f"{where}: id {rid!r} appears twice")
        seen.add(rid)
        marks = sum(m["content"].count(renderer.image_token) for m in messages)
        if image is not None and marks != 1:
            raise VlmDataError(f"{where}: a record with an image needs exactly one {renderer.image_token!r} in its turns,"
                               f" found {marks}")
        if image is None and marks:
            raise VlmDataError(f"{where}: {renderer.image_token!r} in a record without field 'image'")
        image_path = None
        if image is not None:
            image_path = folder / image
            if not image_path.is_file():
                raise VlmDataError(f"{where}: field 'image': {image_path} does not exist (image folder {folder})")
        rendered = renderer.render(messages)
        if isinstance(rendered, str):
            stats.dropped[rendered] += 1
            continue
        ids, labels = rendered
        trained = sum(1 for t in labels if t != IGNORE_INDEX)
        if not trained:
            stats.dropped["nothing_trained"] += 1
            continue
        stats.kept += 1
        stats.images += image_path is not None
        stats.tokens += len(ids)
        stats.trained_tokens += trained
        out.append(VlmExample(rid, str(image_path) if image_path else None, ids, labels))
    if stats.records == 0:
        raise VlmDataError(f"{path}: no records")
    return out, stats


class VlmCollator:
    """Pads ids (right, for training) and turns each example's image into ``pixel_values``."""

    def __init__(self, image_processor: Any, pad_id: int):
        self.image_processor = image_processor
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from PIL import Image

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        images = []
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
            if f.get("image"):
                with Image.open(f["image"]) as img:
                    images.append(img.convert("RGB"))
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if images:
            batch["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return batch
