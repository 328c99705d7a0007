"""The generation run: a model (+ LoRA adapter) answers grounded records, one prediction a line.

Greedy by default (CAD and AdaCAD on request: :mod:`cings.generate.decoding`), stopping at the
template's end-of-turn token. Prompts are sorted by length and
left-padded, so the batch size changes speed, not outputs (tested token for token). The prompt head
every record shares is prefilled once (:mod:`cings.generate.prefix_cache`; outputs equal, tested).
With ``engine="vllm"`` the same prompt token ids go to vLLM instead (:mod:`cings.generate.vllm_engine`),
and the rows are written the same way. Output is
appended batch by batch; ``resume`` skips ids already written, so a killed run loses nothing and
duplicates nothing. A resume refuses rows written with other settings (a file holds one setting),
and an existing output is replaced only when asked (``overwrite``).

The model, tokenizer and render options are handed in (``cings.runs.load_for_generation`` reads a
run folder and loads them): generation imports neither training nor run folders.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..prompts import DOCS, LAYOUTS, Prompt, PromptBuilder
from ..records import Record, RecordError
from ..render import Dropped, RenderOptions
from .decoding import DECODINGS, Contrastive, decode, greedy_step
from .prefix_cache import PrefixCache, shared_prefix_length

__all__ = ["ENGINES", "GenerationSettings", "generate_records", "written_ids", "check_resumable", "settings_differences"]

ENGINES = ("hf", "vllm")
# Settings that change speed, not outputs: a resume may change them.
SPEED_ONLY = frozenset({"batch_size", "prefix_cache"})
# Settings added after files were written without them: an absent key reads as the value those files were made with.
ABSENT_MEANS = {"engine": "hf"}


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class GenerationSettings:
    """How predictions are made; every field but ``batch_size`` and ``prefix_cache`` (speed only) is part of what
    a prediction file means. The field help is the ``cings generate`` flag help (config.add_dataclass_arguments)."""

    docs: str = _f("gold", "which documents each prompt shows; topk: the K highest-scored passages when every passage"
                           " has a 'score' (file order when none has; a record with only some scored is refused)")
    ndocs: int = _f(1, "documents per prompt (gold, gold+distractors, topk)")
    prompt: str = _f("prefill", "prefill: '## Context ... ## Answer' opens the assistant turn (CINGS); input: documents"
                                " in the user turn; raw: a plain RAG prompt for off-the-shelf models")
    max_new_tokens: int = _f(300, "the most tokens an answer may have")
    batch_size: int = _f(8, "records per batch (speed only: outputs equal batch size 1's)")
    greedy: bool = _f(True, "greedy decoding (false: sampling)")
    decoding: str = _f("greedy", "greedy; cad: context-aware decoding, (1+A)·log p(y|docs,x) − A·log p(y|x) with A ="
                                 " --cad-alpha, the second prompt being the same record without documents; adacad:"
                                 " the same with A = JSD of the two distributions (nats) + --adacad-offset, per token")
    cad_alpha: float = _f(1.0, "CAD's weight A on the contrast (--decoding cad); 0 is plain greedy decoding")
    adacad_offset: float = _f(0.0, "added to AdaCAD's per-token JSD weight (--decoding adacad)")
    cad_backoff: float = _f(0.0, "τ (cad, adacad): a token whose with/without-documents JSD (nats, at most ln 2 ="
                                 " 0.693) is below τ is taken from the without-documents distribution; 0: never")
    engine: str = _f("hf", "hf: transformers, on the CPU; vllm: vLLM on a CUDA GPU, greedy, the same prompt token ids"
                           " (pip install 'cings[vllm]'; no CAD/AdaCAD, no --adapter: export the run; --batch-size is"
                           " records per llm.generate call, 256 unless given)")
    prefix_cache: bool = _f(True, "prefill the prompt head every record shares once and start each batch from its KV"
                                  " cache (speed only: outputs equal the whole prompts'); vllm: its prefix caching")
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
        self._check_decoding()
        self._check_engine()

    def _check_decoding(self) -> None:
        if self.decoding not in DECODINGS:
            raise ValueError(f"--decoding must be one of {', '.join(DECODINGS)}, not {self.decoding!r}")
        for name in ("cad_alpha", "adacad_offset", "cad_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, not {value!r}")
        if self.cad_alpha < 0 or self.cad_backoff < 0:
            raise ValueError("--cad-alpha and --cad-backoff must be at least 0")
        # A weight the chosen decoding ignores is a mistake in the command, not a setting to record.
        if self.cad_alpha != 1.0 and self.decoding != "cad":
            raise ValueError("--cad-alpha is CAD's weight: it needs --decoding cad (adacad computes its own per token)")
        if self.adacad_offset != 0 and self.decoding != "adacad":
            raise ValueError("--adacad-offset needs --decoding adacad")
        if self.cad_backoff != 0 and self.decoding == "greedy":
            raise ValueError("--cad-backoff needs --decoding cad or adacad")
        if self.decoding != "greedy" and not self.greedy:
            raise ValueError(f"--decoding {self.decoding} chooses each token greedily; sampling goes with --decoding greedy")
        if self.decoding != "greedy" and self.docs == "none":
            raise ValueError(f"--decoding {self.decoding} contrasts the prompt with documents against the one without;"
                             " with --docs none both are the same prompt")

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if not isinstance(self.prefix_cache, bool):
            raise ValueError(f"--prefix-cache must be true or false, not {self.prefix_cache!r}")
        if self.engine == "vllm":
            from .vllm_engine import refusal

            why = refusal(self.decoding, self.greedy, self.adapter)
            if why:
                raise ValueError(why)

    def to_dict(self) -> dict[str, Any]:
        # The weights of a rule are recorded only with that rule, so greedy rows read as they always have
        # (and files written before CAD existed still resume).
        weights = {"cad": {"cad_alpha": self.cad_alpha, "cad_backoff": self.cad_backoff},
                   "adacad": {"adacad_offset": self.adacad_offset, "cad_backoff": self.cad_backoff}}.get(self.decoding, {})
        return {"docs": self.docs, "ndocs": self.ndocs, "prompt": self.prompt, "max_new_tokens": self.max_new_tokens,
                "batch_size": self.batch_size, "decoding": self.decoding if self.greedy else "sample", **weights,
                "engine": self.engine, "prefix_cache": self.prefix_cache, "model": self.model, "adapter": self.adapter,
                **self.extra}

    def step_rule(self) -> Any:
        if self.decoding == "greedy":
            return greedy_step
        return Contrastive(alpha=self.cad_alpha if self.decoding == "cad" else None, offset=self.adacad_offset,
                           backoff=self.cad_backoff)


def _complete_rows(path: Path) -> list[tuple[int, str, dict]]:
    """``(lineno, line, row)`` of every whole prediction row."""
    from ..jsonl import iter_lines

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
        diffs = settings_differences(stored, current)
        if diffs:
            raise RecordError(f"{path}:{lineno}: --resume with other settings than the rows already written"
                              f" ({'; '.join(diffs)}); write to another --output or pass --overwrite")


def settings_differences(stored: dict, current: dict) -> list[str]:
    """``key: A in the file, B now`` for each setting that differs (an absent key differs from any value but
    its :data:`ABSENT_MEANS`), speed-only settings aside: what a resume refuses, named.

    The engine is not speed-only: greedy outputs of transformers and vLLM can differ where two tokens'
    logits nearly tie (other kernels sum in another order), so one file holds one engine's answers."""
    stored, current = {**ABSENT_MEANS, **stored}, {**ABSENT_MEANS, **current}
    return [f"{key}: {_shown(stored, key)} in the file, {_shown(current, key)} now"
            for key in sorted((set(stored) | set(current)) - SPEED_ONLY)
            if (key in stored, stored.get(key)) != (key in current, current.get(key))]


