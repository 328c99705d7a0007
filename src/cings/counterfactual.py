"""Knowledge-conflict records from extractive QA: the passage is rewritten so that it supports another answer.

For each grounded record (SQuAD-style: the answers are spans of the passage), every occurrence of every
original answer in the passage is replaced by an answer *of the same type* taken from a different question.
The output record asks the same question, its passage now says the substitute, ``answers`` is
``(substitute,)`` and ``parametric_answers`` holds the original answers (what a model may know from
pre-training). The id is kept unchanged: the output is a separate file and the id links each record to its
source; ``meta`` gains ``counterfactual``, ``answer_type``, ``substituted_from`` (the donor question's id) and
``original_answer``.

Answer type (:func:`answer_type`), decided on the answer stripped of surrounding spaces and ``.,;:``; the first
rule that matches wins:

``year`` 1000-2099 alone; ``decade`` "1980s", "the 1970s"; ``date`` a month name with a digit, or a month
name in at most two words ("October 16, 2012", "June"); ``percent`` "%", "percent" or "per cent";
``money`` a currency sign or word ("$2 million", "5 pounds"); ``ordinal`` one ordinal ("third", "20th");
``number`` only number tokens (digits, "1/6", "30,000", number words, "twenty-five", "two million");
``name`` at least one capitalised word and no lower-case word other than connectors (of, the, and, de,
von, ...; words without letters pass: "Denver Broncos", "University of Chicago", "Super Bowl 50");
``time`` any other answer with a year or a century ("since 1979", "spring of 1349", "5th century");
``quantity`` any other answer with a number standing as a word, "one" excepted as it is mostly a pronoun
("25 nm", "over 50 letters"); then by length ``word`` (one word), ``phrase`` (2-4), ``clause`` (5+).

Rules. The substitute is the first answer of another question, of the same type (each distinct answer
text is one candidate, so frequent answers are not favoured), preferably from another article and with
about as many words (equal up to 3 words, within a quarter beyond), else from another article, else from
another paragraph of the same article, never from the same paragraph. It must not equal an original answer
after SQuAD normalisation, nor contain one, nor occur anywhere in the record's passages, titles or question
(case-insensitive). Titles are kept as they are. Originals are replaced longest first in one pass, with
word boundaries, so "Denver" inside "Denverite" is never rewritten. Afterwards no original answer occurs in
any passage, even as a substring inside a word, and the substitute does; a record that cannot get there is
dropped, with its reason counted:

- ``no_context``: no passage; ``has_segments``: several answer segments;
- ``answer_too_short``: an answer of fewer than two characters other than a digit ("L", "P");
- ``answer_in_question``, ``answer_in_title``: an answer as whole words in the question or a passage title,
  which would give it away;
- ``answer_not_in_passage``: no answer stands as whole words in the passage;
- ``answer_inside_word``: an answer would be left inside a longer word ("gold" in "golden", "8" in "1980");
- ``no_donor_of_same_type``: no candidate fits;
- ``unsafe_replacement``: each of the first ten candidates recreates an original with its neighbours.

Choices are deterministic and do not depend on the order of the input: donor pools are lists sorted by
id, never sets, and each record draws from its own ``random.Random(f"{seed}/{id}")`` (string seeds do not
depend on PYTHONHASHSEED) rather than from a generator shared in input order. Output keeps input order.
"""

from __future__ import annotations

import itertools
import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator

from .records import Record

__all__ = ["CounterfactualStats", "answer_type", "make_counterfactual", "donor_pools", "counterfactual_of",
           "ANSWER_TYPES"]

ANSWER_TYPES = ("year", "decade", "date", "percent", "money", "ordinal", "number", "name", "time", "quantity",
                "word", "phrase", "clause")

_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan\\.|Feb\\.|Mar\\.|Apr\\.|Aug\\.|Sept?\\.|Oct\\.|Nov\\.|Dec\\.")
_MONTH = re.compile(rf"(?<!\w)(?:{_MONTHS})(?!\w)")  # case-sensitive: "may" the verb is not a month
_NUMBER_WORD = ("zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                "sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|"
                "hundred|thousand|million|billion|trillion|dozen")
_NUMBER_TOKEN = re.compile(rf"(?:[+-]?\d[\d,.]*|\d+/\d+|(?:{_NUMBER_WORD})(?:-(?:{_NUMBER_WORD}))*)", re.I)
_HAS_NUMBER = re.compile(rf"\d|(?<!\w)(?:{_NUMBER_WORD})(?!\w)", re.I)
# A quantity needs a number standing as a word: not "H2O", and not "one" (mostly a pronoun: "one of the ...").
_QUANTITY = re.compile(rf"(?<!\w)(?:\d|(?!one\b)(?:{_NUMBER_WORD})(?!\w))", re.I)
_ORDINAL = re.compile(r"\d+(?:st|nd|rd|th)|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|"
                      r"eleventh|twelfth|(?:thir|four|fif|six|seven|eigh|nine)teenth|twentieth|hundredth|last", re.I)
