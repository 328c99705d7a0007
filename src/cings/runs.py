"""The run folder of ``cings train``: what is written there, how it is read back, and what may continue it.

Beside the Hugging Face model (or LoRA adapter), ``checkpoint-N`` folders, ``loss_log.jsonl`` and
``data_order.jsonl``, a run writes three files, and only this module reads or writes them:

- ``cings_config.yaml``: the resolved recipe;
- ``cings_data.json``: the data fingerprint (file hashes, the tokenizer's vocabulary and chat
  template hashes, render options), the counts kept and dropped, batches, the order trained, and
  whether the run finished;
- ``cings_files.json``: the names the run wrote in the folder, so ``--overwrite`` removes exactly those.

Recipe and fingerprint are written before the first step, so a killed run can still be checked
against the recipe that resumes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, dump_config, load_config
from .jsonl import file_sha256

__all__ = ["Run", "load_run", "checkpoints", "last_complete_checkpoint", "checkpoint_step", "data_fingerprint",
           "tokenizer_fingerprint", "tokenized_manifest", "check_tokenized", "check_resume", "open_output", "start_run", "record_written",
           "finish_run", "remove_run", "truncate_loss_log", "RESUMABLE", "SPEED_ONLY", "CONFIG_FILE", "DATA_FILE", "FILES_FILE",
           "LOSS_LOG", "DATA_ORDER", "load_for_generation", "write_export_record", "EXPORT_RECIPE", "EXPORT_FILE",
           "has_weights", "shard_kind", "checkpoint_complete", "run_and_weights", "load_run_base", "weights_by_step", "inference_device"]

EXPORT_RECIPE = "cings_recipe.yaml"  # the run's recipe, beside an export (not a run folder: no cings_config.yaml)
EXPORT_FILE = "cings_export.json"

CONFIG_FILE = "cings_config.yaml"
DATA_FILE = "cings_data.json"
FILES_FILE = "cings_files.json"
LOSS_LOG = "loss_log.jsonl"
DATA_ORDER = "data_order.jsonl"

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# What a run writes even when it is killed before it can list it (and what runs made before
# cings_files.json existed wrote): checkpoints, logs, cings files, and the files of a saved HF model.
_RUN_NAME = re.compile(r"checkpoint-\d+|cings_[\w.-]+\.(yaml|json)|loss_log\.jsonl|data_order\.jsonl|training_args\.bin"
                       r"|(model|adapter_model|pytorch_model)([-.][\w.-]+)?\.(safetensors|bin|json)|(generation_)?config\.json"
                       r"|adapter_config\.json|README\.md|tokenizer(_config)?\.json|tokenizer\.model|special_tokens_map\.json"
                       r"|added_tokens\.json|vocab\.json|merges\.txt|chat_template\.(jinja|json)")
# Weights inside a checkpoint: HF files (plain or sharded), a LoRA adapter, FSDP shards, a DeepSpeed folder.
_WEIGHTS = ("model", "adapter_model", "pytorch_model", "global_step")

# Recipe settings a --resume may change, each because the steps taken and the steps to come stay the
# same computation. Everything else (mode, data, model, tokenizer, lora, learning rate, batch sizes,
# seed, precision, packing, ...) changes what the checkpoint's optimizer state and data order mean.
RESUMABLE = {
    "max_steps": "the schedule depends on the step and the epoch, never on the total, so more steps extend the same run",
    "num_epochs": "as max_steps: the sampler's order of each epoch is seeded by the epoch, not by their number",
    "logging_steps": "what is logged, not what is trained",
    "save_strategy": "when checkpoints are written",
    "save_steps": "when checkpoints are written",
    "save_total_limit": "how many checkpoints are kept",
    "report_to": "extra loggers",
    "resume": "how this command treats the folder",
    "overwrite": "how this command treats the folder",
    "output_dir": "the folder itself, perhaps spelled another way",
    "num_proc": "tokenization processes produce the same ids",
    "dataloader_num_workers": "loading processes; the sampler's order is the same",
    "eval_data": "an evaluation loss runs in eval mode and touches neither the weights nor the training order",
    "gradient_checkpointing": "recomputes the same activations",
    "trained_logits_only": "the same loss and gradient (equal to rounding, tests/test_train.py)",
    "attn_implementation": "the same attention, another kernel (equal to rounding)",
    "liger_kernel": "the same layers and loss in Triton kernels (equal to rounding)",
    "torch_compile": "the same model, compiled",
    "fused_optimizer": "the same AdamW update and optimizer state, in one kernel",
    "strict_speed_options": "whether an unavailable speed option stops the run",
}

# The settings that change how fast a run goes, never what it learns: a stage keyed by a recipe
# (cings demo) leaves them out, so a cings that gains such an option does not retrain old runs.
SPEED_ONLY = ("gradient_checkpointing", "trained_logits_only", "attn_implementation", "liger_kernel", "torch_compile",
              "fused_optimizer", "strict_speed_options")


@dataclass
class Run:
    """A training run folder, as ``load_run`` reads it."""

    folder: Path
    config: TrainConfig | None  # None only for a folder left by a cings older than cings_config.yaml-at-start
    data: dict[str, Any]  # cings_data.json
    checkpoints: list[Path]
    last_complete_checkpoint: Path | None
    finished: bool
    model: str | None  # the base model as the recipe gave it (folder, hub id, .gguf, 'smollm2')
    gguf_file: str | None
    model_config: dict | None  # a fresh model built from this config (tests, smoke runs)
    adapter: bool  # the folder holds a LoRA adapter (adapter_config.json) on top of ``model``
    weights: bool  # the folder holds final weights that from_pretrained reads (a model or an adapter)
    # the folder holds sharded weights instead (or as well): "zero" (DeepSpeed ZeRO: ``latest`` and
    # ``global_stepN/``, what save_model writes under ZeRO-3 without 16-bit gathering), "fsdp"
    # (``pytorch_model_fsdp_0/``, torch distributed-checkpoint shards), or None
    shards: str | None = None

    @property
    def render_options(self) -> dict[str, Any] | None:
        return self.data.get("render_options")

    @property
    def dropped(self) -> dict[str, int]:
        return dict(self.data.get("train", {}).get("dropped", {}))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a kill while writing leaves the previous version."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_json(path: Path, obj: Any) -> None:
    _write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def checkpoints(folder: str | Path) -> list[Path]:
    """``checkpoint-N`` folders, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def has_weights(folder: str | Path) -> bool:
    """``folder`` holds weights that ``from_pretrained`` (or peft) reads: a model, plain or sharded, or an adapter."""
    folder = Path(folder)
    return any((folder / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                                 "pytorch_model.bin.index.json", "adapter_model.safetensors",
                                                 "adapter_model.bin"))


