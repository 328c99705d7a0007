"""``cings vlm train``: LLaVA's two stages on a folder that ``cings vlm build`` wrote.

- ``pretrain``: only the projector learns (image-caption pairs); tower and language model frozen.
- ``finetune``: projector + language model (all weights, or LoRA on the LM with the projector
  trained fully), on image instruction data; the tower stays frozen, as in LLaVA-1.5.

The engine is transformers' ``Trainer`` with our labels (vision.data: the prompt, the image tokens
and the template are -100) and our collator, launched like text training (``accelerate launch -m
cings vlm train ...``). The output folder is a complete LLaVA folder again (a LoRA finetune is
merged), so the next stage, ``cings vlm generate`` and plain transformers load it as they load the
built one. A killed run resumes from its last checkpoint with ``--resume``; settings that would
change what is learnt are refused then.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError

__all__ = ["VlmTrainConfig", "train_vlm", "RUN_FILE", "LM_LAYERS"]

RUN_FILE = "cings_vlm_run.json"
LM_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Settings a resumed run may change: they do not change what is learnt.
_RESUMABLE = {"output_dir", "resume", "overwrite", "save_steps", "save_total_limit", "logging_steps", "progress"}


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class VlmTrainConfig:
    """One stage of VLM training. Defaults follow LLaVA-1.5 where it applies (lr 1e-3 pretrain, 2e-5 finetune)."""

    model: str = _f("", "a `cings vlm build` folder, or the output of an earlier stage")
    data: str = _f("", "LLaVA-format records (.json array or .jsonl): id, image, conversations")
    image_folder: str | None = _f(None, "folder the records' image paths are relative to (default: the data file's)")
    stage: str = _f("pretrain", "pretrain (projector only) | finetune (projector + language model)")
    output_dir: str = _f("runs/vlm", "where the trained LLaVA folder, checkpoints and logs go")
    lora: bool = _f(False, "finetune: LoRA on the language model (the projector trains fully) instead of all LM weights")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_top_layers: int | None = _f(None, "LoRA on the top N LM layers only (default: all)")
    learning_rate: float | None = _f(None, "peak learning rate (default: 1e-3 pretrain, 2e-5 finetune, 2e-4 LoRA)")
    num_epochs: float = _f(1.0, "passes over the data")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: num_epochs)")
    warmup_ratio: float = _f(0.03, "linear warm-up share of the steps; cosine decay after (LLaVA's schedule)")
    global_batch_size: int = _f(16, "examples per optimizer step, over all processes")
    micro_batch_size: int = _f(8, "examples per forward pass per process")
    max_length: int = _f(2048, "longest sequence (image tokens included); longer records are dropped and counted")
    seed: int = _f(0, "seed of the data order and of any fresh weights")
    precision: str = _f("auto", "auto | bf16 | fp32")
    save_steps: int = _f(50, "a checkpoint every N steps (for --resume)")
    save_total_limit: int = _f(1, "checkpoints kept")
    logging_steps: int = _f(5, "log the loss every N steps")
    resume: bool = _f(False, "continue the run in output_dir from its last checkpoint")
    overwrite: bool = _f(False, "replace the run in output_dir")

    def validate(self) -> None:
        if self.stage not in ("pretrain", "finetune"):
            raise ConfigError(f"--stage must be pretrain or finetune, not {self.stage!r}")
        if not self.model or not Path(self.model).is_dir():
            raise ConfigError(f"--model {self.model!r}: no such folder (a `cings vlm build` output)")
        if not self.data:
            raise ConfigError("--data: give the LLaVA-format records")
        if self.lora and self.stage != "finetune":
            raise ConfigError("--lora applies to --stage finetune (pretrain trains the projector only)")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size"
                              f" {self.micro_batch_size}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in output_dir, --overwrite replaces it: choose one")

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.stage == "pretrain" else (2e-4 if self.lora else 2e-5)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _open_output(cfg: VlmTrainConfig, meaning: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from, or None; refuses a folder it must not write into."""
    from .runs import last_complete_checkpoint

    folder = Path(cfg.output_dir)
    record = folder / RUN_FILE
    if cfg.resume:
        if not record.is_file():
            raise ConfigError(f"--resume: {folder} holds no `cings vlm train` run")
        saved = json.loads(record.read_text())
        differ = [f"{k}: run {saved['meaning'].get(k)!r}, now {v!r}" for k, v in meaning.items() if saved["meaning"].get(k) != v]
        if differ:
            raise ConfigError(f"--resume: the settings differ from the run in {folder} ({'; '.join(differ)});"
                              " resume with the run's settings or start afresh with --overwrite")
        checkpoint = last_complete_checkpoint(folder)
        if checkpoint is None:
            raise ConfigError(f"--resume: no complete checkpoint in {folder}; start afresh with --overwrite")
        return checkpoint
    if folder.exists() and any(folder.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"output_dir {folder} is not empty: pass --resume to continue a killed run or"
                              " --overwrite to replace it")
        if not record.is_file():
            raise ConfigError(f"--overwrite: {folder} is not a `cings vlm train` output; choose another output_dir")
        if _is_main():
            shutil.rmtree(folder)
    return None


