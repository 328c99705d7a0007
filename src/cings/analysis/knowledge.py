"""What a model knows by itself, and whether it keeps to it against a passage, before and after training.

Each model (the base model first, then the trained ones) is given as two prediction files of
``cings generate``:

- ``CLOSED_BOOK`` (``--docs none``): ``acc`` and ``em`` of the answers given without a passage. A row
  with ``parametric_answers`` (a counterfactual record asked without its passage) is scored against
  them, as the real answer is then the original one, not the swapped one in ``answers``.
- ``CONFLICT`` (with the passage, on a knowledge-conflict set such as ``cings counterfactual
  --known-from``): ``context_rate`` (the answer follows the passage), ``memory_rate`` (it keeps the
  original), ``both_rate`` and ``neither_rate``, by :func:`cings.metrics.conflict_outcome`.
- ``known_kept``: where the closed-book file answers every conflict id, the closed-book EM on those
  ids: whether the model still knows the facts the conflict is about (100 for the model the set was
  mined with, under the same settings, by construction).

Every figure is a percentage with a 95% bootstrap interval over records. Against the first model,
each later one gets paired differences (:func:`cings.metrics.paired_difference`) of closed-book EM,
``known_kept``, ``context_rate`` and ``memory_rate``: the same records on both sides, so the interval
excludes the records' own difficulty. That is why every model must answer the same ids: a
mismatch is an error naming both files and an id, never a silent comparison of different questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..evaluate import read_predictions
from ..metrics import DEFINITIONS, conflict_outcome, exact_match, format_cell, paired_difference, score_predictions
from ..records import RecordError

__all__ = ["ModelPredictions", "analyze_knowledge", "knowledge_markdown", "write_knowledge", "PAIRED"]

# (result section, figure): the paired differences against the first model.
PAIRED = (("closed_book", "em"), ("known_kept", "em"), ("conflict", "context_rate"), ("conflict", "memory_rate"))


@dataclass(frozen=True)
class ModelPredictions:
    """One model's two prediction files."""

    name: str
    closed_book: str
    conflict: str


def _docs(row: Mapping[str, Any]) -> Any:
    return (row.get("settings") or {}).get("docs")


def _closed_book(path: str) -> list[dict[str, Any]]:
    rows = read_predictions(path)
    for row in rows:
        if _docs(row) not in (None, "none"):
            raise RecordError(f"{path}: id {row['id']!r} was answered with documents (settings.docs {_docs(row)!r});"
                              " closed-book predictions come from cings generate --docs none")
    # Without its passage, the right answer to a counterfactual record is the original one.
    return [{**row, "answers": row.get("parametric_answers") or row["answers"]} for row in rows]


def _conflict(path: str) -> list[dict[str, Any]]:
    rows = read_predictions(path)
    for row in rows:
        if not row.get("parametric_answers"):
            raise RecordError(f"{path}: id {row['id']!r} has no parametric_answers: a conflict set's rows carry the"
                              " passage's answer (answers) and the original one (parametric_answers)")
        if _docs(row) == "none":
            raise RecordError(f"{path}: id {row['id']!r} was answered without its passage (settings.docs 'none'):"
                              " a conflict needs the passage; generate with --docs gold")
    return rows