def shard_kind(folder: str | Path) -> str | None:
    """The kind of training-time shards in ``folder``: "zero" (a DeepSpeed checkpoint: ``latest`` naming its
    ``global_stepN/`` folder), "fsdp" (``pytorch_model_fsdp_0/``, a distributed checkpoint), or None."""
    folder = Path(folder)
    latest = folder / "latest"
    if latest.is_file():
        tag = latest.read_text(encoding="utf-8").strip()
        if tag and (folder / tag).is_dir():
            return "zero"
    if (folder / "pytorch_model_fsdp_0" / ".metadata").is_file():
        return "fsdp"
    return None


def checkpoint_complete(checkpoint: str | Path) -> bool:
    """The Trainer finished writing ``checkpoint`` (its state and some weights are there)."""
    return Path(checkpoint).is_dir() and _complete(Path(checkpoint))


def _complete(checkpoint: Path) -> bool:
    # The Trainer writes trainer_state.json last; a kill while saving leaves a folder without it (or
    # without weights), and resuming from it would fail or load half a state.
    return (checkpoint / "trainer_state.json").is_file() and any(p.name.startswith(_WEIGHTS) for p in checkpoint.iterdir())


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint that was written to the end."""
    done = [p for p in checkpoints(folder) if _complete(p)]
    return done[-1] if done else None


def checkpoint_step(checkpoint: str | Path) -> int:
    state = _read_json(Path(checkpoint) / "trainer_state.json") or {}
    return int(state.get("global_step", 0))


def _holds_run(folder: Path) -> bool:
    names = (CONFIG_FILE, DATA_FILE, FILES_FILE, LOSS_LOG, DATA_ORDER)
    return folder.is_dir() and (any((folder / n).exists() for n in names) or bool(checkpoints(folder)))


def load_run(folder: str | Path) -> Run | None:
    """The run in ``folder``, finished or not; None when the folder holds no cings run."""
    folder = Path(folder)
    if not _holds_run(folder):
        return None
    config = load_config(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else None
    data = _read_json(folder / DATA_FILE) or {}
    # Runs before the "finished" flag wrote cings_data.json only at their end.
    finished = bool(data.get("finished", bool(data)))
    adapter = (folder / "adapter_config.json").is_file()
    return Run(folder=folder, config=config, data=data, checkpoints=checkpoints(folder),
               last_complete_checkpoint=last_complete_checkpoint(folder), finished=finished,
               model=config.model if config else None, gguf_file=config.gguf_file if config else None,
               model_config=config.model_config if config else None, adapter=adapter, weights=has_weights(folder),
               shards=shard_kind(folder))


def run_and_weights(path: str | Path) -> tuple[Run, Path] | None:
    """``(the run, the folder to read weights from)`` for a run folder or one of its ``checkpoint-N``
    folders (whose run is the folder above it); None when ``path`` is neither."""
    path = Path(path)
    run = load_run(path)
    if run is not None:
        return run, path
    if _CHECKPOINT.fullmatch(path.name) and path.is_dir():
        run = load_run(path.parent)
        if run is not None:
            return run, path
    return None


# ---------------------------------------------------------------- a run's model, for generation

def load_for_generation(model: str | None, *, adapter: str | None = None, gguf_file: str | None = None,
                        tokenizer: str | None = None, dtype: Any = None, merge: bool = True, device: str = "auto"):
    """``(model, tokenizer, render options, base model spec)``, ready to hand to :mod:`cings.generate`.

    ``adapter`` alone finds its base model in the run's recipe (or peft's ``adapter_config.json``);
    system prompt, markers and template come from the run's recipe, so a model answers in the
    format it was trained on. ``merge`` folds a LoRA adapter into the weights (loading.attach_adapter);
    a GGUF base is merged in fp32, before the cast to ``dtype``. ``device`` "auto" is the GPU when
    there is one (generation on a GPU machine would otherwise run on its CPU).
    """
    import torch

    from .loading import ModelSource, attach_adapter, load_causal_lm, load_tokenizer, resolve_model
    from .render import RenderOptions

    if adapter is not None and not Path(adapter).is_dir():
        raise ConfigError(f"--adapter {adapter}: no such folder")
    # a checkpoint-N folder inside a run reads the run's recipe (base model, render options)
    found = run_and_weights(adapter) if adapter else None
    found = found or (run_and_weights(model) if model and Path(model).is_dir() else None)
    run = found[0] if found else None
    recipe = run.config if run is not None else None
    if model is None:
        if adapter is None:
            raise ConfigError("give --model, or --adapter with a cings run folder")
        if recipe is not None and (recipe.model or recipe.model_config):
            source = recipe.model_source()
        elif (Path(adapter) / "adapter_config.json").is_file():
            base = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise ConfigError(f"--adapter {adapter}: its adapter_config.json names no base model; give --model")
            source = ModelSource(model=str(base))
        else:
            raise ConfigError(f"--adapter {adapter}: not a cings run or a LoRA adapter folder (no cings_config.yaml,"
                              " no adapter_config.json)")
    else:
        source = ModelSource(model=str(model), gguf_file=gguf_file)
    dtype = dtype or torch.float32
    tok_spec = tokenizer or next((d for d in (adapter, model) if d and (Path(d) / "tokenizer_config.json").is_file()),
                                 None) or (recipe.tokenizer if recipe is not None and recipe.tokenizer else None)
    tok = load_tokenizer(tok_spec or source.tokenizer_spec())
    gguf = source.model_config is None and resolve_model(str(source.model), source.gguf_file)[1] is not None
    merge_in = torch.float32 if (adapter and gguf) else dtype  # a dequantized GGUF merges at full precision
    # A model_config base: the same seeded initialisation as the run's, which sized its embeddings by the tokenizer.
    base = load_causal_lm(source, merge_in, tokenizer=tok if source.model_config else None)
    if adapter:
        base = attach_adapter(base, adapter, merge=merge)
    options = recipe.render_options() if recipe is not None else RenderOptions()
    spec = "model_config" if source.model_config else str(source.model)
    return base.to(device=inference_device(device), dtype=dtype).eval(), tok, options, spec


def load_run_base(folder: str | Path, *, dtype: Any = None, device: str = "auto"):
    """``(model, tokenizer, render options, base model spec)`` of the run in ``folder`` before its first step:
    its base model (a model_config base seeded as the run seeded it), the tokenizer and render options
    it trained with. The step 0 of a study over the run's checkpoints."""
    import torch

    from .loading import load_causal_lm, load_tokenizer

    run = load_run(folder)
    if run is None or run.config is None:
        raise ConfigError(f"{folder}: not a cings run folder (no {CONFIG_FILE})")
    recipe = run.config
    source = recipe.model_source()
    tok = load_tokenizer(recipe.tokenizer if recipe.tokenizer is not None else source.tokenizer_spec())
    model = load_causal_lm(source, dtype or torch.float32, tokenizer=tok)
    spec = "model_config" if source.model_config else str(source.model)
    return model.to(inference_device(device)).eval(), tok, recipe.render_options(), spec


