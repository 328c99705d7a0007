"""QA metrics, each named after the tool whose definition it follows (anchors.md §3, paper-notes.md §6).

Per-record functions return 0/1 (or a float in [0, 1]); ``score_predictions`` aggregates to percentages
with seeded bootstrap intervals and records the definitions it used.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["normalize_answer", "exact_match", "f1", "accuracy", "match", "rouge_l", "fever_label",
           "conflict_outcome", "score_predictions", "metrics_table_markdown", "paired_difference", "DEFINITIONS",
           "summarise_columns"]

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

DEFINITIONS: dict[str, str] = {
    "normalizer": "SQuAD v1.1 normalize_answer: lower -> drop string.punctuation (ASCII only) -> "
                  r"replace \b(a|an|the)\b with a space -> collapse whitespace",
    "em": "SQuAD v1.1 exact_match_score: normalised prediction == normalised gold, max over golds",
    "f1": "SQuAD v1.1 f1_score: Counter overlap of normalised whitespace tokens, 0 when no overlap "
          "(so 0 even when both are empty), max over golds",
    "acc": "FlashRAG acc (Sub_ExactMatch): a normalised gold is a substring of the normalised prediction "
           "(no word boundaries); a gold that normalises to '' never counts",
    "match": "Self-RAG match: a raw gold is a case-sensitive substring of the raw prediction; "
             "a blank gold never counts",
    "rouge_l": "ROUGE-L F1 (beta=1, LCS) on whitespace tokens of the normalised texts, max over golds",
    "fever": "prediction and golds mapped by fever_label to SUPPORTS/REFUTES/NOT ENOUGH INFO before scoring; "
             "an unmappable prediction scores 0",
    "conflict": "per record with answers and parametric_answers (acc containment rule): context_rate = contains "
                "an answer, memory_rate = contains a parametric answer (a record with both counts in each), "
                "both_rate, neither_rate; rates over those records",
    "ci": "95% percentile bootstrap over records, random.Random(seed)",
}


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 official normalisation, in the evaluator's order: lower, punctuation, articles, whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD v1.1 EM: 1.0 if the normalised prediction equals any normalised gold (no golds -> 0.0)."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:  # as the official f1_score: also 0 when both normalise to empty
        return 0.0
    precision, recall = num_same / len(pred_tokens), num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD v1.1 token F1, max over golds. Empty prediction or empty gold gives 0.0 (even both empty)."""
    pred = normalize_answer(prediction).split()
    return max((_f1_one(pred, normalize_answer(g).split()) for g in _golds(golds)), default=0.0)


def accuracy(prediction: str, golds: str | Sequence[str]) -> float:
    """FlashRAG ``acc``: any normalised gold is a substring of the normalised prediction.

    Plain substring, no word boundaries ("broncos" is in "the broncos won", "cat" is in "concatenate").
    A gold that normalises to "" never counts (FlashRAG would count it for every prediction).
    """
    pred = normalize_answer(prediction)
    return float(any(g and g in pred for g in map(normalize_answer, _golds(golds))))


def match(prediction: str, golds: str | Sequence[str]) -> float:
    """Self-RAG ``match``: any raw gold is a case-sensitive substring of the raw prediction.

    A blank (empty or whitespace-only) gold never counts (Self-RAG's ``gt in prediction`` would).
    """
    return float(any(g.strip() and g in prediction for g in _golds(golds)))


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, golds: str | Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) from the LCS of normalised whitespace tokens, max over golds."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in _golds(golds):
        ref = normalize_answer(gold).split()
        lcs = _lcs(pred, ref) if pred and ref else 0
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


_FEVER_PHRASES: dict[str, str] = {
    **dict.fromkeys(["supports", "support", "supported", "true", "yes", "correct"], "SUPPORTS"),
    **dict.fromkeys(["refutes", "refute", "refuted", "false", "no", "incorrect",
                     "not true", "not supported", "not correct"], "REFUTES"),
    **dict.fromkeys(["not enough info", "not enough information", "not enough evidence", "nei",
                     "unverifiable", "unknown"], "NOT ENOUGH INFO"),
}
_FEVER_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _FEVER_PHRASES), key=len, reverse=True)) + r")\b")


