"""``cings demo --studies``: the paper's behavioural claims, at the demo's scale, on the demo's models.

After ``cings demo`` (its stages are reused; anything missing is trained first), each study is one
or more ``cings`` commands, run as a user would run them, each a resumable stage keyed by its
command and the content of what it reads:

1. **attention**: ``cings analyze attention`` for the base model, standard IT and CINGS, passage in
   the assistant turn (prefill) and in the user turn (input); one chart per layout.
2. **knowledge**: closed-book accuracy on questions the base model knows, and the context/memory
   rates on the same questions with the answer swapped in the passage (``cings analyze knowledge``).
3. **reliance**: ``cings analyze reliance`` over every checkpoint of both runs on that conflict set.
4. **CAD**: ``cings generate --decoding cad|adacad`` for the base model and CINGS, each in its
   usual layout, on NQ with its passage (neutral regressions against its closed-book answers) and on
   the conflict set; greedy from the demo's own evaluation beside them.
5. **routing**: NQ, and the known facts, with a passage for a fraction F of the questions (``cings drop-contexts``),
   answered by ``cings route`` (CINGS when there is a passage, standard IT when not) against each
   model alone; every model alone is the same command with one model on both sides.

Everything lands in ``OUTPUT_DIR/studies/``: one folder per command, ``report.md``, ``metrics.json``.
The training-side studies (a mixed model, the passage weight, RAFT/KAFT data) train new models and
are benchmark scripts (``benchmarks/training_studies.py``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .demo import DemoConfig, DemoError, Stages, _file_sha, _fresh_unless_same, _key, run_demo

__all__ = ["StudiesConfig", "run_studies"]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class StudiesConfig:
    """The studies' sizes; every stage is keyed by them."""

    attention_records: int = _f(30, "held-out SQuAD records per attention measurement")
    conflict_records: int = _f(100, "known-facts records (the file's first N; it is shuffled) for the knowledge,"
                               " reliance, CAD and routing studies; 0 = all")
    route_fractions: tuple[float, ...] = _f((0.25, 0.5, 0.75), "shares of NQ questions that keep their passage")
    cad_alpha: float = _f(1.0, "CAD's alpha")
    known_facts: str = _f("", "the known-facts conflict set; '' = examples/known_facts of this checkout")

    @classmethod
    def quick_preset(cls) -> "StudiesConfig":
        return cls(attention_records=4, conflict_records=6, route_fractions=(0.5,))


# The models of the study, by their demo names; None = the base model itself.
MODELS = ("base", "no_context", "context")
LABELS = {"base": "base", "no_context": "standard IT", "context": "CINGS"}


def _known_facts_files(scfg: StudiesConfig) -> tuple[Path, Path]:
    """(conflict set, the same questions with their original passage and answer)."""
    from .suite import examples_dir

    folder = Path(scfg.known_facts) if scfg.known_facts else (examples_dir() or Path("examples")) / "known_facts"
    conflict, original = folder / "conflict.jsonl", folder / "original.jsonl"
    for path in (conflict, original):
        if not path.is_file():
            raise DemoError(f"{path}: the known-facts set is missing (it ships in examples/known_facts/); pass"
                            " --known-facts DIR with conflict.jsonl and original.jsonl")
    return conflict, original


