"""POPE scoring: yes/no object-existence answers -> accuracy, precision, recall, F1 and yes-ratio.

POPE (Li et al., 2023) asks "Is there a X in the image?" with balanced yes/no labels; a model that
hallucinates objects says yes too often, so the yes-ratio and precision expose it. Numbers are only
comparable with published ones under the same answer parser, so the default rule is the official
script's, copied with its quirks (RUCAIBox/POPE ``evaluate.py`` and LLaVA's ``eval_pope.py``):
keep the text before the first ``.``, delete commas, split on single spaces, and the answer is
"no" iff a word is exactly ``No``, ``not`` or ``no``; anything else is "yes". So ``NO``, ``No!``,
``Nope``, ``no\\n`` and an empty answer all count as *yes*.

``strict`` is the reading a person would give, for models that answer in other shapes: lowercase,
the first sentence, its words stripped of punctuation; "no" iff a word is ``no``, ``not``,
``nope`` or ``none`` (so ``NO``, ``No!``, ``no\\n``, ``Nope`` and ``I do not see one`` are no), else
yes. Either way, positive class is "yes". Where the official script divides by zero (no yes
predicted, or no yes label), precision, recall or F1 are reported as 0.

Stdlib only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["PopeError", "RULES", "parse_answer", "pope_metrics", "evaluate_file"]

RULES = ("official", "strict")
_OFFICIAL_NO = frozenset({"No", "not", "no"})
_STRICT_NO = frozenset({"no", "not", "nope", "none"})
_WORD = re.compile(r"[a-z']+")


class PopeError(ValueError):
    pass


def parse_answer(text: str, rule: str = "official") -> str:
    """'yes' or 'no', as POPE's scorer reads ``text``."""
    if rule == "official":
        if text.find(".") != -1:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if _OFFICIAL_NO.intersection(words) else "yes"
    if rule == "strict":
        first = re.split(r"[.!?\n]", text.strip().lower(), maxsplit=1)[0]
        return "no" if _STRICT_NO.intersection(_WORD.findall(first)) else "yes"
    raise PopeError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")


def _ratio(num: int, den: int) -> float:
    return 100.0 * num / den if den else 0.0


def pope_metrics(predictions: list[str], labels: list[str]) -> dict[str, Any]:
    """Metrics of parsed answers ('yes'/'no') against labels ('yes'/'no'), as percentages."""
    if len(predictions) != len(labels):
        raise PopeError(f"{len(predictions)} predictions for {len(labels)} labels")
    for name, values in (("prediction", predictions), ("label", labels)):
        bad = sorted({v for v in values if v not in ("yes", "no")})
        if bad:
            raise PopeError(f"a {name} must be 'yes' or 'no', found {bad[:3]}")
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    tn = sum(p == "no" and y == "no" for p, y in pairs)
    fn = sum(p == "no" and y == "yes" for p, y in pairs)
    n = len(pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": _ratio(tp + tn, n), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": _ratio(tp + fp, n), "n": n, "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def evaluate_file(predictions: str | Path, output: str | Path | None = None, rule: str = "official") -> dict[str, Any]:
    """Score a predictions JSONL (id, prediction, label, split?); overall and per split; written to ``output``."""
    from .jsonl import iter_jsonl

    if rule not in RULES:
        raise PopeError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
    parsed: list[str] = []
    labels: list[str] = []
    splits: dict[str, tuple[list[str], list[str]]] = {}
    seen: set[str] = set()
    for where, _, row in iter_jsonl(predictions):
        if not isinstance(row, dict):
            raise PopeError(f"{where}: a prediction is a JSON object")
        for name in ("id", "prediction", "label"):
            if name not in row:
                raise PopeError(f"{where}: field {name!r} missing")
        if not isinstance(row["prediction"], str):
            raise PopeError(f"{where}: field 'prediction' must be the model's text (a string)")
        label = row["label"].strip().lower() if isinstance(row["label"], str) else row["label"]
        if label not in ("yes", "no"):
            raise PopeError(f"{where}: field 'label' must be 'yes' or 'no', not {row['label']!r}")
        rid = str(row["id"])
        if rid in seen:
            raise PopeError(f"{where}: id {rid!r} appears twice")
        seen.add(rid)
        answer = parse_answer(row["prediction"], rule)
        parsed.append(answer)
        labels.append(label)
        if row.get("split") is not None:
            answers, truths = splits.setdefault(str(row["split"]), ([], []))
            answers.append(answer)
            truths.append(label)
    if not parsed:
        raise PopeError(f"{predictions}: no predictions")
    result = {**pope_metrics(parsed, labels), "rule": rule, "predictions": str(predictions),
              "splits": {name: pope_metrics(*splits[name]) for name in sorted(splits)}}
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
