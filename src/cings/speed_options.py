"""The recipe's speed options resolved against this machine: what ``from_pretrained`` and the
``TrainingArguments`` get, and one line for every option that cannot be had here.

Each option below changes how fast a step runs, not what it computes (equal to rounding), so an
option this machine cannot provide **falls back** to the portable choice and says so in one line
(what was asked, why it is unavailable here, what is used instead), rather than refusing:

- a recipe is written once and run on a laptop, a CI runner and a GPU node; a user who asked for
  flash-attention and lands on a machine without it wants the same training to go on, and to be told;
- the fallback trains the same model: the attention kernels compute the same softmax(QK^T)V, Liger's
  kernels and torch.compile the same layers, fused AdamW the same update (bit-identical on CPU here);
- what was used, not what was asked, goes into the run's recorded recipe, and both go into its data
  record (``speed_options``, :mod:`cings.runs`): a run folder never claims a kernel it did not use.

``strict_speed_options: true`` refuses instead, naming every unavailable option: for a job on a
cluster where running 3x slower for days costs more than a failed start.

Refused always, because they are not fallbacks: an unknown value (a typo: ``TrainConfig.validate``),
and precision, which changes the math and has its own single rule
(:func:`cings.loading.resolve_precision`: ``auto`` picks bf16 only where it is fast; an explicit
bf16 on a CPU without AVX-512 BF16/AMX is honoured and warned about, as emulated and slow; fp16
without a GPU is refused).

What each option needs (transformers 5.23, torch 2.13), and what runs where it is missing:

- ``attn_implementation: flash_attention_2`` (``_3``, ``_4``): a CUDA GPU of compute capability >= 8.0
  (FA4: 9.0), the ``flash-attn`` (``flash-attn-3``, ``flash-attn-4``) package importing and accepted
  by transformers, precision bf16 or fp16 (the kernels have no fp32) -> sdpa.
- ``attn_implementation: flex_attention``: a CUDA GPU with Triton; torch 2.13's flex_attention has no
  backward on CPU ("FlexAttention does not support backward on CPU") -> sdpa.
- ``liger_kernel``: a CUDA GPU, ``liger-kernel`` importing (Triton kernels), a model type it patches -> off.
- ``torch_compile``: Triton on a GPU, a C++ compiler on a CPU (``$CXX`` or g++: inductor writes C++)
  -> off. It works on CPU here, but compiles again for every new batch shape (docs/scaling.md).
- ``fused_optimizer``: torch's fused AdamW, which has CPU and CUDA kernels (checked on torch 2.13 CPU):
  always used.
- ``gradient_checkpointing``: always used.

Packing stays exact whichever attention runs: transformers turns restarting ``position_ids`` (and no
attention mask) into per-sequence boundaries for sdpa, eager and flex (its mask functions) and for
flash-attention (varlen boundaries); tests/test_packing.py proves it for sdpa and eager on CPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterable

__all__ = ["ATTENTION_CHOICES", "Choice", "Machine", "SpeedPlan", "resolve_speed_options", "recipe_model_type"]

FLASH_ATTENTION = {"flash_attention_2": ("flash-attn", (8, 0)), "flash_attention_3": ("flash-attn-3", (8, 0)),
                   "flash_attention_4": ("flash-attn-4", (9, 0))}
ATTENTION_CHOICES = ("sdpa", "eager", *FLASH_ATTENTION, "flex_attention")
PORTABLE_ATTENTION = "sdpa"

# package -> (module that must import, transformers' own availability check of it)
PACKAGES = {
    "flash-attn": ("flash_attn", "is_flash_attn_2_available"),
    "flash-attn-3": ("flash_attn_interface", "is_flash_attn_3_available"),
    "flash-attn-4": ("flash_attn.cute", "is_flash_attn_4_available"),
    "liger-kernel": ("liger_kernel.transformers", "is_liger_kernel_available"),
    "triton": ("triton", None),
}


@dataclass(frozen=True)
class Machine:
    """What the options depend on. :meth:`detect` reads this machine; tests build others."""

    cuda: bool = False
    gpu: str | None = None
    capability: tuple[int, int] | None = None
    torch_version: str = ""
    cpp_compiler: str | None = None
    # package -> why it cannot be used here; a package absent from the mapping imports and is accepted
    unusable: dict[str, str] = field(default_factory=dict)
    liger_model_types: frozenset[str] | None = None  # the model types Liger patches, where it imports

    @classmethod
    def detect(cls, packages: Iterable[str] = ()) -> "Machine":
        """This machine; ``packages`` (of :data:`PACKAGES`) are imported only when named and a GPU is there,
        since importing Triton-based packages takes seconds."""
        import torch

        cuda = torch.cuda.is_available()
        compiler = shutil.which(os.environ.get("CXX") or "g++") or shutil.which("c++")
        unusable: dict[str, str] = {}
        liger_types = None
        for package in dict.fromkeys(packages):
            why = _import_problem(package) if cuda else "not imported: no GPU"
            if why:
                unusable[package] = why
            elif package == "liger-kernel":
                liger_types = _liger_model_types()
        return cls(cuda=cuda, gpu=torch.cuda.get_device_name() if cuda else None,
                   capability=tuple(torch.cuda.get_device_capability()) if cuda else None,  # type: ignore[arg-type]
                   torch_version=torch.__version__, cpp_compiler=compiler, unusable=unusable,
                   liger_model_types=liger_types)

    def no_gpu(self) -> str:
        return "no CUDA GPU" + (f" (torch {self.torch_version} sees none)" if self.torch_version else "")


def _import_problem(package: str) -> str | None:
    module, check = PACKAGES[package]
    try:
        importlib.import_module(module)
    except Exception as err:  # an ABI mismatch raises ImportError, OSError or RuntimeError alike
        text = str(err).strip().splitlines()
        return f"{package} does not import ({type(err).__name__}: {text[0] if text else ''})"
    if check:
        from transformers.utils import import_utils

        if not getattr(import_utils, check)():
            return f"transformers does not accept this {package} (its version or distribution name)"
    return None


def _liger_model_types() -> frozenset[str] | None:
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:
        return None
    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


@dataclass(frozen=True)
class Choice:
    """One option: what the recipe asked, what is used, and why they differ."""

    option: str
    asked: Any
    used: Any
    why: str | None = None  # set exactly when used != asked
    instead: str = ""  # what the fallback means for the run

    def line(self) -> str:
        """The one line said where an option falls back."""
        return (f"{self.option} {_shown(self.asked)} is unavailable here ({self.why}); using {_shown(self.used)} instead"
                + (f" ({self.instead})" if self.instead else ""))


def _shown(value: Any) -> str:
    """As a recipe writes it: true/false, not Python's True/False."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class SpeedPlan:
    """The resolved options of one run."""

    choices: tuple[Choice, ...]

    def used(self, option: str) -> Any:
        return next(c.used for c in self.choices if c.option == option)

    def fallbacks(self) -> list[Choice]:
        return [c for c in self.choices if c.why]

    def load_kwargs(self) -> dict[str, Any]:
        """For ``from_pretrained`` / ``from_config``."""
        return {"attn_implementation": self.used("attn_implementation")}

    def training_arguments(self) -> dict[str, Any]:
        """For ``TrainingArguments``."""
        return {"optim": "adamw_torch_fused" if self.used("fused_optimizer") else "adamw_torch",
                "torch_compile": bool(self.used("torch_compile")),
                "use_liger_kernel": bool(self.used("liger_kernel")),
                "activation_checkpointing": bool(self.used("gradient_checkpointing"))}

    def apply(self, cfg: Any) -> Any:
        """The recipe with the options that ran (what the run folder records as its recipe)."""
        return dataclasses.replace(cfg, **{c.option: c.used for c in self.choices})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """For the run's data record: every option's asked and used value, and the reason where they differ."""
        return {c.option: {"asked": c.asked, "used": c.used, **({"why": c.why} if c.why else {})} for c in self.choices}


