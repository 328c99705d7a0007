"""The demo's outputs: ``metrics.json`` (one entry per model and evaluation set), ``report.md``, ``report.png``.

The report prints what was measured, whichever way it came out, with the command behind every
number and the time of every stage.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .best_layout import crossfit_best_layout
from .metrics import accuracy, conflict_outcome, format_cell, paired_difference

__all__ = ["write_report", "MODE_MEANING"]

MODE_MEANING = {
    "base": "the pretrained model, not trained here",
    "no_context": "standard instruction tuning: question -> answer, no passage (the paper's IT baseline)",
    "input_context": "passage in the user turn, answer trained (the usual RAG fine-tuning)",
    "context": "CINGS: passage at the start of the assistant turn (`## Context ... ## Answer`), loss masked over it",
    "no_mask": "passage in the assistant turn like CINGS, but the passage is trained too (ablation)",
}


def _machine() -> str:
    import torch
    import transformers

    from .machine import cpu_class, cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_name()} ({cpu_class()}), {os.cpu_count()} CPU cores, {gpu}; {platform.system()} {platform.release()}; "
            f"torch {torch.__version__}, transformers {transformers.__version__}")


def _micro(cfg: Any) -> str:
    n = max(cfg.batch_size // max(cfg.micro_batch_size, 1), 1)
    if n == 1:
        return "one micro batch"
    return f"{n} micro batches of {cfg.micro_batch_size}; the loss is averaged over the trained tokens of all {cfg.batch_size}"


def model_colours(models: Sequence[str], cycle: Sequence[str]) -> list[str]:
    """A model keeps its colour in every report (the default and the --all-modes one side by side)."""
    fixed = {"base": cycle[0], "no_context": cycle[1], "context": cycle[2], "no_mask": cycle[3], "input_context": cycle[4]}
    spare = [c for c in cycle if c not in fixed.values()]
    return [fixed.get(m) or spare[i % len(spare)] for i, m in enumerate(models)]


def _chart(by_model: dict[str, dict[str, dict]], sets: Sequence[Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(by_model)
    conflict = [es.name for es in sets if any("context_rate" in by_model[m].get(es.name, {}) for m in models)]
    fig, axes = plt.subplots(1, 2 if conflict else 1, figsize=(13 if conflict else 10, 4.4),
                             gridspec_kw={"width_ratios": [3, 1]} if conflict else None)
    axes = list(axes) if conflict else [axes]
    width = 0.8 / max(len(models), 1)
    colours = model_colours(models, plt.rcParams["axes.prop_cycle"].by_key()["color"])

    def bars(ax, groups, metric_of):
        for i, model in enumerate(models):
            xs, ys, lo, hi = [], [], [], []
            for j, group in enumerate(groups):
                m, key = metric_of(model, group)
                v = m.get(key)
                if v is None:
                    continue
                ci = m.get(f"{key}_ci") or [v, v]
                xs.append(j + (i - (len(models) - 1) / 2) * width)
                ys.append(v)
                lo.append(max(v - ci[0], 0))
                hi.append(max(ci[1] - v, 0))
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=colours[i], label=model)
        ax.set_ylim(0, 100)

    names = [es.name for es in sets]
    bars(axes[0], names, lambda model, s: (by_model[model].get(s, {}), "acc"))
    axes[0].set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    axes[0].set_ylabel("accuracy (%), 95% bootstrap interval")
    axes[0].set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    if conflict:
        rates = ["context_rate", "memory_rate"]
        bars(axes[1], rates, lambda model, r: (by_model[model].get(conflict[0], {}), r))
        axes[1].set_xticks(range(2), ["context\n(follows the passage)", "memory\n(original answer)"], fontsize=8)
        axes[1].set_title(f"{conflict[0]}: knowledge conflict", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _commands(cfg: Any, root: Path, model: str, es: Any, precision: str) -> str:
    out = root / "repro" / model / es.name
    head = ["cings", "generate"]
    head += ["--adapter", str(root / "models" / model)] if model != "base" else ["--model", cfg.model]
    if model == "base" and cfg.gguf_file:
        head += ["--gguf-file", cfg.gguf_file]
    head += ["--input", str(root / "data" / "eval" / f"{es.source}.jsonl"), "--docs", es.docs]
    if es.ndocs != 1:
        head += ["--ndocs", str(es.ndocs)]
    head += ["--prompt", es.prompt, "--max-new-tokens", str(cfg.max_new_tokens), "--batch-size", str(cfg.gen_batch_size),
             "--dtype", precision, "--output", str(out / "predictions.jsonl")]
    ev = ["cings", "evaluate", "--predictions", str(out / "predictions.jsonl"), "--output", str(out / "metrics.json")]
    return f"{shlex.join(head)} && {shlex.join(ev)}"


def _record_scores(path: Path) -> tuple[str, dict[str, float]]:
    """The metric a set is judged by and each record's score: context-following on a conflict set, else acc."""
    from .evaluate import read_predictions

    rows = [r for r in read_predictions(path) if r.get("answers")]
    if rows and all(r.get("parametric_answers") for r in rows):
        return "context_rate", {str(r["id"]): float(conflict_outcome(str(r.get("prediction") or ""), r["answers"],
                                                                       r["parametric_answers"]) in ("context", "both"))
                                for r in rows}
    return "acc", {str(r["id"]): accuracy(str(r.get("prediction") or ""), r["answers"]) for r in rows}