_CONNECTORS = {"of", "the", "and", "for", "in", "on", "at", "de", "del", "da", "di", "du", "des", "la", "le",
               "van", "von", "der", "den", "y", "&", "-", "'s", "a", "an", "to"}
_EDGE = " \t\n.,;:"


def _clean(text: str) -> str:
    return text.strip(_EDGE)


def answer_type(text: str) -> str:
    """The coarse type of an answer string; see the module docstring for the rules."""
    t = _clean(text)
    low = t.lower()
    words = t.split()
    if re.fullmatch(r"1\d{3}|20\d{2}", t):
        return "year"
    if re.fullmatch(r"(?:the\s+)?(?:\d{2,3}0s|'\d0s)", low):
        return "decade"
    if _MONTH.search(t) and (re.search(r"\d", t) or len(words) <= 2):
        return "date"
    has_number = bool(_HAS_NUMBER.search(t))
    if has_number and re.search(r"%|\bper\s?cent\b", low):
        return "percent"
    if has_number and re.search(r"[$£€¥]|\b(?:dollars?|pounds?|euros?|yen|cents?|usd|francs?|marks)\b", low):
        return "money"
    if len(words) == 1 and _ORDINAL.fullmatch(t):
        return "ordinal"
    if words and all(_NUMBER_TOKEN.fullmatch(w) for w in words):
        return "number"
    letters = [re.search(r"[^\W\d_]", w) for w in words]  # first letter of each word: "(TEU)", "2A" count
    capital = [bool(m and m[0].isupper()) and w.lower() not in _CONNECTORS for m, w in zip(letters, words)]
    if any(capital) and all(c or m is None or w.lower() in _CONNECTORS for c, m, w in zip(capital, letters, words)):
        return "name"
    if re.search(r"(?<!\d)(?:1\d{3}|20\d{2})(?:s|\b)|\d(?:st|nd|rd|th) century", t, re.I):
        return "time"
    if _QUANTITY.search(t):
        return "quantity"
    return "word" if len(words) == 1 else "phrase" if len(words) <= 4 else "clause"


@dataclass
class CounterfactualStats:
    """What ``make_counterfactual`` did: records read, records written, drops by reason, kept by type."""

    records_in: int = 0
    records_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    by_type: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"records_in": self.records_in, "records_out": self.records_out,
                "dropped": dict(self.dropped.most_common()), "by_type": dict(self.by_type.most_common())}


def _normalise(text: str) -> str:
    # SQuAD's answer normalisation, so that "the Broncos" and "Broncos." count as the same answer.
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in {"a", "an", "the"})


def _too_short(text: str) -> bool:
    return len(text) < 2 and not text.isdigit()


def _pattern(answers: list[str]) -> re.Pattern:
    # Longest first, so that at each position "Denver Broncos" wins over "Denver"; any run of spaces matches.
    alts = [r"\s+".join(map(re.escape, a.split())) for a in sorted(answers, key=lambda a: (-len(a), a))]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.I)


def _substitute(text: str):
    def substitute(m: re.Match) -> str:
        # Keep a sentence-initial capital when a lower-case substitute opens a sentence.
        before = m.string[:m.start()]
        if text[:1].islower() and m[0][:1].isupper() and (not before.strip() or re.search(r"[.!?]\s+$", before)):
            return text[:1].upper() + text[1:]
        return text
    return substitute


@dataclass(frozen=True)
class _Donor:
    id: str
    text: str
    article: str
    paragraph: tuple[str, ...]
    words: int


def _article(record: Record) -> str:
    return str(record.meta.get("title") or (record.contexts[0].title if record.contexts else ""))


def _originals(record: Record) -> tuple[str, ...]:
    return tuple(a for a in (record.answers or (record.response,)) if a.strip())


