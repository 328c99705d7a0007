"""Self-RAG generator training data (``selfrag/selfrag_train_data``) -> grounded records.

A row is ``{"instruction", "input", "output", "id", "dataset_name"}``; ``output`` holds the answer
with reflection tokens, as Self-RAG's ``postprocess_data.py`` writes it::

    output   := piece* [Utility:k]?
    piece    := [Retrieval] <paragraph>TITLE\\nTEXT</paragraph> ([Relevant] | [Irrelevant]) SENTENCE SUPPORT?
              | [Continue to Use Evidence] SENTENCE SUPPORT?     (keeps using the latest paragraph)
              | [No Retrieval] SENTENCE SUPPORT?
              | SENTENCE                                         (Self-RAG skips sentences under 30 characters)
    SUPPORT  := [Fully supported] | [Partially supported] | [No support / Contradictory]

Parsing. Paragraphs are cut out first, so brackets inside a passage are never read as tokens; title
and text split at the first newline (no newline: title ""), both stripped. Outside paragraphs the
tokens must match exactly: a bracket that looks like a reflection token but is none
(``[Utility:6]``, ``[Fully Supported]``) is an error, because keeping it would teach the model to
write it; other brackets (``arr[0]``, ``[1]``) are text. Errors, ``{where}: field 'output' ...``:
a paragraph tag without its partner, an empty paragraph, ``[Retrieval]`` not followed by a
paragraph, a relevance token not right after a paragraph, a support token not right after a
sentence, anything after ``[Utility:k]``, no answer text at all. Tolerated, and counted in
``stats.removed`` when the record is written: whitespace around tokens, ``missing_utility_token``,
``missing_support_token`` (after ``[Relevant]``), ``missing_relevance_token`` (read as relevant),
``paragraph_without_retrieval_token``, ``paragraph_without_sentence`` (left out: it supports
nothing), ``continue_without_paragraph`` (read as ``[No Retrieval]``).

Conversion.
- instruction: ``instruction``, then ``input`` after a blank line when ``input`` is not blank.
- response: the kept sentences with every token removed, each stripped with inner space runs
  collapsed, joined by one space, or by the newlines that stood between them (lists, code). Self-RAG
  writes sentences back to back ("one.[Fully supported][No Retrieval]Two"): removing the tokens
  alone glues words, as the reference's cleanup did ("is  yes" -> "isyes").
- contexts: the distinct paragraphs (title, text) that kept sentences follow, in order of first use.
  gold: True when it is the evidence of a fully or partially supported kept sentence; False for a
  distractor or when every graded sentence says no support; None when its sentences were not graded.
- segments, when the sentences do not all follow one paragraph: a new segment wherever the followed
  paragraph changes. A segment carries its paragraph the first time only (later it is already
  above in the rendered text), so the segment contexts joined equal ``contexts``. Sentences written
  without retrieval get a segment with no contexts; a bare sentence joins the sentence before it.
  Limit: a bare sentence right after one that ends without a token is glued to it in the data itself
  ("Hello.Sure!"); nothing marks that boundary, so it stays as written.
- meta: source, dataset_name, utility (k or None), support (per kept sentence: "full", "partial",
  "no_support", or None when ungraded), retrieval (whether the output retrieved anything).

Filters (``PrepareOptions``). A dropped record is counted once in ``stats.dropped``, under the first
reason that applies, checked in this order: dataset_name, utility_*, irrelevant_paragraph,
subset_no_retrieval_only, no_supported_sentence, subset_retrieval_only, passages_*. Parts removed
from written records go to ``stats.removed`` (and ``duplicate_paragraph``: paragraphs seen again).
The output is parsed before any filter, so a malformed row is an error even when a filter would
drop it. ``items_in``/``records_out`` are the driver's to count.
- dataset_names: ``dataset_name``. min_utility: ``utility_below_K``, or ``utility_missing``.
- irrelevant: ``drop`` removes the paragraph (``removed['irrelevant_paragraph']``) but keeps its
  sentence, as one written without evidence: it is part of the answer, yet the passage did not
  support it and must not be shown as its context. ``keep-as-distractor`` keeps the paragraph in its
  place before its sentence, gold=False. ``drop-record`` drops the record (``irrelevant_paragraph``).
- support judges the sentences that follow a relevant paragraph (after ``[Relevant]`` or
  ``[Continue to Use Evidence]``): ``full`` keeps ``[Fully supported]`` ones, ``partial`` also
  ``[Partially supported]``; the others, ungraded ones included, are removed
  (``removed['unsupported_sentence']``), and a paragraph left without sentences goes with them
  (``removed['unsupported_paragraph']``). Sentences written without evidence claim nothing and stay.
  A record left without sentences: ``no_supported_sentence``.
- subset: ``retrieval`` needs at least one kept paragraph (``subset_retrieval_only``);
  ``no_retrieval`` needs an output that retrieved nothing (``subset_no_retrieval_only``).
- passages counts distinct kept paragraphs: ``single`` one (``passages_not_single``), ``multi`` two
  or more (``passages_not_multi``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from ..records import Context, Record, Segment, parse_record
from .common import ConvertStats, Reader, RecordError, get_str, optional_str, require, type_name

__all__ = ["SelfRAGReader", "TOKENS", "SUPPORT", "UTILITY"]

SUPPORT = {"[Fully supported]": "full", "[Partially supported]": "partial", "[No support / Contradictory]": "no_support"}
UTILITY = {f"[Utility:{k}]": k for k in range(1, 6)}
TOKENS = frozenset({"[Retrieval]", "[No Retrieval]", "[Continue to Use Evidence]", "[Relevant]", "[Irrelevant]",
                    "<paragraph>", "</paragraph>", *SUPPORT, *UTILITY})
_SCAN = re.compile(r"<paragraph>(.*?)</paragraph>|</?paragraph>|"
                   + "|".join(re.escape(t) for t in sorted(TOKENS - {"<paragraph>", "</paragraph>"})), re.S)
_BRACKET = re.compile(r"\[([^\[\]\n]{1,60})\]")
_LOOKALIKE = re.compile(r"\s*(utility\s*(:.*)?|(no\s*)?retriev\w*|continue\s+to\s+use\s+evidence|(ir)?relevant|"
                        r"(fully|partially)\s+supported|no\s+support\b.*|contradictory)\s*", re.I)
_CHOICES = {"passages": ("any", "single", "multi"), "support": ("any", "partial", "full"),
            "irrelevant": ("drop", "keep-as-distractor", "drop-record"), "subset": ("all", "retrieval", "no_retrieval")}
_ALLOWED = {"any": None, "partial": {"full", "partial"}, "full": {"full"}}


@dataclass
class _Paragraph:
    title: str
    text: str
    relevant: bool | None = None  # None: no relevance token followed it (read as relevant)


@dataclass
class _Sentence:
    raw: str                # as written, surrounding whitespace included (it tells where newlines stood)
    kind: str               # the token before it: relevant, irrelevant, continue, no_retrieval, bare
    para: int | None        # the paragraph occurrence it follows
    support: str | None = None
    judged: bool = False    # follows a relevant paragraph, so the support filter applies to it


def _bad(where: str, problem: str) -> RecordError:
    return RecordError(f"{where}: field 'output' {problem}")


def _paragraph(content: str, where: str, at: int) -> tuple[str, str]:
    if "<paragraph>" in content:
        raise _bad(where, f"has '<paragraph>' without '</paragraph>' at character {at}")
    title, sep, text = content.partition("\n")
    if not sep:
        title, text = "", content
    if not text.strip():
        raise _bad(where, f"has a paragraph without text at character {at}")
    return title.strip(), text.strip()


def _scan(output: str, where: str) -> list[tuple[str, Any, int]]:
    """``output`` as (kind, value, position) items: tok, para (title, text) and text. Whitespace-only text
    between tokens goes with the next text item, so that the newlines between sentences are not lost."""
    items: list[tuple[str, Any, int]] = []
    gap, pos = "", 0
    for m in [*_SCAN.finditer(output), None]:
        text = output[pos:m.start() if m else len(output)]
        for b in _BRACKET.finditer(text):  # other brackets ("arr[0]", "[1]") are answer text
            if _LOOKALIKE.fullmatch(b.group(1)):
                raise _bad(where, f"has an unknown reflection token {b.group(0)!r} at character {pos + b.start()}")
        if text.strip():
            items.append(("text", gap + text, pos))
            gap = ""
        else:
            gap += text
        if m is None:
            return items
        pos, tag = m.end(), m.group(0)
        if m.group(1) is not None:
            items.append(("para", _paragraph(m.group(1), where, m.start()), m.start()))
        elif tag in ("<paragraph>", "</paragraph>"):
            other = "</paragraph>" if tag == "<paragraph>" else "<paragraph>"
            raise _bad(where, f"has {tag!r} without {other!r} at character {m.start()}")
        else:
            items.append(("tok", tag, m.start()))
    return items


def _parse(output: str, where: str, notes: Counter) -> tuple[list[_Paragraph], list[_Sentence], int | None]:
    items = _scan(output, where)
    paras: list[_Paragraph] = []
    sents: list[_Sentence] = []
    utility: int | None = None
    kind, last = "bare", None  # how the next sentence is introduced; the latest paragraph
    for n, (what, value, at) in enumerate(items):
        prev = items[n - 1][:2] if n else None
        nxt = items[n + 1][:2] if n + 1 < len(items) else None
        if utility is not None:
            shown = value if what == "tok" else "a <paragraph>" if what == "para" else f"text {value.strip()[:40]!r}"
            raise _bad(where, f"has {shown} after [Utility:{utility}] at character {at}; the utility token must close it")
        if what == "para":
            if prev != ("tok", "[Retrieval]"):
                notes["paragraph_without_retrieval_token"] += 1
            paras.append(_Paragraph(*value))
            last, kind = len(paras) - 1, "relevant"
            if nxt not in (("tok", "[Relevant]"), ("tok", "[Irrelevant]")):
                notes["missing_relevance_token"] += 1
        elif what == "text":
            sents.append(_Sentence(value, kind, last if kind in ("relevant", "irrelevant", "continue") else None))
            kind = "bare"
        elif value == "[Retrieval]":
            if nxt is None or nxt[0] != "para":
                raise _bad(where, f"has [Retrieval] not followed by a <paragraph> at character {at}")
        elif value in ("[Relevant]", "[Irrelevant]"):
            if prev is None or prev[0] != "para":
                raise _bad(where, f"has {value} not right after a </paragraph> at character {at}")
            paras[last].relevant = value == "[Relevant]"
            kind = value[1:-1].lower()
        elif value == "[Continue to Use Evidence]":
            if last is None:
                notes["continue_without_paragraph"] += 1
            kind = "no_retrieval" if last is None else "continue"
        elif value == "[No Retrieval]":
            kind = "no_retrieval"
        elif value in SUPPORT:
            if prev is None or prev[0] != "text":
                raise _bad(where, f"has {value} not right after a sentence at character {at}")
            sents[-1].support = SUPPORT[value]
        else:
            utility = UTILITY[value]
    if not sents:
        raise _bad(where, "has no answer text, only reflection tokens")
    notes["missing_utility_token"] += utility is None
    notes["missing_support_token"] += sum(s.kind == "relevant" and s.support is None for s in sents)
    notes["paragraph_without_sentence"] += len(set(range(len(paras))) - {s.para for s in sents})
    return paras, sents, utility


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+\n", "\n", text.strip())
    return re.sub(r"(?<=\S)[ \t]{2,}(?=\S)", " ", text)


def _join(sents: list[_Sentence]) -> str:
    """Stripped sentences, one space apart, or the newlines (at most two) that stood between them."""
    out: list[str] = []
    for i, s in enumerate(sents):
        if i:
            before = sents[i - 1].raw
            gap = before[len(before.rstrip()):] + s.raw[:len(s.raw) - len(s.raw.lstrip())]
            out.append("\n" * min(gap.count("\n"), 2) or " ")
        out.append(_tidy(s.raw))
    return "".join(out)


def _layout(paras: list[_Paragraph], kept: list[_Sentence],
            notes: Counter) -> tuple[tuple[Context, ...], tuple[Segment, ...] | None]:
    """The distinct paragraphs the kept sentences follow, and the segments when they follow more than one."""
    order: list[tuple[str, str]] = []
    keys: list[int | None] = []  # per sentence, the index in `order` of the paragraph it follows
    for s in kept:
        if s.para is None or s.kind == "bare":  # a bare sentence goes with the sentence before it
            keys.append(keys[-1] if s.kind == "bare" and keys else None)
            continue
        pair = (paras[s.para].title, paras[s.para].text)
        if pair not in order:
            order.append(pair)
        keys.append(order.index(pair))
    notes["duplicate_paragraph"] += len({s.para for s, k in zip(kept, keys) if k is not None and s.kind != "bare"}) - len(order)
    contexts = []
    for k, (title, text) in enumerate(order):
        labels = {s.support for s, key in zip(kept, keys) if key == k and s.judged}
        # Evidence of a supported sentence; a distractor (no judged sentence) or contradicted; ungraded: unknown.
        gold = True if labels & {"full", "partial"} else False if labels <= {"no_support"} else None
        contexts.append(Context(text=text, title=title, gold=gold))
    groups = [(key, [s for s, _ in run]) for key, run in groupby(zip(kept, keys), key=lambda pair: pair[1])]
    if len(groups) < 2:
        return tuple(contexts), None
    shown: set[int | None] = {None}
    segments = []
    for key, run in groups:  # a paragraph goes with its first segment only: later it is already above
        segments.append(Segment(contexts=() if key in shown else (contexts[key],), response=_join(run)))
        shown.add(key)
    return tuple(contexts), tuple(segments)


def _choice(name: str, value: Any) -> str:
    """An option value, spelled with '-' or '_' ("no-retrieval", "keep_as_distractor")."""
    spellings = {a.replace("-", "_"): a for a in _CHOICES[name]}
    found = spellings.get(value.strip().lower().replace("-", "_")) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"selfrag: option '{name}' must be one of {', '.join(_CHOICES[name])}, not {value!r}")
    return found


class SelfRAGReader(Reader):
    name = "selfrag"
    description = "Self-RAG generator data: instruction/input/output with reflection tokens"

    def __init__(self, options: Any = None):
        super().__init__(options)
        o = self.options
        self.passages, self.support = _choice("passages", o.passages), _choice("support", o.support)
        self.irrelevant, self.subset = _choice("irrelevant", o.irrelevant), _choice("subset", o.subset)
        if o.min_utility is not None and (isinstance(o.min_utility, bool) or o.min_utility not in range(1, 6)):
            raise ValueError(f"selfrag: option 'min_utility' must be 1 to 5 (or unset), not {o.min_utility!r}")
        names = o.dataset_names.split(",") if isinstance(o.dataset_names, str) else (o.dataset_names or ())
        if not all(isinstance(x, str) for x in names):
            raise ValueError(f"selfrag: option 'dataset_names' must be names, not {o.dataset_names!r}")
        self.dataset_names = frozenset(x.strip() for x in names if x.strip())

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> list[Record]:
        rid = require(obj, "id", where)
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise RecordError(f"{where}: field 'id' must be a string, not {type_name(rid)}")
        instruction = get_str(obj, "instruction", where).strip()
        extra = (optional_str(obj, "input", where) or "").strip()
        if extra:
            instruction += "\n\n" + extra
        dataset = (optional_str(obj, "dataset_name", where) or "").strip()
        notes: Counter = Counter()
        paras, sents, utility = _parse(get_str(obj, "output", where), where, notes)

        o, irrelevant = self.options, any(p.relevant is False for p in paras)
        reason = None
        if self.dataset_names and dataset not in self.dataset_names:
            reason = "dataset_name"
        elif o.min_utility is not None and (utility is None or utility < o.min_utility):
            reason = "utility_missing" if utility is None else f"utility_below_{o.min_utility}"
        elif irrelevant and self.irrelevant == "drop-record":
            reason = "irrelevant_paragraph"
        elif paras and self.subset == "no_retrieval":
            reason = "subset_no_retrieval_only"
        if reason:
            stats.drop(reason)
            return []

        if self.irrelevant == "drop":
            notes["irrelevant_paragraph"] += sum(p.relevant is False for p in paras)
            for s in sents:  # the sentence stays, as one written without evidence
                if s.para is not None and paras[s.para].relevant is False:
                    s.para, s.kind = None, "no_retrieval"
        allowed, kept = _ALLOWED[self.support], []
        for s in sents:
            s.judged = s.para is not None and paras[s.para].relevant is not False and s.kind in ("relevant", "continue")
            if s.judged and allowed is not None and s.support not in allowed:
                notes["unsupported_sentence"] += 1
            else:
                kept.append(s)
        contexts, segments = _layout(paras, kept, notes)
        anchored = {(paras[s.para].title, paras[s.para].text) for s in sents if s.para is not None}
        notes["unsupported_paragraph"] += len(anchored - {(c.title, c.text) for c in contexts})

        reason = None
        if not kept:
            reason = "no_supported_sentence"
        elif self.subset == "retrieval" and not contexts:
            reason = "subset_retrieval_only"
        elif self.passages == "single" and len(contexts) != 1:
            reason = "passages_not_single"
        elif self.passages == "multi" and len(contexts) < 2:
            reason = "passages_not_multi"
        if reason:
            stats.drop(reason)
            return []

        meta = {"source": "selfrag", "dataset_name": dataset, "utility": utility,
                "support": [s.support for s in kept], "retrieval": bool(paras)}
        record = Record(id=str(rid), instruction=instruction, contexts=contexts, response=_join(kept),
                        meta=meta, segments=segments)
        record = parse_record(record.to_dict(), where)  # the same checks as reading a grounded file
        for what, n in notes.items():
            if n:
                stats.remove(what, n)
        return [record]