def _task_label(sets: Sequence[Any]) -> str:
    first = sets[0].name
    return first[: -len("-prefill")] if first.endswith("-prefill") else first


def best_layouts(root: Path, models: Sequence[str], sets: Sequence[Any]) -> dict[str, dict[str, dict]]:
    """``{task: {model: cross-fitted best layout}}`` for every task evaluated in more than one layout."""
    tasks: dict[str, list[Any]] = {}
    for es in sets:
        tasks.setdefault(es.task, []).append(es)
    out: dict[str, dict[str, dict]] = {}
    for group in (g for g in tasks.values() if len({es.prompt for es in g}) > 1):
        label = _task_label(group)
        for model in models:
            paths = {es.prompt: root / "evals" / model / es.name / "predictions.jsonl" for es in group}
            if not all(path.is_file() for path in paths.values()):
                continue
            scored = {layout: _record_scores(path) for layout, path in paths.items()}
            metric = next(iter(scored.values()))[0]
            result = crossfit_best_layout({layout: values for layout, (_, values) in scored.items()})
            out.setdefault(label, {})[model] = {"metric": metric, **result}
    return out


_TASK_WHAT = {"acc": "accuracy", "context_rate": "context-following rate under knowledge conflict"}


def _verdict(best: dict[str, dict[str, dict]]) -> list[str]:
    """CINGS against each other model, both in their own best layout, paired over the same records."""
    lines = []
    for task, per_model in best.items():
        cings = per_model.get("context")
        if cings is None:
            continue
        for other in ("no_context", "base"):
            theirs = per_model.get(other)
            if theirs is None:
                continue
            ids = sorted(set(cings["values"]) & set(theirs["values"]))
            d = paired_difference([theirs["values"][i] for i in ids], [cings["values"][i] for i in ids])
            clear = d["lo"] > 0 or d["hi"] < 0
            word = ("beats" if d["diff"] > 0 else "is behind") if clear else "is level with"
            lines.append(f"- {task}, {_TASK_WHAT[cings['metric']]}, each model in its best layout: CINGS ({cings['layout']})"
                         f" {cings['value']:.1f} vs {other} ({theirs['layout']}) {theirs['value']:.1f}:"
                         f" {d['diff']:+.1f} points [{d['lo']:+.1f}, {d['hi']:+.1f}] paired over {d['n']} records,"
                         f" so CINGS {word} {other}{'' if clear else ' (the interval holds 0)'}.")
    return lines


