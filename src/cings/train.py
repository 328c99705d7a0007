"""``cings train``: records -> exact CINGS labels -> transformers ``Trainer`` -> a Hugging Face directory.

The engine is the transformers ``Trainer`` fed our pre-tokenized ``labels`` and our collator, so
the mask built by :mod:`cings.render` reaches the loss untouched (no re-tokenization, no silent
truncation or row filtering by the trainer). Distribution (DDP, FSDP, DeepSpeed) is the launcher's:
``accelerate launch -m cings train`` or ``torchrun -m cings train``. See docs/design.md.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, TrainConfig

__all__ = ["train", "build_datasets", "load_model", "load_tokenizer_for", "render_options_for", "precision_for", "TrainResult"]


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def render_options_for(cfg: TrainConfig):
    return cfg.render_options()


def load_tokenizer_for(cfg: TrainConfig):
    from .loading import LoadError, load_tokenizer

    try:
        spec = cfg.tokenizer if cfg.tokenizer is not None else cfg.model_source().tokenizer_spec()
        tokenizer = load_tokenizer(spec)
    except LoadError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:
        raise ConfigError(f"tokenizer {spec}: {err}") from None
    if not getattr(tokenizer, "chat_template", None) and not cfg.chat_template:
        # tokenize/preview fall back to llama2-chat; a training run must choose its format on purpose.
        raise ConfigError(f"tokenizer {spec} has no chat template: set chat_template (a Jinja file, or"
                          " llama2-chat / chatml) so the trained format is a choice, not an accident")
    return tokenizer


def precision_for(cfg: TrainConfig):
    """``(Precision, dtype to load weights in)`` by loading.resolve_precision, the rule every command uses."""
    import torch

    from .loading import LoadError, resolve_precision

    try:
        precision = resolve_precision(cfg.precision)
    except LoadError as err:
        raise ConfigError(str(err)) from None
    # Mixed precision keeps fp32 master weights for full fine-tuning (the reference's pure bf16 rounds
    # small updates away); a frozen LoRA base can sit in half precision.
    load = precision.dtype if (precision.name != "fp32" and cfg.lora) else torch.float32
    return precision, load


def load_model(cfg: TrainConfig, tokenizer: Any, dtype: Any):
    from .loading import LoadError, load_causal_lm

    try:
        return load_causal_lm(cfg.model_source(), dtype, tokenizer=tokenizer, attn_implementation=cfg.attn_implementation)
    except LoadError as err:
        raise ConfigError(str(err)) from None


def apply_lora(model: Any, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.lora_target_modules if m not in present]
    if missing:
        raise ConfigError(f"lora_target_modules {missing} are not modules of this model"
                          f" (it has e.g. {sorted(present - {''})[:12]})")
    layers = None
    if cfg.lora_top_layers is not None:
        total = getattr(model.config, "num_hidden_layers", None)
        if total is None or cfg.lora_top_layers > total:
            raise ConfigError(f"lora_top_layers {cfg.lora_top_layers}: the model has {total} layers")
        layers = list(range(total - cfg.lora_top_layers, total))
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=list(cfg.lora_target_modules), layers_to_transform=layers,
                        modules_to_save=list(cfg.lora_modules_to_save) or None, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _load_split(path: str, renderer: Any, cfg: TrainConfig, progress: bool):
    """Records (.jsonl) are tokenized here; `cings tokenize` output must match what the recipe would make."""
    from .dataset import TokenizeStats, tokenize_file
    from .runs import check_tokenized, tokenized_manifest

    source = Path(path)
    if not source.exists():
        raise ConfigError(f"data {path}: no such file")
    if source.is_dir() or tokenized_manifest(source).is_file():
        import datasets

        manifest = check_tokenized(source, renderer)
        dataset = datasets.load_from_disk(str(source)) if source.is_dir() else _tokenized_jsonl(source)
        stats = TokenizeStats(**{k: v for k, v in manifest.get("stats", {}).items() if k in TokenizeStats.__annotations__})
        return dataset, stats
    return tokenize_file(source, renderer, num_proc=cfg.num_proc, progress=progress)


def _tokenized_jsonl(path: Path):
    """The ``{id, input_ids, labels}`` lines (``loss_weights`` too, with a context_loss_weight) `cings tokenize`
    writes to a .jsonl output."""
    import datasets

    from .jsonl import iter_jsonl

    columns: dict[str, list] = {"id": [], "input_ids": [], "labels": []}
    for where, _, row in iter_jsonl(path):  # FILE:LINE for bad JSON, bad bytes and a truncated .gz
        if not columns["id"] and isinstance(row, dict) and "loss_weights" in row:  # the first row decides
            columns["loss_weights"] = []
        if not isinstance(row, dict) or any(k not in row for k in columns):
            raise ConfigError(f"{where}: not a line of `cings tokenize` ({', '.join(columns)})")
        for key in columns:
            columns[key].append(row[key])
    return datasets.Dataset.from_dict(columns)


def build_datasets(cfg: TrainConfig, tokenizer: Any, progress: bool = True, renderer: Any = None):
    from .render import Renderer

    renderer = renderer or Renderer(tokenizer, render_options_for(cfg))
    train_set, stats = _load_split(cfg.data, renderer, cfg, progress)
    if len(train_set) == 0:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(stats.dropped.items())) or "the file has no records"
        raise ConfigError(f"no training examples left after tokenization ({dropped}); raise max_length or check the data")
    eval_set = None
    if cfg.eval_data:
        eval_set, _ = _load_split(cfg.eval_data, renderer, cfg, progress)
    keep = ["input_ids", "labels", "loss_weights"]  # loss_weights: only with a context_loss_weight
    if cfg.group_by_length:
        if "chars" not in train_set.column_names:
            raise ConfigError(f"group_by_length: data {cfg.data} has no 'chars' column; give the records (.jsonl)"
                              " or tokenize them again with this version of cings")
        keep.append("chars")
    train_set = train_set.remove_columns([c for c in train_set.column_names if c not in keep])
    train_set = train_set.add_column("row", list(range(len(train_set))))  # for OrderRecorder
    if eval_set is not None:
        eval_set = eval_set.remove_columns([c for c in eval_set.column_names if c not in keep[:3]])
    return train_set, eval_set, stats, renderer


class TrainResult(dict):
    """What a run produced: output_dir, metrics, data stats."""


def train(cfg: TrainConfig, *, callbacks: Sequence[Any] = (), progress: bool = True) -> TrainResult:
    """Run one training job; returns where the model went and the final metrics."""
    from transformers import TrainingArguments

    from . import runs
    from .collate import make_collator, pad_id_for
    from .render import Renderer
    from .speed_options import resolve_speed_options
    from .trainer import CingsTrainer, LossLogCallback, OrderRecorder, ReleaseMemoryCallback, RunFilesCallback

    cfg.validate()
    world = _world_size()
    accumulation = cfg.accumulation(world)
    tokenizer = load_tokenizer_for(cfg)
    precision, dtype = precision_for(cfg)
    speed = resolve_speed_options(cfg, precision.name)
    cfg = speed.apply(cfg)  # the recipe as it runs here: what the run folder records and the model loads with
    if _is_main():
        print(f"cings train: precision {precision.describe()}", file=sys.stderr)
        if precision.warning:
            print(f"cings train: warning: {precision.warning}", file=sys.stderr)
        for choice in speed.fallbacks():
            print(f"cings train: {choice.line()}", file=sys.stderr)
    renderer = Renderer(tokenizer, render_options_for(cfg))
    fingerprint = runs.data_fingerprint(cfg, renderer, world)
    # Before the data is tokenized: a folder that cannot be trained into is refused at once.
    resume = runs.open_output(cfg, fingerprint, main=_is_main())
    train_set, eval_set, stats, renderer = build_datasets(cfg, tokenizer, progress=progress and _is_main(),
                                                          renderer=renderer)
    if _is_main():
        for line in stats.lines():
            print(f"cings train: data: {line}", file=sys.stderr)

    output_dir = Path(cfg.output_dir)
    import torch

    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=accumulation,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, max_grad_norm=cfg.max_grad_norm or 0.0,
        lr_scheduler_type="constant", seed=cfg.seed, data_seed=cfg.seed,
        bf16=precision.name == "bf16", fp16=precision.name == "fp16", use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        eval_strategy="epoch" if eval_set is not None else "no", report_to=list(cfg.report_to) or "none",
        remove_unused_columns=False, dataloader_num_workers=cfg.dataloader_num_workers,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="chars",
        disable_tqdm=not progress, ddp_find_unused_parameters=False,
        **speed.training_arguments(),  # optimizer, compile, Liger, activation checkpointing
    )
    # After the arguments: under DeepSpeed ZeRO-3 they switch on zero.Init, so each process loads
    # only its shard of the weights instead of the whole model.
    from transformers import set_seed

    set_seed(cfg.seed)  # the LoRA initialisation (and any fresh weights) follow the recipe's seed
    model = load_model(cfg, tokenizer, dtype)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    if cfg.lora:
        model = apply_lora(model, cfg)
    # As the Trainer counts them: a last, partial accumulation still makes an optimizer step.
    steps_per_epoch = max(math.ceil(math.ceil(len(train_set) / (cfg.micro_batch_size * world)) / accumulation), 1)
    order = OrderRecorder(make_collator(pad_id_for(tokenizer), packing=cfg.packing),
                          output_dir / "data_order.jsonl" if _is_main() else None)
    trainer = CingsTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        data_collator=order,
        callbacks=[LossLogCallback(output_dir / runs.LOSS_LOG), RunFilesCallback(output_dir),
                   *([] if torch.cuda.is_available() else [ReleaseMemoryCallback()]), *callbacks],
        epoch_lr_decay=cfg.epoch_lr_decay, steps_per_epoch=steps_per_epoch, trained_logits_only=cfg.trained_logits_only,
    )
    start_step = runs.checkpoint_step(resume) if resume is not None else 0
    info = {"train": stats.to_dict(), "chat_template_source": renderer.template_source,
            "render_options": renderer.options.to_dict(), "world_size": world,
            "gradient_accumulation_steps": accumulation, "steps_per_epoch": steps_per_epoch, "fingerprint": fingerprint,
            "precision": {"name": precision.name, "reason": precision.reason}, "speed_options": speed.to_dict()}
    if _is_main():
        runs.start_run(output_dir, cfg, info)
        if resume is not None:
            runs.truncate_loss_log(output_dir, start_step)
    order.restart(resume is not None, start_step * accumulation)
    outcome = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    trained_order = order.summary(trainer.state.global_step * accumulation)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
        # rows of the training file in the order this process trained them (see OrderRecorder)
        runs.finish_run(output_dir, cfg, {**info, "data_order": trained_order, "global_step": trainer.state.global_step})
    return TrainResult(output_dir=str(output_dir), metrics=dict(outcome.metrics), data=stats.to_dict(),
                       global_step=trainer.state.global_step, config=asdict(cfg),
                       data_order=trained_order)