def _freeze(model: Any, cfg: VlmTrainConfig) -> Any:
    """What each stage trains; the vision tower never does."""
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.stage == "pretrain":
        for p in model.model.multi_modal_projector.parameters():
            p.requires_grad_(True)
        return model
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        total = model.config.text_config.num_hidden_layers
        top = cfg.lora_top_layers or total
        if top > total:
            raise ConfigError(f"lora_top_layers {top}: the language model has {total} layers")
        layers = "|".join(str(i) for i in range(total - top, total))
        # LoRA in the language model only; the projector is trained fully beside it
        pattern = rf".*language_model\.layers\.({layers})\..*\.({'|'.join(LM_LAYERS)})"
        config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.05, target_modules=pattern,
                            modules_to_save=["multi_modal_projector"])
        return get_peft_model(model, config)
    for module in (model.model.multi_modal_projector, model.model.language_model, model.lm_head):
        for p in module.parameters():
            p.requires_grad_(True)
    return model


def train_vlm(cfg: VlmTrainConfig, *, callbacks: Sequence[Any] = (), progress: bool = True) -> dict[str, Any]:
    """Run one stage; returns where the model went, the steps, the losses' summary and the data order."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration, Trainer, TrainingArguments, set_seed

    from .loading import LoadError, resolve_precision
    from .trainer import LossLogCallback, OrderRecorder
    from .vision.build import IMAGE_TOKEN
    from .vision.data import ConversationRenderer, VlmCollator, VlmDataError, load_examples

    cfg.validate()
    world = _world()
    per_step = cfg.micro_batch_size * world
    if cfg.global_batch_size % per_step:
        raise ConfigError(f"global_batch_size {cfg.global_batch_size} is not a multiple of micro_batch_size x processes"
                          f" ({per_step})")
    accumulation = cfg.global_batch_size // per_step
    try:
        precision = resolve_precision(cfg.precision, allowed=("auto", "bf16", "fp32"))
    except LoadError as err:
        raise ConfigError(str(err)) from None
    log = (lambda msg: print(f"cings vlm train: {msg}", file=sys.stderr, flush=True)) if _is_main() else (lambda msg: None)
    log(f"precision {precision.describe()}")
    processor = AutoProcessor.from_pretrained(cfg.model)
    build = json.loads((Path(cfg.model) / "cings_vlm_build.json").read_text()) if (Path(cfg.model) / "cings_vlm_build.json").is_file() else {}
    model_config = json.loads((Path(cfg.model) / "config.json").read_text())
    n_image = int(model_config.get("image_seq_length") or build.get("image_tokens"))
    renderer = ConversationRenderer(processor.tokenizer, IMAGE_TOKEN, n_image, cfg.max_length)
    try:
        examples, stats = load_examples(cfg.data, cfg.image_folder, renderer)
    except VlmDataError as err:
        raise ConfigError(str(err)) from None
    for line in stats.lines():
        log(f"data: {line}")
    if not examples:
        raise ConfigError(f"{cfg.data}: no trainable records left ({dict(stats.dropped)})")
    meaning = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE}
    meaning["data_sha256"] = _sha(Path(cfg.data))
    meaning["world_size"] = world
    resume = _open_output(cfg, meaning)

    import datasets

    rows = [{"input_ids": e.input_ids, "labels": e.labels, "image": e.image or "", "row": i} for i, e in enumerate(examples)]
    train_set = datasets.Dataset.from_list(rows)
    output = Path(cfg.output_dir)
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=accumulation,
        learning_rate=cfg.lr(), num_train_epochs=cfg.num_epochs, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="cosine", weight_decay=0.0, optim="adamw_torch", seed=cfg.seed, data_seed=cfg.seed,
        bf16=precision.name == "bf16", use_cpu=not torch.cuda.is_available(),
        # a run shorter than the logging interval still logs its loss (once, at its last step)
        logging_steps=min(cfg.logging_steps, cfg.max_steps) if cfg.max_steps > 0 else cfg.logging_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, report_to="none",
        remove_unused_columns=False, disable_tqdm=not progress, ddp_find_unused_parameters=False,
    )
    set_seed(cfg.seed)
    # Trainer's own resume reads the checkpoint's safetensors by key, but LLaVA folders are written in
    # transformers' legacy key names (language_model.model.*), so nothing would match and training
    # would go on from the stage's starting weights; from_pretrained maps the names. A LoRA checkpoint
    # holds only the adapter, which Trainer loads itself onto the stage's base.
    source = str(resume) if resume is not None and not cfg.lora else cfg.model
    model = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    model.config.use_cache = False
    model = _freeze(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"stage {cfg.stage}: {trainable / 1e6:.2f} M trainable parameters"
        f" of {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M; {accumulation} accumulation steps x {per_step}")
    pad = processor.tokenizer.pad_token_id
    order = OrderRecorder(VlmCollator(processor.image_processor, pad), output / "data_order.jsonl" if _is_main() else None)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=order,
                      callbacks=[LossLogCallback(output / "loss_log.jsonl"), *callbacks])
    if _is_main():
        output.mkdir(parents=True, exist_ok=True)
        _write_record(output, {"meaning": meaning, "finished": False, "data": _stats(stats)})
        if resume is not None:
            _truncate_log(output / "loss_log.jsonl", _step(resume))
    steps_per_epoch = max(math.ceil(math.ceil(len(train_set) / per_step) / accumulation), 1)
    order.restart(resume is not None, (_step(resume) if resume else 0) * accumulation)
    outcome = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    trained_order = order.summary(trainer.state.global_step * accumulation)
    final = model.merge_and_unload() if cfg.lora else model
    if trainer.is_world_process_zero():
        if cfg.lora:
            final.save_pretrained(output)
        processor.save_pretrained(output)
    if not cfg.lora:
        trainer.save_model(str(output))  # gathers shards under DeepSpeed
    losses = [r["loss"] for r in _read_log(output / "loss_log.jsonl") if "loss" in r]
    result = {"output_dir": str(output), "stage": cfg.stage, "steps": trainer.state.global_step,
              "steps_per_epoch": steps_per_epoch, "train_loss": outcome.metrics.get("train_loss"),
              "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
              "data_order": trained_order, "data": _stats(stats), "trainable_parameters": trainable,
              "precision": precision.name}
    if _is_main():
        _write_record(output, {"meaning": meaning, "finished": True, **result})
        (output / "cings_vlm_build.json").write_text(json.dumps({**build, "trained": cfg.stage}, indent=2) + "\n")
    return result


def _stats(stats: Any) -> dict[str, Any]:
    return {"records": stats.records, "kept": stats.kept, "images": stats.images, "tokens": stats.tokens,
            "trained_tokens": stats.trained_tokens, "dropped": dict(stats.dropped)}


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _step(checkpoint: Path) -> int:
    from .runs import checkpoint_step

    return checkpoint_step(checkpoint)


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    tmp = folder / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(folder / RUN_FILE)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    rows = [r for r in _read_log(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def config_fields() -> list[str]:
    return [f.name for f in fields(VlmTrainConfig)]