def _same_ids(kind: str, files: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
    (first_path, first_rows), *rest = files
    first = {r["id"] for r in first_rows}
    for path, rows in rest:
        ids = {r["id"] for r in rows}
        if ids != first:
            extra, lacking = sorted(ids - first), sorted(first - ids)
            example = f"{extra[0]!r} is only in {path}" if extra else f"{lacking[0]!r} is only in {first_path}"
            raise RecordError(f"{kind} predictions of different questions: {path} and {first_path} differ in"
                              f" {len(extra) + len(lacking)} ids ({example}); every model must answer the same ids")


def _per_record(section: str, figure: str, rows: list[dict[str, Any]]) -> dict[str, float]:
    if section == "conflict":
        key = figure.removesuffix("_rate")
        out = {}
        for r in rows:
            outcome = conflict_outcome(r["prediction"], r["answers"], r["parametric_answers"])
            out[r["id"]] = float(outcome in (key, "both"))
        return out
    return {r["id"]: exact_match(r["prediction"], r["answers"]) for r in rows}


def analyze_knowledge(models: Sequence[ModelPredictions], *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Closed-book accuracy and EM, known facts kept and conflict rates per model; see the module docstring."""
    if not models:
        raise ValueError("give at least one --model NAME CLOSED_BOOK CONFLICT")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"--model names must differ: {names}")
    closed = [(m.closed_book, _closed_book(m.closed_book)) for m in models]
    conflict = [(m.conflict, _conflict(m.conflict)) for m in models]
    _same_ids("closed-book", closed)
    _same_ids("conflict", conflict)
    conflict_ids = {r["id"] for r in conflict[0][1]}
    covered = conflict_ids <= {r["id"] for r in closed[0][1]}
    score = dict(metrics=("acc", "em"), bootstrap=bootstrap, seed=seed, by=None)
    result: dict[str, Any] = {"models": {}}
    rows_of: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for model, (_, cb_rows), (_, cf_rows) in zip(models, closed, conflict):
        kept_rows = [r for r in cb_rows if r["id"] in conflict_ids] if covered else []
        rows_of[model.name] = {"closed_book": cb_rows, "known_kept": kept_rows, "conflict": cf_rows}
        entry = {"files": {"closed_book": model.closed_book, "conflict": model.conflict},
                 "closed_book": _figures(score_predictions(cb_rows, **score)),
                 "known_kept": _figures(score_predictions(kept_rows, **score)) if kept_rows else None,
                 "conflict": _figures(score_predictions(cf_rows, **score))}
        result["models"][model.name] = entry
    base = names[0]
    for name in names[1:]:
        paired = {}
        for section, figure in PAIRED:
            a, b = (_per_record(section, figure, rows_of[n][section]) for n in (base, name))
            if a:
                ids = sorted(a)
                paired[f"{section}.{figure}"] = paired_difference([a[i] for i in ids], [b[i] for i in ids])
        result["models"][name]["paired_vs_first"] = paired
    result["first_model"] = base
    result["known_kept_note"] = (None if covered else "the closed-book files do not answer every conflict id, so"
                                 " known_kept is not computed")
    result["definitions"] = {k: DEFINITIONS[k] for k in ("normalizer", "acc", "em", "conflict")}
    result["definitions"]["ci"] = DEFINITIONS["ci"] + f", B={bootstrap}, seed={seed}"
    result["definitions"]["paired"] = ("mean of (model - first model) over the same records, percentage points,"
                                       " 95% normal interval")
    return result


def _figures(scored: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scored.items() if k != "definitions"}


_COLUMNS = (("closed_book", "acc", "closed-book acc"), ("closed_book", "em", "closed-book EM"),
            ("known_kept", "em", "known kept (EM)"), ("conflict", "context_rate", "context rate"),
            ("conflict", "memory_rate", "memory rate"), ("conflict", "both_rate", "both"),
            ("conflict", "neither_rate", "neither"))


def knowledge_markdown(result: Mapping[str, Any]) -> str:
    """The per-model table and, with two models or more, the paired differences against the first."""
    models = result["models"]
    head = ["model", "closed-book n", *(c[2] for c in _COLUMNS[:3]), "conflict n", *(c[2] for c in _COLUMNS[3:])]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, m in models.items():
        cells = [format_cell(m[s] or {}, k) for s, k, _ in _COLUMNS]
        lines.append(f"| {name} | {m['closed_book']['n']} | " + " | ".join(cells[:3])
                     + f" | {m['conflict']['n']} | " + " | ".join(cells[3:]) + " |")
    out = "\n".join(lines) + "\n"
    later = [(n, m["paired_vs_first"]) for n, m in models.items() if m.get("paired_vs_first")]
    if later:
        keys = [f"{s}.{f}" for s, f in PAIRED if any(f"{s}.{f}" in p for _, p in later)]
        out += (f"\nChange against {result['first_model']} on the same records, percentage points [95% interval]:\n\n"
                "| model | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys) + "\n")
        for name, paired in later:
            out += f"| {name} | " + " | ".join(
                f"{paired[k]['diff']:+.1f} [{paired[k]['lo']:+.1f}, {paired[k]['hi']:+.1f}]" if k in paired else "–"
                for k in keys) + " |\n"
    if result.get("known_kept_note"):
        out += f"\n{result['known_kept_note']}.\n"
    return out


def write_knowledge(result: Mapping[str, Any], output: str | Path, markdown: str | Path | None = None) -> list[Path]:
    """``output`` (JSON) and, if asked, ``markdown``; returns the paths written."""
    written = [Path(output)]
    written[0].parent.mkdir(parents=True, exist_ok=True)
    written[0].write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if markdown:
        path = Path(markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(knowledge_markdown(result), encoding="utf-8")
        written.append(path)
    return written
