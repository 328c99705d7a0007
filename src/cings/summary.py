"""The summary every data command prints and writes beside its output."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable, TextIO

from .records import Record

__all__ = ["describe", "summary_path", "write_summary", "print_summary"]


def _dist(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {"mean": round(statistics.fmean(values), 1), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def describe(records: Iterable[Record]) -> dict[str, Any]:
    """Shape of a record set: passages per record, words per passage and per response."""
    passages, context_words, response_words = [], [], []
    gold = segmented = conflict = 0
    for record in records:
        passages.append(len(record.contexts))
        context_words.extend(len(c.text.split()) for c in record.contexts)
        gold += sum(1 for c in record.contexts if c.gold)
        response_words.append(len(record.response.split()))
        segmented += record.segments is not None
        conflict += bool(record.parametric_answers)
    return {"passages_per_record": {**_dist(passages), "records_without_passages": passages.count(0)},
            "words_per_context": _dist(context_words), "words_per_response": _dist(response_words),
            "gold_passages": gold, "records_with_segments": segmented, "records_with_parametric_answers": conflict}


# The suffixes that say "records as JSON Lines" (optionally compressed); only these leave the name, so that
# ``x.v1.jsonl`` and ``x.v2.jsonl`` in one folder keep apart summaries.
_RECORD_SUFFIXES = (".jsonl", ".ndjson", ".jl", ".json")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")


def summary_path(output: str | Path) -> Path:
    """``out.v1.jsonl`` (or ``.jsonl.gz``) -> ``out.v1.summary.json``; a folder -> ``folder/summary.json``."""
    output = Path(output)
    if output.suffix == "" or output.is_dir():
        return output / "summary.json"
    name = output.name
    for suffixes in (_COMPRESSION_SUFFIXES, _RECORD_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[:-len(suffix)]
                break
    return output.with_name(name + ".summary.json")


def write_summary(summary: dict[str, Any], output: str | Path) -> Path:
    path = summary_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def print_summary(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stderr, highlight=False)
    table = Table(title=f"cings {summary.get('command', '')}", show_header=True, title_justify="left")
    table.add_column("")
    table.add_column("value", overflow="fold")
    table.add_row("records in", str(summary.get("records_in", "")))
    table.add_row("records out", str(summary.get("records_out", "")))
    dropped = summary.get("dropped") or {}
    table.add_row("dropped", ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none")
    removed = summary.get("removed") or {}
    if removed:
        table.add_row("removed from kept records", ", ".join(f"{k} {v}" for k, v in sorted(removed.items())))
    shape = summary.get("shape") or {}
    for key, label in (("passages_per_record", "passages / record"), ("words_per_context", "words / passage"),
                       ("words_per_response", "words / response")):
        if key in shape:
            d = shape[key]
            table.add_row(label, f"mean {d['mean']}, median {d['median']}, min {d['min']}, max {d['max']}")
    for key, value in (summary.get("extra") or {}).items():
        table.add_row(key, str(value))
    console.print(table)