def recipe_model_type(cfg: Any) -> str | None:
    """The ``model_type`` the recipe will load, where it can be read without loading (None: unknown)."""
    import json
    from pathlib import Path

    if cfg.model_config:
        return str(cfg.model_config.get("model_type", "llama"))
    if not cfg.model:
        return None
    if str(cfg.model).lower() == "smollm2":
        return "llama"
    config = Path(str(cfg.model)) / "config.json"
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("model_type")) if config.is_file() else None
    except (OSError, ValueError):
        return None


def needed_packages(cfg: Any) -> list[str]:
    """The optional packages this recipe's options would use (imported by :meth:`Machine.detect` only if a GPU is there)."""
    packages = []
    if cfg.attn_implementation in FLASH_ATTENTION:
        packages.append(FLASH_ATTENTION[cfg.attn_implementation][0])
    if cfg.attn_implementation == "flex_attention" or cfg.torch_compile:
        packages.append("triton")
    if cfg.liger_kernel:
        packages.append("liger-kernel")
    return packages


def _attention(asked: str | None, precision: str, machine: Machine) -> Choice:
    asked = asked or PORTABLE_ATTENTION
    why = None
    if asked in FLASH_ATTENTION:
        package, capability = FLASH_ATTENTION[asked]
        if not machine.cuda:
            why = machine.no_gpu()
        elif machine.capability is not None and tuple(machine.capability) < capability:
            why = (f"the GPU ({machine.gpu}) has compute capability {machine.capability[0]}.{machine.capability[1]};"
                   f" {asked} needs {capability[0]}.{capability[1]}")
        elif package in machine.unusable:
            why = machine.unusable[package]
        elif precision not in ("bf16", "fp16"):
            why = f"its kernels compute in bf16/fp16 only and the precision is {precision}"
    elif asked == "flex_attention":
        if not machine.cuda:
            why = f"torch's flex_attention has no backward pass on CPU; {machine.no_gpu()}"
        elif "triton" in machine.unusable:
            why = f"it compiles its kernels with Triton: {machine.unusable['triton']}"
    if why:
        return Choice("attn_implementation", asked, PORTABLE_ATTENTION, why, "the same attention, PyTorch's kernel")
    return Choice("attn_implementation", asked, asked)