def inference_device(device: str = "auto") -> str:
    """``auto``: the first CUDA GPU when there is one, else the CPU; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def weights_by_step(folder: str | Path) -> list[tuple[int, Path]]:
    """``(global step, folder)`` of the weights a run left along the way: each complete ``checkpoint-N``,
    then the run folder itself when the run finished past its last checkpoint."""
    run = load_run(folder)
    if run is None:
        raise ConfigError(f"{folder}: not a cings run folder")
    found = [(checkpoint_step(p), p) for p in run.checkpoints if _complete(p)]
    if run.finished and run.weights:
        final = run.data.get("global_step")
        if final is None:  # runs before global_step was recorded: their micro batches over the accumulation
            order, accumulation = run.data.get("data_order") or {}, run.data.get("gradient_accumulation_steps") or 1
            final = order.get("micro_batches", 0) // accumulation or None
        if final is not None and (not found or int(final) > found[-1][0]):
            found.append((int(final), run.folder))
    return found


def write_export_record(run_dir: str | Path, export_dir: str | Path, info: dict[str, Any]) -> None:
    """Beside an export: the run's recipe (as ``cings_recipe.yaml``, so the folder is not taken for a
    run) and what the export was made from (``cings_export.json``: run, data fingerprint, ``info``)."""
    run = load_run(run_dir)
    if run is None:
        raise ConfigError(f"{run_dir}: not a cings run folder")
    export_dir = Path(export_dir)
    if run.config is not None:
        dump_config(run.config, export_dir / EXPORT_RECIPE)
    _write_json(export_dir / EXPORT_FILE, {"run": str(Path(run_dir).resolve()), **info,
                                           "fingerprint": run.data.get("fingerprint"),
                                           "render_options": run.render_options})


# ---------------------------------------------------------------- fingerprints

def data_digest(path: str | Path) -> str:
    """sha256 of a records file, or of a ``cings tokenize`` folder's manifest and dataset state."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path) if path.is_file() else ""
    digest = hashlib.sha256()
    # state.json carries the dataset's content fingerprint; hashing every arrow shard would cost minutes.
    for name in ("cings_stats.json", "state.json", "dataset_info.json"):
        if (path / name).is_file():
            digest.update(name.encode() + b"\0" + file_sha256(path / name).encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any, template: str | None) -> dict[str, Any]:
    """What decides the ids: the vocabulary (added tokens included) and the chat template text."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return {"vocab_size": len(tokenizer), "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
            "chat_template_sha256": hashlib.sha256((template or "").encode()).hexdigest()}


def data_fingerprint(cfg: TrainConfig, renderer: Any, world_size: int) -> dict[str, Any]:
    """Everything beside the recipe that decides the training sequences and their order."""
    return {"data": {"path": str(cfg.data), "sha256": data_digest(cfg.data)},
            "eval_data": {"path": str(cfg.eval_data), "sha256": data_digest(cfg.eval_data)} if cfg.eval_data else None,
            "tokenizer": tokenizer_fingerprint(renderer.tokenizer, renderer.template),
            "render_options": renderer.options.to_dict(), "chat_template_source": renderer.template_source,
            "world_size": world_size}


def _show(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]  # a sha256: enough to tell two apart
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    missing = object()
    return {key: f"{key}: {_show(old.get(key, missing)) if key in old else '(not recorded)'} -> {_show(new.get(key))}"
            for key in sorted(set(old) | set(new)) if old.get(key, missing) != new.get(key, missing)}


def _comparable(fingerprint: dict[str, Any]) -> dict[str, Any]:
    tok = fingerprint.get("tokenizer") or {}
    flat = {"data sha256": (fingerprint.get("data") or {}).get("sha256"),
            "tokenizer vocabulary sha256": tok.get("vocab_sha256"),
            "chat template sha256": tok.get("chat_template_sha256"), "world_size": fingerprint.get("world_size")}
    flat.update({f"render {k}": v for k, v in (fingerprint.get("render_options") or {}).items()})
    return flat


def tokenized_manifest(path: str | Path) -> Path:
    """Where `cings tokenize` put the manifest of ``path``: inside a folder, beside a .jsonl."""
    path = Path(path)
    return path / "cings_stats.json" if path.is_dir() else path.with_suffix(".stats.json")


def check_tokenized(path: str | Path, renderer: Any) -> dict[str, Any]:
    """The manifest of `cings tokenize` output, if the recipe would have tokenized the same; else ConfigError naming every difference."""
    where = tokenized_manifest(path)
    manifest = _read_json(where)
    if manifest is None:
        raise ConfigError(f"data {path}: a folder must come from `cings tokenize` (no {where.name})")
    differ = _differences(manifest.get("options") or {}, renderer.options.to_dict())
    made = _manifest_tokenizer(manifest)
    now = tokenizer_fingerprint(renderer.tokenizer, renderer.template)
    for key, label in (("vocab_sha256", "tokenizer vocabulary sha256"), ("chat_template_sha256", "chat template sha256")):
        if made.get(key) != now[key]:
            differ[label] = (f"{label}: {_show(made[key]) if made.get(key) else '(unknown: its tokenizer is not recorded or not found)'}"
                             f" -> {_show(now[key])}")
    if differ:
        raise ConfigError(f"data {path} was tokenized otherwise than this recipe would (" + "; ".join(differ.values())
                          + f"): tokenize it again with the recipe's tokenizer and options, or train with those it was"
                          f" made with (tokenizer {manifest.get('tokenizer')!r})")
    return manifest


def _manifest_tokenizer(manifest: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer fingerprint of a tokenize manifest: recorded, or else rebuilt from the tokenizer it names."""
    found = manifest.get("tokenizer_fingerprint")
    if isinstance(found, dict) and found.get("vocab_sha256"):
        return found
    # Manifests without the fingerprint name the tokenizer they were made with: load it again.
    from .chat_frame import TemplateError, resolve_template
    from .loading import TokenizerNotFound, load_tokenizer

    spec = manifest.get("tokenizer")
    try:
        tokenizer = load_tokenizer(spec) if spec else None
        if tokenizer is None:
            return {}
        template, _ = resolve_template(tokenizer, (manifest.get("options") or {}).get("chat_template"))
    except (TokenizerNotFound, TemplateError, OSError):
        return {}
    return tokenizer_fingerprint(tokenizer, template)


