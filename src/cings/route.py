"""``cings route``: two models answer one set of records, each record by the model a rule picks.

CINGS v2 keeps a model tuned with documents (ctx) and one tuned without (noctx) and routes each
input to one of them, which it finds more robust than one model tuned on the mixed data. How its
router decides is not published; the rules here:

- ``has-docs`` (default): a record whose prompt shows documents goes to ctx, with them in the chosen
  layout; the rest go to noctx, closed-book.
- ``score``: ctx only when the record's best passage ``score`` (a retriever's) is at least the
  threshold; the rest go to noctx, closed-book.
- ``confidence``: ctx answers with the documents and noctx closed-book; the answer with the higher
  mean token log-probability under the model that wrote it wins (a tie goes to ctx). The answer is
  scored as training renders it after the prompt (its tokens and the end-of-turn token), in one
  teacher-forced forward without a KV cache.

Under every rule a record shows no documents when its ``contexts`` is empty (or ``--docs none``), and
such a record goes to noctx: a model tuned to read passages has nothing to read.

Generation is :func:`cings.generate.generate_records`, once per model, into a part file beside the
output (``PRED.jsonl.ctx.part``), which a killed run resumes. When both are done the output gets
generate's rows, in input order, with ``routed_to`` (ctx or noctx) and ``route_evidence`` (the
passage count, the best score or both log-probabilities); a row's settings are those of the model
that wrote it, with the whole route (rule, threshold, both models) in them, so a resume refuses a
changed route. The models are handed in (:class:`Endpoint`; :func:`load_endpoints` reads them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from .generate import GenerationSettings, check_resumable, generate_records, settings_differences
from .jsonl import iter_jsonl
from .prompts import Prompt, PromptBuilder
from .records import Context, Record, RecordError
from .render import Dropped, RenderOptions

__all__ = ["RULES", "BRANCHES", "Endpoint", "RouteRule", "shows_documents", "best_score", "plan_routes",
           "mean_answer_logprobs", "route_records", "load_endpoints", "part_path"]

RULES = ("has-docs", "score", "confidence")
BRANCHES = ("ctx", "noctx")


@dataclass
class Endpoint:
    """A loaded model with what generating from it needs, and what its rows record."""

    model: Any
    tokenizer: Any
    options: RenderOptions
    spec: str | None = None  # the base model as given ('smollm2', a folder, 'model_config')
    adapter: str | None = None
    extra: dict = field(default_factory=dict)  # recorded in each row's settings (dtype, adapter_merged)

    def describe(self) -> str:
        return f"{self.spec}{' + ' + self.adapter if self.adapter else ''}"


@dataclass(frozen=True)
class RouteRule:
    name: str = "has-docs"
    threshold: float | None = None  # --rule score only

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"--rule must be one of {', '.join(RULES)}, not {self.name!r}")
        if self.name == "score" and self.threshold is None:
            raise ValueError("--rule score needs --score-threshold T: a record goes to ctx when its best passage"
                             " score is at least T")
        if self.name != "score" and self.threshold is not None:
            raise ValueError(f"--score-threshold applies to --rule score, not --rule {self.name}")


def shows_documents(record: Record, docs: str) -> bool:
    return docs != "none" and bool(record.contexts)


def best_score(record: Record) -> float:
    """The highest passage ``score``; refused when a passage has none (no order would be right)."""
    missing = sum(c.score is None for c in record.contexts)
    if missing:
        where = record.source or f"record {record.id!r}"
        raise RecordError(f"{where}: contexts: --rule score routes by the passages' 'score', but {missing} of"
                          f" {len(record.contexts)} passages have none; give every passage a retriever's score,"
                          " or route with --rule has-docs")
    return max(c.score for c in record.contexts)


def plan_routes(records: Sequence[Record], rule: RouteRule, docs: str) -> dict[str, tuple[str, dict]]:
    """``id -> (branch, evidence)``; the branch is "both" where ``confidence`` has both models answer."""
    plan = {}
    for record in records:
        evidence: dict[str, Any] = {"contexts": len(record.contexts)}
        shown = shows_documents(record, docs)
        if rule.name == "score":
            score = best_score(record) if shown else None
            evidence["best_score"] = score
            branch = "ctx" if score is not None and score >= rule.threshold else "noctx"
        elif rule.name == "confidence":
            branch = "both" if shown else "noctx"
        else:
            branch = "ctx" if shown else "noctx"
        plan[record.id] = (branch, evidence)
    return plan


# ---------------------------------------------------------------- confidence: teacher-forced log-probabilities

def _answer_tail(builder: PromptBuilder, prompt: Prompt, record: Record, answer: str) -> tuple[list[int], list[bool]]:
    """The tokens training would put after ``prompt`` for the response ``answer``, and which are trained.

    A stand-in question and passage are rendered instead of the record's: what follows the prompt
    depends only on the layout and on whether documents are shown, and a stand-in never truncates.
    """
    renderer = builder.with_docs if prompt.docs else builder.closed
    probe = Record(id=record.id, instruction="-", contexts=(Context(text="-"),) if prompt.docs else (),
                   response=answer, system=record.system)
    rendered = renderer.render(probe)
    if isinstance(rendered, Dropped):
        raise ValueError(f"record {record.id!r}: its answer cannot be rendered for scoring ({rendered.reason})")
    first = next(i for i, label in enumerate(rendered.labels) if label != -100)
    return rendered.input_ids[first:], [label != -100 for label in rendered.labels[first:]]


def mean_answer_logprobs(endpoint: Endpoint, items: Sequence[tuple[Record, str]], settings: GenerationSettings, *,
                         batch_size: int | None = None) -> list[float]:
    """Mean log-probability per trained token of each ``(record, answer)`` after the record's prompt under
    ``settings`` (docs, ndocs, layout): one teacher-forced forward per batch, ``use_cache=False``.

    Rows are left-padded (with position ids counting real tokens only), so every answer ends at the
    right edge and only the last positions' logits are computed."""
    import torch

    from .collate import pad_id_for

    builder = PromptBuilder(endpoint.tokenizer, endpoint.options, layout=settings.prompt, docs=settings.docs,
                            ndocs=settings.ndocs)
    rows = []
    for record, answer in items:
        prompt = builder.build(record)
        if isinstance(prompt, Dropped):
            raise ValueError(f"record {record.id!r}: no prompt to score its answer after ({prompt.reason})")
        tail, trained = _answer_tail(builder, prompt, record, answer)
        rows.append((prompt.input_ids + tail, trained))
    pad_id = pad_id_for(endpoint.tokenizer)
    device = next(endpoint.model.parameters()).device
    out: list[float] = []
    step = batch_size or settings.batch_size
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        width, keep = max(len(ids) for ids, _ in chunk), max(len(t) for _, t in chunk) + 1
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (seq, _) in enumerate(chunk):
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = endpoint.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    position_ids=positions.to(device), use_cache=False,
                                    logits_to_keep=keep).logits.float()
        logprobs = logits.log_softmax(-1).cpu()  # position j of the kept ones predicts token width - keep + j + 1
        for row, (seq, trained) in enumerate(chunk):
            n = len(trained)
            targets = torch.tensor(seq[-n:])
            picked = logprobs[row, keep - 1 - n:keep - 1].gather(-1, targets[:, None])[:, 0]
            out.append(float(picked[torch.tensor(trained)].mean()))
    return out


