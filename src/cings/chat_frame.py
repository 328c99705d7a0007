"""The frame a chat template puts around message contents.

A chat template is rendered once with sentinel contents; what surrounds the sentinels is the frame.
Every record is then rendered by placing its contents into the frame, which is exact (we check it
against the template itself, see :func:`build_frame`) and knows the character span of every part by
construction. No per-record template render, no searching the output for the content.

What a template does to content before writing it (Llama-3 trims it, Qwen3 strips leading
newlines from the last assistant turn) is probed per slot and applied by :meth:`ChatFrame.normalize`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

__all__ = ["ChatFrame", "TemplateError", "build_frame", "resolve_template", "control_tokens",
           "BUILTIN_TEMPLATES", "FALLBACK_TEMPLATE"]

# Private-use characters: no template trims, escapes or tests for them.
_SENTINEL = {"system": "\ue000CINGS-SYSTEM\ue001", "user": "\ue000CINGS-USER\ue001",
             "assistant": "\ue000CINGS-ASSISTANT\ue001"}
# Whitespace that templates are known to strip (`trim`, `lstrip('\n')`); all stripped means str.strip().
_PROBE_WS = (" ", "\t", "\n", "\r", "\u3000")

BUILTIN_TEMPLATES = ("llama2-chat", "chatml")
FALLBACK_TEMPLATE = "llama2-chat"


class TemplateError(ValueError):
    """A chat template cings cannot frame exactly."""


@dataclass(frozen=True)
class Strip:
    """What a template strips from one side of a content: nothing, all whitespace, or given chars."""

    chars: str | None  # None = all whitespace (str.strip semantics)
    active: bool

    def lead(self, text: str) -> str:
        return text.lstrip(self.chars) if self.active else text

    def trail(self, text: str) -> str:
        return text.rstrip(self.chars) if self.active else text


NO_STRIP = Strip(None, False)


@dataclass(frozen=True)
class ChatFrame:
    """A template's frame for one conversation shape ([system,] user, assistant).

    ``pieces[i]`` precedes ``slots[i]``; ``pieces[-1]`` follows the last slot. The first
    ``eot_chars`` characters of ``pieces[-1]`` are the end-of-turn text the model must learn to
    emit; the rest (Qwen's trailing newline) is not trained.
    """

    slots: tuple[str, ...]
    pieces: tuple[str, ...]
    lead: tuple[Strip, ...]
    trail: tuple[Strip, ...]
    eot_chars: int
    template: str

    def normalize(self, slot: int, first: str, last: str) -> tuple[str, str]:
        """Apply the template's stripping to the first and last part of a slot's content."""
        return self.lead[slot].lead(first), self.trail[slot].trail(last)

    def prompt_prefix(self) -> str:
        return self.pieces[0]


def _builtin(name: str) -> str:
    return resources.files("cings").joinpath("templates", f"{name.replace('-', '_')}.jinja").read_text("utf-8")


def resolve_template(tokenizer: Any, chat_template: str | None = None) -> tuple[str, str]:
    """Return ``(template text, where it came from)``.

    ``chat_template`` may be a builtin name (``llama2-chat``, ``chatml``), a path to a Jinja file,
    or None for the tokenizer's own template, with the documented fallback (``llama2-chat``) when
    the tokenizer has none.
    """
    if chat_template:
        if chat_template in BUILTIN_TEMPLATES:
            return _builtin(chat_template), f"builtin:{chat_template}"
        path = Path(chat_template)
        if path.is_file():
            return path.read_text(encoding="utf-8"), str(path)
        if "{%" in chat_template or "{{" in chat_template:
            return chat_template, "inline"
        raise TemplateError(f"--chat-template {chat_template!r}: not a file, not a builtin ({', '.join(BUILTIN_TEMPLATES)}) and not a Jinja template")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    if own:
        return own, "tokenizer"
    return _builtin(FALLBACK_TEMPLATE), f"fallback:{FALLBACK_TEMPLATE} (the tokenizer has no chat template)"


def control_tokens(tokenizer: Any, template: str) -> tuple[str, ...]:
    """Added tokens that act as control tokens: special ones, and any the template writes itself.

    Text in a record that spells one of these must be encoded as plain text, otherwise a
    retrieved web page quoting ``<|eot_id|>`` would end the assistant turn in training data.
    """
    found = []
    for tok in getattr(tokenizer, "added_tokens_decoder", {}).values():
        content = tok.content
        if not content or content.isspace():
            continue
        if tok.special or content in template:
            found.append(content)
    # Longest first, so the regex prefers "<|im_end|>" over a shorter token that is its prefix.
    return tuple(sorted(set(found), key=len, reverse=True))


def control_pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in tokens))


def _render(tokenizer: Any, template: str, messages: list[dict], kwargs: Mapping[str, Any]) -> str:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=False, **dict(kwargs))
    except Exception as err:  # jinja raises anything from TemplateError to ZeroDivisionError
        roles = "/".join(m["role"] for m in messages)
        hint = " (a template without a system role: pass --system-prompt '')" if roles.startswith("system") else ""
        raise TemplateError(f"the chat template failed on a {roles} conversation: {err}{hint}") from err


def _split(rendered: str, slots: tuple[str, ...]) -> tuple[str, ...]:
    pieces, rest = [], rendered
    for slot in slots:
        sentinel = _SENTINEL[slot]
        count = rest.count(sentinel)
        if count != 1:
            raise TemplateError(f"the chat template writes the {slot} content {count} times"
                                f" (cings needs it exactly once, in order); use --chat-template")
        before, rest = rest.split(sentinel)
        pieces.append(before)
    pieces.append(rest)
    return tuple(pieces)


def _probe_strip(tokenizer, template, roles, slot, kwargs) -> tuple[Strip, Strip]:
    """Which whitespace the template strips before and after one slot's content."""
    sentinel = _SENTINEL[roles[slot]]
    base = _render(tokenizer, template, [{"role": r, "content": _SENTINEL[r]} for r in roles], kwargs)
    base_before, base_after = base.index(sentinel), len(base) - base.index(sentinel) - len(sentinel)
    lead, trail = [], []
    for ws in _PROBE_WS:
        contents = {r: _SENTINEL[r] for r in roles}
        contents[roles[slot]] = ws * 2 + sentinel + ws * 2
        text = _render(tokenizer, template, [{"role": r, "content": contents[r]} for r in roles], kwargs)
        if text.count(sentinel) != 1:
            raise TemplateError("the chat template changes content it is given; use --chat-template")
        before = text.index(sentinel)
        after = len(text) - before - len(sentinel)
        for grown, side in ((before - base_before, lead), (after - base_after, trail)):
            if grown == 0:
                side.append(ws)
            elif grown != 2:
                raise TemplateError(f"the chat template half-strips {ws!r} around content; use --chat-template")

    def strip(chars: list[str]) -> Strip:
        if not chars:
            return NO_STRIP
        if len(chars) == len(_PROBE_WS):
            return Strip(None, True)
        return Strip("".join(chars), True)

    return strip(lead), strip(trail)


def build_frame(tokenizer: Any, template: str, *, with_system: bool,
                template_kwargs: Mapping[str, Any] | None = None) -> ChatFrame:
    """Probe ``template`` and return its frame for a ([system,] user, assistant) conversation.

    The frame is checked against a real render of a conversation with awkward whitespace; a
    template whose output depends on content in other ways than placing and stripping it is
    rejected with a clear error instead of producing silently wrong masks.
    """
    kwargs = dict(template_kwargs or {})
    roles = (("system",) if with_system else ()) + ("user", "assistant")
    messages = [{"role": r, "content": _SENTINEL[r]} for r in roles]
    pieces = _split(_render(tokenizer, template, messages, kwargs), roles)
    strips = [_probe_strip(tokenizer, template, roles, i, kwargs) for i in range(len(roles))]
    frame = ChatFrame(slots=roles, pieces=pieces, lead=tuple(s[0] for s in strips),
                      trail=tuple(s[1] for s in strips),
                      eot_chars=_eot_chars(pieces[-1], control_pattern(control_tokens(tokenizer, template))),
                      template=template)

    text = "The quick brown fox: 'jumps' over 42 lazy dogs?  Ünïcode — 北京 {x} <b>"
    probe = {"system": f"  {text}\n ", "user": f"\n {text}\n", "assistant": f"\n\n ## {text}.\n "}
    real = _render(tokenizer, template, [{"role": r, "content": probe[r]} for r in roles], kwargs)
    ours = []
    for i, role in enumerate(roles):
        first, _ = frame.normalize(i, probe[role], "")
        content = frame.trail[i].trail(first)
        ours += [pieces[i], content]
    ours.append(pieces[-1])
    if "".join(ours) != real:
        raise TemplateError("the chat template transforms message content in a way cings cannot map to"
                            " character spans; pass a simpler template with --chat-template")
    return frame


def _eot_chars(tail: str, pattern: re.Pattern | None) -> int:
    """Characters of the text after the assistant content that are trained: up to the first control token."""
    match = pattern.search(tail) if pattern else None
    if match:
        return match.end()
    return len(tail.rstrip())
