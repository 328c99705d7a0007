"""The small pieces cings adds to transformers' ``Trainer``: the paper's schedule, batches, a loss log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from transformers import Trainer, TrainerCallback

from .masking import IGNORE_INDEX

__all__ = ["CingsTrainer", "LossLogCallback", "OrderRecorder", "ReleaseMemoryCallback", "RunFilesCallback", "batch_fill",
           "release_memory"]


def batch_fill(batch: dict[str, Any]) -> tuple[int, int]:
    """``(non-pad tokens, token slots)`` of one collated batch: slots are rows x padded length, what the
    model computes; non-pad tokens are those its attention mask keeps. A packed batch has no attention
    mask (packing needs none, see collate.PackingCollator): every slot is a real token."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    slots = int(ids.numel())
    return (int(mask.sum()) if mask is not None else slots), slots


class CingsTrainer(Trainer):
    """``Trainer`` with the paper's schedule (the learning rate x ``epoch_lr_decay`` after every epoch),
    the loss over trained positions only, and the batch fill logged.

    Every logged training loss comes with ``nonpad_fraction``: the non-pad tokens fed over the token
    slots computed (:func:`batch_fill`), summed over every micro batch of the optimizer steps since the
    last log (one step with ``logging_steps: 1``) and over every process. Packed batches give 1.0.
    """

    def __init__(self, *args: Any, epoch_lr_decay: float = 1.0, steps_per_epoch: int = 1,
                 trained_logits_only: bool = False, **kwargs: Any):
        self.epoch_lr_decay = epoch_lr_decay
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.trained_logits_only = trained_logits_only
        self._fill = [0, 0]  # non-pad tokens, token slots since the last log
        super().__init__(*args, **kwargs)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any):
        """The micro batches of one optimizer step, as ``Trainer`` fetches them; their fill is counted."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        fills = [batch_fill(b) for b in batch_samples if "input_ids" in b]
        nonpad, slots = sum(f[0] for f in fills), sum(f[1] for f in fills)
        if self.args.world_size > 1:  # every process computes its own batches; the log is the whole step's
            import torch

            nonpad, slots = (int(x) for x in self.accelerator.gather(
                torch.tensor([[nonpad, slots]], device=device)).sum(0))
        self._fill[0] += nonpad
        self._fill[1] += slots
        return batch_samples, num_items_in_batch

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._fill[1]:  # a training log (evaluation logs eval_loss)
            logs["nonpad_fraction"] = round(self._fill[0] / self._fill[1], 6)
            self._fill = [0, 0]
        super().log(logs, start_time)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        """The output layer and the cross-entropy only at positions whose next token is trained.

        In CINGS most positions are masked (system prompt, question, passage), yet the model would
        compute vocabulary-sized logits, and their gradient, for every one of them. ``logits_to_keep``
        with the trained positions gives the same loss for a fraction of that work. The
        normalisation follows ``Trainer``'s own path for causal LMs exactly: a sum over trained
        tokens divided by ``num_items_in_batch`` (the whole accumulated batch) when it is given.

        With ``loss_weights`` (a context_loss_weight) the loss is ``Σ w_t·CE_t / Σ w_t``: both sums run
        over the trained targets (``labels[:, 1:]``) of every micro batch of the optimizer step, on every
        device (``_get_num_items_in_batch`` makes the denominator), or of this micro batch when no
        ``num_items_in_batch`` is given. Weights are 1 where the mode trains, so λ = 0 and λ = 1 are the
        context and no_mask losses: the same sums over the same tokens.
        """
        labels = inputs.get("labels")
        weights = inputs.get("loss_weights")
        pc = getattr(self.accelerator, "parallelism_config", None)
        sequence_parallel = pc is not None and getattr(pc, "sp_enabled", False)
        if weights is not None and (self.label_smoother is not None or self.compute_loss_func is not None
                                    or sequence_parallel or labels is None):
            raise ValueError("loss_weights (context_loss_weight) need labels, and do not combine with label smoothing,"
                             " a compute_loss_func or sequence parallelism")
        plain = weights is None and (not self.trained_logits_only or labels is None or return_outputs
                                     or self.label_smoother is not None or self.compute_loss_func is not None
                                     or sequence_parallel)
        # No cache, ever: with one (use_cache defaults to True in a model's config), transformers creates
        # an empty cache, stops detecting packed rows by their position ids, and the packed sequences
        # attend to each other (design-facts §1; tests/test_packing.py). Trainer turns the config's
        # use_cache off, but a model handed in or changed later must not undo that.
        inputs = {**inputs, "use_cache": False}
        if plain:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        import torch
        import torch.nn.functional as F

        target = labels[:, 1:]
        forward = {k: v for k, v in inputs.items() if k not in ("labels", "loss_weights", "use_cache")}
        if self.trained_logits_only and not return_outputs:
            keep = (target != IGNORE_INDEX).any(0).nonzero().flatten()
            outputs = model(**forward, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits.float()
        else:  # all logits (an evaluation step returns them); the last position predicts nothing
            keep = slice(None)
            outputs = model(**forward, use_cache=False)
            logits = outputs.logits[:, :-1].float()
        target = target[:, keep].to(logits.device)
        flat = (logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        if weights is None:
            loss = F.cross_entropy(*flat, ignore_index=IGNORE_INDEX, reduction="sum")
            local = (target != IGNORE_INDEX).sum().clamp(min=1)
        else:
            w = weights[:, 1:][:, keep].to(logits.device).reshape(-1)
            loss = (F.cross_entropy(*flat, ignore_index=IGNORE_INDEX, reduction="none") * w).sum()
            local = w.sum()  # above 0: the collator refuses a batch without a trained token
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(loss.device)
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:  # as Trainer.compute_loss does
                scale = self.accelerator.num_processes // self.get_tp_size()
                loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        else:
            loss = loss / local
        return (loss, outputs) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples: list, device: Any):
        """With ``loss_weights``, the normaliser of an optimizer step is the sum of the weights of its
        trained targets (``loss_weights[..., 1:]``) instead of their count, gathered across processes and
        divided as ``Trainer._get_num_items_in_batch`` does the count (which it remains without weights)."""
        if (not batch_samples or "loss_weights" not in batch_samples[0]
                or not (self.model_accepts_loss_kwargs or self.compute_loss_func is not None)):
            return super()._get_num_items_in_batch(batch_samples, device)
        total = sum(batch["loss_weights"][..., 1:].sum() for batch in batch_samples)
        if self.args.average_tokens_across_devices:
            if self.args.world_size > 1:
                total = self.accelerator.gather(total.to(device)).sum()
        elif self.args.n_gpu > 1:
            total = total / self.args.n_gpu
        total = total.to(device)
        if self.args.n_gpu > 1 and total.dim() == 0:
            total = total.unsqueeze(0).expand(self.args.n_gpu, -1)
        return total / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
        if self.lr_scheduler is None:
            from torch.optim.lr_scheduler import LambdaLR

            warmup, decay, per_epoch = self.args.warmup_steps, self.epoch_lr_decay, self.steps_per_epoch

            def factor(step: int) -> float:
                ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
                return ramp * decay ** (step // per_epoch)

            self.lr_scheduler = LambdaLR(optimizer if optimizer is not None else self.optimizer, factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler


class OrderRecorder:
    """Wraps a collator and keeps the dataset row of every example it batches, in order.

    Runs that are to be compared (one per training mode) must see the same examples in the same
    order; the rows actually collated, whatever sampler the Trainer and accelerate chose, are the
    evidence. Rows carry a ``row`` column for this; it never reaches the model. With ``path`` each
    batch's rows are appended as a line, so a resumed run continues the record of the killed one.
    """

    def __init__(self, collator: Any, path: str | Path | None = None):
        self.collator = collator
        self.path = Path(path) if path else None
        self.batches: list[list[int]] = []

    def restart(self, resume: bool, batches_done: int) -> None:
        """Start the record afresh, or keep the first ``batches_done`` batches of a resumed run."""
        self.batches = []
        if self.path is None:
            return
        if resume and self.path.is_file():
            lines = self.path.read_text().splitlines()[:batches_done]
            self.batches = [json.loads(line) for line in lines]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(b) + "\n" for b in self.batches))

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows = [int(f["row"]) for f in features if "row" in f]
        if rows:  # evaluation batches have no row column
            self.batches.append(rows)
            if self.path is not None:
                with open(self.path, "a") as handle:
                    handle.write(json.dumps(rows) + "\n")
        return self.collator([{k: v for k, v in f.items() if k not in ("row", "chars")} for f in features])

    def summary(self, batches: int) -> dict[str, Any]:
        """The first ``batches`` micro batches (accelerate may collate one ahead of training)."""
        import hashlib

        kept = self.batches[:batches]
        rows = [r for b in kept for r in b]
        digest = hashlib.sha256(json.dumps(kept).encode()).hexdigest()
        return {"micro_batches": len(kept), "examples": len(rows), "sha256": digest, "first_rows": rows[:16]}


class LossLogCallback(TrainerCallback):
    """Every logged value, one JSON object a line (``loss_log.jsonl``), from the main process only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.started = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"step": state.global_step, "epoch": state.epoch, "elapsed_s": round(time.time() - self.started, 2), **logs}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


class RunFilesCallback(TrainerCallback):
    """Lists what the run has written at every checkpoint, so ``--overwrite`` of a killed run removes it all."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from .runs import record_written

            record_written(self.folder)


class ReleaseMemoryCallback(TrainerCallback):
    """Hands freed heap memory back to the OS every ``every`` optimizer steps (CPU training, glibc).

    Every batch has its own sequence length, so activations come in ever new sizes; glibc keeps the
    freed blocks, fragmented, and a process's resident memory climbs far above its use (measured
    in `cings demo`: 8.4 GiB after 100 CINGS steps of SmolLM2 with micro batch 8, against a
    5.8 GiB peak of live use). ``malloc_trim`` itself is fast, but every page it returns must be
    faulted in and zeroed again by the next step: trimming after every step made the demo's
    training 25% slower, hence every 10 steps.
    """

    def __init__(self, every: int = 10) -> None:
        self.every = max(every, 1)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            release_memory()


def release_memory() -> None:
    """``malloc_trim(0)``: freed heap memory back to the OS (glibc; a no-op elsewhere)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        _MALLOC_TRIM = getattr(ctypes.CDLL(name), "malloc_trim", False) if name else False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None