# ---------------------------------------------------------------- the routed run

def part_path(output: str | Path, branch: str) -> Path:
    """Where one model's rows wait until both models are done (removed when the run ends)."""
    output = Path(output)
    return output.with_name(f"{output.name}.{branch}.part")


def _branch_settings(settings: GenerationSettings, ctx: Endpoint, noctx: Endpoint,
                     rule: RouteRule) -> dict[str, GenerationSettings]:
    route: dict[str, Any] = {"rule": rule.name}
    if rule.threshold is not None:
        route["score_threshold"] = rule.threshold
    route.update({name: {"model": e.spec, "adapter": e.adapter} for name, e in (("ctx", ctx), ("noctx", noctx))})
    # noctx answers closed-book: only the settings that mean something without documents carry over
    # (a contrastive decoding, say, needs documents to contrast with), the rest keep their defaults.
    closed = GenerationSettings(docs="none", ndocs=settings.ndocs, prompt=settings.prompt,
                                max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                                greedy=settings.greedy)
    return {name: replace(base, model=e.spec, adapter=e.adapter, extra={**settings.extra, **e.extra, "route": route})
            for name, base, e in (("ctx", settings, ctx), ("noctx", closed, noctx))}


def _rows(path: Path) -> list[tuple[str, dict]]:
    """``(FILE:LINE, row)`` of every whole row; a line cut by a kill is left out."""
    if not path.is_file():
        return []
    return [(where, row) for where, _, row in iter_jsonl(path, bad_json="yield")
            if isinstance(row, dict) and "id" in row]