def _candidates(record: Record, pool: list[_Donor], rng: random.Random, originals: list[str]) -> Iterator[_Donor]:
    paragraph, article = tuple(c.text for c in record.contexts), _article(record)
    seen = "\n".join([record.instruction, *(c.text for c in record.contexts), *(c.title for c in record.contexts)]).lower()
    norms = {_normalise(a) for a in originals}

    def fits(d: _Donor) -> bool:
        low = d.text.lower()
        return (d.paragraph != paragraph and d.id != record.id and low not in seen and _normalise(d.text) not in norms
                and not any(a.lower() in low for a in originals))

    # Preference: another article and about as many words (a two-word name for a two-word name), then another
    # article, then another paragraph of the same article. A few random draws find a donor almost always; the
    # full scan from a random start keeps small pools usable.
    if not pool:
        return
    n = len(originals[0].split())
    levels = [lambda d: d.article != article and abs(d.words - n) <= n // 4,
              lambda d: d.article != article, lambda d: True]
    draws, start = rng.sample(range(len(pool)), min(len(pool), 40)), rng.randrange(len(pool))
    given: set[int] = set()
    for level in levels:
        for i in itertools.chain(draws, ((start + k) % len(pool) for k in range(len(pool)))):
            if i not in given and level(pool[i]) and fits(pool[i]):
                given.add(i)
                yield pool[i]


def donor_pools(records: Iterable[Record]) -> dict[str, list[_Donor]]:
    """Substitute answers by type: each distinct first answer of ``records`` once, in id order."""
    pools: dict[str, list[_Donor]] = {}
    taken: set[str] = set()
    for r in sorted(records, key=lambda r: r.id):
        originals = _originals(r)
        text = _clean(originals[0]) if originals else ""
        if text and not _too_short(text) and "\n" not in text and _normalise(text) not in taken:
            taken.add(_normalise(text))
            pools.setdefault(answer_type(text), []).append(
                _Donor(r.id, text, _article(r), tuple(c.text for c in r.contexts), len(text.split())))
    return pools


def counterfactual_of(record: Record, pools: dict[str, list[_Donor]], *, seed: int = 0) -> tuple[str, Record | None]:
    """``("", the rewritten record)``, or ``(the reason it cannot be, None)``; the same choice
    :func:`make_counterfactual` makes for this record with these pools and seed."""
    return _rewrite(record, pools, random.Random(f"{seed}/{record.id}"))


def make_counterfactual(records: Iterable[Record], *, seed: int = 0) -> tuple[list[Record], CounterfactualStats]:
    """Rewrite each record's passages around a same-type answer of another question; see the module docstring."""
    records = list(records)
    stats = CounterfactualStats(records_in=len(records))
    pools = donor_pools(records)

    out: list[Record] = []
    for r in records:
        reason, result = counterfactual_of(r, pools, seed=seed)
        if result is None:
            stats.dropped[reason] += 1
        else:
            out.append(result)
            stats.by_type[result.meta["answer_type"]] += 1
    stats.records_out = len(out)
    return out, stats


def _rewrite(r: Record, pools: dict[str, list[_Donor]], rng: random.Random) -> tuple[str, Record | None]:
    if not r.contexts or not any(c.text.strip() for c in r.contexts):
        return "no_context", None
    if r.segments:
        return "has_segments", None
    raw = _originals(r)
    originals = list(dict.fromkeys(_clean(a) for a in raw))
    if not originals or any(_too_short(a) for a in originals):
        return "answer_too_short", None
    pattern = _pattern(originals)
    # Whole words only here: "5" in the title "Super Bowl 50" gives nothing away.
    if pattern.search(r.instruction):
        return "answer_in_question", None
    if any(pattern.search(c.title) for c in r.contexts):
        return "answer_in_title", None
    if not any(pattern.search(c.text) for c in r.contexts):
        return "answer_not_in_passage", None
    if any(a.lower() in pattern.sub("\0", c.text).lower() for a in originals for c in r.contexts):
        return "answer_inside_word", None
    kind = answer_type(raw[0])
    # A substitute can recreate an original with its neighbours ("50% oxygen" + " atmosphere"), so a few
    # candidates are tried before the record is given up.
    tries = -1
    for tries, donor in enumerate(_candidates(r, pools.get(kind, []), rng, originals)):
        if tries == 10:
            return "unsafe_replacement", None
        contexts = tuple(replace(c, text=pattern.sub(_substitute(donor.text), c.text)) for c in r.contexts)
        passages = "\n".join(c.text for c in contexts).lower()
        if donor.text.lower() in passages and not any(a.lower() in passages for a in (*originals, *raw)):
            break
    else:
        return ("unsafe_replacement" if tries >= 0 else "no_donor_of_same_type"), None
    meta = {**r.meta, "counterfactual": True, "answer_type": kind, "substituted_from": donor.id,
            "original_answer": raw[0]}
    return "", Record(id=r.id, instruction=r.instruction, contexts=contexts, response=donor.text, system=r.system,
                      answers=(donor.text,), parametric_answers=raw, meta=meta)
