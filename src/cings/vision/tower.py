"""Train the tiny CLIP vision tower of the CPU POPE study on :mod:`cings.vision.scenes`.

No pretrained tower is reachable offline, so one is trained here, in a few minutes on two CPU cores:
a 4-layer, 128-wide ``CLIPVisionModel`` at 64 px with 16-px patches (16 patch tokens + CLS), whose
task is multi-label presence of the eight object kinds (BCE through a linear head that is thrown
away afterwards).

The head reads what LLaVA will read: the mean of the *penultimate* layer's patch tokens
(``hidden_states[-2][:, 1:]``), since a LLaVA built on this tower uses ``vision_feature_layer=-2``
and the ``default`` strategy (CLS dropped). The features the VLM's projector receives are therefore
exactly the trained ones, and the last encoder layer, which LLaVA never reads, gets no gradient
that matters.

The pixels are made by the very ``CLIPImageProcessor`` that is saved next to the weights (computed
once, up front), so training and every later use of the folder preprocess identically by
construction. The folder is a plain ``save_pretrained`` one, which ``cings vlm build`` loads.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .scenes import KINDS, draw, make_scenes, multi_hot

__all__ = ["train_tower", "tower_config", "make_processor", "pixels", "REPORT_FILE", "TEST_SEED_OFFSET"]

REPORT_FILE = "tower_report.json"
TEST_SEED_OFFSET = 10_007  # test scenes come from seed + this: a different stream, never the training one
# per-channel statistics of the scene images (light background, eight saturated colours), rounded;
# fixed rather than measured per run so every tower of the study normalises alike
IMAGE_MEAN = [0.87, 0.85, 0.84]
IMAGE_STD = [0.22, 0.23, 0.25]


def tower_config(image_size: int = 64, patch_size: int = 16, hidden_size: int = 128, layers: int = 4) -> Any:
    from transformers import CLIPVisionConfig

    heads = max(1, hidden_size // 32)
    return CLIPVisionConfig(image_size=image_size, patch_size=patch_size, num_hidden_layers=layers, hidden_size=hidden_size,
                            intermediate_size=4 * hidden_size, num_attention_heads=heads)


def make_processor(image_size: int = 64) -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                              image_mean=IMAGE_MEAN, image_std=IMAGE_STD)


def pixels(processor: Any, images: list, chunk: int = 512) -> Any:
    """``pixel_values`` (float32, N×3×H×W) of ``images`` through ``processor``."""
    import torch

    parts = [processor(images=images[i:i + chunk], return_tensors="pt")["pixel_values"] for i in range(0, len(images), chunk)]
    return torch.cat(parts).float()


def _features(model: Any, pixel_values: Any) -> Any:
    out = model(pixel_values=pixel_values, output_hidden_states=True)
    return out.hidden_states[-2][:, 1:].mean(dim=1)


def _evaluate(model: Any, head: Any, x: Any, y: Any, batch: int = 256) -> dict[str, Any]:
    import torch

    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            preds.append((head(_features(model, x[i:i + batch])) > 0).float())
    model.train()
    pred = torch.cat(preds)
    correct = pred == y
    return {"label": correct.float().mean().item(), "exact": correct.all(dim=1).float().mean().item(),
            "per_kind": {k: correct[:, j].float().mean().item() for j, k in enumerate(KINDS)}}


def train_tower(output_dir: str | Path, *, n_train: int = 2000, n_test: int = 400, steps: int = 600, batch_size: int = 64,
                lr: float = 2e-3, seed: int = 0, image_size: int = 64, patch_size: int = 16, hidden_size: int = 128,
                layers: int = 4, overwrite: bool = False, log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Train, evaluate on held-out scenes, save model + processor + ``tower_report.json``; return the report.

    ``overwrite=True`` replaces a folder written earlier by this function (one with a
    ``tower_report.json``); any other non-empty folder is refused.
    """
    import torch
    from torch import nn
    from transformers import CLIPVisionModel

    log = log or (lambda msg: None)
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        if not overwrite:
            raise ValueError(f"{output_dir}: exists and is not empty; choose another folder or pass overwrite=True")
        if not (output_dir / REPORT_FILE).is_file():
            raise ValueError(f"{output_dir}: overwrite=True only replaces an earlier tower folder (with {REPORT_FILE}),"
                             " and this one is not")
        shutil.rmtree(output_dir)

    start = time.perf_counter()
    torch.manual_seed(seed)
    processor = make_processor(image_size)
    train_scenes = make_scenes(n_train, seed)
    test_scenes = make_scenes(n_test, seed + TEST_SEED_OFFSET)
    x_train = pixels(processor, [draw(s, image_size) for s in train_scenes])
    x_test = pixels(processor, [draw(s, image_size) for s in test_scenes])
    y_train = torch.tensor([multi_hot(s) for s in train_scenes], dtype=torch.float32)
    y_test = torch.tensor([multi_hot(s) for s in test_scenes], dtype=torch.float32)
    log(f"tower: {n_train} train / {n_test} test scenes drawn and preprocessed in {time.perf_counter() - start:.1f}s")

    config = tower_config(image_size, patch_size, hidden_size, layers)
    model = CLIPVisionModel(config).float()
    head = nn.Linear(hidden_size, len(KINDS))
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(1, steps))))
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    every = max(1, steps // 10)
    model.train()
    perm = torch.randperm(n_train, generator=gen)
    pos = 0
    loss_sum, loss_n = 0.0, 0
    for step in range(1, steps + 1):
        if pos + batch_size > n_train:
            perm, pos = torch.randperm(n_train, generator=gen), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        loss = loss_fn(head(_features(model, x_train[idx])), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        if step % every == 0 or step == steps:
            log(f"tower: step {step}/{steps} loss {loss_sum / loss_n:.4f} ({time.perf_counter() - start:.0f}s)")
            loss_sum, loss_n = 0.0, 0

    result = _evaluate(model, head, x_test, y_test)
    seconds = time.perf_counter() - start
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    report = {
        "n_train": n_train, "n_test": n_test, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "test_seed": seed + TEST_SEED_OFFSET, "seconds": round(seconds, 2),
        "heldout_label_accuracy": result["label"], "heldout_exact_accuracy": result["exact"],
        "per_kind": result["per_kind"],
        "config": {"image_size": image_size, "patch_size": patch_size, "hidden_size": hidden_size, "num_hidden_layers": layers,
                   "intermediate_size": config.intermediate_size, "num_attention_heads": config.num_attention_heads,
                   "image_tokens": (image_size // patch_size) ** 2, "feature": "mean of hidden_states[-2][:, 1:]"},
        "torch_threads": torch.get_num_threads(), "torch_version": torch.__version__,
    }
    (output_dir / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    log(f"tower: held-out label accuracy {result['label']:.4f}, exact {result['exact']:.4f}, {seconds:.0f}s -> {output_dir}")
    return report