def _check_routed_rows(rows: list[tuple[str, dict]], expected: dict[str, GenerationSettings]) -> None:
    """Refuse to resume when a row was routed or generated another way, naming each differing key."""
    current = {name: json.loads(json.dumps(s.to_dict())) for name, s in expected.items()}
    for where, row in rows:
        branch, stored = row.get("routed_to"), row.get("settings")
        if branch not in current or not isinstance(stored, dict):
            raise RecordError(f"{where}: the row has no 'routed_to' and 'settings' of cings route, so --resume cannot"
                              " tell how it was made; write to another --output or pass --overwrite")
        now = current[branch]
        diffs = settings_differences(stored, now)
        if diffs:
            raise RecordError(f"{where}: --resume with other settings than the rows already written"
                              f" ({'; '.join(diffs)}); write to another --output or pass --overwrite")


def _generate(branch: str, records: list[Record], endpoint: Endpoint, settings: GenerationSettings, output: Path,
              resume: bool, progress: bool, dropped: dict[str, int]) -> dict[str, dict]:
    """Generate ``records`` with one model into its part file; returns the part's rows by id."""
    part = part_path(output, branch)
    if records:
        report = generate_records(records, endpoint.model, endpoint.tokenizer, endpoint.options, settings, part,
                                  resume=resume, overwrite=not resume, progress=progress)
        for reason, n in report["skipped"].items():
            dropped[f"{branch}: {reason}"] = dropped.get(f"{branch}: {reason}", 0) + n
    return {row["id"]: row for _, row in _rows(part)}


