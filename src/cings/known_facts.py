"""Which questions a model answers right without a passage: the records on which a knowledge conflict exists.

A counterfactual passage (:mod:`cings.counterfactual`) conflicts with what the model knows only if the
model knows the original answer. ``cings counterfactual --known-from PRED.jsonl`` therefore rewrites only
the records whose closed-book prediction (``cings generate --docs none``) is right, by these rules:

- **Known** means exact match (SQuAD normalisation) of the whole prediction with one gold answer of the
  record. Substring accuracy is not enough: "1" is in "10", "no" is in "not", and a model that rambles
  names many things; a hit by chance is no knowledge.
- **Known, in words** (``known_match="words"``, for a model that answers in sentences): a gold answer
  occurs in the prediction as whole words, and not in the question (so repeating the question is not
  knowing its answer). Measured on SmolLM2-135M-Instruct, which answers "The capital of France is
  Paris.": 0 exact matches in 112 closed-book answers, under every wording tried (docs/results.md).
- **Excluded** even when matched, as a short answer is too easy to hit by chance: the matched answer is
  ``yes_no``, a ``year`` or a ``number`` (:func:`cings.counterfactual.answer_type`), or ``too_short``
  (one or two characters once normalised).
- **One passage**: a conflict needs a passage that states the (swapped) answer. The record keeps one
  passage holding a gold answer as whole words, marked gold: the first such gold passage, else the first
  in file (retrieval) order; ``answer_not_in_passage`` when none does (retrieved passages often miss it).

The predictions are matched to the records by id. A record without a prediction is an error, not a
silent "unknown": it means the predictions came from another file or a ``--limit``-ed run, and every
count would be off. Predictions made with documents, or whose answers differ from the record's, are
refused for the same reason. Predictions of ids not among the records are counted (``predictions_unused``):
one closed-book run over a whole file may serve several slices of it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .counterfactual import CounterfactualStats, answer_type, counterfactual_of, donor_pools
from .evaluate import read_predictions
from .metrics import normalize_answer
from .records import Record, RecordError

__all__ = ["KnownStats", "exclusion", "answer_passage", "select_known", "known_counterfactual", "EXCLUSIONS",
           "KNOWN_MATCHES"]

EXCLUSIONS = ("yes_no", "year", "number", "too_short")
KNOWN_MATCHES = ("exact", "words")


def exclusion(answer: str) -> str | None:
    """Why a matched answer does not show knowledge (see the module docstring), or None."""
    norm = normalize_answer(answer)
    if norm in ("yes", "no"):
        return "yes_no"
    kind = answer_type(answer)
    if kind in ("year", "number"):
        return kind
    if len(norm) <= 2:
        return "too_short"
    return None


def _golds(record: Record) -> tuple[str, ...]:
    return tuple(a for a in (record.answers or (record.response,)) if a.strip())


def _whole_words(answers: Sequence[str]) -> re.Pattern:
    # As the counterfactual rewrite finds answers: edges " .,;:" stripped, whole words, any run of spaces, any case.
    cleaned = (a.strip(" \t\n.,;:") for a in answers)
    alts = [r"\s+".join(map(re.escape, a.split())) for a in cleaned if a]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.I)


def answer_passage(record: Record) -> Record | None:
    """The record with one passage, gold, holding a gold answer as whole words; None if no passage does."""
    golds = _golds(record)
    if not golds:
        return None
    pattern = _whole_words(golds)
    holding = [c for c in record.contexts if pattern.search(c.text)]
    if not holding:
        return None
    chosen = next((c for c in holding if c.gold), holding[0])
    return replace(record, contexts=(replace(chosen, gold=True),))


def _source(record: Record) -> str:
    return str(record.meta.get("data_source") or record.meta.get("source") or "unknown")


@dataclass
class KnownStats:
    """What :func:`select_known` found: counts over all records and per source (``meta.data_source`` or
    ``meta.source``), and the predictions no record asked for."""

    records_in: int = 0
    known: int = 0
    dropped: Counter = field(default_factory=Counter)
    by_source: dict[str, Counter] = field(default_factory=dict)
    predictions_unused: int = 0

    def count(self, source: str, outcome: str) -> None:
        self.by_source.setdefault(source, Counter())[outcome] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"records_in": self.records_in, "known": self.known, "dropped": dict(self.dropped.most_common()),
                "by_source": {k: dict(v) for k, v in sorted(self.by_source.items())},
                "predictions_unused": self.predictions_unused}


def _index(predictions: Iterable[Mapping[str, Any]], path: str) -> dict[str, Mapping[str, Any]]:
    by_id: dict[str, Mapping[str, Any]] = {}
    for row in predictions:
        docs = (row.get("settings") or {}).get("docs")
        if docs not in (None, "none"):
            raise RecordError(f"{path}: id {row['id']!r} was answered with documents (settings.docs {docs!r});"
                              " what a model knows needs closed-book predictions: cings generate --docs none")
        by_id[row["id"]] = row
    return by_id


def _matched(record: Record, golds: Sequence[str], prediction: str, known_match: str) -> str | None:
    """The gold answer the prediction shows knowledge of under ``known_match``, or None."""
    if known_match == "exact":
        norm = normalize_answer(prediction)
        return next((g for g in golds if norm and norm == normalize_answer(g)), None)
    question = f" {normalize_answer(record.instruction)} "
    return next((g for g in golds if _whole_words([g]).search(prediction)
                 and f" {normalize_answer(g)} " not in question), None)


def select_known(records: Sequence[Record], predictions: Iterable[Mapping[str, Any]], *,
                 path: str = "predictions", known_match: str = "exact") -> tuple[list[Record], KnownStats]:
    """The records the model knows, each cut to its answer passage; see the module docstring.

    ``predictions`` are rows as :func:`cings.evaluate.read_predictions` returns them; ``path`` names them
    in errors.
    """
    if known_match not in KNOWN_MATCHES:
        raise ValueError(f"--known-match must be one of {', '.join(KNOWN_MATCHES)}, not {known_match!r}")
    by_id = _index(predictions, path)
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise RecordError(f"{path}: no prediction for {len(missing)} of {len(records)} records, the first id"
                          f" {missing[0]!r}; generate closed-book predictions for every record of the input")
    stats = KnownStats(records_in=len(records))
    stats.predictions_unused = len(set(by_id) - {r.id for r in records})
    kept: list[Record] = []
    for record in records:
        row, golds, source = by_id[record.id], _golds(record), _source(record)
        if list(row["answers"]) != list(record.answers or ()):
            raise RecordError(f"{path}: id {record.id!r}: the prediction's answers {row['answers']} differ from the"
                              f" record's {list(golds)}: were the predictions made from another file?")
        stats.count(source, "records")
        matched = _matched(record, golds, str(row["prediction"] or ""), known_match)
        reason = "not_known" if matched is None else exclusion(matched)
        if reason is None:
            stats.count(source, "known")
            stats.known += 1
            grounded = answer_passage(record)
            reason = None if grounded is not None else "answer_not_in_passage"
        if reason is not None:
            stats.dropped[reason if reason in ("not_known", "answer_not_in_passage") else f"excluded_{reason}"] += 1
            stats.count(source, reason)
            continue
        kept.append(grounded)
    return kept, stats


def known_counterfactual(records: Sequence[Record], predictions_path: str | Path, *, seed: int = 0,
                         known_match: str = "exact") -> tuple[list[Record], list[Record], KnownStats, CounterfactualStats]:
    """``(conflict records, the same records before the swap, counts, rewrite counts)``: known records
    rewritten around a same-type answer of another question, as ``cings counterfactual`` rewrites every
    record (:func:`cings.counterfactual.counterfactual_of`).

    Donors come from every record of the input, known or not: a small known set alone would leave
    many answer types without a donor. The records before the swap (one passage, original answers,
    same ids) ask the same questions closed-book or with the true passage.
    """
    known, stats = select_known(records, read_predictions(predictions_path), path=str(predictions_path),
                                known_match=known_match)
    kept_ids = {r.id for r in known}
    pools = donor_pools([r for r in records if r.id not in kept_ids] + known)
    cf_stats = CounterfactualStats(records_in=len(known))
    out: list[Record] = []
    originals: list[Record] = []
    for record in known:
        reason, result = counterfactual_of(record, pools, seed=seed)
        if result is None:
            cf_stats.dropped[reason] += 1
            stats.count(_source(record), reason)
            continue
        out.append(result)
        originals.append(record)
        cf_stats.by_type[result.meta["answer_type"]] += 1
        stats.count(_source(record), "kept")
    cf_stats.records_out = len(out)
    return out, originals, stats, cf_stats