def fever_label(text: str) -> str | None:
    """Map a FEVER gold or prediction to SUPPORTS / REFUTES / NOT ENOUGH INFO, or None.

    Both vocabularies are accepted ("SUPPORTS", "true", "yes"; "REFUTES", "false", "no"; "NOT ENOUGH INFO",
    "nei"). In free text the earliest label phrase of the normalised text wins, the longest at a tie
    ("not true" -> REFUTES).
    """
    found = _FEVER_RE.search(normalize_answer(text.replace("_", " ")))
    return _FEVER_PHRASES[found.group(1)] if found else None


def conflict_outcome(prediction: str, answers: Sequence[str], parametric_answers: Sequence[str]) -> str:
    """Knowledge-conflict outcome by the ``acc`` containment rule: context / memory / both / neither."""
    ctx, mem = accuracy(prediction, answers), accuracy(prediction, parametric_answers)
    return {(1, 1): "both", (1, 0): "context", (0, 1): "memory"}.get((int(ctx), int(mem)), "neither")


_METRIC_FNS = {"acc": accuracy, "em": exact_match, "f1": f1, "match": match, "rouge_l": rouge_l}
_CONFLICT_KEYS = ("context", "memory", "both", "neither")


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of ``b - a`` over paired records (percentage points) with its 95% normal interval.

    Two models scored on the same records: the pairing removes the records' own difficulty from the
    spread, so this interval is much narrower than comparing two independent intervals.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same records: {len(a)} against {len(b)}")
    d = [y - x for x, y in zip(a, b)]
    n = len(d)
    if not n:
        raise ValueError("no paired records")
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"diff": 100 * mean, "lo": 100 * (mean - half), "hi": 100 * (mean + half), "n": n}


def _percentile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summarise(columns: dict[str, list[float]], n: int, bootstrap: int, seed: int) -> dict[str, Any]:
    """Mean x 100 of each column and, with ``bootstrap`` > 0, its 95% percentile interval (rows resampled jointly).

    Unrounded: files keep full precision, and only tables (``format_cell``) round.
    """
    out: dict[str, Any] = {k: (100 * sum(v) / n if n else None) for k, v in columns.items()}
    if bootstrap > 0 and n:
        rng, population = random.Random(seed), range(n)
        means: dict[str, list[float]] = {k: [] for k in columns}
        for _ in range(bootstrap):
            idx = rng.choices(population, k=n)
            for k, col in columns.items():
                means[k].append(sum(map(col.__getitem__, idx)) / n)
        for k, values in means.items():
            values.sort()
            out[f"{k}_ci"] = [100 * _percentile(values, 0.025), 100 * _percentile(values, 0.975)]
    return out


def summarise_columns(columns: dict[str, list[float]], bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-record scores in [0, 1], one list per metric over the same records -> each mean x 100 and, with
    ``bootstrap`` > 0, its 95% percentile interval ``KEY_ci`` (records resampled jointly, as every cings metric)."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths {sorted(lengths)}: they must score the same records")
    return _summarise(columns, lengths.pop() if lengths else 0, bootstrap, seed)


