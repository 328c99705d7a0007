"""Any JSON Lines / JSON / CSV / Parquet file, mapped onto grounded fields with ``--field-map``.

``--field-map instruction=question,response=answer,contexts=passages`` reads each grounded field
from the named source field (dotted paths reach into objects: ``contexts=retrieval.docs``).
Unmapped grounded fields are read under their own name, so a file already in the grounded format
needs no map. ``contexts`` may be a list of strings or ``{title, text}`` objects, or one string.
Without a response, the first of ``answers`` is the response.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from ..records import Record, parse_record
from .common import ConvertStats, Reader, RecordError, as_answers, context_from, id_from_where, type_name

__all__ = ["JsonlReader", "GROUNDED_FIELDS"]

GROUNDED_FIELDS = ("id", "instruction", "contexts", "response", "system", "answers", "parametric_answers", "meta")
_MISSING = object()


def _lookup(obj: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


class JsonlReader(Reader):
    name = "jsonl"

    def __init__(self, options: Any = None):
        super().__init__(options)
        unknown = set(self.options.field_map) - set(GROUNDED_FIELDS)
        if unknown:
            raise ValueError(f"--field-map: {', '.join(sorted(unknown))} is not a grounded field"
                             f" (known: {', '.join(GROUNDED_FIELDS)})")

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, not {type_name(obj)}")
        fmap = self.options.field_map
        out: dict[str, Any] = {}
        for name in GROUNDED_FIELDS:
            source = fmap.get(name, name)
            value = _lookup(obj, source)
            if value is not _MISSING and value is not None:
                out[name] = value
        names = {k: fmap.get(k, k) for k in GROUNDED_FIELDS}
        if "answers" in out:
            out["answers"] = as_answers(out["answers"], where, names["answers"])
        if "parametric_answers" in out:
            out["parametric_answers"] = as_answers(out["parametric_answers"], where, names["parametric_answers"])
        if "response" not in out and out.get("answers"):
            out["response"] = out["answers"][0]
        if isinstance(out.get("response"), (list, tuple)):
            values = as_answers(out["response"], where, names["response"])
            out["response"] = values[0] if values else ""
        raw = out.get("contexts", [])
        raw = raw if isinstance(raw, list) else [raw]
        contexts = []
        for i, item in enumerate(raw):
            ctx = context_from(item, where, f"{names['contexts']}[{i}]")
            if ctx is None:
                stats.remove("empty_passage")
            else:
                contexts.append(ctx.to_dict())
        out["contexts"] = contexts
        if "id" not in out:
            out["id"] = id_from_where(where)
        try:
            return [parse_record(out, where)]
        except RecordError as err:
            raise RecordError(_source_names(str(err), fmap)) from None


def _source_names(message: str, fmap: dict[str, str]) -> str:
    """Name the source field the user wrote: "field 'question' ... (--field-map instruction=question)"."""
    match = re.search(r"field '([a-z_]+)([^']*)'", message)
    if not match or match.group(1) not in fmap:
        return message
    name, rest = match.groups()
    fixed = message[:match.start()] + f"field '{fmap[name]}{rest}'" + message[match.end():]
    return f"{fixed} (--field-map {name}={fmap[name]})"