def _shown(settings: dict, key: str) -> str:
    return repr(settings[key]) if key in settings else "(absent)"


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int, device: Any = None) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, r in enumerate(rows):
        ids[row, width - len(r):] = torch.tensor(r)
        mask[row, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _shared_prefixes(model: Any, todo: Sequence[tuple[Record, tuple[Prompt, ...]]]) -> list[PrefixCache | None]:
    """Per branch, the head all its prompts share, prefilled once (None where they share nothing)."""
    prefixes: list[PrefixCache | None] = []
    for k in range(len(todo[0][1])):
        ids = [branches[k].input_ids for _, branches in todo]
        n = shared_prefix_length(ids)
        prefixes.append(PrefixCache.build(model, ids[0][:n]) if n else None)
    return prefixes


def _decode_batch(model: Any, tokenizer: Any, branches: Sequence[Sequence[Prompt]], settings: GenerationSettings,
                  stop_ids: list[int], pad_id: int, prefixes: Sequence[PrefixCache | None] | None = None) -> list[str]:
    """``branches``: the batch's prompts, then (contrastive decoding) the same records' prompts without documents;
    ``prefixes``: each branch's shared head, already prefilled (only its suffixes are batched here)."""
    import torch

    if settings.engine == "vllm":
        rows = model.generate_ids([p.input_ids for p in branches[0]], settings.max_new_tokens, stop_ids)
        return _texts(tokenizer, rows, stop_ids)
    heads = prefixes if settings.greedy and prefixes else [None] * len(branches)
    batches = [_left_padded([head.suffix(p.input_ids) if head else p.input_ids for p in prompts], pad_id, model.device)
               for prompts, head in zip(branches, heads)]
    with torch.no_grad():
        if settings.greedy:
            rows = decode(model, batches, settings.step_rule(), settings.max_new_tokens, stop_ids, heads)
        else:
            ids, mask = batches[0]
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=settings.max_new_tokens,
                                 do_sample=True, eos_token_id=stop_ids, pad_token_id=pad_id)
            rows = out[:, ids.shape[1]:].tolist()
    return _texts(tokenizer, rows, stop_ids)


