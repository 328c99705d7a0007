"""``studies/report.md`` and ``studies/metrics.json`` of ``cings demo --studies``: every table with the
commands behind it, what each study asks, and what it measured, whichever way it fell."""

from __future__ import annotations

import json
import resource
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .demo_report import _machine
from .metrics import format_cell

__all__ = ["write_studies_report"]

LABELS = {"base": "base", "no_context": "standard IT", "context": "CINGS"}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _attention(results: dict) -> list[str]:
    md = ["## 1. Attention to the passage", "",
          "Share of the answer tokens' attention that lands on the passage's tokens (teacher-forced on the gold"
          " answer; mean over heads, answer positions and records), by layer; `cings analyze attention`.", ""]
    for layout, per in results.items():
        md += [f"**Passage {'in the assistant turn (prefill)' if layout == 'prefill' else 'in the user turn (input)'}**"
               f" ({next(iter(per.values()))['n']} held-out SQuAD records): ![attention {layout}](attention-{layout}.png)",
               "", "| model | mean over layers | top half of the layers | last layer | first token (sink), mean |",
               "|---|---:|---:|---:|---:|"]
        for model, r in per.items():
            shares = r["per_layer"]
            half = shares[len(shares) // 2:]
            sink = r["per_layer_groups"].get("first_token", [])
            md.append(f"| {LABELS[model]} | {_mean(shares):.3f} | {_mean(half):.3f} | {shares[-1]:.3f} |"
                      f" {_mean(sink):.3f} |")
        md.append("")
    return md


def _rates(m: dict) -> str:
    if "context_rate" not in m:
        return "–"
    return f"{format_cell(m, 'context_rate')} / {format_cell(m, 'memory_rate')}"


def _knowledge(results: dict) -> list[str]:
    md = ["## 2. Parametric knowledge under conflict", "",
          "Questions the base model answers right without a passage (a gold answer in its answer as whole words, not"
          " in the question; examples/known_facts/PROVENANCE.md), asked"
          " closed-book after training, then with a passage whose answer was swapped for another of the same type."
          " Context rate: the answer follows the passage; memory rate: it gives the original answer.", "",
          "| model | closed-book accuracy | EM | conflict, prefill: context / memory | conflict, input: context / memory |",
          "|---|---:|---:|---:|---:|"]
    for model, r in results.items():
        cb = r["closed_book"]
        md.append(f"| {LABELS[model]} | {format_cell(cb, 'acc')} | {format_cell(cb, 'em')} |"
                  f" {_rates(r['conflict_prefill'])} | {_rates(r['conflict_input'])} |")
    return md + ["", "Paired differences between the models on the same questions: `knowledge/table/knowledge.md`"
                 " (`cings analyze knowledge`).", ""]


def _reliance(results: dict) -> list[str]:
    md = ["## 3. Context reliance over training", "",
          "`cings analyze reliance`: the conflict set answered (prefill layout) by the base model (step 0) and by every"
          " saved checkpoint of each run.", "",
          "| run | step | context rate | memory rate | other |", "|---|---:|---:|---:|---:|"]
    for model, r in results.items():
        for row in r["rows"]:
            md.append(f"| {LABELS[model]} | {row['step']} | {format_cell(row, 'context_rate')} |"
                      f" {format_cell(row, 'memory_rate')} | {row['other_rate']:.1f} |")
    md += ["", *[f"![reliance {LABELS[m]}](reliance/{m}/reliance.png)" for m in results], ""]
    return md


def _cad(results: dict, alpha: float) -> list[str]:
    md = ["## 4. Context-aware decoding", "",
          f"Greedy against CAD (α = {alpha:g}: (1+α)·log p(y | passage, x) − α·log p(y | x)) and AdaCAD (α per token ="
          " the Jensen–Shannon divergence of the two distributions). NQ with its gold passage; a *neutral regression*"
          " is a question the same model answered right closed-book and gets wrong with the passage.", "",
          "| model (layout) | decoding | NQ accuracy | NQ EM | neutral regressions | context gains | conflict: context / memory |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for model, per in results.items():
        for decoding, r in per.items():
            nq = r["nq"]
            reg, gain = nq.get("neutral_regressions", {}), nq.get("context_gains", {})
            md.append(f"| {LABELS[model]} ({r['layout']}) | {decoding} | {format_cell(nq, 'acc')} | {format_cell(nq, 'em')} |"
                      f" {reg.get('count', '–')} ({reg.get('rate', 0):.1f}%) | {gain.get('count', '–')} |"
                      f" {_rates(r['conflict'])} |")
    return md + [""]


def _routing(results: dict, layouts: dict, what: str = "NQ questions", heading: bool = True) -> list[str]:
    labels = list(next(iter(results.values())))
    md = (["## 5. Routing between two models vs one model", ""] if heading else []) + [
          f"{what}, a fraction F of them with their passage and the rest without (`cings drop-contexts`)."
          " The router sends a question with a passage to CINGS and one without to standard IT (`cings route`);"
          " each model alone answers every question, with the passage where there is one. Each model reads the"
          " passage in the layout it did best in on held-out SQuAD (" +
          ", ".join(f"{LABELS[m]}: {v}" for m, v in layouts.items()) + ").", "",
          "| F | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for fraction, per in results.items():
        md.append(f"| {fraction} | " + " | ".join(format_cell(per[label], "acc") for label in labels) + " |")
    counts = {f: per["router"]["routed"] for f, per in results.items()}
    md += ["", "Routed by the router: " + "; ".join(f"F = {f}: {c.get('ctx', 0)} to CINGS, {c.get('noctx', 0)} to"
                                                    f" standard IT" for f, c in counts.items()) + ".", ""]
    return md


def write_studies_report(cfg: Any, scfg: Any, root: Path, results: dict, commands: dict[str, list[list[str]]],
                         stages: Any, precision: str, *, total_seconds: float) -> Path:
    out = root / "studies"
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for path in sorted(stages.dir.glob("study-*.json")):
        seconds[path.stem.removeprefix("study-")] = json.loads(path.read_text())["seconds"]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    summary = {"date": date, "machine": _machine(), "precision": precision, "settings": asdict(scfg),
               "results": results, "stage_seconds": seconds, "total_stage_seconds": round(sum(seconds.values()), 1),
               "wall_seconds_this_invocation": round(total_seconds, 1), "commands": commands}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    default = type(scfg).quick_preset() if cfg.quick else type(scfg)()
    invocation = (["cings", "demo", "--studies"] + (["--quick"] if cfg.quick else []) + ["--output-dir", str(root)]
                  + (["--known-facts", scfg.known_facts] if scfg.known_facts else [])
                  + (["--conflict-records", str(scfg.conflict_records)]
                     if scfg.conflict_records != default.conflict_records else []))
    md = ["# cings demo --studies: the paper's behavioural claims at the demo's scale", "",
          f"{date} on {_machine()}, {precision}. Command: `{shlex.join(invocation)}` (after `cings demo`, whose"
          f" models and evaluations it reuses). The study stages took {sum(seconds.values()) / 60:.1f} min in all"
          f" (this invocation {total_seconds / 60:.1f} min, peak memory {peak:.2f} GiB).", "",
          "Models: the base SmolLM2-135M-Instruct, and the demo's standard-IT (`no_context`) and CINGS (`context`)"
          " LoRA runs. A 135M model after a few minutes of CPU training: these numbers test whether the paper's"
          " behaviours appear at this scale, not its 8B results.", ""]
    md += _attention(results["attention"])
    md += _knowledge(results["knowledge"])
    md += _reliance(results["reliance"])
    md += _cad(results["cad"], scfg.cad_alpha)
    md += _routing(results["routing"], results["layouts"])
    if results.get("routing_known"):
        md += _routing(results["routing_known"], results["layouts"], heading=False,
                       what="The known facts (questions the base model answers without a passage, with their true"
                            " passage)")
    md += ["## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    md += [f"| {k} | {v:.0f} |" for k, v in seconds.items()]
    md += ["", "## Commands", "", "Every number above comes from these commands (run from the repository root):", "",
           "```bash"]
    for argv_list in commands.values():
        md += [f"cings {shlex.join(argv)}" for argv in argv_list]
    md += ["```", ""]
    report = out / "report.md"
    report.write_text("\n".join(md), encoding="utf-8")
    return report
