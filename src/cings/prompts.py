"""Evaluation prompts: which documents a record shows (``--docs``) and how (``--prompt``).

Every layout is rendered by the same :class:`~cings.render.Renderer` as training, and the prompt
is the rendered sequence up to its first trained token. So a prompt ends exactly where training
began supervising (right after ``## Answer`` in the CINGS layout, with no stray space or newline),
its token ids are the training ids, and system prompt, markers and template match the run.

Documents:
- ``none``: closed book; the assistant turn starts empty.
- ``gold``: the gold passages; with one document, the longest gold one (by words), as the paper.
- ``gold+distractors``: the longest gold passage, then ``K-1`` non-gold ones in retrieved order.
- ``topk``: the ``K`` highest-scored passages, gold or not, when every passage has a ``score``
  (ties keep file order); the first ``K`` as given when none has one; a record where only some
  have one is refused, since no order between the two kinds would be right for every retriever.

Layouts:
- ``prefill``: the CINGS layout; the assistant turn opened with ``## Context ... ## Answer``
  (numbered ``Context1:`` ... for several documents) and the model continues it.
- ``input``: the documents in the user turn after the question (``input_context`` training).
- ``raw``: a plain RAG prompt for off-the-shelf models, in the user turn, no system prompt:
  ``Answer the given question using provided context.`` / ``Context: ...`` / ``Question: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .records import Context, Record, RecordError
from .render import Dropped, Mode, Renderer, RenderOptions, passage_text

__all__ = ["DOCS", "LAYOUTS", "Prompt", "PromptBuilder", "select_docs"]

DOCS = ("none", "gold", "gold+distractors", "topk")
LAYOUTS = ("prefill", "input", "raw")
RAW_HEAD = "Answer the given question using provided context."
RAW_CLOSED = "Answer the given question."
_PLACEHOLDER = "A"  # any response: only the tokens before it are used


@dataclass
class Prompt:
    id: str
    text: str
    input_ids: list[int]
    docs: tuple[Context, ...]


def _longest(contexts: list[Context]) -> Context:
    return max(contexts, key=lambda c: (len(c.text.split()), -contexts.index(c)))


def _ranked(record: Record, contexts: list[Context]) -> list[Context]:
    scored = sum(c.score is not None for c in contexts)
    if scored == len(contexts):
        return sorted(contexts, key=lambda c: -c.score)  # sorted is stable: ties keep file order
    if scored:
        where = record.source or f"record {record.id!r}"
        raise RecordError(f"{where}: contexts: --docs topk ranks passages by 'score', but {scored} of {len(contexts)}"
                          " passages have one; give every passage a score, or none (then file order is kept)")
    return contexts


def select_docs(record: Record, docs: str, ndocs: int = 1) -> tuple[Context, ...] | None:
    """The documents a record shows; None when the setting does not apply (no gold passage)."""
    if docs not in DOCS:
        raise ValueError(f"--docs must be one of {', '.join(DOCS)}, not {docs!r}")
    if ndocs < 1:
        raise ValueError(f"--ndocs must be at least 1, not {ndocs}")
    contexts = list(record.contexts)
    gold = [c for c in contexts if c.gold]
    if docs == "none":
        return ()
    if docs == "topk":
        return tuple(_ranked(record, contexts)[:ndocs])
    if not gold:
        return None
    if docs == "gold":
        return (_longest(gold),) if ndocs == 1 else tuple(gold[:ndocs])
    first = _longest(gold)
    return (first, *[c for c in contexts if not c.gold][:ndocs - 1])


class PromptBuilder:
    """Prompts for one tokenizer, one layout and one document setting."""

    def __init__(self, tokenizer: Any, options: RenderOptions, *, layout: str = "prefill", docs: str = "gold",
                 ndocs: int = 1):
        if layout not in LAYOUTS:
            raise ValueError(f"--prompt must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        select_docs(Record(id="-", instruction="-", contexts=(), response="-"), docs, ndocs)  # validates
        self.layout, self.docs, self.ndocs = layout, docs, ndocs
        mode = {"prefill": Mode.CONTEXT, "input": Mode.INPUT_CONTEXT, "raw": Mode.NO_CONTEXT}[layout]
        # A prompt ends at the first trained token: a run's context_loss_weight would train the passage
        # and end the prompt before it.
        base = replace(options, train_markers=False, allow_no_context=True, context_loss_weight=None)
        if layout == "raw":
            base = replace(base, system_prompt=None)
        self.with_docs = Renderer(tokenizer, replace(base, mode=mode))
        self.closed = Renderer(tokenizer, replace(base, mode=Mode.NO_CONTEXT))

    def build(self, record: Record) -> Prompt | Dropped:
        docs = select_docs(record, self.docs, self.ndocs)
        if docs is None:
            return Dropped(record.id, "no_gold_passage")
        return self._render(record, docs)

    def build_pair(self, record: Record) -> tuple[Prompt, Prompt] | Dropped:
        """The prompt and the same record's closed-book prompt in the same layout (``--docs none``: in
        ``prefill`` the assistant turn opens empty, in ``input`` the user turn holds the question alone),
        the two branches of context-aware decoding."""
        with_docs = self.build(record)
        if isinstance(with_docs, Dropped):
            return with_docs
        closed = self._render(record, ())
        return closed if isinstance(closed, Dropped) else (with_docs, closed)

    def _render(self, record: Record, docs: tuple[Context, ...]) -> Prompt | Dropped:
        renderer = self.with_docs if docs else self.closed
        probe = replace(record, contexts=docs, segments=None, response=_PLACEHOLDER)
        if self.layout == "raw":
            sep = renderer.options.title_separator
            lines = [RAW_HEAD if docs else RAW_CLOSED]
            lines += [f"Context: {passage_text(c, sep)}" for c in docs]
            probe = replace(probe, instruction="\n".join(lines + [f"Question: {record.instruction.strip()}"]),
                            contexts=(), system=None)
        rendered = renderer.render(probe, with_offsets=True)
        if isinstance(rendered, Dropped):
            return rendered
        first = next(i for i, label in enumerate(rendered.labels) if label != -100)
        return Prompt(id=record.id, text=rendered.text[:rendered.offsets[first][0]],
                      input_ids=rendered.input_ids[:first], docs=tuple(docs))

    def stop_token_ids(self) -> list[int]:
        """The template's end-of-turn control token(s) and the tokenizer's eos."""
        renderer = self.closed
        frame = renderer.frame(bool(renderer.options.system_prompt))
        eot = frame.pieces[-1][:frame.eot_chars]
        tok = renderer.tokenizer
        ids = [tok.convert_tokens_to_ids(t) for t in renderer.control_tokens if t in eot]
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
        return sorted(set(i for i in ids if isinstance(i, int) and i >= 0))