# ---------------------------------------------------------------- what a new command may do with the folder

def check_resume(run: Run, cfg: TrainConfig, fingerprint: dict[str, Any]) -> None:
    """ConfigError naming every setting that differs from the run's and would change the math."""
    if run.config is None:
        raise ConfigError(f"--resume: {run.folder} has no {CONFIG_FILE} (a run from an older cings); start afresh"
                          " with --overwrite")
    differ = _differences({k: v for k, v in asdict(run.config).items() if k not in RESUMABLE},
                          {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE})
    recorded = run.data.get("fingerprint")
    if recorded:
        for key, text in _differences(_comparable(recorded), _comparable(fingerprint)).items():
            # a render option that is also a recipe setting is named once, as the setting
            if key.removeprefix("render ") not in differ:
                differ[key] = text
    if differ:
        raise ConfigError(f"--resume: the recipe differs from the run in {run.folder} (" + "; ".join(differ.values())
                          + "). Resume with the run's settings, or start afresh with --overwrite. A resume may change: "
                          + ", ".join(sorted(RESUMABLE)))


def open_output(cfg: TrainConfig, fingerprint: dict[str, Any], *, main: bool = True) -> Path | None:
    """Check (and with ``overwrite`` clear) ``cfg.output_dir``; returns the checkpoint to resume from.

    Only the main process checks and removes: the others would see the files it starts writing.
    """
    folder = Path(cfg.output_dir)
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in output_dir, --overwrite replaces it: choose one")
    if not main:
        return last_complete_checkpoint(folder) if cfg.resume else None
    run = load_run(folder)
    if cfg.resume:
        if run is None or run.last_complete_checkpoint is None:
            raise ConfigError(f"--resume: no complete checkpoint in {folder}"
                              + ("; start afresh with --overwrite" if run is not None else ""))
        check_resume(run, cfg, fingerprint)
        return run.last_complete_checkpoint
    if run is not None:
        if not cfg.overwrite:
            state = "finished" if run.finished else "partial (unfinished)"
            raise ConfigError(f"output_dir {folder} holds a {state} cings run: pass --resume to continue it or"
                              " --overwrite to replace it (or choose another output_dir)")
        remove_run(folder)
    return None


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def run_files(folder: str | Path) -> list[str]:
    """The names in ``folder`` that a cings run wrote."""
    folder = Path(folder)
    listed = set((_read_json(folder / FILES_FILE) or {}).get("written", []))
    return [n for n in _names(folder) if n in listed or _RUN_NAME.fullmatch(n)]


