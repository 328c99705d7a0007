"""What every input-format reader shares: reading rows from any file, counting, and errors.

A reader is a small class with ``items(path)`` (the raw units of a file, each with a ``where``
for error messages) and ``convert(obj, where, stats)`` (one raw unit -> zero or more grounded
records). The driver (:mod:`cings.prepare`) owns error policy, id uniqueness and writing.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..jsonl import COMPRESSED, iter_jsonl, json_error, read_text
from ..records import Context, Record, RecordError, type_name

__all__ = ["ConvertStats", "Reader", "RecordError", "iter_rows", "read_json_document",
           "require", "id_from_where", "get_str", "get_list", "optional_str", "as_answers", "context_from", "type_name"]


@dataclass
class ConvertStats:
    """Counts a conversion reports: raw units seen, records written, and every drop by reason."""

    items_in: int = 0
    records_out: int = 0
    dropped: Counter = field(default_factory=Counter)   # whole raw units / records not written
    removed: Counter = field(default_factory=Counter)   # parts removed from kept records (e.g. empty passages)
    errors: list[str] = field(default_factory=list)     # first messages of skipped malformed units

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def remove(self, what: str, n: int = 1) -> None:
        self.removed[what] += n

    def to_dict(self) -> dict[str, Any]:
        return {"items_in": self.items_in, "records_out": self.records_out, "dropped": dict(self.dropped),
                "removed": dict(self.removed), "errors": self.errors[:20]}


class Reader:
    """Base class of format readers. Subclasses set ``name`` and implement ``convert``."""

    name = "base"
    description = ""

    def __init__(self, options: Any = None):
        from . import PrepareOptions

        self.options = options if options is not None else PrepareOptions()

    def items(self, path: Path) -> Iterator[tuple[str, Any]]:
        yield from iter_rows(path)

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        raise NotImplementedError


def _suffixes(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix): 'x.jsonl.gz' -> ('.jsonl', '.gz')."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSED else ""
    rest = suffixes[:-1] if compression else suffixes
    return (rest[-1] if rest else ""), compression


def _read_all(path: Path) -> str:
    text = read_text(path)
    if not text.strip():
        raise RecordError(f"{path}: the file is empty")
    return text


def read_json_document(path: Path) -> Any:
    """A whole JSON document (SQuAD, HotpotQA); errors name the file, line and column."""
    text = _read_all(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise json_error(f"{path}:{err.lineno}", err) from None


def iter_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a JSON Lines, JSON array, CSV/TSV or Parquet file, each with ``FILE:LINE`` (or ``FILE:[i]``).

    Compressed files (.gz, .bz2, .xz) are read transparently. An empty or unreadable file raises;
    a broken JSON line is yielded as a :class:`RecordError` in place of the row.
    """
    path = Path(path)
    kind, _ = _suffixes(path)
    if kind == ".parquet":
        yield from _parquet_rows(path)
        return
    if kind in (".csv", ".tsv"):
        yield from _csv_rows(path, "\t" if kind == ".tsv" else ",")
        return
    rows = iter_jsonl(path, bad_json="yield")
    first = next(rows, None)
    if first is None:
        raise RecordError(f"{path}: the file is empty")
    where, _, value = first
    if isinstance(value, RecordError) or isinstance(value, list):
        # Not one object a line: a JSON array, or one object spread over lines.
        text = read_text(path)
        if text.lstrip()[:1] == "[":
            doc = read_json_document(path)
            if not isinstance(doc, list):
                raise RecordError(f"{path}: expected a JSON array or one JSON object a line")
            for i, obj in enumerate(doc):
                yield f"{path}:[{i}]", obj
            return
        if text.lstrip()[:1] == "{":
            try:
                doc = json.loads(text)
            except json.JSONDecodeError:
                doc = None
            if isinstance(doc, dict):
                yield f"{path}:1", doc
                return
    yield where, value
    for where, _, value in rows:
        # Yielded, not raised: the driver decides whether a broken line stops the run or is skipped.
        yield where, value


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, Any]]:
    text = _read_all(path)
    if not text.strip():
        raise RecordError(f"{path}: the file is empty")
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    for row in reader:
        yield f"{path}:{reader.line_num}", dict(row)


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own error classes for broken files
        raise RecordError(f"{path}: cannot read as Parquet ({err})") from None
    if table.num_rows == 0:
        raise RecordError(f"{path}: the file is empty")
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i + 1}", row


# ---------------------------------------------------------------- field helpers

def id_from_where(where: str) -> str:
    """An id for a row without one: ``FILE:LINE``, ``FILE:[i]`` or ``FILE:row i`` -> ``stem-N``, unique in the file."""
    path, _, pos = where.rpartition(":")
    return f"{Path(path).name.split('.')[0]}-{pos.strip('[]').replace('row ', '')}"


def require(obj: Any, key: str, where: str, name: str | None = None) -> Any:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, not {type_name(obj)}")
    if key not in obj or obj[key] is None:
        raise RecordError(f"{where}: field '{name or key}' is missing")
    return obj[key]


def get_str(obj: Any, key: str, where: str, name: str | None = None, *, nonempty: bool = True) -> str:
    value = require(obj, key, where, name)
    if not isinstance(value, str):
        raise RecordError(f"{where}: field '{name or key}' must be a string, not {type_name(value)}")
    if nonempty and not value.strip():
        raise RecordError(f"{where}: field '{name or key}' must not be empty")
    return value


def optional_str(obj: dict, key: str, where: str, name: str | None = None) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{where}: field '{name or key}' must be a string, not {type_name(value)}")
    return value


def get_list(obj: Any, key: str, where: str, name: str | None = None) -> list:
    value = require(obj, key, where, name)
    if not isinstance(value, list):
        raise RecordError(f"{where}: field '{name or key}' must be a list, not {type_name(value)}")
    return value


def as_answers(value: Any, where: str, name: str) -> list[str]:
    """A list of answer strings from a string or a list of strings/numbers; blanks and repeats removed."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise RecordError(f"{where}: field '{name}' must be a list of strings, not {type_name(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise RecordError(f"{where}: field '{name}[{i}]' must be a string, not {type_name(item)}")
        text = str(item).strip()
        if text and text not in out:
            out.append(text)
    return out


def _score(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def context_from(value: Any, where: str, name: str, *, gold: bool | None = None) -> Context | None:
    """A passage from a string or an object with text/title (or FlashRAG's 'contents'); None if blank."""
    if isinstance(value, str):
        return Context(text=value.strip(), gold=gold) if value.strip() else None
    if not isinstance(value, dict):
        raise RecordError(f"{where}: field '{name}' must be a string or an object, not {type_name(value)}")
    title = value.get("title") or ""
    text = value.get("text")
    if text is None and isinstance(value.get("contents"), str):
        # FlashRAG corpora store '"Title"\ntext' in one field.
        head, _, rest = value["contents"].partition("\n")
        title, text = (head.strip().strip('"'), rest) if rest else ("", head)
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise RecordError(f"{where}: field '{name}.text' must be a string, not {type_name(text)}")
    if not isinstance(title, str):
        raise RecordError(f"{where}: field '{name}.title' must be a string, not {type_name(title)}")
    if not text.strip():
        return None
    if gold is None:
        raw_gold = value.get("isgold", value.get("gold"))
        gold = raw_gold if isinstance(raw_gold, bool) else None
    return Context(text=text.strip(), title=title.strip(), gold=gold, score=_score(value.get("score")))
