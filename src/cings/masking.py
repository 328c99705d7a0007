"""Character kinds -> labels, through token offsets.

Every character of a rendered sequence has a kind (template text, instruction, passage, answer...).
A token's label follows from the kinds of the characters it covers, by one rule:

* a token covering only trainable characters is trained;
* a token straddling template text and trainable text is trained (Llama-2's ``▁Paris`` carries the
  space the template wrote after ``[/INST]``; the model emits that token at inference);
* a token touching any masked record text (passage, instruction, a masked marker) is never trained.

Token lookups go through :class:`Tokens`, so the same rule serves a tokenizers ``Encoding``, a
cached head plus an encoding of the rest, and the piecewise encoding of sanitized text.
"""

from __future__ import annotations

import bisect
from enum import IntEnum
from typing import Any

__all__ = ["Kind", "Tokens", "EncodingTokens", "HeadTokens", "OffsetTokens", "assign_labels", "IGNORE_INDEX"]

IGNORE_INDEX = -100


class Kind(IntEnum):
    FRAME = 0          # text written by the chat template (headers, the tail after end-of-turn)
    PROMPT = 1         # system prompt and instruction
    MARKER = 2         # "## Context", numbering and separators around passages
    CONTEXT = 3        # passage text
    ANSWER_MARKER = 4  # " ## Answer"
    ANSWER = 5         # the response (with the space that follows "## Answer")
    EOT = 6            # the template's end-of-turn token(s) after the response



class Tokens:
    """Token lookups by character, over a tokenizers Encoding or over plain offset lists."""

    def __len__(self) -> int: ...
    def ids(self) -> list[int]: ...
    def offsets(self) -> list[tuple[int, int]]: ...
    def span(self, t: int) -> tuple[int, int]: ...
    def token_at(self, c: int) -> int | None: ...

    def char_start(self, t: int) -> int:
        return self.span(t)[0]

    def token_range(self, s: int, e: int) -> tuple[int | None, int | None]:
        """First and last token overlapping characters [s, e), or (None, None)."""
        n = len(self)
        first = None
        for c in range(s, e):
            first = self.token_at(c)
            if first is not None:
                break
        if first is None:
            return None, None
        while first > 0 and self.span(first - 1)[1] > s:
            first -= 1
        last = None
        for c in range(e - 1, s - 1, -1):
            last = self.token_at(c)
            if last is not None:
                break
        while last + 1 < n and self.span(last + 1)[0] < e:
            last += 1
        return first, last


class EncodingTokens(Tokens):
    def __init__(self, encoding: Any):
        self.enc = encoding
        self._n = len(encoding)  # not len(encoding.ids): that builds the id list a second time

    def __len__(self) -> int:
        return self._n

    def ids(self) -> list[int]:
        return self.enc.ids

    def offsets(self) -> list[tuple[int, int]]:
        return self.enc.offsets

    def span(self, t: int) -> tuple[int, int]:
        return self.enc.token_to_chars(t)

    def token_at(self, c: int) -> int | None:
        return self.enc.char_to_token(c)


class HeadTokens(Tokens):
    """A cached head encoding followed by the encoding of the rest of the text (which starts at ``cut``)."""

    def __init__(self, head_ids: list[int], head_offsets: list[tuple[int, int]], rest: Any, cut: int):
        self.head_ids, self.head_offsets, self.rest, self.cut = head_ids, head_offsets, rest, cut
        self.nh = len(head_ids)
        self._n = self.nh + len(rest)
        self._head: OffsetTokens | None = None

    def __len__(self) -> int:
        return self._n

    def ids(self) -> list[int]:
        return self.head_ids + self.rest.ids

    def offsets(self) -> list[tuple[int, int]]:
        return self.head_offsets + [(a + self.cut, b + self.cut) for a, b in self.rest.offsets]

    def span(self, t: int) -> tuple[int, int]:
        if t < self.nh:
            return self.head_offsets[t]
        a, b = self.rest.token_to_chars(t - self.nh)
        return a + self.cut, b + self.cut

    def token_at(self, c: int) -> int | None:
        if c < self.cut:
            if self._head is None:
                self._head = OffsetTokens(self.head_ids, self.head_offsets)
            return self._head.token_at(c)
        t = self.rest.char_to_token(c - self.cut)
        return None if t is None else t + self.nh


class OffsetTokens(Tokens):
    def __init__(self, ids: list[int], offsets: list[tuple[int, int]]):
        self._ids, self._offsets = ids, offsets
        self._ends = [b for _, b in offsets]

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[int]:
        return self._ids

    def offsets(self) -> list[tuple[int, int]]:
        return self._offsets

    def span(self, t: int) -> tuple[int, int]:
        return self._offsets[t]

    def token_at(self, c: int) -> int | None:
        t = bisect.bisect_right(self._ends, c)  # first token ending after c
        if t < len(self._ids) and self._offsets[t][0] <= c < self._offsets[t][1]:
            return t
        return None


def assign_labels(ids: list[int], spans: list[tuple[int, int, Kind]], trainable: frozenset[Kind],
                  tokens: Tokens) -> list[int]:
    """Labels from character kinds: see the module docstring for the one straddling rule."""
    labels = [IGNORE_INDEX] * len(ids)
    runs: list[list[int]] = []
    for s, e, kind in spans:
        if kind in trainable:
            if runs and runs[-1][1] == s:
                runs[-1][1] = e
            else:
                runs.append([s, e])
    if not runs:
        return labels
    starts = [s for s, _, _ in spans]

    def touches_masked(a: int, b: int) -> bool:
        i = max(bisect.bisect_right(starts, a) - 1, 0)
        while i < len(spans) and spans[i][0] < b:
            s, e, kind = spans[i]
            if e > a and kind is not Kind.FRAME and kind not in trainable:
                return True
            i += 1
        return False

    for s, e in runs:
        first, last = tokens.token_range(s, e)
        if first is None:
            continue
        while first <= last:
            a, b = tokens.span(first)
            if a < s and touches_masked(a, s) or b > e and touches_masked(e, b):
                first += 1
            else:
                break
        while last >= first:
            a, b = tokens.span(last)
            if b > e and touches_masked(e, b) or a < s and touches_masked(a, s):
                last -= 1
            else:
                break
        if first <= last:
            labels[first:last + 1] = ids[first:last + 1]
    return labels