def _best_layout_table(best: dict[str, dict[str, dict]], models: Sequence[str]) -> list[str]:
    if not best:
        return []
    md = ["## Each model in its best layout", "",
          "Every model is scored in the layout that suits it, not only the CINGS layout: the passage at the start"
          " of the assistant turn (`prefill`) or in the user turn (`input`). The layout is chosen without looking at"
          " the records it is scored on (two-fold cross-fitting: the records are halved by a hash of their id, and"
          " each half is scored in the layout that was better on the other half; `a/b` when the halves chose"
          " differently). Per-layout scores on all records are in the tables below.", "",
          "| model | " + " | ".join(f"{task} ({_TASK_WHAT[next(iter(per.values()))['metric']].split(' ')[0]})"
                                   for task, per in best.items()) + " |",
          "|---|" + "---:|" * len(best)]
    for model in models:
        cells = []
        for per in best.values():
            r = per.get(model)
            cells.append("–" if r is None else f"{format_cell(r, 'value')} `{r['layout']}`")
        md.append(f"| {model} | " + " | ".join(cells) + " |")
    return md + [""]


def _gold_vs_retrieved(by_model: dict[str, dict[str, dict]], sets: Sequence[Any], retrieval: dict | None) -> list[str]:
    """One table of every model with the gold passages and with the retrieved ones, and the retriever's recall."""
    from .demo_retrieval import GOLD_TWIN

    names = {es.name for es in sets}
    pairs = [(gold, found) for found, gold in GOLD_TWIN.items() if found in names]
    if not retrieval or not pairs:
        return []
    index, searched = retrieval["index"]["result"], retrieval["search"]
    k = next(iter(searched.values()))["result"]["k"]
    what = (f"{index['retriever']}" + (f" ({index['encoder']}, {index['faiss']} inner-product search)" if index.get("encoder") else "")
            + f" over {index['passages']:,} passages")
    shipped = retrieval["data"]["result"]["of_shipped"]
    corpus = ("every SQuAD dev paragraph whole, NQ-open's gold passages and HotpotQA's paragraphs"
              if index["passages"] == shipped else
              f"a seeded sample of the {shipped:,} passages of SQuAD dev, NQ-open and HotpotQA that keeps every gold one")
    md = ["## Gold vs retrieved passages", "",
          f"The same questions with their gold passage and with the retriever's top passage instead: {what}"
          f" (`data/retrieval/passages.jsonl`: {corpus}; examples/demo/PROVENANCE.md). Same layout (`prefill`), one"
          " passage either way. Accuracy (%) [95% interval]:", "",
          "| model | " + " | ".join(f"{gold} (gold) | {found}" for gold, found in pairs) + " |",
          "|---|" + "---:|" * (2 * len(pairs))]
    for model, per in by_model.items():
        md.append(f"| {model} | " + " | ".join(f"{format_cell(per.get(gold, {}), 'acc')} | {format_cell(per.get(found, {}), 'acc')}"
                                               for gold, found in pairs) + " |")
    md += ["", f"The retriever on each set (top {k}): recall@k = the question's gold passage is among the top k;"
           " answer in top k = DPR's has_answer (a gold answer's tokens occur in one of the top k passages);"
           " MRR = mean 1/rank of the gold passage.", "",
           "| set | questions | recall@1 | recall@" + str(k) + " | MRR | answer in top 1 | answer in top " + str(k) + " |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for _, found in pairs:
        m = searched.get(found, {}).get("result", {}).get("metrics") or {}
        mrr = f"{m['mrr']:.3f}" if "mrr" in m else "–"
        md.append(f"| {found} | {m.get('n_with_gold', '–')} | {format_cell(m, 'recall@1')} | {format_cell(m, f'recall@{k}')} |"
                  f" {mrr} | {format_cell(m, 'has_answer@1')} | {format_cell(m, f'has_answer@{k}')} |")
    return md + [""]


def write_report(cfg: Any, root: Path, data: dict, trained: dict[str, dict], evals: dict[str, dict[str, dict]],
                 sets: Sequence[Any], check: dict, precision: str, *, total_seconds: float, ran: Sequence[str],
                 precision_reason: str = "", retrieval: dict | None = None) -> Path:
    by_model = {model: {name: stage["result"]["metrics"] for name, stage in per_set.items()} for model, per_set in evals.items()}
    best = best_layouts(root, list(by_model), sets)
    best_json = {task: {m: {k: v for k, v in r.items() if k != "values"} for m, r in per.items()} for task, per in best.items()}
    entries = [{"model": model, "eval_set": name, **metrics} for model, per_set in by_model.items() for name, metrics in per_set.items()]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    retrieval_stages = {} if not retrieval else {"retrieval-data": retrieval["data"], "retrieval-index": retrieval["index"],
                                                 **{f"retrieval-search-{n}": s for n, s in retrieval["search"].items()}}
    stage_seconds = {"data": data["seconds"], **{f"train-{m}": s["seconds"] for m, s in trained.items()},
                     **{name: s["seconds"] for name, s in retrieval_stages.items()},
                     **{f"eval-{m}-{n}": s["seconds"] for m, per in evals.items() for n, s in per.items()}}
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = _machine()
    settings = {**asdict(cfg), "precision_used": precision, "precision_reason": precision_reason}
    summary = {"date": date, "machine": machine, "settings": settings, "same_schedule": check, "entries": entries,
               "by_model": by_model, "best_layout": best_json, "stage_seconds": stage_seconds, "data": data["result"],
               "training": {m: s["result"] for m, s in trained.items()}, "peak_rss_gib_this_process": round(peak_gib, 2),
               "wall_seconds_this_invocation": round(total_seconds, 1), "stages_run_this_invocation": list(ran)}
    if retrieval_stages:
        summary["retrieval"] = {name: s["result"] for name, s in retrieval_stages.items()}
    (root / "metrics.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    title = f"{Path(cfg.model).name if cfg.model != 'smollm2' else 'SmolLM2-135M-Instruct'}: base vs trained modes"
    png = _chart(by_model, sets, root / "report.png", title)

    d = data["result"]
    invocation = ["cings", "demo"] + (["--quick"] if cfg.quick else []) + (["--all-modes"] if set(cfg.modes) >= {"input_context", "no_mask"} else [])
    invocation += ["--output-dir", str(root)] + (["--model", cfg.model] if cfg.model != "smollm2" else [])
    md = [f"# cings demo: {title}", "",
          f"{date} on {machine}. Command: `{shlex.join(invocation)}`"
          f" (settings in `metrics.json`). This invocation took {total_seconds / 60:.1f} min and ran {len(ran)} of"
          f" {len(stage_seconds)} stages (the others were kept from an earlier invocation; every stage's own time is"
          " below).", "",
          "## What was compared", "", "| model | what it is |", "|---|---|"]
    md += [f"| {m} | {MODE_MEANING.get(m, m)} |" for m in by_model]
    has_cf = any("context_rate" in r for per in by_model.values() for r in per.values())
    md += ["", "## Summary: accuracy (%) [95% interval]", "",
           "| model | " + " | ".join(es.name for es in sets) + (" | counterfactual: context / memory rate |" if has_cf else " |"),
           "|---|" + "---:|" * (len(sets) + has_cf)]
    for m, per in by_model.items():
        cells = [format_cell(per.get(es.name, {}), "acc") for es in sets]
        if has_cf:
            cf = next((r for r in per.values() if "context_rate" in r), None)
            cells.append(f"{cf['context_rate']:.1f} / {cf['memory_rate']:.1f}" if cf else "–")
        md.append(f"| {m} | " + " | ".join(cells) + " |")
    md += ["", *_gold_vs_retrieved(by_model, sets, retrieval), *_best_layout_table(best, list(by_model)), "## Training", "",
           f"LoRA r{cfg.lora_r} (alpha {cfg.lora_alpha}, dropout 0.05) on every attention and MLP projection"
           f"{f' of the top {cfg.lora_top_layers} layers' if getattr(cfg, 'lora_top_layers', None) else ''}; {cfg.steps} steps of"
           f" {cfg.batch_size} examples ({_micro(cfg)}), learning rate {cfg.learning_rate:g} constant,"
           f" seed {cfg.seed}, {precision}{f' ({precision_reason})' if precision_reason else ''}. Data: {d['train_records']} SQuAD v1.1 dev questions from {d['train_articles']}"
           f" articles (one pass, each passage cut to the sentences around its answer, at most {cfg.context_chars}"
           f" characters: {d['contexts_windowed']} were cut; {d['answer_not_in_passage_skipped']} skipped because the"
           f" answer was not in the passage). Evaluation uses {d['heldout_articles']} other articles"
           f"{', their passages cut the same way' if 'heldout_contexts_windowed' in d else ''}. The learning rate"
           f" is {cfg.learning_rate / 2e-5:g}x the paper's 2e-5, which is for 8B models and 3 epochs of ~60k examples;"
           " docs/results.md has the study.",
           "", "| mode | steps | seed | examples | data order (sha256 of the batches) | train loss | tokens | trained tokens | time |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for m, s in trained.items():
        r = s["result"]
        loss = f"{r['train_loss']:.3f}" if isinstance(r.get("train_loss"), (int, float)) else "–"
        md.append(f"| {m} | {r['steps']} | {r['seed']} | {r['data_order']['examples']} | `{r['data_order']['sha256'][:16]}` |"
                  f" {loss} | {r.get('tokens')} | {r.get('trained_tokens')} | {s['seconds'] / 60:.1f} min |")
    if trained:
        md += ["", f"All trained modes saw the same {check['examples']} examples in the same order, for {check['steps']}"
               f" steps with seed {check['seed']} (checked by the demo: it stops if not)."]
    md += ["", "## Results", "", "Accuracy: a normalised gold answer is contained in the answer; EM and F1: SQuAD v1.1;"
           " [95% bootstrap interval]. Greedy decoding, at most"
           f" {cfg.max_new_tokens} new tokens, the paper's system prompt.", "", f"![report]({png.name})", ""]
    for es in sets:
        md += [f"### {es.name}", "", es.about + f" (docs `{es.docs}`, layout `{es.prompt}`).", ""]
        conflict = any("context_rate" in by_model[m].get(es.name, {}) for m in by_model)
        head = ["model", "n", "acc", "em", "f1"] + (["context_rate", "memory_rate"] if conflict else [])
        md += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for m in by_model:
            r = by_model[m].get(es.name)
            if r is None:
                continue
            cells = [m, str(r.get("n"))] + [format_cell(r, k) for k in head[2:]]
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
    verdict = _verdict(best)
    if verdict:
        md += ["## What it shows", "", *verdict, "",
               "These are a 135M model's numbers after a few minutes of CPU training, not the paper's 8B results."
               if not cfg.quick else "A `--quick` run: too few steps and records for the numbers to mean anything.", ""]
    md += ["## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    md += [f"| {k} | {v:.0f} |" for k, v in stage_seconds.items()]
    md += ["", f"Peak memory of the last invocation: {peak_gib:.2f} GiB (resident set).", "",
           "## Reproduce each number", "",
           "Every figure above comes from one `cings generate` + `cings evaluate` over the files in"
           f" `{root / 'data'}` (the demo's own predictions are in `{root / 'evals'}/MODEL/SET/`):", "", "```bash"]
    if retrieval:
        from .demo_retrieval import retrieval_commands

        md += ["# the retrieved sets' passages (their index, then each set's top passages)",
               *retrieval_commands(cfg, root, list(retrieval["search"]))]
    md += [_commands(cfg, root, m, es, precision) for m in by_model for es in sets]
    md += ["```", ""]
    report = root / "report.md"
    report.write_text("\n".join(md), encoding="utf-8")
    return report
