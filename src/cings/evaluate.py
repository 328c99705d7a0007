"""``cings evaluate``: a predictions file -> metrics (JSON) and a markdown table beside it.

With the closed-book predictions of the same records (``closed_book``), it also counts what the
documents did per record: a *neutral regression* is a question answered right closed-book and
wrong with the documents (a passage that should have been harmless broke a known answer), a
*context gain* the reverse.

Rows that carry their ranked passages (``contexts`` as ``cings retrieve`` writes them) also get the
retrieval's own metrics: recall@k, MRR and answer-in-passage (:mod:`cings.retrieval.metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .jsonl import RecordError, iter_jsonl
from .metrics import accuracy, fever_label, metrics_table_markdown, score_predictions
from .records import type_name
from .retrieval.metrics import retrieval_table_markdown, score_retrieval

__all__ = ["read_predictions", "evaluate_file", "context_effects"]


def _strings(row: dict, key: str, where: str) -> None:
    value = row[key]
    if not isinstance(value, list):
        raise RecordError(f"{where}: field '{key}' must be a list of strings, not {type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            # A number or null would be scored as an answer no prediction matches.
            raise RecordError(f"{where}: field '{key}' must be a list of strings; item {i} is {type_name(item)}")


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Checked prediction rows: an object a line with a string ``id`` seen once, a string ``prediction``
    and ``answers`` (and any ``parametric_answers``) as lists of strings."""
    return [row for _, row in _read_numbered(path)]


def _read_numbered(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(FILE:LINE, row)`` of every checked row (:func:`read_predictions`)."""
    rows = []
    seen: dict[str, int] = {}
    for where, lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise RecordError(f"{where}: a prediction must be a JSON object, not {type_name(row)}")
        for key in ("id", "prediction", "answers"):
            if key not in row:
                raise RecordError(f"{where}: field '{key}' is missing")
        if not isinstance(row["id"], str):
            raise RecordError(f"{where}: field 'id' must be a string, not {type_name(row['id'])}")
        if not isinstance(row["prediction"], str):
            raise RecordError(f"{where}: field 'prediction' must be a string")
        _strings(row, "answers", where)
        if row.get("parametric_answers") is not None:
            _strings(row, "parametric_answers", where)
        if row["id"] in seen:
            # Counted twice, it would weigh twice in every metric.
            raise RecordError(f"{where}: id {row['id']!r} repeats line {seen[row['id']]}")
        seen[row["id"]] = lineno
        rows.append((where, row))
    if not rows:
        raise RecordError(f"{path}: no predictions (the file is empty)")
    return rows


def _correct(row: dict[str, Any], fever: bool) -> bool:
    prediction, golds = row["prediction"], list(row["answers"])
    if fever:
        prediction, golds = fever_label(prediction) or "", [fever_label(g) or g for g in golds]
    return bool(accuracy(prediction, golds))


def _docs_setting(numbered: list[tuple[str, dict[str, Any]]]) -> tuple[str, str] | None:
    """``(FILE:LINE, docs)`` of the first row that records its ``--docs``."""
    for where, row in numbered:
        settings = row.get("settings")
        if isinstance(settings, dict) and "docs" in settings:
            return where, str(settings["docs"])
    return None


def context_effects(predictions: str | Path, closed_book: str | Path, *, fever: bool = False) -> dict[str, Any]:
    """Per record in both files (matched by id, scored by ``acc``): closed-book right and wrong with the
    documents (``neutral_regressions``), and the reverse (``context_gains``); counts, rates (% of the
    paired records) and ids. Records without answers and ids in only one file are counted, not paired."""
    here, closed = _read_numbered(predictions), _read_numbered(closed_book)
    for numbered, flag, closed_wanted in ((closed, "--closed-book", True), (here, "--predictions", False)):
        found = _docs_setting(numbered)
        if found and (found[1] == "none") != closed_wanted:
            raise RecordError(f"{found[0]}: {flag} rows were generated with --docs {found[1]}; neutral regressions"
                              " compare predictions with documents against those of the same records with --docs none")
    closed_rows = {row["id"]: (where, row) for where, row in closed}
    paired, unanswered, regressions, gains = 0, 0, [], []
    for where, row in here:
        if row["id"] not in closed_rows:
            continue
        closed_where, closed_row = closed_rows[row["id"]]
        if sorted(row["answers"]) != sorted(closed_row["answers"]):
            # Different answers: not the same record, and a regression count over it would mean nothing.
            raise RecordError(f"{where}: id {row['id']!r} has answers {row['answers']} here and"
                              f" {closed_row['answers']} in {closed_where}: the two files are not the same records")
        if not row["answers"]:
            unanswered += 1
            continue
        paired += 1
        now, before = _correct(row, fever), _correct(closed_row, fever)
        if before and not now:
            regressions.append(row["id"])
        elif now and not before:
            gains.append(row["id"])
    if not paired:
        raise RecordError(f"--closed-book {closed_book}: no record with answers shares an id with {predictions}")
    ids_here = {row["id"] for _, row in here}

    def share(ids: list[str]) -> dict[str, Any]:
        return {"count": len(ids), "rate": 100 * len(ids) / paired, "ids": ids}
    return {"closed_book": {"predictions": str(closed_book), "n_paired": paired, "n_paired_without_answers": unanswered,
                            "only_with_documents": len(ids_here - set(closed_rows)),
                            "only_closed_book": len(set(closed_rows) - ids_here)},
            "neutral_regressions": share(regressions), "context_gains": share(gains)}


CONTEXT_EFFECTS = ("neutral_regressions: per record in both files with answers, matched by id: acc 1 closed-book"
                   " (--docs none) and 0 with the documents; context_gains: 0 closed-book and 1 with them;"
                   " rate = % of the paired records")


def evaluate_file(predictions: str | Path, output: str | Path, *, rouge: bool = False, fever: bool = False,
                  bootstrap: int = 1000, seed: int = 0, closed_book: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """Score a predictions file; writes ``output`` (JSON) and a markdown table beside it. With ``closed_book``
    (the same records' predictions with ``--docs none``) it adds :func:`context_effects`."""
    rows = read_predictions(predictions)
    effects = context_effects(predictions, closed_book, fever=fever) if closed_book is not None else None
    metrics = score_predictions(rows, rouge=rouge, fever=fever, bootstrap=bootstrap, seed=seed)
    metrics["predictions"] = str(predictions)
    metrics["settings"] = rows[0].get("settings", {})
    table_text = metrics_table_markdown(metrics)
    # Rows that carry their ranked passages (cings retrieve's contexts) also score the retrieval itself.
    retrieval = score_retrieval(rows, bootstrap=bootstrap, seed=seed, source=str(predictions))
    if retrieval:
        metrics["retrieval"] = retrieval
        table_text += retrieval_table_markdown(retrieval)
    if effects:
        metrics.update(effects)
        metrics["definitions"]["context_effects"] = CONTEXT_EFFECTS
        n = effects["closed_book"]["n_paired"]
        table_text += "".join(f"| {name} (of {n} paired) | {effects[key]['count']} ({effects[key]['rate']:.1f}%) |\n"
                              for name, key in (("neutral regressions", "neutral_regressions"),
                                                ("context gains", "context_gains")))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table = output.with_suffix(".md")
    table.write_text(table_text + "\n", encoding="utf-8")
    return metrics, table