def route_records(records: Iterable[Record], ctx: Endpoint, noctx: Endpoint, settings: GenerationSettings,
                  output: str | Path, *, rule: RouteRule | None = None, resume: bool = False, overwrite: bool = False,
                  limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Answer each record with the model ``rule`` picks; writes ``output`` and returns the counts.

    ``settings`` are generate's (docs, ndocs, layout, max_new_tokens, batch size) for the ctx model; the
    noctx model answers closed-book in the same layout. As in generate, an existing output needs
    ``resume`` or ``overwrite``, and every check (the rows there, the scores a rule needs) comes before
    a file is touched.
    """
    rule = rule or RouteRule()
    if resume and overwrite:
        raise ValueError("give --resume or --overwrite, not both")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be a whole number of at least 1, not {limit!r}")
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"--output {output}: is a folder; give a .jsonl file")
    parts = [part_path(output, b) for b in BRANCHES if part_path(output, b).is_file()]
    if not (resume or overwrite):
        if output.is_file() and output.stat().st_size:
            raise ValueError(f"--output {output}: the file exists; pass --resume to add the missing ids (same"
                             " settings) or --overwrite to replace it")
        if parts:
            raise ValueError(f"--output {output}: a stopped run left {parts[0].name} beside it; pass --resume to go"
                             " on with it or --overwrite to start again")
    expected = _branch_settings(settings, ctx, noctx, rule)
    old = _rows(output) if resume else []
    if resume:
        _check_routed_rows(old, expected)
        for branch in BRANCHES:
            check_resumable(part_path(output, branch), expected[branch])
    records = list(records)[:limit]
    done = {row["id"] for _, row in old}
    todo = [r for r in records if r.id not in done]
    plan = plan_routes(todo, rule, settings.docs)  # refuses missing scores before any file is touched
    if not resume:
        for part in parts:  # --overwrite: a stopped run's rows must not be taken for this one's
            part.unlink()

    started = time.perf_counter()
    dropped: dict[str, int] = {}
    ctx_rows = _generate("ctx", [r for r in todo if plan[r.id][0] in ("ctx", "both")], ctx, expected["ctx"], output,
                         resume, progress, dropped)
    # Under confidence, noctx answers only what ctx could (a record ctx drops is dropped, as under has-docs).
    noctx_todo = [r for r in todo if plan[r.id][0] == "noctx" or (plan[r.id][0] == "both" and r.id in ctx_rows)]
    noctx_rows = _generate("noctx", noctx_todo, noctx, expected["noctx"], output, resume, progress, dropped)
    both = [r for r in todo if plan[r.id][0] == "both" and r.id in ctx_rows and r.id in noctx_rows]
    if both:
        scored = {
            "ctx": mean_answer_logprobs(ctx, [(r, ctx_rows[r.id]["prediction"]) for r in both], expected["ctx"]),
            "noctx": mean_answer_logprobs(noctx, [(r, noctx_rows[r.id]["prediction"]) for r in both],
                                          expected["noctx"])}
        for i, record in enumerate(both):
            a, b = scored["ctx"][i], scored["noctx"][i]
            winner = "ctx" if a >= b else "noctx"
            loser_rows = noctx_rows if winner == "ctx" else ctx_rows
            plan[record.id] = (winner, {**plan[record.id][1], "ctx_logprob": a, "noctx_logprob": b,
                                        "other_prediction": loser_rows[record.id]["prediction"]})

    new: list[dict] = []
    for record in todo:
        branch, evidence = plan[record.id]
        row = (ctx_rows if branch == "ctx" else noctx_rows).get(record.id) if branch != "both" else None
        if row is None:
            continue  # dropped by generation, and counted there
        body = {k: v for k, v in row.items() if k != "settings"}
        new.append({**body, "routed_to": branch, "route_evidence": evidence, "settings": row["settings"]})
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in [r for _, r in old] + new:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(output)  # whole or not at all: a kill here leaves the parts to resume from
    for branch in BRANCHES:
        part_path(output, branch).unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    routed = {b: sum(row["routed_to"] == b for row in new) for b in BRANCHES}
    return {"routed": routed, "dropped": dropped, "already_done": len(done),
            "answered_by_both": len(both), "written": len(new), "seconds": round(seconds, 2),
            "ctx": ctx.describe(), "noctx": noctx.describe()}


def load_endpoints(ctx_model: str | None, ctx_adapter: str | None, noctx_model: str | None,
                   noctx_adapter: str | None, *, dtype: Any = None, merge: bool = True) -> tuple[Endpoint, Endpoint]:
    """Load both models (one load when both name the same model and adapter), as ``cings generate`` does."""
    import torch

    from .runs import load_for_generation

    loaded: dict[tuple, Endpoint] = {}
    for key in ((ctx_model, ctx_adapter), (noctx_model, noctx_adapter)):
        if key not in loaded:
            model, tok, options, spec = load_for_generation(key[0], adapter=key[1], dtype=dtype, merge=merge)
            extra: dict[str, Any] = {"dtype": str(dtype or torch.float32).removeprefix("torch.")}
            if key[1]:
                extra["adapter_merged"] = merge
            loaded[key] = Endpoint(model, tok, options, spec, key[1], extra)
    return loaded[(ctx_model, ctx_adapter)], loaded[(noctx_model, noctx_adapter)]
