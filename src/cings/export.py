"""``cings export``: a training run folder -> a plain Hugging Face checkpoint that loads anywhere.

A LoRA run is merged into its base (a GGUF base is dequantized first, by the loader); a full run
is written as it is. The folder gets safetensors shards, the tokenizer with a pad token, the chat
template, a generation config that stops at the template's end of turn, and the run's recipe.
Verification (on by default) reloads the export with ``AutoModelForCausalLM.from_pretrained`` and
compares next-token logits on a few prompts with the model it came from.

Not yet: sharded DeepSpeed ZeRO-3 / FSDP checkpoints (gathered) and ``--for llava`` (issue 14).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError

__all__ = ["export_run", "ExportError", "TOLERANCE"]

# Largest next-token logit difference accepted by verification, per dtype of the export. fp32
# weights are written bit for bit, so only kernel order differs; bf16 rounds every weight once.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.5}
VERIFY_PROMPTS = ("What is the capital of France?", "Who wrote the novel Moby-Dick?",
                  "## Context The Denver Broncos defeated the Carolina Panthers 24-10. ## Answer")


class ExportError(ConfigError):
    pass


@dataclass
class _Source:
    model: Any
    tokenizer: Any
    options: Any
    kind: str  # lora-merged | full


def _load(run_dir: Path) -> _Source:
    from . import runs

    run = runs.load_run(run_dir)
    if run is None:
        raise ExportError(f"{run_dir}: not a cings run folder (one that cings train wrote)")
    if not run.weights:
        hint = f" (its last checkpoint is {run.last_complete_checkpoint.name})" if run.last_complete_checkpoint else ""
        raise ExportError(f"{run_dir}: the run has no final weights: it has not finished{hint}")
    if run.adapter:
        model, tok, options, _ = runs.load_for_generation(None, adapter=str(run_dir), merge=True)
        return _Source(model, tok, options, "lora-merged")
    model, tok, options, _ = runs.load_for_generation(str(run_dir))
    return _Source(model, tok, options, "full")


def _with_pad_token(tokenizer: Any) -> str:
    """Give the tokenizer a pad token if it has none; returns how it was chosen."""
    if tokenizer.pad_token is not None:
        return f"kept: {tokenizer.pad_token!r}"
    for name in ("unk_token", "eos_token"):
        token = getattr(tokenizer, name)
        if token is not None:
            tokenizer.pad_token = token
            return f"set to the {name.removesuffix('_token')} token {token!r} (padding is masked, never trained)"
    raise ExportError("the tokenizer has no pad, unk or eos token to pad with")


def _next_token_logits(model: Any, tokenizer: Any, prompts: tuple[str, ...]) -> list[Any]:
    import torch

    out = []
    with torch.no_grad():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            # use_cache=False: no cache object at all, so nothing can leak between prompts
            out.append(model(input_ids=ids, use_cache=False).logits[0, -1].float())
    return out


def export_run(run_dir: str | Path, output: str | Path, *, dtype: str = "fp32", verify: bool = True,
               overwrite: bool = False, log: Any = None) -> dict[str, Any]:
    """Write ``run_dir`` as a plain checkpoint in ``output``; returns what was done (and the check)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from . import runs
    from .prompts import PromptBuilder

    log = log or (lambda msg: None)
    run_dir, output = Path(run_dir), Path(output)
    if dtype not in TOLERANCE:
        raise ExportError(f"--dtype must be one of {', '.join(TOLERANCE)}, not {dtype!r}")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ExportError(f"{output}: exists and is not empty; choose another --output or pass --overwrite")
        if not (output / "cings_export.json").is_file():
            raise ExportError(f"{output}: --overwrite only replaces an earlier cings export, and this folder is not one")
        shutil.rmtree(output)
    source = _load(run_dir)
    log(f"loaded {run_dir} ({source.kind})")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    model = source.model.to(torch_dtype)
    tok = source.tokenizer
    pad = _with_pad_token(tok)
    stop = PromptBuilder(tok, source.options).stop_token_ids()
    model.generation_config = GenerationConfig(eos_token_id=stop, pad_token_id=tok.pad_token_id,
                                               bos_token_id=getattr(tok, "bos_token_id", None), do_sample=False)
    model.config.pad_token_id = tok.pad_token_id
    tmp = output.with_name(f".{output.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="2GB")
    tok.save_pretrained(tmp)
    runs.write_export_record(run_dir, tmp, {"kind": source.kind, "dtype": dtype, "pad_token": pad, "stop_token_ids": stop})
    tmp.rename(output)  # a killed export never leaves a folder that looks whole
    report: dict[str, Any] = {"output": str(output), "kind": source.kind, "dtype": dtype, "pad_token": pad}
    if verify:
        reloaded = AutoModelForCausalLM.from_pretrained(output, dtype=torch_dtype).eval()
        before = _next_token_logits(model.eval(), tok, VERIFY_PROMPTS)
        after = _next_token_logits(reloaded, tok, VERIFY_PROMPTS)
        diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
        report["verify"] = {"prompts": len(VERIFY_PROMPTS), "max_abs_logit_diff": diff, "tolerance": TOLERANCE[dtype]}
        if not diff <= TOLERANCE[dtype]:
            raise ExportError(f"{output}: the reloaded export's next-token logits differ by {diff:.3g} from the run's"
                              f" (tolerance {TOLERANCE[dtype]} for {dtype}); the export is not trustworthy")
        log(f"verified: reloaded, next-token logits within {diff:.2g} of the run's on {len(VERIFY_PROMPTS)} prompts")
    return report