def _score_group(rows: list[Mapping[str, Any]], metrics: Sequence[str], fever: bool, bootstrap: int,
                 seed: int) -> dict[str, Any]:
    scored = [r for r in rows if r.get("answers")]
    columns: dict[str, list[float]] = {m: [] for m in metrics}
    conflict: dict[str, list[float]] = {f"{k}_rate": [] for k in _CONFLICT_KEYS}
    for row in scored:
        prediction, golds = str(row.get("prediction") or ""), [str(a) for a in row["answers"]]
        if fever:
            prediction = fever_label(prediction) or ""
            golds = [fever_label(g) or g for g in golds]
        for m in metrics:
            columns[m].append(_METRIC_FNS[m](prediction, golds))
        if row.get("parametric_answers"):
            outcome = conflict_outcome(prediction, golds, [str(a) for a in row["parametric_answers"]])
            # context/memory rates count a prediction holding both answers in each (the issue's
            # definition: "contains an answer from answers"); both/neither split them out.
            conflict["context_rate"].append(float(outcome in ("context", "both")))
            conflict["memory_rate"].append(float(outcome in ("memory", "both")))
            conflict["both_rate"].append(float(outcome == "both"))
            conflict["neither_rate"].append(float(outcome == "neither"))
    result = {"n": len(scored), "n_without_answers": len(rows) - len(scored),
              **_summarise(columns, len(scored), bootstrap, seed)}
    n_conflict = len(conflict["context_rate"])
    if n_conflict:
        result.update(n_conflict=n_conflict, **_summarise(conflict, n_conflict, bootstrap, seed))
    return result


def score_predictions(rows: Iterable[Mapping[str, Any]], *, metrics: Sequence[str] = ("acc", "em", "f1", "match"),
                      fever: bool = False, rouge: bool = False, bootstrap: int = 1000, seed: int = 0,
                      by: str | None = "source") -> dict[str, Any]:
    """Aggregate per-record scores to percentages (0-100) with bootstrap intervals and a per-source breakdown.

    Each row: ``prediction``, ``answers`` (empty -> excluded, counted in ``n_without_answers``), optional
    ``parametric_answers`` (adds ``context_rate`` ... ``neither_rate`` over ``n_conflict`` rows) and optional
    ``meta`` (``meta[by]``; for ``by="source"`` also ``meta["data_source"]``).
    """
    rows = list(rows)
    metrics = list(dict.fromkeys([*metrics, *(["rouge_l"] if rouge else [])]))
    unknown = [m for m in metrics if m not in _METRIC_FNS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(_METRIC_FNS)}")
    result = _score_group(rows, metrics, fever, bootstrap, seed)
    if by:
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            meta = row.get("meta") or {}
            name = meta.get(by, meta.get("data_source") if by == "source" else None)
            groups.setdefault("unknown" if name is None else str(name), []).append(row)
        if len(groups) > 1:
            result[f"by_{by}"] = {k: _score_group(v, metrics, fever, bootstrap, seed) for k, v in sorted(groups.items())}
    used = ["normalizer", *metrics, *(["fever"] if fever else []),
            *(["conflict"] if "n_conflict" in result else []), *(["ci"] if bootstrap > 0 else [])]
    result["definitions"] = {k: DEFINITIONS[k] for k in used}
    if bootstrap > 0:
        result["definitions"]["ci"] += f", B={bootstrap}, seed={seed}"
    return result


_TABLE_ORDER = ("acc", "em", "f1", "match", "rouge_l", "context_rate", "memory_rate", "both_rate", "neither_rate")


def format_cell(run: Mapping[str, Any], key: str) -> str:
    """``value [lo, hi]`` with one decimal, or ``–`` when the run has no such figure."""
    value = run.get(key)
    if value is None:
        return "–"
    ci = run.get(f"{key}_ci")
    return f"{value:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{value:.1f}"


def metrics_table_markdown(metrics: Mapping[str, Any]) -> str:
    """Markdown table of one ``score_predictions`` result, or of several ({run name: result}) side by side."""
    runs: dict[str, Mapping[str, Any]] = {"value": metrics} if "n" in metrics else dict(metrics)
    keys = [k for k in _TABLE_ORDER if any(k in r for r in runs.values())]
    lines = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs),
             "| n | " + " | ".join(str(r.get("n", "–")) for r in runs.values()) + " |"]
    lines += [f"| {k} | " + " | ".join(format_cell(r, k) for r in runs.values()) + " |" for k in keys]
    return "\n".join(lines) + "\n"
