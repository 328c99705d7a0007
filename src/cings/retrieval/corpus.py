"""Passage corpora for ``cings index``, read one passage at a time with ``FILE:LINE`` errors.

Two layouts (plain or .gz/.bz2/.xz):

* JSON Lines, one passage a line: ``{"id": ..., "title": ..., "text": ...}``; ``id`` and ``title`` may be
  left out. FlashRAG's ``{"id", "contents": "\\"Title\\"\\ntext"}`` is read too. Other keys are ignored.
* DPR's ``psgs_w100.tsv``: a header naming the columns ``id``, ``text`` and ``title`` (any order), then one
  passage a row, fields quoted as Python's csv module writes them (DPR's own reader is ``csv.reader``).

A corpus either gives every passage an ``id`` or none: with ids, a repeat is an error, because gold
passages and retrieved ones are matched by id.
"""

from __future__ import annotations

import csv
import hashlib
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..jsonl import RecordError, compression_of, iter_jsonl, iter_lines
from ..records import type_name

__all__ = ["Passage", "corpus_layout", "iter_corpus", "IdChecker"]

_TSV_COLUMNS = ("id", "text", "title")


@dataclass(frozen=True)
class Passage:
    id: str | None
    title: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.id is None else {"id": self.id}
        return out | {"title": self.title, "text": self.text}


def corpus_layout(path: str | Path) -> str:
    """``jsonl`` or ``tsv``, from the name (a compression suffix is looked through)."""
    path = Path(path)
    name = path.name.lower()
    if compression_of(path):
        name = name.rsplit(".", 1)[0]
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise RecordError(f"{path}: a corpus is .jsonl (id, title, text per line) or DPR's .tsv (id, text, title);"
                      " the name says neither")


def _passage_from_object(obj: Any, where: str) -> Passage:
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a passage must be a JSON object, not {type_name(obj)}")
    pid = obj.get("id")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip()):
        raise RecordError(f"{where}: field 'id' must be a non-empty string or an integer, not {type_name(pid)}")
    title, text = obj.get("title"), obj.get("text")
    if text is None and isinstance(obj.get("contents"), str):
        # FlashRAG corpora store '"Title"\ntext' in one field.
        head, _, rest = obj["contents"].partition("\n")
        title, text = (head.strip().strip('"'), rest) if rest else (title, head)
    if text is None:
        raise RecordError(f"{where}: field 'text' is missing (a passage needs 'text', or FlashRAG's 'contents')")
    for name, value in (("text", text), ("title", title)):
        if value is not None and not isinstance(value, str):
            raise RecordError(f"{where}: field '{name}' must be a string, not {type_name(value)}")
    if not text.strip():
        raise RecordError(f"{where}: field 'text' must not be empty")
    return Passage(id=None if pid is None else str(pid), title=(title or "").strip(), text=text.strip())


def _iter_tsv(path: Path) -> Iterator[tuple[str, Passage]]:
    lineno = 0

    def feed() -> Iterator[str]:
        nonlocal lineno
        # The line number is kept where the row loop sees it: a quoted field may span lines.
        for lineno, line in iter_lines(path):
            yield line

    reader = csv.reader(feed(), delimiter="\t")
    header = next(reader, None)
    if header is None:
        raise RecordError(f"{path}: the corpus is empty")
    names = [h.strip().lower() for h in header]
    if "text" not in names:
        raise RecordError(f"{path}:1: the header {header!r} does not name a 'text' column; DPR's psgs_w100.tsv starts"
                          f" with the header {chr(9).join(_TSV_COLUMNS)!r}")
    cols = {c: names.index(c) for c in _TSV_COLUMNS if c in names}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise RecordError(f"{path}:{lineno}: not a valid TSV row ({err})") from None
        where = f"{path}:{lineno}"
        if not row or row == [""]:
            continue
        if len(row) != len(names):
            raise RecordError(f"{where}: {len(row)} fields, the header has {len(names)} ({', '.join(names)})")
        text = row[cols["text"]].strip()
        if not text:
            raise RecordError(f"{where}: field 'text' must not be empty")
        pid = row[cols["id"]].strip() if "id" in cols else None
        if pid == "":
            raise RecordError(f"{where}: field 'id' must not be empty")
        yield where, Passage(id=pid, title=row[cols["title"]].strip() if "title" in cols else "", text=text)


def iter_corpus(path: str | Path) -> Iterator[tuple[str, Passage]]:
    """``(FILE:LINE, passage)`` for every passage of a corpus, in file order."""
    path = Path(path)
    if corpus_layout(path) == "tsv":
        yield from _iter_tsv(path)
        return
    for where, _, obj in iter_jsonl(path):
        yield where, _passage_from_object(obj, where)


class IdChecker:
    """Checks, while a corpus streams past, that all passages or none have an id, and that no id repeats.

    Repeats are found from 8-byte hashes kept in an array (168 MB for DPR's 21M passages, where a set of
    the ids themselves would take gigabytes); a hash collision is told apart from a real repeat by
    :meth:`first_repeat`, which reads the file again only when a collision or repeat is there.
    """

    def __init__(self) -> None:
        self.hashes = array("q")
        self.with_id = 0
        self.without_id = 0
        self._first: tuple[str, bool] | None = None

    @staticmethod
    def _hash(pid: str) -> int:
        return int.from_bytes(hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest(), "little", signed=True)

    def add(self, where: str, passage: Passage) -> None:
        has = passage.id is not None
        if self._first is None:
            self._first = (where, has)
        elif has != self._first[1]:
            first_where, _ = self._first
            said = "has an 'id'" if has else "has no 'id'"
            raise RecordError(f"{where}: this passage {said} and the first ({first_where}) "
                              f"{'does not' if has else 'does'}: give every passage an id, or none")
        if has:
            self.with_id += 1
            self.hashes.append(self._hash(passage.id))  # type: ignore[arg-type]
        else:
            self.without_id += 1

    def repeated(self) -> set[int]:
        """The hashes seen more than once (empty: every id is distinct)."""
        import numpy as np

        values, counts = np.unique(np.frombuffer(self.hashes, dtype=np.int64), return_counts=True)
        return set(values[counts > 1].tolist())

    def first_repeat(self, path: str | Path) -> str | None:
        """``FILE:LINE: ...`` naming the first repeated id, or None when the hashes only collided; reads the
        corpus again, keeping only the ids whose hash repeats."""
        suspects, seen = self.repeated(), {}
        for where, passage in iter_corpus(path):
            if passage.id is None or self._hash(passage.id) not in suspects:
                continue
            if passage.id in seen:
                return f"{where}: id {passage.id!r} repeats the passage at {seen[passage.id]}"
            seen[passage.id] = where
        return None