def _liger(asked: bool, model_type: str | None, machine: Machine) -> Choice:
    why = None
    if asked:
        if not machine.cuda:
            why = f"its kernels are Triton kernels, GPU only; {machine.no_gpu()}"
        elif "liger-kernel" in machine.unusable:
            why = machine.unusable["liger-kernel"]
        elif model_type and machine.liger_model_types is not None and model_type not in machine.liger_model_types:
            why = f"Liger has no kernels for model type {model_type!r}"
    if why:
        return Choice("liger_kernel", asked, False, why, "transformers' own layers")
    return Choice("liger_kernel", asked, asked)


def _compile(asked: bool, machine: Machine) -> Choice:
    why = None
    if asked:
        if machine.cuda and "triton" in machine.unusable:
            why = f"inductor writes Triton kernels for a GPU: {machine.unusable['triton']}"
        elif not machine.cuda and not machine.cpp_compiler:
            why = "inductor compiles C++ for a CPU and no compiler was found ($CXX, g++ or c++)"
    if why:
        return Choice("torch_compile", asked, False, why, "eager PyTorch")
    return Choice("torch_compile", asked, asked)


def resolve_speed_options(cfg: Any, precision: str, machine: Machine | None = None, *,
                          model_type: str | None = None) -> SpeedPlan:
    """Every speed option of ``cfg`` (a TrainConfig) as it can run here, in ``precision`` (fp32|bf16|fp16,
    resolved). With ``cfg.strict_speed_options`` an unavailable option is a ConfigError naming them all."""
    from .config import ConfigError

    machine = machine or Machine.detect(needed_packages(cfg))
    choices = (_attention(cfg.attn_implementation, precision, machine),
               _liger(cfg.liger_kernel, model_type if model_type is not None else recipe_model_type(cfg), machine),
               _compile(cfg.torch_compile, machine),
               # fused AdamW has kernels for CPU and CUDA tensors in every torch cings supports
               Choice("fused_optimizer", cfg.fused_optimizer, cfg.fused_optimizer),
               Choice("gradient_checkpointing", cfg.gradient_checkpointing, cfg.gradient_checkpointing))
    plan = SpeedPlan(choices)
    if cfg.strict_speed_options and plan.fallbacks():
        raise ConfigError("strict_speed_options: " + "; ".join(c.line() for c in plan.fallbacks())
                          + ". Set strict_speed_options false to run with the fallbacks")
    return plan
