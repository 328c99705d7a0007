"""Record + mode + tokenizer -> token ids and labels. The heart of cings.

A record is laid out as text parts of known kinds (instruction, passage, marker, answer, ...),
placed into the chat template's frame (:mod:`cings.chat_frame`), tokenized **once** with offsets,
and each token's label follows from the kinds of the characters it covers (:mod:`cings.masking`).
The four modes differ only in which kinds are trainable.
"""

from __future__ import annotations

import difflib
import gc
import warnings
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any, Sequence

from .chat_frame import ChatFrame, TemplateError, build_frame, control_pattern, control_tokens, resolve_template
from .masking import IGNORE_INDEX, EncodingTokens, HeadTokens, Kind, OffsetTokens, Tokens, assign_labels
from .records import Context, Record, RecordError

__all__ = ["Mode", "parse_mode", "Kind", "RenderOptions", "Renderer", "Rendered", "Dropped",
           "PAPER_SYSTEM_PROMPT", "MODE_ALIASES", "render_example"]

PAPER_SYSTEM_PROMPT = (
    "You are a helpful language assistant. You are able to understand the external context that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)


class Mode(str, Enum):
    NO_CONTEXT = "no_context"
    INPUT_CONTEXT = "input_context"
    CONTEXT = "context"
    NO_MASK = "no_mask"

    @property
    def context_in_response(self) -> bool:
        return self in (Mode.CONTEXT, Mode.NO_MASK)

    @property
    def uses_context(self) -> bool:
        return self is not Mode.NO_CONTEXT


# The authors' names (README, configs, v2 paper) and a few obvious spellings.
MODE_ALIASES = {
    "standard": Mode.NO_CONTEXT, "without_context": Mode.NO_CONTEXT, "noctx": Mode.NO_CONTEXT,
    "input": Mode.INPUT_CONTEXT, "input_side": Mode.INPUT_CONTEXT, "rag": Mode.INPUT_CONTEXT,
    "context_in_input": Mode.INPUT_CONTEXT,
    "cings": Mode.CONTEXT, "ctx": Mode.CONTEXT, "context_with_sp": Mode.CONTEXT, "context_masked": Mode.CONTEXT,
    "nomask": Mode.NO_MASK, "context_no_mask": Mode.NO_MASK,
}


def parse_mode(name: str | Mode) -> Mode:
    if isinstance(name, Mode):
        return name
    key = name.strip().lower().replace("-", "_")
    try:
        return Mode(key)
    except ValueError:
        pass
    if key in MODE_ALIASES:
        return MODE_ALIASES[key]
    close = difflib.get_close_matches(key, [m.value for m in Mode] + sorted(MODE_ALIASES), n=1, cutoff=0.6)
    hint = ""
    if close:
        # An alias is shown with the mode it stands for, so the suggestion also teaches the mode's name.
        meant = f", i.e. {MODE_ALIASES[close[0]].value}" if close[0] in MODE_ALIASES else ""
        hint = f" (did you mean {close[0]!r}{meant}?)"
    raise ValueError(f"unknown mode {name!r}{hint}: choose one of {', '.join(m.value for m in Mode)}"
                     f" (aliases: {', '.join(sorted(MODE_ALIASES))})")


@dataclass(frozen=True)
class RenderOptions:
    """How records become training sequences. Field help drives the CLI flags."""

    mode: Mode = field(default=Mode.CONTEXT, metadata={"help": "no_context | input_context | context (CINGS) | no_mask; the authors' names are accepted"})
    max_length: int = field(default=4096, metadata={"help": "longest sequence in tokens; contexts are cut from their end to fit, never the response"})
    system_prompt: str | None = field(default=PAPER_SYSTEM_PROMPT, metadata={"help": "system prompt (default: the paper's); '' for none; a record's 'system' field wins"})
    context_marker: str = field(default="## Context", metadata={"help": "marker written before the passages"})
    answer_marker: str = field(default="## Answer", metadata={"help": "marker written between the passages and the answer"})
    numbering: str = field(default="auto", metadata={"help": "number several passages 'Context1: ...' with blank lines, as the paper: auto (when 2+), always, never"})
    title_separator: str = field(default=" ", metadata={"help": "text between a passage's title and its text"})
    train_markers: bool = field(default=False, metadata={"help": "also train the answer marker ('## Answer')"})
    context_loss_weight: float | None = field(default=None, metadata={"help": "mode context: weight of the passages and their markers in the loss; 0 = CINGS (masked), 1 = no_mask (trained like the answer), between = partly (default: the mode's own masking)"})
    allow_no_context: bool = field(default=False, metadata={"help": "render records with no contexts without context instead of failing (for mixtures)"})
    chat_template: str | None = field(default=None, metadata={"help": "a Jinja file or builtin (llama2-chat, chatml) instead of the tokenizer's template"})
    template_kwargs: tuple[tuple[str, Any], ...] = field(default=(("enable_thinking", False),), metadata={"help": "extra template variables as JSON (Qwen3: enable_thinking false puts the empty think block in the prompt)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_mode(self.mode))
        if self.numbering not in ("auto", "always", "never"):
            raise ValueError(f"numbering must be auto, always or never, not {self.numbering!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, not {self.max_length}")
        if isinstance(self.template_kwargs, dict):
            object.__setattr__(self, "template_kwargs", tuple(sorted(self.template_kwargs.items())))
        for name in ("context_marker", "answer_marker"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty")
        weight = self.context_loss_weight
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
                raise ValueError(f"context_loss_weight must be a number from 0 to 1, not {weight!r}")
            if self.mode is not Mode.CONTEXT:
                raise ValueError(f"context_loss_weight weighs the passage in the answer of mode context, not mode"
                                 f" {self.mode.value!r} (no_mask is weight 1, context weight 0)")
            object.__setattr__(self, "context_loss_weight", float(weight))

    def trainable(self) -> frozenset[Kind]:
        kinds = {Kind.ANSWER, Kind.EOT}
        if self.mode is Mode.NO_MASK:
            kinds |= {Kind.MARKER, Kind.CONTEXT, Kind.ANSWER_MARKER}
        elif self.mode is Mode.CONTEXT and self.train_markers:
            kinds.add(Kind.ANSWER_MARKER)
        return frozenset(kinds)

    def weighted(self) -> frozenset[Kind]:
        """Kinds trained at weight ``context_loss_weight``: what no_mask trains and this mode does not (the
        passages, their markers and, unless ``train_markers``, ``## Answer``). Empty without a weight or at 0."""
        if not self.context_loss_weight:
            return frozenset()
        return frozenset({Kind.MARKER, Kind.CONTEXT, Kind.ANSWER_MARKER}) - self.trainable()

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["mode"] = self.mode.value
        out["template_kwargs"] = dict(self.template_kwargs)
        if self.context_loss_weight is None:
            # Unset, it is left out: manifests and runs recorded before the option existed stay comparable.
            del out["context_loss_weight"]
        return out


Part = tuple[str, Kind]


@dataclass
class Rendered:
    id: str
    text: str
    spans: list[tuple[int, int, Kind]]  # a contiguous cover of ``text``
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    offsets: list[tuple[int, int]] | None = None
    messages: list[dict[str, str]] | None = None  # the chat these ids encode (after truncation)
    # Per token, with a context_loss_weight: 1.0 where the mode trains, the weight on the passage tokens,
    # 0.0 where the label is IGNORE_INDEX (a label is trained exactly where its weight is above 0).
    loss_weights: list[float] | None = None

    @property
    def num_trained(self) -> int:
        return sum(1 for x in self.labels if x != -100)


@dataclass
class Dropped:
    id: str
    reason: str
    num_tokens: int = 0


@dataclass
class Layout:
    text: str
    spans: list[tuple[int, int, Kind]]
    messages: list[dict[str, str]]
    has_control_text: bool
    head: int = 0  # text[:head] ends with a template control token before any varying record text


def passage_text(ctx: Context, title_separator: str) -> str:
    """``{title} {text}`` with all whitespace runs (newlines included) collapsed, as the paper renders it."""
    raw = f"{ctx.title}{title_separator}{ctx.text}" if ctx.title.strip() else ctx.text
    return " ".join(raw.split())


_MAX_HEADS = 256  # distinct system prompts whose encodings are kept; the rest are encoded whole


class Renderer:
    """Renders records for one tokenizer and one set of options. Cheap to call, expensive to build."""

    def __init__(self, tokenizer: Any, options: RenderOptions | None = None):
        self.options = options or RenderOptions()
        if not getattr(tokenizer, "is_fast", False) or getattr(tokenizer, "backend_tokenizer", None) is None:
            raise TemplateError(f"{type(tokenizer).__name__} is not a fast tokenizer: cings needs character offsets"
                                " (load a tokenizer.json, or a GGUF file, with AutoTokenizer)")
        self.tokenizer = tokenizer
        self.backend = tokenizer.backend_tokenizer
        self.template, self.template_source = resolve_template(tokenizer, self.options.chat_template)
        self.control_tokens = control_tokens(tokenizer, self.template)
        self._control_re = control_pattern(self.control_tokens)
        self._control_ids = {tokenizer.convert_tokens_to_ids(t) for t in self.control_tokens}
        self._trainable = self.options.trainable()
        self._frames: dict[bool, ChatFrame] = {}
        self._head_cut: dict[bool, int] = {}
        # Encodings of constant heads (system block + user header), keyed by their text; None where
        # encoding the head apart from the rest was found not to give the same tokens.
        self._heads: dict[str, tuple[list[int], list[tuple[int, int]]] | None] = {}
        self._newline_ids = self.backend.encode("\n", add_special_tokens=False).ids

    # ---------------------------------------------------------------- layout
    def frame(self, with_system: bool) -> ChatFrame:
        if with_system not in self._frames:
            frame = build_frame(self.tokenizer, self.template, with_system=with_system,
                                template_kwargs=dict(self.options.template_kwargs))
            self._frames[with_system] = frame
            if frame.eot_chars == 0:
                warnings.warn(f"the chat template ({self.template_source}) writes nothing after the assistant"
                              " turn: no end-of-turn token will be trained, so the model will not learn to stop",
                              stacklevel=2)
            self._head_cut[with_system] = self._safe_cut(frame.pieces[len(frame.slots) - 2])
        return self._frames[with_system]

    def _safe_cut(self, piece: str) -> int:
        """End of the last control token in the frame piece before the user content, or -1.

        Text after an added token is tokenized independently of the text before it, unless the
        token strips or normalizes its neighbours; only then may the head be encoded apart.
        """
        if self._control_re is None:
            return -1
        matches = list(self._control_re.finditer(piece))
        if not matches:
            return -1
        added = {t.content: t for t in self.tokenizer.added_tokens_decoder.values()}
        token = added.get(matches[-1].group())
        if token is None or token.lstrip or token.rstrip or token.normalized or token.single_word:
            return -1
        return matches[-1].end()

    def check(self, record: Record) -> None:
        """Mode-dependent validation; raises :class:`RecordError` naming the record's file and line."""
        if self.options.mode.uses_context and not record.contexts and not self.options.allow_no_context:
            where = record.source or f"record {record.id!r}"
            raise RecordError(f"{where}: field 'contexts' is empty, but mode '{self.options.mode.value}' renders"
                              " contexts (pass --allow-no-context to render such records without context)")

    def _context_block(self, passages: Sequence[str], lead: str) -> list[Part]:
        opts = self.options
        numbered = opts.numbering == "always" or (opts.numbering == "auto" and len(passages) > 1)
        label = opts.context_marker.lstrip("#").strip() or opts.context_marker
        parts: list[Part] = []
        for i, passage in enumerate(passages, start=1):
            if i == 1:
                head = f"{lead}{opts.context_marker}{f'{i}: ' if numbered else ' '}"
            else:
                head = f"\n\n{label}{i}: " if numbered else "\n\n"
            parts += [(head, Kind.MARKER), (passage, Kind.CONTEXT)]
        return parts

    def _groups(self, record: Record, contexts: list[list[str]] | None) -> list[list[str]]:
        """Passage texts grouped by segment (one group without segments)."""
        if contexts is not None:
            return contexts
        sep = self.options.title_separator
        if record.segments and self.options.mode.context_in_response:
            return [[passage_text(c, sep) for c in s.contexts] for s in record.segments]
        return [[passage_text(c, sep) for c in record.contexts]]

    def layout(self, record: Record, contexts: list[list[str]] | None = None) -> Layout:
        """Lay the record out as text with kinded spans. ``contexts`` overrides passage texts (truncation)."""
        opts, mode = self.options, self.options.mode
        groups = self._groups(record, contexts)
        system = record.system if record.system is not None else opts.system_prompt
        with_system = bool(system)
        frame = self.frame(with_system)

        user: list[Part] = [(record.instruction, Kind.PROMPT)]
        assistant: list[Part]
        response = record.response.strip()
        if mode is Mode.INPUT_CONTEXT and groups[0]:
            user += self._context_block(groups[0], "\n\n")
        if mode.context_in_response and record.segments:
            assistant = []
            for i, (seg, passages) in enumerate(zip(record.segments, groups)):
                lead = " " if i else ""
                if passages:
                    assistant += self._context_block(passages, lead)
                    assistant += [(f" {opts.answer_marker}", Kind.ANSWER_MARKER), (f" {seg.response.strip()}", Kind.ANSWER)]
                else:
                    assistant.append((f"{lead}{seg.response.strip()}", Kind.ANSWER))
        elif mode.context_in_response and groups[0]:
            assistant = self._context_block(groups[0], "")
            assistant += [(f" {opts.answer_marker}", Kind.ANSWER_MARKER), (f" {response}", Kind.ANSWER)]
        else:
            assistant = [(response, Kind.ANSWER)]

        slots: list[list[Part]] = ([[(system, Kind.PROMPT)]] if with_system else []) + [user, assistant]
        text_parts: list[str] = []
        spans: list[tuple[int, int, Kind]] = []
        messages = []
        pos = 0
        control = False

        def emit(text: str, kind: Kind) -> None:
            nonlocal pos
            if text:
                text_parts.append(text)
                spans.append((pos, pos + len(text), kind))
                pos += len(text)

        head = 0
        cut = self._head_cut[with_system]
        for i, (role, parts) in enumerate(zip(frame.slots, slots)):
            parts = _strip_parts(parts, frame, i)
            if role == "user" and cut >= 0:
                head = pos + cut
            emit(frame.pieces[i], Kind.FRAME)
            for text, kind in parts:
                emit(text, kind)
                if self._control_re is not None and self._control_re.search(text):
                    control = True
            messages.append({"role": role, "content": "".join(t for t, _ in parts)})
        tail = frame.pieces[-1]
        emit(tail[:frame.eot_chars], Kind.EOT)
        emit(tail[frame.eot_chars:], Kind.FRAME)
        return Layout(text="".join(text_parts), spans=spans, messages=messages, has_control_text=control, head=head)

    # ---------------------------------------------------------------- tokens and labels
    def render(self, record: Record, *, with_offsets: bool = False) -> Rendered | Dropped:
        return self.render_batch([record], with_offsets=with_offsets)[0]

    def render_batch(self, records: Sequence[Record], *, with_offsets: bool = False) -> list[Rendered | Dropped]:
        # Rendering allocates many small acyclic objects; with a large heap alive (a loaded dataset)
        # the cyclic collector's passes cost more than the rendering itself.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._render_batch(records, with_offsets)
        finally:
            if collecting:
                gc.enable()

    def _render_batch(self, records: Sequence[Record], with_offsets: bool) -> list[Rendered | Dropped]:
        layouts = [self.layout(r) for r in records]
        plain = [i for i, lay in enumerate(layouts) if not lay.has_control_text]
        for i in plain:  # first sight of a head: encode it alone and check that splitting there is exact
            lay = layouts[i]
            if lay.head and lay.text[:lay.head] not in self._heads and len(self._heads) < _MAX_HEADS:
                self._heads[lay.text[:lay.head]] = self._check_head(lay)
        heads = [self._heads.get(layouts[i].text[:layouts[i].head]) if layouts[i].head else None for i in plain]
        self.backend.encode_special_tokens = False
        texts = [layouts[i].text[layouts[i].head:] if head else layouts[i].text for i, head in zip(plain, heads)]
        encodings: dict[int, Tokens] = {}
        for i, head, enc in zip(plain, heads, self.backend.encode_batch(texts, add_special_tokens=False) if texts else []):
            encodings[i] = HeadTokens(head[0], head[1], enc, layouts[i].head) if head else EncodingTokens(enc)
        out: list[Rendered | Dropped] = []
        for i, (record, lay) in enumerate(zip(records, layouts)):
            tokens = encodings[i] if i in encodings else self._encode_sanitized(lay)
            result = self._finish(record, lay, tokens, with_offsets)
            out.append(result)
        return out

    def _finish(self, record: Record, lay: Layout, tokens: Tokens, with_offsets: bool) -> Rendered | Dropped:
        truncated = False
        if len(tokens) > self.options.max_length:
            fitted = self._truncate(record, lay, tokens)
            if isinstance(fitted, Dropped):
                return fitted
            lay, tokens = fitted
            truncated = True
        ids = tokens.ids()
        labels = assign_labels(ids, lay.spans, self._trainable, tokens)
        weights = None
        if self.options.context_loss_weight is not None:
            labels, weights = self._weigh(ids, lay.spans, labels, tokens)
        return Rendered(id=record.id, text=lay.text, spans=lay.spans, input_ids=ids, labels=labels,
                        truncated=truncated, offsets=tokens.offsets() if with_offsets else None,
                        messages=lay.messages, loss_weights=weights)

    def _weigh(self, ids: list[int], spans: list[tuple[int, int, Kind]], core: list[int],
               tokens: Tokens) -> tuple[list[int], list[float]]:
        """Labels and weights with a context_loss_weight λ: the mode's own labels at weight 1, and the tokens
        no_mask trains beyond them (its labels, by the same straddling rule) at λ. So λ = 0 gives exactly
        the context labels and λ = 1 exactly the no_mask labels, each with every weight 1."""
        weight = self.options.context_loss_weight
        extra = self.options.weighted()
        if not extra:
            return core, [0.0 if label == IGNORE_INDEX else 1.0 for label in core]
        wide = assign_labels(ids, spans, self._trainable | extra, tokens)
        labels = [c if c != IGNORE_INDEX else w for c, w in zip(core, wide)]
        weights = [1.0 if c != IGNORE_INDEX else (0.0 if label == IGNORE_INDEX else weight)
                   for c, label in zip(core, labels)]
        return labels, weights

    def _check_head(self, lay: Layout) -> tuple[list[int], list[tuple[int, int]]] | None:
        whole = self.backend.encode(lay.text, add_special_tokens=False)
        head = self.backend.encode(lay.text[:lay.head], add_special_tokens=False)
        rest = self.backend.encode(lay.text[lay.head:], add_special_tokens=False)
        if head.ids + rest.ids != whole.ids:
            return None
        return head.ids, head.offsets

    def _tokens(self, lay: Layout) -> Tokens:
        if lay.has_control_text:
            return self._encode_sanitized(lay)
        self.backend.encode_special_tokens = False
        return EncodingTokens(self.backend.encode(lay.text, add_special_tokens=False))

    def _truncate(self, record: Record, lay: Layout, tokens: Tokens):
        """Cut passages from their end (last passage first) until the sequence fits; never the response."""
        limit = self.options.max_length
        if not self.options.mode.uses_context or not any(k is Kind.CONTEXT for _, _, k in lay.spans):
            return Dropped(record.id, "too_long", len(tokens))
        groups = [list(g) for g in self._groups(record, None)]
        for _ in range(8):
            excess = len(tokens) - limit
            if excess <= 0:
                return lay, tokens
            # Passage spans in layout order match the groups flattened in order.
            ctx_spans = [(s, e) for s, e, k in lay.spans if k is Kind.CONTEXT]
            index = [(g, j) for g, group in enumerate(groups) for j in range(len(group))]
            while excess > 0 and index:
                (g, j), (s, e) = index.pop(), ctx_spans.pop()
                first, last = tokens.token_range(s, e)
                n = 0 if first is None else last - first + 1
                if n <= excess + 2:  # +2: the numbering and separator go with a dropped passage
                    del groups[g][j]
                    excess -= n + 2
                else:
                    cut = tokens.char_start(last - excess + 1) - s
                    groups[g][j] = groups[g][j][:max(cut, 0)].rstrip()
                    if not groups[g][j]:
                        del groups[g][j]
                    excess = 0
            if not any(groups):
                bare = self.layout(record, [[] for _ in groups])
                bare_tokens = self._tokens(bare)
                if len(bare_tokens) > limit:
                    return Dropped(record.id, "too_long", len(bare_tokens))
                return Dropped(record.id, "no_room_for_context", len(tokens))
            lay = self.layout(record, groups)
            tokens = self._tokens(lay)
        return Dropped(record.id, "truncation_did_not_converge", len(tokens))

    def _encode_sanitized(self, lay: Layout) -> OffsetTokens:
        """Encode a text whose record parts spell control tokens: those spellings become plain text.

        Same scheme as transformers' ``apply_chat_template(sanitize_control_tokens=True)``: split at
        each such spelling, encode the pieces separately (after a newline, so SentencePiece adds no
        prefix space), and the spellings with added tokens disabled.
        """
        cuts: list[tuple[int, int]] = []
        for s, e, kind in lay.spans:
            if kind is Kind.FRAME or kind is Kind.EOT:
                continue
            for m in self._control_re.finditer(lay.text, s, e):
                cuts.append((m.start(), m.end()))
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        for s, e in cuts + [(len(lay.text), len(lay.text))]:
            if s > pos:
                self._encode_piece(lay.text, pos, s, plain=False, first=pos == 0, ids=ids, offsets=offsets)
            if e > s:
                self._encode_piece(lay.text, s, e, plain=True, first=s == 0, ids=ids, offsets=offsets)
            pos = e
        return OffsetTokens(ids, offsets)

    def _encode_piece(self, text: str, s: int, e: int, *, plain: bool, first: bool,
                      ids: list[int], offsets: list[tuple[int, int]]) -> None:
        piece = text[s:e]
        self.backend.encode_special_tokens = plain
        try:
            piece_ids, piece_offsets = None, None
            if not first:
                enc = self.backend.encode("\n" + piece, add_special_tokens=False)
                k = len(self._newline_ids)
                if enc.ids[:k] == self._newline_ids:
                    piece_ids = enc.ids[k:]
                    piece_offsets = [(max(a - 1, 0), max(b - 1, 0)) for a, b in enc.offsets[k:]]
            if piece_ids is None:
                enc = self.backend.encode(piece, add_special_tokens=False)
                piece_ids, piece_offsets = enc.ids, enc.offsets
        finally:
            self.backend.encode_special_tokens = False
        if plain and len(piece) > 1 and self._control_ids.intersection(piece_ids):
            # A non-special added token (Qwen3's </think>) still matches with special tokens disabled:
            # split the spelling so it cannot.
            mid = s + len(piece) // 2
            self._encode_piece(text, s, mid, plain=True, first=first, ids=ids, offsets=offsets)
            self._encode_piece(text, mid, e, plain=True, first=False, ids=ids, offsets=offsets)
            return
        ids.extend(piece_ids)
        offsets.extend((a + s, b + s) for a, b in piece_offsets)


def _strip_parts(parts: list[Part], frame: ChatFrame, slot: int) -> list[Part]:
    """Apply the template's stripping of this slot's content across part boundaries."""
    parts = [p for p in parts if p[0]]
    while parts:
        text, kind = parts[0]
        stripped = frame.lead[slot].lead(text)
        if stripped:
            parts[0] = (stripped, kind)
            break
        parts.pop(0)
    while parts:
        text, kind = parts[-1]
        stripped = frame.trail[slot].trail(text)
        if stripped:
            parts[-1] = (stripped, kind)
            break
        parts.pop()
    return parts


_RENDERERS: dict[tuple[int, RenderOptions], Renderer] = {}


def render_example(record: Record, mode: Mode | str, tokenizer: Any, options: RenderOptions | None = None,
                   *, with_offsets: bool = False) -> Rendered | Dropped:
    """The pure function: (record, mode, tokenizer) -> ids and labels. Renderers are cached per tokenizer."""
    options = replace(options or RenderOptions(), mode=parse_mode(mode))
    key = (id(tokenizer), options)
    renderer = _RENDERERS.get(key)
    if renderer is None or renderer.tokenizer is not tokenizer:
        renderer = _RENDERERS[key] = Renderer(tokenizer, options)
    return renderer.render(record, with_offsets=with_offsets)
