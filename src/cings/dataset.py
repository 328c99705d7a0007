"""Records file -> tokenized ``datasets`` dataset, with counts of everything kept, cut and dropped."""

from __future__ import annotations

import hashlib
import json
import platform
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from .records import Context, Record, parse_record, read_records
from .render import Dropped, Renderer, passage_text

__all__ = ["TokenizeStats", "tokenize_records", "tokenize_file", "write_tokenized", "bound_contexts"]


@dataclass
class TokenizeStats:
    examples_in: int = 0
    examples_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    partly_trained_tokens: int = 0  # trained at a context_loss_weight below 1

    def to_dict(self) -> dict[str, Any]:
        out = {"examples_in": self.examples_in, "examples_out": self.examples_out, "dropped": dict(self.dropped),
               "truncated": self.truncated, "tokens": self.tokens, "trained_tokens": self.trained_tokens}
        if self.partly_trained_tokens:
            out["partly_trained_tokens"] = self.partly_trained_tokens
        return out

    def lines(self) -> list[str]:
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        share = self.trained_tokens / self.tokens if self.tokens else 0.0
        partly = f", {self.partly_trained_tokens} of them at the context loss weight" if self.partly_trained_tokens else ""
        return [f"examples in {self.examples_in}, out {self.examples_out}; dropped {sum(self.dropped.values())} ({dropped});"
                f" contexts cut in {self.truncated}",
                f"tokens {self.tokens}, trained {self.trained_tokens} ({share:.1%}){partly}"]


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


# Characters per token that ordinary text stays under (prose averages about 4). A passage cut to
# max_length * CHARS_PER_TOKEN characters therefore still holds far more than max_length tokens, and
# truncation keeps less than max_length of them. The vocabularies do hold longer tokens (Llama-3 and
# Qwen3 have ~200, all runs of '-', '=', '/' or spaces), so the bound is only a first guess: each cut
# passage is counted, and a cut that falls short is widened (x4) up to the whole text.
CHARS_PER_TOKEN = 32
# Tokens a cut passage's head must hold beyond max_length. Truncation's first step finds its cut at a
# token index below max_length; with this many tokens after that index, the head's own end (a word split
# in two) cannot reach it. Per passage, 4 more: truncation books 2 tokens per dropped passage for its
# numbering, and this keeps its running excess high enough to drop every passage after the cut one.
MARGIN_TOKENS = 64
# The passage's last characters, kept after its head. Truncation sizes what it drops by the tokens
# each passage spans, and a passage's last token can swallow the separator after it ('!!\n\n' is one
# Llama-3 token): with the real ending the count comes out the same as for the whole passage.
TAIL_CHARS = 256


def _rendered_length(ctx: Context, sep: str) -> int:
    return (len(ctx.title) + len(sep) if ctx.title.strip() else 0) + len(ctx.text)


def _cut_context(ctx: Context, chars: int, sep: str) -> tuple[Context, Context]:
    """``(head, cut)``: the passage's first ``chars`` characters, and those followed by its last
    ``TAIL_CHARS``. Both are title-less passages whose text is the raw ``title sep text`` cut the same
    way, so collapsing whitespace (passage_text) makes the head a prefix of the whole passage's text
    and gives the cut the whole passage's ending."""
    lead = f"{ctx.title}{sep}" if ctx.title.strip() else ""
    head = (lead + ctx.text[:chars])[:chars] if len(lead) < chars else lead[:chars]
    tail = ctx.text[-TAIL_CHARS:] if len(ctx.text) >= TAIL_CHARS else (lead + ctx.text)[-TAIL_CHARS:]
    return replace(ctx, title="", text=head), replace(ctx, title="", text=f"{head} {tail}")


def bound_contexts(record: Record, renderer: Renderer) -> Record:
    """``record`` with every passage too long to survive truncation cut to its head and its ending,
    which give the same ``input_ids`` and ``labels``, so a 50 MB passage costs what max_length tokens cost.

    Truncation cuts passages from the end and keeps at most ``max_length`` tokens, so a passage's text
    beyond ``max_length + MARGIN_TOKENS`` tokens cannot reach the result. Each head is counted with the
    tokenizer; one that would not reach that many tokens is widened, up to the full text.
    Records are returned unchanged when nothing is long, or in a mode that renders no passage.
    """
    options = renderer.options
    if not options.mode.uses_context:
        return record
    sep = options.title_separator
    bound = options.max_length * CHARS_PER_TOKEN
    groups = [record.contexts] + [seg.contexts for seg in record.segments or ()]
    if all(_rendered_length(c, sep) <= bound + TAIL_CHARS for group in groups for c in group):
        return record
    need = options.max_length + MARGIN_TOKENS + 4 * sum(map(len, groups))

    def fit(ctx: Context) -> Context:
        chars = bound
        while _rendered_length(ctx, sep) > chars + TAIL_CHARS:
            head, cut = _cut_context(ctx, chars, sep)
            if len(renderer.backend.encode(passage_text(head, sep), add_special_tokens=False)) >= need:
                return cut
            chars *= 4
        return ctx

    contexts = tuple(fit(c) for c in record.contexts)
    segments = record.segments
    if segments:
        segments = tuple(replace(seg, contexts=tuple(fit(c) for c in seg.contexts)) for seg in segments)
    return replace(record, contexts=contexts, segments=segments)