class _Runner:
    """Runs ``cings`` commands as stages: each in its own folder, kept when its key is unchanged."""

    def __init__(self, root: Path, stages: Stages, log: Callable[[str], None], precision: str):
        self.root, self.stages, self.log, self.precision = root, stages, log, precision
        self.commands: dict[str, list[list[str]]] = {}

    def model_flags(self, model: str, cfg: DemoConfig) -> list[str]:
        if model == "base":
            return ["--model", cfg.model] + (["--gguf-file", cfg.gguf_file] if cfg.gguf_file else [])
        return ["--adapter", str(self.root / "models" / model)]

    def side_flags(self, side: str, model: str, cfg: DemoConfig) -> list[str]:
        """One side of ``cings route``: ``--ctx-model``/``--ctx-adapter`` (or noctx)."""
        if model == "base":
            return [f"--{side}-model", cfg.model]
        return [f"--{side}-adapter", str(self.root / "models" / model)]

    def stage(self, name: str, key_parts: list[Any], commands: list[list[str]],
              read: Callable[[Path], dict]) -> dict:
        folder = self.root / "studies" / name
        key = _key(commands, key_parts)
        self.commands[name] = commands

        def work() -> dict:
            _fresh_unless_same(folder, key)
            for argv in commands:
                self.log(f"$ cings {shlex.join(argv)}")
                done = subprocess.run([sys.executable, "-m", "cings", *argv], cwd=os.getcwd(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if done.returncode != 0:
                    raise DemoError(f"[{name}] `cings {shlex.join(argv)}` failed:\n{done.stderr[-3000:]}")
                for line in done.stderr.splitlines():
                    if line.startswith("cings "):
                        self.log(f"  {line}")
            return read(folder)

        return self.stages.run(f"study-{name.replace('/', '-')}", key, work)["result"]


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _keep(m: dict, keys: tuple[str, ...]) -> dict:
    return {k: m[k] for k in keys if k in m}


_SCORES = ("n", "acc", "acc_ci", "em", "em_ci", "context_rate", "context_rate_ci", "memory_rate", "memory_rate_ci", "n_conflict")


def run_studies(cfg: DemoConfig, scfg: StudiesConfig | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the demo, then every study; returns ``studies/report.md``."""
    scfg = scfg or (StudiesConfig.quick_preset() if cfg.quick else StudiesConfig())
    log = log or (lambda msg: print(f"cings demo: {msg}", file=sys.stderr, flush=True))
    started = time.perf_counter()
    run_demo(cfg, log)  # the models and their greedy evaluations; kept from `cings demo` when unchanged
    root = Path(cfg.output_dir)
    demo_metrics = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
    precision = demo_metrics["settings"]["precision_used"]
    conflict, original = _known_facts_files(scfg)
    stages = Stages(root, log)
    run = _Runner(root, stages, log, precision)
    eval_dir = root / "data" / "eval"
    upstream = {m: (root / "stages" / f"train-{m}.json").read_text() if m != "base" else cfg.model for m in MODELS}
    study_dir = root / "studies"
    results: dict[str, Any] = {}
    common = ["--dtype", precision, "--no-progress"]
    # Each model answers NQ and the conflict set in the layout it did best in on held-out SQuAD: a
    # development set for these, so the choice is never made on the records it is scored on.
    layouts = {m: demo_metrics.get("best_layout", {}).get("squad", {}).get(m, {}).get("best_in_hindsight", "prefill")
               for m in MODELS}
    log("layouts chosen on held-out SQuAD: " + ", ".join(f"{LABELS[m]} {layouts[m]}" for m in MODELS))

    # 1. attention to the passage
    squad = eval_dir / "squad-heldout.jsonl"
    attention: dict[str, dict] = {}
    for layout in ("prefill", "input"):
        for model in MODELS:
            name = f"attention/{model}-{layout}"
            out = study_dir / name
            attention.setdefault(layout, {})[model] = run.stage(
                name, [_file_sha(squad), upstream[model]],
                [["analyze", "attention", *run.model_flags(model, cfg), "--input", str(squad), "--layout", layout,
                  "--limit", str(scfg.attention_records), "--label", LABELS[model], "--output", str(out),
                  "--overwrite", *common]],
                lambda folder: _keep(_metrics(folder / "attention.json"),
                                     ("n", "per_layer", "per_layer_groups", "seconds_per_record", "label")))
        chart = study_dir / f"attention-{layout}.png"
        run.stage(f"attention-compare-{layout}", [attention[layout]],
                  [["analyze", "attention-compare",
                    *[f"{LABELS[m]}={study_dir / 'attention' / f'{m}-{layout}'}" for m in MODELS],
                    "--output", str(chart)]],
                  lambda folder: {"chart": str(chart)})
    results["attention"] = attention

    # 2. parametric knowledge: closed-book on known questions, and the conflict
    limit = ["--limit", str(scfg.conflict_records)] if scfg.conflict_records else []
    gen = ["--max-new-tokens", str(cfg.max_new_tokens), "--batch-size", str(cfg.gen_batch_size), *limit, *common]
    knowledge: dict[str, dict] = {}
    for model in MODELS:
        out = study_dir / "knowledge" / model
        commands = [["generate", *run.model_flags(model, cfg), "--input", str(original), "--docs", "none",
                     "--prompt", "prefill", "--output", str(out / "closed-book.jsonl"), "--resume", *gen],
                    ["evaluate", "--predictions", str(out / "closed-book.jsonl"), "--output", str(out / "closed-book.json")]]
        for lay in ("prefill", "input"):
            commands += [["generate", *run.model_flags(model, cfg), "--input", str(conflict), "--docs", "gold",
                          "--prompt", lay, "--output", str(out / f"conflict-{lay}.jsonl"), "--resume", *gen],
                         ["evaluate", "--predictions", str(out / f"conflict-{lay}.jsonl"),
                          "--output", str(out / f"conflict-{lay}.json")]]
        knowledge[model] = run.stage(
            f"knowledge/{model}", [_file_sha(original), _file_sha(conflict), upstream[model]], commands,
            lambda folder: {"closed_book": _keep(_metrics(folder / "closed-book.json"), _SCORES),
                            **{f"conflict_{lay}": _keep(_metrics(folder / f"conflict-{lay}.json"), _SCORES)
                               for lay in ("prefill", "input")}, "layout": layouts[model]})
    table_args = ["analyze", "knowledge"]
    for model in MODELS:
        folder = study_dir / "knowledge" / model
        table_args += ["--model", LABELS[model], str(folder / "closed-book.jsonl"), str(folder / "conflict-prefill.jsonl")]
    table_out = study_dir / "knowledge" / "table"
    run.stage("knowledge/table", [knowledge], [[*table_args, "--output", str(table_out / "knowledge.json"),
                                                "--markdown", str(table_out / "knowledge.md")]],
              lambda folder: {"markdown": str(folder / "knowledge.md")})
    results["knowledge"] = knowledge

    # 3. context reliance over training, every checkpoint
    reliance: dict[str, dict] = {}
    for model in ("no_context", "context"):
        out = study_dir / "reliance" / model
        reliance[model] = run.stage(
            f"reliance/{model}", [_file_sha(conflict), upstream[model]],
            [["analyze", "reliance", "--run", str(root / "models" / model), "--input", str(conflict),
              *limit, "--max-new-tokens", str(cfg.max_new_tokens), "--batch-size", str(cfg.gen_batch_size),
              "--dtype", precision, "--output", str(out), "--no-progress"]],
            lambda folder: {"rows": [_keep(r, ("step", "label", "n", "context_rate", "context_rate_ci", "memory_rate",
                                               "memory_rate_ci", "other_rate"))
                                     for r in _metrics(folder / "reliance.json")["rows"]]})
    results["reliance"] = reliance

    # 4. context-aware decoding on the base model and CINGS, each in its usual layout
    nq = eval_dir / "nq.jsonl"
    cad: dict[str, dict] = {}
    for model in ("base", "context"):
        layout = layouts[model]
        closed = root / "evals" / model / "nq-closed-book" / "predictions.jsonl"
        greedy_nq = root / "evals" / model / ("nq-gold-input" if layout == "input" else "nq-gold") / "predictions.jsonl"
        for decoding in ("greedy", "cad", "adacad"):
            out = study_dir / "cad" / f"{model}-{decoding}"
            dec = [] if decoding == "greedy" else ["--decoding", decoding] + (
                ["--cad-alpha", str(scfg.cad_alpha)] if decoding == "cad" else [])
            nq_pred = greedy_nq if decoding == "greedy" else out / "nq.jsonl"
            commands = [] if decoding == "greedy" else [
                ["generate", *run.model_flags(model, cfg), "--input", str(nq), "--docs", "gold", "--prompt", layout,
                 *dec, "--output", str(nq_pred), "--resume", "--max-new-tokens", str(cfg.max_new_tokens),
                 "--batch-size", str(cfg.gen_batch_size), *common]]
            commands += [["evaluate", "--predictions", str(nq_pred), "--closed-book", str(closed),
                          "--output", str(out / "nq.json")]]
            cf_pred = (study_dir / "knowledge" / model / f"conflict-{layout}.jsonl") if decoding == "greedy" \
                else out / "conflict.jsonl"
            if decoding != "greedy":
                commands += [["generate", *run.model_flags(model, cfg), "--input", str(conflict), "--docs", "gold",
                              "--prompt", layout, *dec, "--output", str(cf_pred), "--resume", *gen]]
            commands += [["evaluate", "--predictions", str(cf_pred), "--output", str(out / "conflict.json")]]
            cad.setdefault(model, {})[decoding] = run.stage(
                f"cad/{model}-{decoding}", [_file_sha(nq), _file_sha(conflict), _file_sha(closed), upstream[model],
                                            knowledge[model] if decoding == "greedy" else None], commands,
                lambda folder: {"nq": _keep(_metrics(folder / "nq.json"), _SCORES + ("neutral_regressions",
                                                                                      "context_gains")),
                                "conflict": _keep(_metrics(folder / "conflict.json"), _SCORES), "layout": layout})
    results["cad"] = cad

    # 5. routing between CINGS and standard IT vs each model alone, at several context fractions: on NQ
    # (which no model knows without its passage) and on the known facts (which the base model does)
    pairs = {"router": ("context", "no_context"), "CINGS alone": ("context", "context"),
             "standard IT alone": ("no_context", "no_context"), "base alone": ("base", "base")}
    for key, source, prefix in (("routing", nq, ""), ("routing_known", original, "known-")):
        routing: dict[str, dict] = {}
        for fraction in scfg.route_fractions:
            tag = f"{fraction:g}"
            per: dict[str, dict] = {}
            for label, (ctx, noctx) in pairs.items():
                name = f"{prefix}{tag}-{label.replace(' ', '-')}"
                out = study_dir / "route" / name
                sides = [*run.side_flags("ctx", ctx, cfg), *run.side_flags("noctx", noctx, cfg)]
                subset = limit if source == original else []
                commands = [["drop-contexts", "--input", str(source), "--output", str(out / "records.jsonl"),
                             "--context-fraction", tag, "--seed", "0"],
                            ["route", *sides, "--input", str(out / "records.jsonl"), "--prompt", layouts[ctx],
                             "--output", str(out / "predictions.jsonl"), "--resume", "--max-new-tokens",
                             str(cfg.max_new_tokens), "--batch-size", str(cfg.gen_batch_size), *subset, *common],
                            ["evaluate", "--predictions", str(out / "predictions.jsonl"),
                             "--output", str(out / "metrics.json")]]
                per[label] = run.stage(f"route/{name}", [_file_sha(source), upstream[ctx], upstream[noctx]], commands,
                                       lambda folder: {**_keep(_metrics(folder / "metrics.json"), _SCORES),
                                                       "routed": _routed(folder / "predictions.jsonl")})
            routing[tag] = per
        results[key] = routing
    results["layouts"] = layouts

    from .demo_studies_report import write_studies_report

    return write_studies_report(cfg, scfg, root, results, run.commands, stages, precision,
                                total_seconds=time.perf_counter() - started)


def _routed(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                where = json.loads(line).get("routed_to", "?")
                counts[where] = counts.get(where, 0) + 1
    return counts
