"""Records file -> tokenized ``datasets`` dataset, with counts of everything kept, cut and dropped."""

from __future__ import annotations

import hashlib
import json
import platform
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .records import Record, parse_record, read_records
from .render import Dropped, Renderer

__all__ = ["TokenizeStats", "tokenize_records", "tokenize_file", "write_tokenized"]


@dataclass
class TokenizeStats:
    examples_in: int = 0
    examples_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"examples_in": self.examples_in, "examples_out": self.examples_out, "dropped": dict(self.dropped),
                "truncated": self.truncated, "tokens": self.tokens, "trained_tokens": self.trained_tokens}

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        share = self.trained_tokens / self.tokens if self.tokens else 0.0
        return [f"examples in {self.examples_in}, out {self.examples_out}; dropped {sum(self.dropped.values())} ({dropped});"
                f" contexts cut in {self.truncated}",
                f"tokens {self.tokens}, trained {self.trained_tokens} ({share:.1%})"]


def record_chars(record: Record) -> int:
    """A record's size in characters whatever the mode: a length to group batches by that gives
    runs in different modes the same order (their token counts differ, their records do not)."""
    parts = [record.instruction, record.response, record.system or ""]
    for c in record.contexts:
        parts += [c.title, c.text]
    for seg in record.segments or ():
        parts.append(seg.response)
        parts += [c.text for c in seg.contexts]
    return sum(map(len, parts))


def _render_batch(batch: dict[str, list], renderer: Renderer) -> dict[str, list]:
    records = [parse_record(json.loads(s)) for s in batch["record"]]
    out: dict[str, list] = {"id": [], "input_ids": [], "labels": [], "status": [], "num_tokens": [],
                            "num_trained": [], "truncated": [], "chars": []}
    for record, result in zip(records, renderer.render_batch(records)):
        out["id"].append(result.id)
        out["chars"].append(record_chars(record))
        if isinstance(result, Dropped):
            out["input_ids"].append([])
            out["labels"].append([])
            out["status"].append(result.reason)
            out["num_tokens"].append(result.num_tokens)
            out["num_trained"].append(0)
            out["truncated"].append(False)
            continue
        trained = result.num_trained
        out["input_ids"].append(result.input_ids)
        out["labels"].append(result.labels)
        # A row with nothing to learn from would give a silent zero loss (anchors.md §3): drop it, counted.
        out["status"].append("ok" if trained else "no_trained_tokens")
        out["num_tokens"].append(len(result.input_ids))
        out["num_trained"].append(trained)
        out["truncated"].append(result.truncated)
    return out


def tokenize_records(records: Iterable[Record], renderer: Renderer, *, num_proc: int | None = None,
                     batch_size: int = 1000, progress: bool = True):
    """Render and tokenize records with ``datasets.map(batched=True)``.

    Returns ``(dataset, stats)``; the dataset has ``id``, ``input_ids`` and ``labels`` (-100 where not
    trained) and holds only kept rows; every dropped row is counted by reason in ``stats``.
    """
    import datasets

    checked = []
    for record in records:
        renderer.check(record)  # mode errors surface here, with file and line, not inside a worker
        checked.append(json.dumps(record.to_dict(), ensure_ascii=False))
    stats = TokenizeStats(examples_in=len(checked))
    if not checked:
        empty = datasets.Dataset.from_dict({"id": [], "input_ids": [], "labels": []})
        return empty, stats
    raw = datasets.Dataset.from_dict({"record": checked})
    # Our own fingerprint: hashing the renderer (a whole tokenizer) with dill is slow and unstable.
    fingerprint = hashlib.sha256(json.dumps([renderer.options.to_dict(), renderer.template, len(checked),
                                             checked[0], checked[-1]], default=str).encode()).hexdigest()[:16]
    if not progress:
        datasets.disable_progress_bars()
    try:
        mapped = raw.map(_render_batch, batched=True, batch_size=batch_size, num_proc=num_proc,
                         fn_kwargs={"renderer": renderer}, remove_columns=["record"],
                         new_fingerprint=fingerprint, desc="Tokenizing")
    finally:
        if not progress:
            datasets.enable_progress_bars()
    status = mapped["status"]
    kept_mask = [s == "ok" for s in status]
    stats.dropped = dict(Counter(s for s in status if s != "ok"))
    for ok, n, t, cut in zip(kept_mask, mapped["num_tokens"], mapped["num_trained"], mapped["truncated"]):
        if ok:
            stats.tokens += n
            stats.trained_tokens += t
            stats.truncated += bool(cut)
    kept = [i for i, ok in enumerate(kept_mask) if ok]
    stats.examples_out = len(kept)
    dataset = mapped.select(kept) if len(kept) != len(mapped) else mapped
    dataset = dataset.remove_columns(["status", "num_tokens", "num_trained", "truncated"])
    return dataset, stats


def tokenize_file(path: str | Path, renderer: Renderer, **kwargs):
    return tokenize_records(read_records(path), renderer, **kwargs)


def render_manifest(renderer: Renderer, tokenizer_spec: str, input_path: str | Path, stats: TokenizeStats) -> dict:
    """What produced a tokenized file: enough to trace any number back and rerun it."""
    import tokenizers
    import transformers

    from . import __version__

    return {"stats": stats.to_dict(), "options": renderer.options.to_dict(), "tokenizer": str(tokenizer_spec),
            "input": str(input_path), "chat_template_source": renderer.template_source,
            "control_tokens": list(renderer.control_tokens),
            "versions": {"cings": __version__, "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__, "python": platform.python_version()}}


def write_tokenized(dataset, output: str | Path, manifest: dict) -> Path:
    """``.jsonl`` -> one ``{"id", "input_ids", "labels"}`` object a line; anything else -> a datasets folder.

    The manifest goes to ``X.stats.json`` beside a JSONL file, or ``cings_stats.json`` inside a folder.
    """
    output = Path(output)
    if output.suffix == ".jsonl":
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", encoding="utf-8") as handle:
            for row in dataset.iter(batch_size=1000):
                for rid, ids, labels in zip(row["id"], row["input_ids"], row["labels"]):
                    handle.write(json.dumps({"id": rid, "input_ids": ids, "labels": labels}) + "\n")
        manifest_path = output.with_suffix(".stats.json")
    else:
        dataset.save_to_disk(str(output))
        manifest_path = output / "cings_stats.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest_path
