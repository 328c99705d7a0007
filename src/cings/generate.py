"""``cings generate``: a model (+ LoRA adapter) answers grounded records, one prediction a line.

Greedy by default, stopping at the template's end-of-turn token. Prompts are sorted by length and
left-padded, so the batch size changes speed, not outputs (tested token for token). Output is
appended batch by batch; ``resume`` skips ids already written, so a killed run loses nothing and
duplicates nothing. A resume refuses rows written with other settings (a file holds one setting),
and an existing output is replaced only when asked (``overwrite``).

The model, tokenizer and render options are handed in (``cings.runs.load_for_generation`` reads a
run folder and loads them): generation imports neither training nor run folders.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .prompts import DOCS, LAYOUTS, Prompt, PromptBuilder
from .records import Record, RecordError
from .render import Dropped, RenderOptions

__all__ = ["GenerationSettings", "generate_records", "written_ids", "check_resumable"]

# Settings that change speed, not outputs: a resume may change them.
SPEED_ONLY = frozenset({"batch_size"})


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class GenerationSettings:
    """How predictions are made; every field but ``batch_size`` is part of what a prediction file means.
    The field help is the ``cings generate`` flag help (config.add_dataclass_arguments)."""

    docs: str = _f("gold", "which documents each prompt shows; topk: the K highest-scored passages when every passage"
                           " has a 'score' (file order when none has; a record with only some scored is refused)")
    ndocs: int = _f(1, "documents per prompt (gold, gold+distractors, topk)")
    prompt: str = _f("prefill", "prefill: '## Context ... ## Answer' opens the assistant turn (CINGS); input: documents"
                                " in the user turn; raw: a plain RAG prompt for off-the-shelf models")
    max_new_tokens: int = _f(300, "the most tokens an answer may have")
    batch_size: int = _f(8, "records per batch (speed only: outputs equal batch size 1's)")
    greedy: bool = _f(True, "greedy decoding (false: sampling)")
    model: str | None = _f(None, "the model spec the predictions came from (recorded in each row)")
    adapter: str | None = _f(None, "the LoRA adapter the predictions came from (recorded in each row)")
    extra: dict = field(default_factory=dict, metadata={"help": "more settings recorded in each row"})

    def __post_init__(self) -> None:
        # Checked on construction, so every caller (CLI, suite, demo) is refused before any output is touched.
        for name in ("ndocs", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
        if self.docs not in DOCS:
            raise ValueError(f"--docs must be one of {', '.join(DOCS)}, not {self.docs!r}")
        if self.prompt not in LAYOUTS:
            raise ValueError(f"--prompt must be one of {', '.join(LAYOUTS)}, not {self.prompt!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"docs": self.docs, "ndocs": self.ndocs, "prompt": self.prompt, "max_new_tokens": self.max_new_tokens,
                "batch_size": self.batch_size, "decoding": "greedy" if self.greedy else "sample",
                "model": self.model, "adapter": self.adapter, **self.extra}


def _complete_rows(path: Path) -> list[tuple[int, str, dict]]:
    """``(lineno, line, row)`` of every whole prediction row."""
    from .jsonl import iter_lines

    rows = []
    for lineno, line in iter_lines(path):  # a bad byte or a damaged stream is named FILE:LINE
        line = line.rstrip("\r\n")
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that record is generated again
        if isinstance(row, dict) and "id" in row:
            rows.append((lineno, line, row))
    return rows


def written_ids(path: str | Path) -> set[str]:
    path = Path(path)
    return {row["id"] for _, _, row in _complete_rows(path)} if path.is_file() else set()


def check_resumable(path: str | Path, settings: GenerationSettings) -> None:
    """Refuse to resume ``path`` when a row in it was written with other settings, naming each differing
    key with both values: appended rows would mix two settings in one file."""
    path = Path(path)
    if not path.is_file():
        return
    current = json.loads(json.dumps(settings.to_dict()))  # as a row stores it (tuples become lists)
    for lineno, _, row in _complete_rows(path):
        stored = row.get("settings")
        if not isinstance(stored, dict):
            raise RecordError(f"{path}:{lineno}: the row has no 'settings', so --resume cannot tell whether it was"
                              " generated the same way; write to another --output or pass --overwrite")
        diffs = [f"{key}: {_shown(stored, key)} in the file, {_shown(current, key)} now"
                 for key in sorted((set(stored) | set(current)) - SPEED_ONLY)
                 if (key in stored, stored.get(key)) != (key in current, current.get(key))]
        if diffs:
            raise RecordError(f"{path}:{lineno}: --resume with other settings than the rows already written"
                              f" ({'; '.join(diffs)}); write to another --output or pass --overwrite")


def _shown(settings: dict, key: str) -> str:
    return repr(settings[key]) if key in settings else "(absent)"


def _decode_batch(model: Any, tokenizer: Any, prompts: Sequence[Prompt], settings: GenerationSettings,
                  stop_ids: list[int], pad_id: int) -> list[str]:
    import torch

    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p.input_ids):] = torch.tensor(p.input_ids)
        mask[row, width - len(p.input_ids):] = 1
    with torch.no_grad():
        if settings.greedy:
            rows = greedy_decode(model, ids, mask, settings.max_new_tokens, stop_ids)
        else:
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                                 do_sample=True, eos_token_id=stop_ids, pad_token_id=pad_id)
            rows = out[:, width:].tolist()
    texts = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def greedy_decode(model: Any, ids: Any, mask: Any, max_new_tokens: int, stop_ids: Sequence[int]) -> list[list[int]]:
    """Greedy decoding of a left-padded batch that drops each row from the batch once it has stopped.

    ``generate`` keeps finished rows computing until the longest one ends; on a CPU, where a decode
    step costs more the wider the batch, one rambling answer then makes a batch slower than
    decoding its rows one by one. Here a finished row leaves the batch and its KV cache.
    """
    import torch
    from transformers import DynamicCache

    stop = torch.tensor(sorted(set(stop_ids)) or [-1])
    cache = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep=1: the full prompt's logits (rows x length x vocab floats, gigabytes for a batch
    # of long prompts) would be computed only to be thrown away.
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    alive = list(range(ids.shape[0]))
    out: list[list[int]] = [[] for _ in alive]
    for _ in range(max_new_tokens):
        token = logits.argmax(-1)
        for j, row in enumerate(alive):
            out[row].append(int(token[j]))
        finished = torch.isin(token, stop) | torch.tensor([len(out[row]) >= max_new_tokens for row in alive])
        if bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().flatten()
            cache.batch_select_indices(keep)
            mask, token = mask[keep], token[keep]
            alive = [alive[j] for j in keep.tolist()]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                       past_key_values=cache, use_cache=True).logits[:, -1]
    return out


def generate_records(records: Iterable[Record], model: Any, tokenizer: Any, options: RenderOptions,
                     settings: GenerationSettings, output: str | Path, *, resume: bool = False,
                     overwrite: bool = False, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Write one prediction per record to ``output``; returns counts and timing.

    An existing, non-empty ``output`` needs ``resume`` (add the missing ids; the settings must match the
    rows there, batch size aside) or ``overwrite`` (replace it). Every check, and reading ``records``,
    happens before ``output`` is touched, so a refused or failed run leaves it as it was.
    """
    from .collate import pad_id_for

    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be a whole number of at least 1, not {limit!r}")
    builder = PromptBuilder(tokenizer, options, layout=settings.prompt, docs=settings.docs, ndocs=settings.ndocs)
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"--output {output}: is a folder; give a .jsonl file")
    if output.is_file() and output.stat().st_size and not (resume or overwrite):
        raise ValueError(f"--output {output}: the file exists; pass --resume to add the missing ids (same settings)"
                         " or --overwrite to replace it")
    if resume:
        check_resumable(output, settings)
    done = written_ids(output) if resume else set()
    todo: list[tuple[Record, Prompt]] = []
    skipped: dict[str, int] = {}
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            break
        if record.id in done:
            continue
        prompt = builder.build(record)
        if isinstance(prompt, Dropped):
            skipped[prompt.reason] = skipped.get(prompt.reason, 0) + 1
            continue
        todo.append((record, prompt))
    # Longest first: similar lengths share a batch (little padding), and memory peaks early.
    todo.sort(key=lambda rp: -len(rp[1].input_ids))
    if resume and output.is_file():
        # Drop a line cut by a kill, so the rows appended next start on a line of their own.
        kept = _complete_rows(output)
        output.write_text("".join(line + "\n" for _, line, _ in kept), encoding="utf-8")
    elif output.exists():
        output.unlink()
    output.parent.mkdir(parents=True, exist_ok=True)
    stop_ids, pad_id = builder.stop_token_ids(), pad_id_for(tokenizer)
    started = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="Generating", unit=" records")
    with open(output, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start:start + settings.batch_size]
            texts = _decode_batch(model, tokenizer, [p for _, p in chunk], settings, stop_ids, pad_id)
            for (record, prompt), text in zip(chunk, texts):
                row = {"id": record.id, "prediction": text, "answers": list(record.answers or ())}
                if record.parametric_answers is not None:
                    row["parametric_answers"] = list(record.parametric_answers)
                row["docs"] = [{"title": c.title, "gold": c.gold} for c in prompt.docs]
                if record.meta.get("source") or record.meta.get("data_source"):
                    row["meta"] = {"source": record.meta.get("data_source") or record.meta.get("source")}
                row["settings"] = settings.to_dict()
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    return {"generated": len(todo), "already_done": len(done), "skipped": skipped, "seconds": round(seconds, 2),
            "records_per_s": round(len(todo) / seconds, 3) if seconds else None}
