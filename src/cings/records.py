"""The grounded record: the one input format every cings command reads.

One JSON object per line (see docs/data-format.md). Reading validates every field and fails with
``FILE:LINE: field 'NAME' ...`` so that a bad line in a 100k-line file is found in seconds.
This module knows nothing of tokenizers or torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .jsonl import RecordError, iter_jsonl, open_for_writing

__all__ = ["Context", "Segment", "Record", "RecordError", "read_records", "parse_record", "write_records", "type_name"]


@dataclass(frozen=True)
class Context:
    text: str
    title: str = ""
    gold: bool | None = None
    score: float | None = None
    # The passage's id in its corpus (what `cings retrieve` found), so a hit can be traced and judged by id.
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text}
        if self.id is not None:
            out["id"] = self.id
        if self.title:
            out["title"] = self.title
        if self.gold is not None:
            out["gold"] = self.gold
        if self.score is not None:
            out["score"] = self.score
        return out


@dataclass(frozen=True)
class Segment:
    """One answer piece and the passages it follows (multi-passage data)."""

    contexts: tuple[Context, ...]
    response: str

    def to_dict(self) -> dict[str, Any]:
        return {"contexts": [c.to_dict() for c in self.contexts], "response": self.response}


@dataclass(frozen=True)
class Record:
    id: str
    instruction: str
    contexts: tuple[Context, ...]
    response: str
    system: str | None = None
    answers: tuple[str, ...] | None = None
    parametric_answers: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    segments: tuple[Segment, ...] | None = None
    # Where the record was read from ("train.jsonl:17"), for error messages; never written out.
    source: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "instruction": self.instruction,
            "contexts": [c.to_dict() for c in self.contexts],
            "response": self.response,
        }
        if self.system is not None:
            out["system"] = self.system
        if self.answers is not None:
            out["answers"] = list(self.answers)
        if self.parametric_answers is not None:
            out["parametric_answers"] = list(self.parametric_answers)
        if self.meta:
            out["meta"] = self.meta
        if self.segments is not None:
            out["segments"] = [s.to_dict() for s in self.segments]
        return out


_KNOWN_FIELDS = {"id", "instruction", "contexts", "response", "system", "answers",
                 "parametric_answers", "meta", "segments"}
_CONTEXT_FIELDS = {"id", "title", "text", "gold", "score"}
_WS = re.compile(r"\s+")


def type_name(value: Any) -> str:
    """How an error names a JSON value's type: 'a string', 'a list', 'null'."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _fail(where: str, name: str, problem: str) -> RecordError:
    return RecordError(f"{where}: field '{name}' {problem}")


def _string(obj: dict, key: str, where: str, name: str, *, required: bool, nonempty: bool = False) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise _fail(where, name, "is missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise _fail(where, name, f"must be a string, not {type_name(value)}")
    if nonempty and not value.strip():
        raise _fail(where, name, "must not be empty")
    return value


def _string_list(obj: dict, key: str, where: str) -> tuple[str, ...] | None:
    if key not in obj or obj[key] is None:
        return None
    value = obj[key]
    if not isinstance(value, list):
        raise _fail(where, key, f"must be a list of strings, not {type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(where, f"{key}[{i}]", f"must be a string, not {type_name(item)}")
    return tuple(value)


def _contexts(value: Any, where: str, name: str) -> tuple[Context, ...]:
    if not isinstance(value, list):
        raise _fail(where, name, f"must be a list of objects, not {type_name(value)}")
    out = []
    for i, item in enumerate(value):
        item_name = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, item_name, f"must be an object with 'text', not {type_name(item)}")
        unknown = set(item) - _CONTEXT_FIELDS
        if unknown:
            raise _fail(where, f"{item_name}.{sorted(unknown)[0]}", f"is not a context field (known: {', '.join(sorted(_CONTEXT_FIELDS))})")
        text = _string(item, "text", where, f"{item_name}.text", required=True, nonempty=True)
        title = _string(item, "title", where, f"{item_name}.title", required=False) or ""
        gold = item.get("gold")
        if gold is not None and not isinstance(gold, bool):
            raise _fail(where, f"{item_name}.gold", f"must be a boolean, not {type_name(gold)}")
        score = item.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise _fail(where, f"{item_name}.score", f"must be a number, not {type_name(score)}")
        pid = item.get("id")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip()):
            raise _fail(where, f"{item_name}.id", "must be a non-empty string" + (
                "" if isinstance(pid, str) else f", not {type_name(pid)}"))
        out.append(Context(text=text, title=title, gold=gold, score=None if score is None else float(score),
                           id=None if pid is None else str(pid)))
    return tuple(out)