def _render_batch(batch: dict[str, list], renderer: Renderer) -> dict[str, list]:
    records = [parse_record(json.loads(s)) for s in batch["record"]]
    out: dict[str, list] = {"id": [], "input_ids": [], "labels": [], "status": [], "num_tokens": [],
                            "num_trained": [], "num_partly": [], "truncated": [], "chars": []}
    weighted = renderer.options.context_loss_weight is not None
    if weighted:
        out["loss_weights"] = []
    for record, chars, result in zip(records, batch["record_chars"], renderer.render_batch(records)):
        out["id"].append(result.id)
        out["chars"].append(chars)
        if isinstance(result, Dropped):
            out["input_ids"].append([])
            out["labels"].append([])
            out["status"].append(result.reason)
            out["num_tokens"].append(result.num_tokens)
            out["num_trained"].append(0)
            out["num_partly"].append(0)
            out["truncated"].append(False)
            if weighted:
                out["loss_weights"].append([])
            continue
        trained = result.num_trained
        out["input_ids"].append(result.input_ids)
        out["labels"].append(result.labels)
        out["num_partly"].append(sum(1 for w in result.loss_weights or () if 0 < w < 1))
        if weighted:
            out["loss_weights"].append(result.loss_weights)
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

    checked, chars = [], []
    for record in records:
        renderer.check(record)  # mode errors surface here, with file and line, not inside a worker
        # From the whole record: the batch order of group_by_length must not depend on the cut below.
        chars.append(record_chars(record))
        # Cut before serializing, so no copy of an over-long passage reaches Arrow or a worker.
        checked.append(json.dumps(bound_contexts(record, renderer).to_dict(), ensure_ascii=False))
    stats = TokenizeStats(examples_in=len(checked))
    if not checked:
        empty = datasets.Dataset.from_dict({"id": [], "input_ids": [], "labels": []})
        return empty, stats
    raw = datasets.Dataset.from_dict({"record": checked, "record_chars": chars})
    # Our own fingerprint: hashing the renderer (a whole tokenizer) with dill is slow and unstable.
    fingerprint = hashlib.sha256(json.dumps([renderer.options.to_dict(), renderer.template, len(checked),
                                             checked[0], checked[-1]], default=str).encode()).hexdigest()[:16]
    if not progress:
        datasets.disable_progress_bars()
    try:
        mapped = raw.map(_render_batch, batched=True, batch_size=batch_size, num_proc=num_proc,
                         fn_kwargs={"renderer": renderer}, remove_columns=["record", "record_chars"],
                         new_fingerprint=fingerprint, desc="Tokenizing")
    finally:
        if not progress:
            datasets.enable_progress_bars()
    status = mapped["status"]
    kept_mask = [s == "ok" for s in status]
    stats.dropped = dict(Counter(s for s in status if s != "ok"))
    for ok, n, t, p, cut in zip(kept_mask, mapped["num_tokens"], mapped["num_trained"], mapped["num_partly"],
                                mapped["truncated"]):
        if ok:
            stats.tokens += n
            stats.trained_tokens += t
            stats.partly_trained_tokens += p
            stats.truncated += bool(cut)
    kept = [i for i, ok in enumerate(kept_mask) if ok]
    stats.examples_out = len(kept)
    dataset = mapped.select(kept) if len(kept) != len(mapped) else mapped
    dataset = dataset.remove_columns(["status", "num_tokens", "num_trained", "num_partly", "truncated"])
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
    """``.jsonl`` -> one ``{"id", "input_ids", "labels"}`` object a line (and ``loss_weights`` with a
    context_loss_weight); anything else -> a datasets folder.

    The manifest goes to ``X.stats.json`` beside a JSONL file, or ``cings_stats.json`` inside a folder.
    """
    output = Path(output)
    if output.suffix == ".jsonl":
        output.parent.mkdir(parents=True, exist_ok=True)
        columns = ["id", "input_ids", "labels"] + (["loss_weights"] if "loss_weights" in dataset.column_names else [])
        with open(output, "w", encoding="utf-8") as handle:
            for batch in dataset.iter(batch_size=1000):
                for values in zip(*(batch[c] for c in columns)):
                    handle.write(json.dumps(dict(zip(columns, values))) + "\n")
        manifest_path = output.with_suffix(".stats.json")
    else:
        dataset.save_to_disk(str(output))
        manifest_path = output / "cings_stats.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest_path
