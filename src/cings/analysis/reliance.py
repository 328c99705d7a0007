"""Context reliance over training: how often a run's model follows the passage rather than its memory, step by step.

On a knowledge-conflict set (``cings counterfactual``: each passage now says another answer than the
one the model may know) every point of a run answers in the CINGS prefill layout: its base model
(step 0), each complete ``checkpoint-N`` and the final weights when the run ended past its last
checkpoint. Each point's predictions are scored by the rule ``cings evaluate`` uses for conflicts
(:func:`cings.metrics.conflict_outcome`, FlashRAG containment after SQuAD normalisation):

- ``context_rate``: the answer contains the passage's answer (``answers``);
- ``memory_rate``: it contains the original answer (``parametric_answers``);
- ``other_rate``: it contains neither;

a prediction holding both counts in the first two (``both_rate`` says how often). Each is a
percentage of the point's conflict records with a 95% bootstrap interval over records.

The analysis never loads a model: it is handed ``predict(point, records, path)``, which writes (or
completes) the predictions of one point (the command line's loads the point's weights through
:mod:`cings.runs` and runs ``cings generate``). Predictions are kept per point in
``OUTPUT/predictions/step-N.jsonl``; a point finished once (``step-N.done.json`` beside them, with
what generation skipped) is not generated again, and one cut short is continued. So a killed study
resumes, and one run again after more training adds only the new checkpoints. A rerun with other
settings or another input is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..jsonl import file_sha256, iter_jsonl
from ..metrics import DEFINITIONS, score_predictions
from ..prompts import DOCS, select_docs
from ..records import Record, RecordError, read_records
from ..report import save_figure

__all__ = ["Point", "RelianceSettings", "points_of", "read_conflict_set", "reliance_curve", "plot_reliance",
           "RATES", "SPEED_ONLY"]

RATES = ("context_rate", "memory_rate", "other_rate", "both_rate")
SPEED_ONLY = frozenset({"batch_size"})  # a rerun may change these
_OWN = ("predictions", "settings.json", "reliance.json", "reliance.png")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RelianceSettings:
    """How every point answers and is scored; all but ``batch_size`` are part of what the curve means."""

    docs: str = _f("gold", "which passages each prompt shows (gold: the conflict passage)")
    ndocs: int = _f(1, "passages per prompt (gold, gold+distractors, topk)")
    max_new_tokens: int = _f(32, "the most tokens an answer may have (conflict answers are short)")
    batch_size: int = _f(8, "records per generation batch (speed only)")
    limit: int | None = _f(None, "only the first N records of the input")
    dtype: str = _f("fp32", "weights' precision: fp32, bf16, or auto (bf16 where it is fast)")
    bootstrap: int = _f(1000, "bootstrap resamples for the 95%% intervals (0: none)")
    seed: int = _f(0, "the bootstrap's seed")

    def __post_init__(self) -> None:
        if self.docs not in DOCS or self.docs == "none":
            raise ValueError(f"--docs must be one of {', '.join(d for d in DOCS if d != 'none')}, not {self.docs!r}:"
                             " a conflict needs its passage")
        if self.dtype not in ("fp32", "bf16", "auto"):
            raise ValueError(f"--dtype must be fp32, bf16 or auto, not {self.dtype!r}")
        for name in ("ndocs", "max_new_tokens", "batch_size", "limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"--bootstrap must be a whole number of at least 0, not {self.bootstrap!r}")


@dataclass(frozen=True)
class Point:
    """One state of a run: ``weights`` is the folder holding it, None for the base model."""

    step: int
    label: str
    weights: str | None


def points_of(weights_by_step: Sequence[tuple[int, Path]]) -> list[Point]:
    """The base model at step 0, then each ``(step, folder)`` (``cings.runs.weights_by_step``) in order."""
    points = [Point(0, "base", None)]
    for step, folder in weights_by_step:
        label = folder.name if folder.name.startswith("checkpoint-") else "final"
        points.append(Point(int(step), label, str(folder)))
    return points


def read_conflict_set(path: str | Path, limit: int | None = None) -> list[Record]:
    """The first ``limit`` records of ``path``; each must have ``answers`` and ``parametric_answers``."""
    records = []
    for record in read_records(path):
        if limit is not None and len(records) >= limit:
            break
        if not record.answers or not record.parametric_answers:
            where = record.source or f"{path}: record {record.id!r}"
            missing = "answers" if not record.answers else "parametric_answers"
            raise RecordError(f"{where}: field '{missing}' is empty, and a knowledge-conflict record needs the passage's"
                              " answer (answers) and the original one (parametric_answers); make such a set with"
                              " `cings counterfactual`")
        records.append(record)
    if not records:
        raise RecordError(f"{path}: no records")
    return records


def _open(output: Path, recorded: dict[str, Any], overwrite: bool) -> None:
    """Refuse an output folder made with other settings (naming each), or clear it with ``overwrite``."""
    settings_path = output / "settings.json"
    if overwrite:
        for name in _OWN:
            target = output / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    elif settings_path.is_file():
        before = json.loads(settings_path.read_text(encoding="utf-8"))
        differ = [f"{key}: {before.get(key)!r} -> {recorded.get(key)!r}" for key in sorted(set(before) | set(recorded))
                  if key not in SPEED_ONLY and before.get(key) != recorded.get(key)]
        if differ:
            raise ValueError(f"{output}: its predictions were made otherwise ({'; '.join(differ)}); pass --overwrite to"
                             " start afresh, or choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    (output / "predictions").mkdir(exist_ok=True)
    settings_path.write_text(json.dumps(recorded, indent=2) + "\n", encoding="utf-8")


def _rows(path: Path, expected: set[str]) -> list[dict[str, Any]]:
    rows = []
    if not path.is_file():
        return rows
    for where, _, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("prediction"), str) or "answers" not in row:
            raise RecordError(f"{where}: not a prediction row (id, prediction, answers)")
        if row.get("id") in expected:
            rows.append(row)
    return rows


def _score(rows: list[dict[str, Any]], settings: RelianceSettings) -> dict[str, Any]:
    scored = score_predictions(rows, metrics=("acc",), bootstrap=settings.bootstrap, seed=settings.seed, by=None)
    out: dict[str, Any] = {"n": scored.get("n_conflict", 0)}
    for rate, key in (("context_rate", "context_rate"), ("memory_rate", "memory_rate"),
                      ("other_rate", "neither_rate"), ("both_rate", "both_rate")):
        out[rate] = scored.get(key)
        if f"{key}_ci" in scored:
            out[f"{rate}_ci"] = scored[f"{key}_ci"]
    return out


def reliance_curve(points: Sequence[Point], input_path: str | Path, output: str | Path, settings: RelianceSettings,
                   predict: Callable[[Point, list[Record], Path], dict[str, Any]], *, run: str | Path = "",
                   overwrite: bool = False, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Predict (where not done), score and chart every point; writes OUTPUT/reliance.json and reliance.png."""
    output, input_path = Path(output), Path(input_path)
    records = read_conflict_set(input_path, settings.limit)
    shown = [r for r in records if select_docs(r, settings.docs, settings.ndocs) is not None]
    expected = {r.id for r in shown}
    recorded = {"run": str(Path(run).resolve()) if run else "", "input": str(input_path),
                "input_sha256": file_sha256(input_path), **asdict(settings)}
    _open(output, recorded, overwrite)
    rows = []
    for point in points:
        path = output / "predictions" / f"step-{point.step}.jsonl"
        done = path.with_name(f"step-{point.step}.done.json")
        if done.is_file():
            report = json.loads(done.read_text(encoding="utf-8"))["generation"]
            log(f"step {point.step} ({point.label}): predictions done before")
        else:
            log(f"step {point.step} ({point.label}): generating on {len(shown)} records")
            report = predict(point, shown, path)
            done.write_text(json.dumps({"point": asdict(point), "generation": report}, indent=2) + "\n", encoding="utf-8")
        row = {"step": point.step, "label": point.label, "weights": point.weights,
               **_score(_rows(path, expected), settings), "skipped": dict(report.get("skipped") or {}),
               "predictions": str(path.relative_to(output))}
        rows.append(row)
        rates = ", ".join(f"{k.removesuffix('_rate')} {row[k]:.1f}" for k in RATES[:3] if row[k] is not None)
        log(f"step {point.step} ({point.label}): n {row['n']}: {rates or 'no predictions'}")
    result = {"run": recorded["run"], "input": str(input_path), "records": len(records),
              "skipped": {"no_passage_to_show": len(records) - len(shown)} if len(shown) < len(records) else {},
              "settings": asdict(settings), "rows": rows,
              "definitions": {"context_rate": "% of conflict records whose answer contains an answer of the passage"
                                              " (answers)",
                              "memory_rate": "% whose answer contains the original answer (parametric_answers)",
                              "other_rate": "% containing neither (a record containing both counts in context_rate"
                                            " and memory_rate; both_rate says how often)",
                              "rule": DEFINITIONS["conflict"],
                              **({"ci": f"{DEFINITIONS['ci']}, B={settings.bootstrap}, seed={settings.seed}"}
                                 if settings.bootstrap else {})}}
    (output / "reliance.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_reliance(rows, output / "reliance.png", title=f"context reliance over training: {Path(str(run)).name or 'run'}")
    return result


def plot_reliance(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """context, memory and other rates against the training step, with their 95% intervals as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, colour in (("context_rate", "context: the passage's answer", "tab:blue"),
                               ("memory_rate", "memory: the original answer", "tab:orange"),
                               ("other_rate", "neither", "tab:gray")):
        points = [(r["step"], r[key], r.get(f"{key}_ci")) for r in rows if r.get(key) is not None]
        if not points:
            continue
        steps = [p[0] for p in points]
        ax.plot(steps, [p[1] for p in points], marker="o", color=colour, label=label)
        if all(p[2] for p in points):
            ax.fill_between(steps, [p[2][0] for p in points], [p[2][1] for p in points], color=colour, alpha=0.15)
    ax.set_xlabel("training step (0: the base model)")
    ax.set_ylabel("% of conflict records (95% interval)")
    ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