def _same_text(a: str, b: str) -> bool:
    return _WS.sub(" ", a).strip() == _WS.sub(" ", b).strip()


def parse_record(obj: Any, where: str = "<record>") -> Record:
    """Validate one decoded JSON value and build a :class:`Record`.

    ``where`` prefixes every error (``train.jsonl:17``).
    """
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object, not {type_name(obj)}")
    unknown = set(obj) - _KNOWN_FIELDS
    if unknown:
        raise _fail(where, sorted(unknown)[0], f"is not a record field (known: {', '.join(sorted(_KNOWN_FIELDS))}; put extra data under 'meta')")
    rid = obj.get("id")
    if rid is None:
        raise _fail(where, "id", "is missing")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _fail(where, "id", f"must be a string, not {type_name(rid)}")
    instruction = _string(obj, "instruction", where, "instruction", required=True, nonempty=True)
    response = _string(obj, "response", where, "response", required=True, nonempty=True)
    if "contexts" not in obj or obj["contexts"] is None:
        raise _fail(where, "contexts", "is missing (use [] for a record without context)")
    contexts = _contexts(obj["contexts"], where, "contexts")
    system = _string(obj, "system", where, "system", required=False)
    answers = _string_list(obj, "answers", where)
    parametric = _string_list(obj, "parametric_answers", where)
    meta = obj.get("meta")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise _fail(where, "meta", f"must be an object, not {type_name(meta)}")

    segments = None
    if obj.get("segments") is not None:
        raw = obj["segments"]
        if not isinstance(raw, list) or not raw:
            raise _fail(where, "segments", "must be a non-empty list of {'contexts', 'response'} objects")
        segs = []
        for i, seg in enumerate(raw):
            name = f"segments[{i}]"
            if not isinstance(seg, dict):
                raise _fail(where, name, f"must be an object, not {type_name(seg)}")
            unknown = set(seg) - {"contexts", "response"}
            if unknown:
                raise _fail(where, f"{name}.{sorted(unknown)[0]}", "is not a segment field (known: contexts, response)")
            seg_response = _string(seg, "response", where, f"{name}.response", required=True, nonempty=True)
            seg_contexts = _contexts(seg.get("contexts", []), where, f"{name}.contexts")
            segs.append(Segment(contexts=seg_contexts, response=seg_response))
        segments = tuple(segs)
        # Readers that ignore segments must still see the whole record, so the two views must agree.
        joined = " ".join(s.response for s in segments)
        if not _same_text(joined, response):
            raise _fail(where, "segments", "responses joined do not equal 'response' (up to whitespace)")
        flat = tuple(c for s in segments for c in s.contexts)
        if [(c.title, c.text) for c in flat] != [(c.title, c.text) for c in contexts]:
            raise _fail(where, "segments", "contexts joined do not equal 'contexts'")

    return Record(id=str(rid), instruction=instruction, contexts=contexts, response=response,
                  system=system, answers=answers, parametric_answers=parametric, meta=meta,
                  segments=segments, source=None if where == "<record>" else where)


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield validated records from a JSON Lines file (.gz/.bz2/.xz allowed). Blank lines are skipped."""
    seen: dict[str, int] = {}
    for where, lineno, obj in iter_jsonl(path):
        record = parse_record(obj, where)
        if record.id in seen:
            raise _fail(where, "id", f"repeats id {record.id!r} first seen on line {seen[record.id]}")
        seen[record.id] = lineno
        yield record


def write_records(records: Iterable[Record], path: str | Path) -> int:
    """Write records as JSON Lines (gzip/bz2/xz by the suffix); returns how many were written."""
    n = 0
    with open_for_writing(path) as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