def _doc_row(context: Any) -> dict[str, Any]:
    """What a prediction row keeps of a shown passage: title and gold; a retrieved one (it has a corpus ``id`` or a
    ``score``, as ``cings retrieve`` writes them) also keeps ``id``, ``score`` and ``text``, so ``cings evaluate`` scores
    the retrieval on the generation output too (recall@k and MRR by gold, answer-in-passage by text)."""
    doc: dict[str, Any] = {"title": context.title, "gold": context.gold}
    if context.id is not None or context.score is not None:
        doc |= {k: v for k, v in (("id", context.id), ("score", context.score)) if v is not None}
        doc["text"] = context.text
    return doc


def _texts(tokenizer: Any, rows: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> list[str]:
    texts = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def generate_records(records: Iterable[Record], model: Any, tokenizer: Any, options: RenderOptions,
                     settings: GenerationSettings, output: str | Path, *, resume: bool = False,
                     overwrite: bool = False, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Write one prediction per record to ``output``; returns counts and timing.

    An existing, non-empty ``output`` needs ``resume`` (add the missing ids; the settings must match the
    rows there, batch size aside) or ``overwrite`` (replace it). Every check, and reading ``records``,
    happens before ``output`` is touched, so a refused or failed run leaves it as it was.
    """
    from ..collate import pad_id_for

    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if (settings.engine == "vllm") != hasattr(model, "generate_ids"):
        raise ValueError(f"settings.engine is {settings.engine!r} but the model handed in is a {type(model).__name__}:"
                         " engine 'vllm' takes a cings.generate.vllm_engine.VllmEngine, 'hf' a transformers model")
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
    contrastive = settings.decoding != "greedy"
    todo: list[tuple[Record, tuple[Prompt, ...]]] = []
    skipped: dict[str, int] = {}
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            break
        if record.id in done:
            continue
        prompts = builder.build_pair(record) if contrastive else builder.build(record)
        if isinstance(prompts, Dropped):
            skipped[prompts.reason] = skipped.get(prompts.reason, 0) + 1
            continue
        todo.append((record, prompts if contrastive else (prompts,)))
    # Longest first: similar lengths share a batch (little padding), and memory peaks early.
    todo.sort(key=lambda rp: -len(rp[1][0].input_ids))
    if resume and output.is_file():
        # Drop a line cut by a kill, so the rows appended next start on a line of their own.
        kept = _complete_rows(output)
        output.write_text("".join(line + "\n" for _, line, _ in kept), encoding="utf-8")
    elif output.exists():
        output.unlink()
    output.parent.mkdir(parents=True, exist_ok=True)
    stop_ids, pad_id = builder.stop_token_ids(), pad_id_for(tokenizer)
    started = time.perf_counter()
    # Prefilled once per run (inside the timing): every batch of every size starts from it.
    prefixes = (_shared_prefixes(model, todo) if todo and settings.engine == "hf" and settings.prefix_cache
                and settings.greedy else None)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="Generating", unit=" records")
    with open(output, "a", encoding="utf-8") as handle:
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start:start + settings.batch_size]
            branches = [[prompts[k] for _, prompts in chunk] for k in range(len(chunk[0][1]))]
            texts = _decode_batch(model, tokenizer, branches, settings, stop_ids, pad_id, prefixes)
            for (record, (prompt, *_)), text in zip(chunk, texts):
                row = {"id": record.id, "prediction": text, "answers": list(record.answers or ())}
                if record.parametric_answers is not None:
                    row["parametric_answers"] = list(record.parametric_answers)
                row["docs"] = [_doc_row(c) for c in prompt.docs]
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
