"""``cings context-mix``: which passages each training record shows, as RAFT and KAFT build their data.

RAFT (Zhang et al. 2024) trains on the oracle passage among distractors for a share P of the
questions and on distractors alone for the rest; KAFT (Li et al. 2023) adds rows whose passage is
irrelevant (the target stays the original answer: answer from memory when the passage does not help)
and counterfactual rows (the answer swapped in passage and target: follow the passage). Per record,
one uniform draw ``u`` decides its kind:

- ``u < counterfactual``: **counterfactual**, rewritten by :func:`cings.counterfactual.counterfactual_of`
  (same donor rules as ``cings counterfactual``, donors from the whole input); a record it cannot
  rewrite goes on to the RAFT draw, counted by reason;
- ``u < counterfactual + irrelevant``: **irrelevant**, every passage replaced by a passage of
  another article (none of them holding an answer), target unchanged;
- else RAFT's draw: with probability ``oracle_rate`` **oracle** (its passages kept), otherwise
  **distractor** (its oracle passages replaced by distractors, target unchanged).

A record's oracle passages are those marked ``gold``, or all of them when none is. With
``distractors`` K, every row shows its own number of passages plus K, so the count never tells
whether the answer is among them: an oracle or counterfactual row gets K distractors beside its
passages; a distractor row ``oracle + K`` distractors beside its non-oracle passages; an irrelevant
row ``passages + K`` irrelevant ones. Passages are shuffled; the oracle ones are marked
``gold: true`` and the others ``gold: false``. A distractor is a passage of another record, never
one of the record's own and never holding one of its answers (for a counterfactual row, neither the
substitute nor the original), preferably from the same article (what a retriever returns beside the
oracle), else from any; an irrelevant passage comes from another article. An answer is held when its
SQuAD-normalised words appear in the passage's normalised words. A row given fewer passages than it
asks for is kept and counted (``short_of_passages``); a distractor or irrelevant row for which none
is found is an oracle row instead, counted. Records without passages or with answer segments are
passed through unchanged (kind ``unchanged``), counted by reason.

Each output record keeps its id and says in ``meta.context_kind`` what was done (and, for
counterfactual rows, what ``cings counterfactual`` records). Every choice comes from
``random.Random(f"{seed}/{id}")`` and pools sorted by content, so the output depends on the data and
the seed, not on the order of the input; the output keeps the input's order.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

from .counterfactual import counterfactual_of, donor_pools
from .metrics import normalize_answer
from .records import Context, Record

__all__ = ["ContextMixOptions", "ContextMixStats", "mix_contexts", "KINDS"]

KINDS = ("oracle", "distractor", "irrelevant", "counterfactual", "unchanged")
_DRAWS = 40  # random candidates tried before a full scan from a random start (small pools, strict filters)


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ContextMixOptions:
    """What ``cings context-mix`` does to each record; the field help is the flag help."""

    oracle_rate: float = _f(1.0, "RAFT's P: the share of the rows left to the RAFT draw that keep their oracle passage;"
                                 " the others show distractors only (target unchanged)")
    distractors: int = _f(0, "K passages of other records added to every row (a distractor row shows oracle + K"
                             " distractors), so the count of passages never gives the answer away")
    irrelevant: float = _f(0.0, "KAFT: the share of rows whose passages are replaced by passages of other articles,"
                                " the target kept (answer from memory)")
    counterfactual: float = _f(0.0, "KAFT: the share of rows whose answer is swapped in passage and target"
                                    " (cings counterfactual's rewrite)")
    seed: int = _f(0, "every choice is drawn from random.Random(f'{seed}/{id}')")

    def __post_init__(self) -> None:
        for name in ("oracle_rate", "irrelevant", "counterfactual"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a number from 0 to 1, not {value!r}")
        if self.irrelevant + self.counterfactual > 1:
            raise ValueError(f"--irrelevant {self.irrelevant} and --counterfactual {self.counterfactual} add up to more"
                             " than 1: they are shares of the same records")
        if isinstance(self.distractors, bool) or not isinstance(self.distractors, int) or self.distractors < 0:
            raise ValueError(f"--distractors must be a whole number of at least 0, not {self.distractors!r}")


@dataclass
class ContextMixStats:
    """Counts of what was done: rows by kind, fallbacks by reason, rows short of passages."""

    records_in: int = 0
    by_kind: Counter = field(default_factory=Counter)
    fallbacks: Counter = field(default_factory=Counter)  # "counterfactual: answer_not_in_passage" -> n
    unchanged: Counter = field(default_factory=Counter)  # reason -> n
    short_of_passages: int = 0
    distractors_added: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"records_in": self.records_in, "records_out": sum(self.by_kind.values()),
                "by_kind": {k: self.by_kind[k] for k in KINDS if self.by_kind[k]},
                "fallbacks": dict(self.fallbacks.most_common()), "unchanged": dict(self.unchanged.most_common()),
                "short_of_passages": self.short_of_passages, "distractors_added": self.distractors_added}


@dataclass(frozen=True)
class _Passage:
    context: Context
    article: str
    words: str  # normalised, space-padded: " w1 w2 ... "


def _article(record: Record) -> str:
    """The record's article: its first passage's title, else meta.title, else its first passage itself."""
    if record.contexts and record.contexts[0].title.strip():
        return record.contexts[0].title
    title = record.meta.get("title")
    if title:
        return str(title)
    return record.contexts[0].text if record.contexts else ""


def _words(text: str) -> str:
    return f" {normalize_answer(text)} "


class _Pool:
    """Every distinct passage of the input, sorted by content, with its article."""

    def __init__(self, records: Sequence[Record]):
        found: dict[tuple[str, str], _Passage] = {}
        for r in records:
            article = _article(r)
            for c in r.contexts:
                key = (c.title, c.text)
                if key not in found and c.text.strip():
                    found[key] = _Passage(Context(text=c.text, title=c.title), article, _words(f"{c.title} {c.text}"))
        self.passages = [found[k] for k in sorted(found, key=lambda k: (found[k].article, k))]
        self.by_article: dict[str, list[int]] = {}
        for i, p in enumerate(self.passages):
            self.by_article.setdefault(p.article, []).append(i)

    def pick(self, rng: random.Random, n: int, ok: Callable[[_Passage], bool], prefer: str | None = None) -> list[Context]:
        """Up to ``n`` distinct passages passing ``ok``: those of article ``prefer`` first, then any."""
        chosen: list[int] = []
        for i in self._candidates(rng, prefer):
            if len(chosen) == n:
                break
            if i not in chosen and ok(self.passages[i]):
                chosen.append(i)
        return [self.passages[i].context for i in chosen]

    def _candidates(self, rng: random.Random, prefer: str | None) -> Iterator[int]:
        if prefer is not None and prefer in self.by_article:
            same = list(self.by_article[prefer])
            rng.shuffle(same)
            yield from same
        total = len(self.passages)
        if not total:
            return
        yield from (rng.randrange(total) for _ in range(_DRAWS))
        start = rng.randrange(total)
        yield from ((start + k) % total for k in range(total))


def _holds(passage: _Passage, answers: Sequence[str]) -> bool:
    """``answers`` normalised by :func:`_words`; a blank one holds nowhere."""
    return any(a.strip() and a in passage.words for a in answers)


def _oracle(record: Record) -> tuple[list[Context], list[Context]]:
    """(oracle passages, the record's other passages): the gold ones if any is marked, else all."""
    gold = [c for c in record.contexts if c.gold]
    if gold:
        return gold, [c for c in record.contexts if not c.gold]
    return list(record.contexts), []


def mix_contexts(records: Iterable[Record], options: ContextMixOptions) -> tuple[list[Record], ContextMixStats]:
    """One output record per input record, its passages chosen as the module docstring says."""
    records = list(records)
    stats = ContextMixStats(records_in=len(records))
    pool = _Pool(records)
    donors = donor_pools(records) if options.counterfactual else {}
    out = []
    for record in records:
        row = _mix_one(record, options, pool, donors, stats)
        stats.by_kind[row.meta["context_kind"]] += 1
        out.append(row)
    return out, stats


def _mix_one(record: Record, options: ContextMixOptions, pool: _Pool, donors: dict, stats: ContextMixStats) -> Record:
    if not any(c.text.strip() for c in record.contexts) or record.segments:
        reason = "has_segments" if record.segments else "no_context"
        stats.unchanged[reason] += 1
        return replace(record, meta={**record.meta, "context_kind": "unchanged"})
    rng = random.Random(f"{options.seed}/{record.id}")
    u, v = rng.random(), rng.random()
    own = {(c.title, c.text) for c in record.contexts}
    answers = [a for a in (record.answers or (record.response,)) if a.strip()]
    article = _article(record)
    k = options.distractors

    def distractor(avoid: Sequence[str]) -> Callable[[_Passage], bool]:
        words = [_words(a) for a in avoid]
        return lambda p: (p.context.title, p.context.text) not in own and not _holds(p, words)

    if u < options.counterfactual:
        reason, rewritten = counterfactual_of(record, donors, seed=options.seed)
        if rewritten is not None:
            avoid = [*answers, *rewritten.answers, *(rewritten.parametric_answers or ())]
            oracle, others = _oracle(rewritten)
            return _shown(rewritten, "counterfactual", oracle, others, pool.pick(rng, k, distractor(avoid), article),
                          k, rng, stats)
        stats.fallbacks[f"counterfactual: {reason}"] += 1
    elif u < options.counterfactual + options.irrelevant:
        want, unrelated = len(record.contexts) + k, distractor(answers)
        chosen = pool.pick(rng, want, lambda p: p.article != article and unrelated(p))
        if chosen:
            return _shown(record, "irrelevant", [], [], chosen, want, rng, stats)
        stats.fallbacks["irrelevant: no passage of another article without the answer"] += 1
    oracle, others = _oracle(record)
    if v >= options.oracle_rate:
        chosen = pool.pick(rng, len(oracle) + k, distractor(answers), article)
        if chosen:
            return _shown(record, "distractor", [], others, chosen, len(oracle) + k, rng, stats)
        stats.fallbacks["distractor: no passage of another record without the answer"] += 1
    return _shown(record, "oracle", oracle, others, pool.pick(rng, k, distractor(answers), article), k, rng, stats)


def _shown(record: Record, kind: str, oracle: list[Context], others: list[Context], added: list[Context], wanted: int,
           rng: random.Random, stats: ContextMixStats) -> Record:
    """The record showing its oracle (gold), its other passages and the added ones (not gold), shuffled."""
    if len(added) < wanted:
        stats.short_of_passages += 1
    stats.distractors_added += len(added)
    kept = [replace(c, gold=c in oracle) for c in record.contexts if c in oracle or c in others]
    contexts = kept + [replace(c, gold=False) for c in added]
    if added:  # only then: a row showing just its own passages keeps their order
        rng.shuffle(contexts)
    return replace(record, contexts=tuple(contexts), meta={**record.meta, "context_kind": kind})
