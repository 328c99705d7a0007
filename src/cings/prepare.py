"""``cings prepare``: raw files of a known format -> grounded records, with nothing lost silently."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .formats import ConvertStats, PrepareOptions, get_reader
from .records import Record, RecordError, write_records
from .summary import describe

__all__ = ["prepare", "ON_ERROR"]

ON_ERROR = ("raise", "skip")


def prepare(fmt: str, inputs: Sequence[str | Path], options: PrepareOptions | None = None, *,
            on_error: str = "raise", progress: bool = False) -> tuple[list[Record], ConvertStats]:
    """Convert every input file with the ``fmt`` reader.

    ``on_error="raise"`` stops at the first malformed unit with its ``FILE:LINE: field`` message;
    ``"skip"`` drops it, counts it as ``malformed`` and keeps the first messages in ``stats.errors``.
    Ids must be unique across all inputs: a repeat is malformed (or, with skip, dropped as such).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    reader = get_reader(fmt, options)
    stats = ConvertStats()
    records: list[Record] = []
    seen: dict[str, str] = {}
    for path in inputs:
        items = reader.items(Path(path))
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc=f"Reading {Path(path).name}", unit=" rows")
        for where, obj in items:
            stats.items_in += 1
            try:
                if isinstance(obj, RecordError):
                    raise obj
                converted = list(reader.convert(obj, where, stats))
                for record in converted:
                    if record.id in seen:
                        raise RecordError(f"{where}: field 'id' repeats id {record.id!r} first seen at {seen[record.id]}")
            except RecordError as err:
                if on_error == "raise":
                    raise
                stats.drop("malformed")
                stats.errors.append(str(err))
                continue
            for record in converted:
                seen[record.id] = where
                records.append(record)
    stats.records_out = len(records)
    return records, stats


def run_prepare(fmt: str, inputs: Sequence[str], output: str, options: PrepareOptions, on_error: str,
                progress: bool = True) -> dict:
    records, stats = prepare(fmt, inputs, options, on_error=on_error, progress=progress)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_records(records, output)
    return {"command": "prepare", "format": fmt, "inputs": [str(p) for p in inputs], "output": str(output),
            "records_in": stats.items_in, "records_out": stats.records_out, "dropped": dict(stats.dropped),
            "removed": dict(stats.removed), "errors": stats.errors[:20], "shape": describe(records),
            "options": {k: v for k, v in vars(options).items() if k != "extra"}}
