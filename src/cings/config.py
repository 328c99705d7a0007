"""The training recipe: one dataclass whose field help drives YAML recipes and ``--flags`` alike.

Precedence: field defaults (the paper's recipe) < the YAML recipe < command-line flags. Unknown
keys fail at start-up with a "did you mean". The authors' flag names are accepted as aliases.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

__all__ = ["TrainConfig", "ConfigError", "load_config", "SEED_ALIASES", "add_train_arguments", "add_dataclass_arguments",
           "config_from_args", "dump_config", "strict_bool", "json_object"]

PAPER_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    pass


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """A training run. Defaults are the paper's recipe (paper-notes.md §4)."""

    # model and data
    model: str | None = _f(None, "model folder, hub id, a .gguf file, or 'smollm2' (the bundled SmolLM2-135M-Instruct)")
    gguf_file: str | None = _f(None, "GGUF file name inside the model folder (weights are dequantized)")
    model_config: dict | None = _f(None, "build a fresh model from this config instead of loading weights (tests, smoke runs)")
    tokenizer: str | None = _f(None, "tokenizer folder or id when not the model's (the paper: base model + Instruct tokenizer)")
    chat_template: str | None = _f(None, "Jinja file or builtin (llama2-chat, chatml); required when the tokenizer has none")
    data: str | None = _f(None, "grounded records (.jsonl) or a folder written by `cings tokenize`")
    eval_data: str | None = _f(None, "records for an evaluation loss at the end of every epoch")
    mode: str = _f("context", "no_context | input_context | context (CINGS) | no_mask")
    max_length: int = _f(4096, "longest sequence; passages are cut from their end to fit")
    system_prompt: str | None = _f("paper", "system prompt: 'paper' (the paper's), '' for none, or the text")
    train_markers: bool = _f(False, "also train '## Answer' in context mode")
    context_loss_weight: float | None = _f(None, "mode context: weight λ of the passages and their markers in the loss,"
                                           " Σ w·CE / Σ w over the step's trained tokens; 0 = CINGS (masked),"
                                           " 1 = no_mask (trained like the answer), between = partly"
                                           " (default: the mode's own masking)")
    allow_no_context: bool = _f(False, "train records without contexts without context (mixtures)")
    template_kwargs: dict = _f({"enable_thinking": False}, "extra chat-template variables")
    output_dir: str = _f("runs/cings", "where the HF model, checkpoints, logs and the recorded recipe go")
    # fine-tuning method
    lora: bool = _f(False, "train a LoRA adapter (peft) instead of all weights")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout (the paper: 0.05; on a CPU its random numbers cost about a third of a"
                              " SmolLM2 LoRA step: 3.40 s vs 2.31 s at 0, docs/benchmarks.md)")
    lora_target_modules: list = _f(PAPER_LORA_TARGETS, "modules that get LoRA (the paper: all attention and MLP projections)")
    lora_modules_to_save: list = _f([], "modules trained fully beside LoRA (the paper's README: embed_tokens, lm_head)")
    lora_top_layers: int | None = _f(None, "LoRA on the top N transformer layers only (default: all). The backward pass"
                                           " then stops at the lowest adapted layer: cheaper steps on a CPU")
    # optimisation
    learning_rate: float = _f(2e-5, "peak learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    epoch_lr_decay: float = _f(0.85, "multiply the learning rate by this after every epoch (the paper's schedule)")
    warmup_steps: int = _f(0, "linear warm-up steps (the paper: none)")
    max_grad_norm: float = _f(0.0, "gradient clipping norm; 0 = none (the paper)")
    num_epochs: int = _f(3, "epochs")
    max_steps: int = _f(-1, "stop after this many optimizer steps (overrides epochs when > 0)")
    seed: int = _f(2, "random seed (the paper: 2)")
    global_batch_size: int = _f(128, "sequences per optimizer step over all devices")
    micro_batch_size: int = _f(4, "sequences per device per forward pass; accumulation = global / (micro x devices)")
    precision: str = _f("auto", "auto (bf16 on a GPU or CPU that runs it natively: AVX-512 BF16 or AMX; else fp32) | bf16 | fp16 | fp32")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass: less memory, about a third more"
                                      " compute (configs/accelerate/fsdp.yaml has FSDP's own, preferred under FSDP)")
    trained_logits_only: bool = _f(True, "compute the output layer and loss only where a token is trained: the same loss,"
                                   " less time and memory (most CINGS positions are masked)")
    group_by_length: bool = _f(False, "batch records of similar length (less padding); lengths are the records'"
                               " characters, so every mode trains on the same order")
    packing: bool = _f(False, "padding-free packing: flatten each micro batch into one row with per-sequence position ids")
    # speed options (cings.speed_options): the same training, faster where the machine has them; an
    # unavailable one falls back with one printed line, and the run records what was used
    attn_implementation: str | None = _f("sdpa", "attention kernel: sdpa | eager | flash_attention_2 | flash_attention_3"
                                         " | flash_attention_4 (CUDA GPU with the flash-attn package, bf16/fp16) |"
                                         " flex_attention (CUDA GPU); unavailable -> sdpa")
    liger_kernel: bool = _f(False, "Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused cross-entropy): CUDA GPU with"
                            " liger-kernel installed; unavailable -> off")
    torch_compile: bool = _f(False, "torch.compile the model (inductor): Triton on a GPU, a C++ compiler on CPU;"
                             " unavailable -> off")
    fused_optimizer: bool = _f(False, "fused AdamW (optim adamw_torch_fused): the same update in one kernel, CPU and GPU")
    strict_speed_options: bool = _f(False, "refuse to start when a speed option is unavailable here, instead of"
                                    " falling back with a message")
    # bookkeeping
    logging_steps: int = _f(10, "log the loss every N steps (loss_log.jsonl, and report_to)")
    save_strategy: str = _f("epoch", "checkpoint every epoch, every save_steps (steps), or never (no)")
    save_steps: int = _f(500, "with save_strategy steps")
    save_total_limit: int | None = _f(None, "keep only the last N checkpoints")
    resume: bool = _f(False, "resume from the last complete checkpoint in output_dir (the recipe must match the run's)")
    overwrite: bool = _f(False, "replace the cings run in output_dir: removes only what a cings run wrote there,"
                         " and refuses a folder that holds other files")
    report_to: list = _f([], "extra loggers: tensorboard, wandb")
    num_proc: int | None = _f(None, "processes for tokenization")
    dataloader_num_workers: int = _f(0, "data loader workers")

    def validate(self) -> None:
        from .render import parse_mode

        if not self.model and not self.model_config:
            raise ConfigError("no model: set model (a folder, hub id, .gguf file or 'smollm2') or model_config")
        if not self.data:
            raise ConfigError("no data: set data to grounded records (.jsonl) or a `cings tokenize` folder")
        try:
            parse_mode(self.mode)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.context_loss_weight is not None:
            try:
                self.render_options()
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16, fp16 or fp32, not {self.precision!r}")
        from .speed_options import ATTENTION_CHOICES

        if self.attn_implementation is not None and self.attn_implementation not in ATTENTION_CHOICES:
            raise ConfigError(f"attn_implementation must be one of {', '.join(ATTENTION_CHOICES)},"
                              f" not {self.attn_implementation!r}{_did_you_mean_of(self.attn_implementation, ATTENTION_CHOICES)}")
        if self.save_strategy not in ("epoch", "steps", "no"):
            raise ConfigError(f"save_strategy must be epoch, steps or no, not {self.save_strategy!r}")
        for name in ("global_batch_size", "micro_batch_size", "max_length", "num_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.lora_top_layers is not None and (isinstance(self.lora_top_layers, bool) or self.lora_top_layers < 1):
            raise ConfigError(f"lora_top_layers must be at least 1 (or unset for every layer), not {self.lora_top_layers!r}")
        if not 0 < self.epoch_lr_decay <= 1:
            raise ConfigError(f"epoch_lr_decay must be in (0, 1], not {self.epoch_lr_decay}")

    def accumulation(self, world_size: int) -> int:
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ConfigError(f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size"
                              f" {self.micro_batch_size} x {world_size} device(s)")
        return self.global_batch_size // per_step

    def render_options(self):
        """The :class:`cings.render.RenderOptions` this recipe trains with (generation reuses them)."""
        from .render import PAPER_SYSTEM_PROMPT, RenderOptions

        system = {"paper": PAPER_SYSTEM_PROMPT, "": None}.get(self.system_prompt or "", self.system_prompt)
        return RenderOptions(mode=self.mode, max_length=self.max_length, system_prompt=system,
                             train_markers=self.train_markers, context_loss_weight=self.context_loss_weight,
                             allow_no_context=self.allow_no_context,
                             chat_template=self.chat_template, template_kwargs=self.template_kwargs)

    def model_source(self):
        """The :class:`cings.loading.ModelSource` of this recipe's base model."""
        from .loading import ModelSource

        return ModelSource(model=None if self.model is None else str(self.model), gguf_file=self.gguf_file,
                           model_config=self.model_config, seed=self.seed)


FIELDS = {f.name: f for f in fields(TrainConfig)}

# The seed README's flags (kaistAI/CINGS train.py) -> ours.
SEED_ALIASES = {"loss_mask_context": "mode", "num_epochs": "num_epochs", "batch_size_training": "global_batch_size",
                "micro_batch_size": "micro_batch_size", "dist_checkpoint_folder": "output_dir", "model_name": "model",
                "token_name": "tokenizer", "lr": "learning_rate", "training_argument": "config"}
# Accepted so the seed's command line parses, but FSDP/DeepSpeed are accelerate's job here.
SEED_LAUNCH_FLAGS = ("enable_fsdp", "low_cpu_fsdp")


def _did_you_mean(key: str) -> str:
    return _did_you_mean_of(key, list(FIELDS) + list(SEED_ALIASES))


def _did_you_mean_of(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _kind(name: str) -> str:
    """The base type of a field from its annotation ("int | None" -> "int")."""
    annotation = str(FIELDS[name].type)
    for kind in ("bool", "int", "float", "list", "dict", "str"):
        if annotation.startswith(kind):
            return kind
    return "str"


def _coerce(name: str, value: Any, where: str) -> Any:
    """Command-line strings and YAML values -> the field's type, with a clear error."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and _kind(name) != "str"):
        return None
    kind = _kind(name)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return str(value).lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: '{name}' must be true or false, not {value!r}")
    if kind in ("int", "float") and not isinstance(value, bool):
        try:
            number = float(value)
            if kind == "int" and number != int(number):
                raise ValueError
            return int(number) if kind == "int" else number
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: '{name}' must be {'an integer' if kind == 'int' else 'a number'},"
                              f" not {value!r}") from None
    if kind == "list" and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind in ("list", "dict") and not isinstance(value, (list if kind == "list" else dict)):
        raise ConfigError(f"{where}: '{name}' must be a {kind}, not {type(value).__name__}")
    if kind == "str" and not isinstance(value, str):
        return str(value)
    return value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML (or JSON) recipe at ``path``, then ``overrides``."""
    import yaml

    values: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such recipe")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of settings")
        for key, value in loaded.items():
            name = SEED_ALIASES.get(key, key)
            if name not in FIELDS:
                raise ConfigError(f"{path}: unknown setting '{key}'{_did_you_mean(key)}")
            values[name] = _coerce(name, value, str(path))
    overrides = dict(overrides or {})
    # A model named on the command line replaces the recipe's model, whichever way it gave one.
    if overrides.get("model") is not None and "model_config" not in overrides:
        values.pop("model_config", None)
    if overrides.get("model_config") is not None and "model" not in overrides:
        values.pop("model", None)
    for key, value in overrides.items():
        values[key] = _coerce(key, value, "command line")
    config = TrainConfig(**values)
    config.validate()
    return config


def dump_config(config: TrainConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(asdict(config), sort_keys=False, allow_unicode=True), encoding="utf-8")


def strict_bool(value: str) -> bool:
    """Parse true/false strictly: the reference CLI read 'false' as a truthy string."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def json_object(value: str) -> dict:
    import json

    try:
        obj = json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"enable_thinking\": false}'")
    return obj


def _number(kind: type, optional: bool):
    def parse(value: str):
        if optional and value.strip().lower() in ("none", "null"):
            return None
        try:
            return kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'},"
                                             f" not {value!r}") from None
    parse.__name__ = kind.__name__
    return parse


def _default_text(value: Any) -> str:
    from enum import Enum

    if isinstance(value, Enum):
        value = value.value
    elif isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        value = dict(value)  # key-value pairs kept hashable in a frozen dataclass
    return repr(value)


def add_dataclass_arguments(parser: Any, cls: type, *, aliases: dict[str, list[str]] | None = None,
                            custom: dict[str, dict[str, Any]] | None = None, only: Sequence[str] | None = None) -> None:
    """One flag per field of the dataclass ``cls``, help from the field's ``metadata["help"]`` and its default.

    Each field gets ``--dashed-name`` and ``--underscored_name`` (and its ``aliases``); booleans take
    an optional true/false, numbers and JSON objects are parsed, strings and lists (comma-separated)
    stay text. Every flag defaults to None, so what was not given is left to the recipe or the
    dataclass's default. ``custom`` overrides the argparse settings of single fields; ``only`` limits
    the flags to those fields.
    """
    aliases, custom = aliases or {}, custom or {}
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else []) + aliases.get(f.name, [])
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "default": None,
                                  "help": f"{f.metadata.get('help', '')} (default: {_default_text(default)})"}
        annotation = str(f.type)
        kind = next((k for k in ("bool", "int", "float", "dict") if annotation.startswith(k)), None)
        if kind == "bool":
            kwargs.update(type=strict_bool, nargs="?", const=True, metavar="BOOL")
        elif kind in ("int", "float"):
            kwargs.update(type=_number(int if kind == "int" else float, "None" in annotation),
                          metavar="N" if kind == "int" else "X")
        elif kind == "dict":
            kwargs.update(type=json_object, metavar="JSON")
        kwargs.update(custom.get(f.name, {}))
        parser.add_argument(*names, **kwargs)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "--training-argument", "--training_argument", dest="config",
                        help="YAML recipe (configs/*.yaml); flags override it")
    group = parser.add_argument_group("recipe settings (override the YAML)")
    aliases: dict[str, list[str]] = {}
    for seed, ours in SEED_ALIASES.items():
        if seed != ours and ours != "config":
            aliases.setdefault(ours, []).append(f"--{seed}")
    add_dataclass_arguments(group, TrainConfig, aliases=aliases)
    group.add_argument("--full", dest="lora", action="store_const", const=False, help="train all weights (no LoRA)")
    group.add_argument("--model-use-peft", "--model_use_peft", dest="lora", action="store_const", const=True,
                       help="the seed's flag for --lora")
    for flag in SEED_LAUNCH_FLAGS:
        parser.add_argument(f"--{flag}", action="store_true", help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    for flag in SEED_LAUNCH_FLAGS:
        if getattr(args, flag, False):
            raise ConfigError(f"--{flag}: sharding is set by the launcher here, e.g. `accelerate launch --config_file"
                              " configs/accelerate/fsdp.yaml -m cings train --config ...`")
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return load_config(args.config, overrides)
