"""The training-side studies of the paper's behavioural claims, at the demo's scale.

Run after `cings demo` (its data, its two trained models and their evaluations are reused):

    python benchmarks/training_studies.py [--output-dir runs/demo] [--only mixed,weight,raft,kaft]

Every variant is trained exactly like the demo's models (SmolLM2-135M-Instruct, LoRA r16 on the top 15
layers, 40 steps of 8, learning rate 5e-4, seed 2; the same 320 SQuAD questions) and only its data
or loss differs:

- **mixed**: the paper's "one model trained on mixed data": the same records, half of them with their
  passage removed (`cings drop-contexts --context-fraction 0.5`), in the CINGS layout where there is a
  passage and as a plain answer where not. Compared with routing between the demo's CINGS and
  standard-IT models on NQ with a passage for a fraction F of the questions (paired per question).
- **weight λ** (`--context-loss-weight`): 0.25, 0.5 and 1 (1 trains the passage like the answer,
  `no_mask`); 0 is the demo's CINGS model.
- **raft**: `cings context-mix --oracle-rate 0.8 --distractors 2` (RAFT: the oracle passage in 80% of
  the rows, always beside 2 distractors; distractors only in the rest).
- **kaft**: `cings context-mix --irrelevant 0.2 --counterfactual 0.2` (KAFT: irrelevant passages with the
  answer kept, answers swapped in passage and target).

Each is evaluated on held-out SQuAD (prefill), the counterfactual set (prefill), NQ with its passage
and HotpotQA with 2 distractors. Stages resume. Results: benchmarks/results/training_studies.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import save_result  # noqa: E402

from cings.demo import EVAL_SETS, DemoConfig, Stages, _evaluate, _file_sha, _key, _recipe_key, _train, _train_config  # noqa: E402
from cings.metrics import accuracy, paired_difference  # noqa: E402
from cings.records import read_records, write_records  # noqa: E402

SETS = ("squad-prefill", "squad-input", "squad-counterfactual", "nq-gold", "nq-gold-input", "nq-closed-book",
        "hotpotqa-distractors")
FRACTIONS = (0.25, 0.5, 0.75)


def variants(root: Path) -> dict[str, dict]:
    from cings.context_mix import ContextMixOptions, mix_contexts
    from cings.splits import drop_contexts

    def mixed(records):
        return drop_contexts(records, 0.5, seed=0)

    def context_mix(**kw):
        return lambda records: mix_contexts(records, ContextMixOptions(seed=0, **kw))

    return {
        "mixed": {"data": mixed, "train": {"allow_no_context": True}},
        "weight-0.25": {"train": {"context_loss_weight": 0.25}},
        "weight-0.5": {"train": {"context_loss_weight": 0.5}},
        "weight-1": {"train": {"context_loss_weight": 1.0}},
        "raft": {"data": context_mix(oracle_rate=0.8, distractors=2), "train": {}},
        "kaft": {"data": context_mix(irrelevant=0.2, counterfactual=0.2), "train": {}},
    }


def _per_record(path: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: accuracy(r["prediction"], r["answers"]) for r in rows if r.get("answers")}


def routed_scores(root: Path, ctx_model: str, ctx_layout: str, noctx_model: str, fraction: float) -> dict[str, float]:
    """What `cings route` writes at this fraction, per question, composed from the two models' predictions with
    and without the passage (the same rows route writes; tests/test_route.py checks that equality)."""
    from cings.splits import drop_contexts

    records = list(read_records(root / "data" / "eval" / "nq.jsonl"))
    kept = {r.id for r in drop_contexts(records, fraction, seed=0)[0] if r.contexts}
    with_docs = _per_record(root / "evals" / ctx_model / ("nq-gold" if ctx_layout == "prefill" else "nq-gold-input")
                            / "predictions.jsonl")
    closed = _per_record(root / "evals" / noctx_model / "nq-closed-book" / "predictions.jsonl")
    return {i: (with_docs[i] if i in kept else closed[i]) for i in sorted(closed) if i in with_docs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="runs/demo", help="the demo's folder (after `cings demo`)")
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    args = parser.parse_args()
    root = Path(args.output_dir)
    demo = json.loads((root / "metrics.json").read_text())
    cfg = DemoConfig(**{k: v for k, v in demo["settings"].items() if k in DemoConfig.__dataclass_fields__})
    cfg = replace(cfg, modes=tuple(cfg.modes), eval_sets=tuple(cfg.eval_sets))
    precision = demo["settings"]["precision_used"]
    log = lambda msg: print(f"training_studies: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    stages = Stages(root / "training_studies", log)
    all_variants = variants(root)
    chosen = args.only.split(",") if args.only else list(all_variants)
    train_file = root / "data" / "train.jsonl"
    sets = [e for e in EVAL_SETS if e.name in SETS]

    from cings.loading import resolve_precision
    from cings.runs import load_for_generation

    dtype = resolve_precision(precision, allowed=("bf16", "fp32")).dtype  # as the demo evaluated its models

    results: dict[str, dict] = {}
    for name in chosen:
        spec = all_variants[name]
        folder = root / "training_studies" / name
        data = train_file
        if "data" in spec:
            data = folder / "train.jsonl"

            def build(spec=spec, data=data) -> dict:
                records, report = spec["data"](list(read_records(train_file)))
                data.parent.mkdir(parents=True, exist_ok=True)
                write_records(records, data)
                return {"records": len(records), "report": report if isinstance(report, dict) else report.to_dict()}
            built = stages.run(f"{name}-data", _key(_file_sha(train_file), name), build)["result"]
            log(f"{name}: data {built}")
        tc = replace(_train_config(cfg, "context", data, folder / "model", precision), **spec["train"])
        key = _key(_file_sha(data), _recipe_key(tc))
        trained = stages.run(f"{name}-train", key, lambda d=data, k=key, o=spec["train"]: _train(
            cfg, "context", d, folder / "model", precision, k, overrides=o))
        loaded = None
        evals = {}
        for es in sets:
            def work(es=es) -> dict:
                nonlocal loaded
                if loaded is None:
                    loaded = load_for_generation(None, adapter=str(folder / "model"), dtype=dtype)
                model_obj, tok, options, model_spec = loaded
                return _evaluate(model_obj, tok, options, model_spec, str(folder / "model"), es,
                                 root / "data" / "eval" / f"{es.source}.jsonl", folder / "evals" / es.name, cfg,
                                 precision, _key(trained["key"], asdict(es)))
            evals[es.name] = stages.run(f"{name}-eval-{es.name}", _key(trained["key"], asdict(es), cfg.max_new_tokens),
                                        work)["result"]["metrics"]
        loaded = None
        results[name] = {"training": trained["result"], "evals": evals}

    # the mixed model against routing, per fraction, paired over the same questions
    routing = {}
    if "mixed" in results:
        mixed_dir = root / "training_studies" / "mixed"
        layouts = {m: r.get("best_in_hindsight", "prefill") for m, r in demo.get("best_layout", {}).get("squad", {}).items()}
        mixed_squad = {lay: results["mixed"]["evals"]["squad-prefill" if lay == "prefill" else "squad-input"]["acc"]
                       for lay in ("prefill", "input")}
        mixed_layout = max(mixed_squad, key=lambda k: (mixed_squad[k], k == "prefill"))
        for fraction in FRACTIONS:
            router = routed_scores(root, "context", layouts.get("context", "prefill"), "no_context", fraction)
            # the mixed model alone: its own predictions with and without the passage, composed the same way
            from cings.splits import drop_contexts
            records = list(read_records(root / "data" / "eval" / "nq.jsonl"))
            kept = {r.id for r in drop_contexts(records, fraction, seed=0)[0] if r.contexts}
            with_docs = _per_record(mixed_dir / "evals" / ("nq-gold" if mixed_layout == "prefill" else "nq-gold-input")
                                    / "predictions.jsonl")
            closed = _per_record(mixed_dir / "evals" / "nq-closed-book" / "predictions.jsonl")
            mixed = {i: (with_docs[i] if i in kept else closed[i]) for i in router}
            ids = sorted(router)
            routing[f"{fraction:g}"] = {
                "router_acc": 100 * sum(router.values()) / len(ids), "mixed_acc": 100 * sum(mixed.values()) / len(ids),
                "mixed_minus_router": paired_difference([router[i] for i in ids], [mixed[i] for i in ids]),
                "n": len(ids), "with_passage": len(kept)}
        routing["layouts"] = {"router_ctx": layouts.get("context", "prefill"), "mixed": mixed_layout}

    table = ["| variant | squad-prefill | counterfactual: context / memory | nq-gold | hotpotqa-distractors |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        e = r["evals"]
        cf = e["squad-counterfactual"]
        table.append(f"| {name} | {e['squad-prefill']['acc']:.1f} | {cf['context_rate']:.1f} / {cf['memory_rate']:.1f} |"
                     f" {e['nq-gold']['acc']:.1f} | {e['hotpotqa-distractors']['acc']:.1f} |")
    print("\n".join(table))
    for fraction, r in routing.items():
        if fraction != "layouts":
            d = r["mixed_minus_router"]
            print(f"F={fraction}: router {r['router_acc']:.1f}, mixed {r['mixed_acc']:.1f},"
                  f" mixed - router {d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] (n {r['n']})")
    out = Path(__file__).resolve().parent / "results" / "training_studies.json"
    save_result(out, {"demo_settings": demo["settings"], "results": results, "mixed_vs_router": routing,
                      "table": table}, "torch", "transformers", "peft")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