def remove_run(folder: str | Path, keep: tuple[str, ...] = ()) -> None:
    """Remove what a cings run wrote in ``folder``; refuses (removing nothing) when other files are there."""
    folder = Path(folder)
    ours = set(run_files(folder))
    other = [n for n in _names(folder) if n not in ours and n not in keep]
    if other:
        shown = ", ".join(other[:10]) + (f" and {len(other) - 10} more" if len(other) > 10 else "")
        raise ConfigError(f"--overwrite: output_dir {folder} holds files no cings run wrote ({shown}); move them"
                          " or choose another output_dir")
    for name in sorted(ours):
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def start_run(folder: str | Path, cfg: TrainConfig, info: dict[str, Any]) -> None:
    """Before the first step: the recipe, the fingerprint and the list of names written (main process)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = _read_json(folder / FILES_FILE) or {"before": [n for n in _names(folder)]}
    files["written"] = sorted(set(files.get("written", [])) | {FILES_FILE, CONFIG_FILE, DATA_FILE})
    _write_json(folder / FILES_FILE, files)  # first, so everything after it is known to be the run's
    tmp = folder / (CONFIG_FILE + ".tmp")
    dump_config(cfg, tmp)
    tmp.replace(folder / CONFIG_FILE)
    _write_json(folder / DATA_FILE, {**info, "finished": False})


def record_written(folder: str | Path) -> None:
    """Add every name that appeared in the folder since the run started to ``cings_files.json``."""
    folder = Path(folder)
    files = _read_json(folder / FILES_FILE)
    if files is None:
        return
    before = set(files.get("before", []))
    files["written"] = sorted(set(files.get("written", [])) | {n for n in _names(folder)
                                                                if n not in before and not n.endswith(".tmp")})
    _write_json(folder / FILES_FILE, files)


def finish_run(folder: str | Path, cfg: TrainConfig, info: dict[str, Any]) -> None:
    folder = Path(folder)
    tmp = folder / (CONFIG_FILE + ".tmp")
    dump_config(cfg, tmp)
    tmp.replace(folder / CONFIG_FILE)
    _write_json(folder / DATA_FILE, {**info, "finished": True})
    record_written(folder)


def truncate_loss_log(folder: str | Path, step: int) -> None:
    """Keep the rows up to ``step``: a resumed run replays the steps after its checkpoint and logs them again."""
    path = Path(folder) / LOSS_LOG
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    _write(path, "".join(line + "\n" for line in kept))
