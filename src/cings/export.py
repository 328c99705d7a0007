"""``cings export``: a training run folder -> a plain Hugging Face checkpoint that loads anywhere.

What is read, in this order (from the run folder, or from one of its ``checkpoint-N`` folders when
that is the path given):

- a LoRA adapter: merged into its base (a GGUF base is dequantized first, by the loader);
- plain weights (``model.safetensors``, sharded or not): written as they are;
- DeepSpeed ZeRO shards only (``latest`` + ``global_stepN/``: ZeRO-3 without 16-bit gathering):
  gathered by DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` (the optimizer's fp32 master
  weights) into a model built from the folder's ``config.json``;
- FSDP shards only (``pytorch_model_fsdp_0/``, ``SHARDED_STATE_DICT``): merged by accelerate's
  ``merge_fsdp_weights`` into a model built from the run's base (such checkpoints hold no config).

The folder gets safetensors shards, the tokenizer with a pad token, the chat template, a generation
config that stops at the template's end of turn, and the run's recipe. Verification (on by default)
reloads the export with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer`` and compares
next-token logits (and token ids) on a few prompts with the model it came from.

``--for llava`` writes the same weights so that the official LLaVA code (haotian-liu/LLaVA, which
pins transformers 4.37.2 and tokenizers 0.15.1) reads them: config and tokenizer files in the
field names those versions parse, and a pad token that is also the unk token LLaVA pads with.
Why each change, and what cannot be made to fit 4.37: docs/llava.md.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError

__all__ = ["export_run", "ExportError", "TOLERANCE", "TARGETS"]

# Largest next-token logit difference accepted by verification, per dtype of the export, against
# the model it came from. fp32 weights are written bit for bit, so only kernel order differs; bf16
# rounds every weight once (SmolLM2-135M: 0.45).
TOLERANCE = {"fp32": 1e-4, "bf16": 0.5}
VERIFY_PROMPTS = ("What is the capital of France?", "Who wrote the novel Moby-Dick?",
                  "## Context The Denver Broncos defeated the Carolina Panthers 24-10. ## Answer")
TARGETS = ("llava",)
# LLaVA trains with --bf16 True; its from_pretrained casts to bf16 anyway, so fp32 only doubles the files.
DEFAULT_DTYPE = {None: "fp32", "llava": "bf16"}
# The official LLaVA training script builds LlavaLlamaForCausalLM for every model but MPT.
LLAVA_MODEL_TYPES = ("llama",)
# Keys transformers 5.x writes into tokenizer_config.json that 4.37 does not know (it would pass them on
# to the tokenizer's constructor as stray arguments).
_NEW_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")
_RESERVED = re.compile(r"<\|reserved_special_token_(\d+)\|>")


class ExportError(ConfigError):
    pass


@dataclass
class _Source:
    model: Any
    tokenizer: Any
    options: Any
    kind: str  # lora-merged | full
    run: Any  # runs.Run
    folder: Path  # where the weights were read: the run folder or one of its checkpoints
    read: str  # what was read there: adapter | model | zero | fsdp
    notes: list[str] = field(default_factory=list)


def _load(path: Path, scratch: Path) -> _Source:
    from . import runs

    found = runs.run_and_weights(path)
    if found is None:
        raise ExportError(f"{path}: not a cings run folder (one that cings train wrote) or a checkpoint-N folder in one")
    run, folder = found
    in_checkpoint = folder != run.folder
    if in_checkpoint and not runs.checkpoint_complete(folder):
        raise ExportError(f"{folder}: an incomplete checkpoint (no trainer_state.json or no weights: the Trainer"
                          " was stopped while writing it); export an earlier one")
    adapter = (folder / "adapter_config.json").is_file()
    weights, shards = runs.has_weights(folder), runs.shard_kind(folder)
    if adapter:
        if not weights:
            # Under ZeRO-3 the Trainer writes adapter_model.safetensors beside the shards whatever the
            # 16-bit setting (it gathers the adapter alone), and the shards of a peft model hold only its
            # trainable parameters, not the base: an adapter folder without the file has lost it.
            raise ExportError(f"{folder}: a LoRA run folder without its adapter weights (adapter_model.safetensors)"
                              + (f"; its {shards.upper() if shards == 'fsdp' else 'ZeRO'} shards hold only the adapter's"
                                 " trainable parameters, and exporting from them is not supported" if shards else ""))
        model, tok, options, _ = runs.load_for_generation(None, adapter=str(folder), merge=True, device="cpu")
        return _Source(model, tok, options, "lora-merged", run, folder, "adapter")
    if weights:
        model, tok, options, _ = runs.load_for_generation(str(folder), device="cpu")
        return _Source(model, tok, options, "full", run, folder, "model")
    if shards:
        model, tok, note = _gather(run, folder, shards, scratch)
        options = run.config.render_options() if run.config is not None else _default_options()
        return _Source(model, tok, options, "full", run, folder, shards, [note])
    if in_checkpoint:
        raise ExportError(f"{folder}: the checkpoint holds no weights this export can read")
    last = run.last_complete_checkpoint
    hint = f"; export a checkpoint instead: cings export {last} --output ..." if last else ""
    if run.finished:
        raise ExportError(f"{path}: the run finished but its folder holds no weights (an FSDP run with"
                          f" SHARDED_STATE_DICT keeps them only in its checkpoints){hint}")
    raise ExportError(f"{path}: the run has no final weights: it has not finished"
                      + (f" (its last checkpoint is {last.name}){hint}" if last else ""))


def _default_options():
    from .render import RenderOptions

    return RenderOptions()


def _tokenizer_for(run: Any, folder: Path) -> Any:
    from .loading import load_tokenizer

    for where in (folder, run.folder):
        if (where / "tokenizer_config.json").is_file():
            return load_tokenizer(where)
    if run.config is None:
        raise ExportError(f"{folder}: no tokenizer there or in the run folder, and no recipe naming one")
    return load_tokenizer(run.config.tokenizer or run.config.model_source().tokenizer_spec())


def _gather(run: Any, folder: Path, kind: str, scratch: Path) -> tuple[Any, Any, str]:
    """A full fp32 model from the training shards in ``folder``, its tokenizer, and what was done."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .loading import load_causal_lm

    tok = _tokenizer_for(run, folder)
    if kind == "zero":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag = (folder / "latest").read_text(encoding="utf-8").strip()
        state = get_fp32_state_dict_from_zero_checkpoint(str(folder))  # the tag `latest` names
        note = f"gathered from the DeepSpeed ZeRO shards in {folder.name}/{tag} (fp32 master weights)"
    else:
        from accelerate.utils import merge_fsdp_weights
        from safetensors.torch import load_file

        shutil.rmtree(scratch, ignore_errors=True)
        merge_fsdp_weights(str(folder / "pytorch_model_fsdp_0"), str(scratch), safe_serialization=True)
        state = load_file(scratch / "model.safetensors")
        note = f"merged from the FSDP distributed-checkpoint shards in {folder.name}/pytorch_model_fsdp_0"
    if (folder / "config.json").is_file():
        config_from = f"{folder.name}/config.json"
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    elif run.config is not None:
        # FSDP checkpoints hold no config: the run's base model gives the architecture, its weights are replaced
        config_from = "the run's base model"
        model = load_causal_lm(run.config.model_source(), torch.float32, tokenizer=tok)
    else:
        raise ExportError(f"{folder}: shards without a config.json, and no recipe naming the base model")
    _load_state(model, state, f"{folder}: the gathered weights do not fit the model built from {config_from}")
    shutil.rmtree(scratch, ignore_errors=True)
    return model.eval(), tok, note


def _load_state(model: Any, state: dict, error: str) -> None:
    """Load ``state`` into ``model``: every weight must be there (a tied one through its twin), none extra."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ExportError(f"{error}: {err}") from None
    params = model.state_dict()
    loaded = {params[k].data_ptr() for k in state if k in params}
    missing = [k for k in result.missing_keys if params[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        raise ExportError(f"{error}: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected"
                          f" {list(result.unexpected_keys)[:5]}{' ...' if len(result.unexpected_keys) > 5 else ''}")


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


# ---------------------------------------------------------------- --for llava

def _check_llava_model(config: Any) -> None:
    """What the official LLaVA code (transformers 4.37) cannot build: refused before anything is written."""
    kind = getattr(config, "model_type", None)
    if kind not in LLAVA_MODEL_TYPES:
        raise ExportError(f"--for llava: the official LLaVA training script builds LlavaLlamaForCausalLM, and this"
                          f" model is a {kind!r}; use `cings vlm` (README) or a LLaVA fork that supports it")
    heads = config.hidden_size // config.num_attention_heads
    if getattr(config, "head_dim", None) not in (None, heads):
        raise ExportError(f"--for llava: head_dim {config.head_dim} is not hidden_size / num_attention_heads = {heads},"
                          " which transformers 4.37's Llama assumes")
    if getattr(config, "mlp_bias", False):
        raise ExportError("--for llava: mlp_bias is true, which transformers 4.37's Llama does not build")


def _template_tokens(tokenizer: Any) -> set[str]:
    """The special tokens that carry meaning in the model's text: bos, eos and those its chat template writes."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    named = {tokenizer.bos_token, tokenizer.eos_token}
    return {t for t in named if t} | {a.content for a in tokenizer.added_tokens_decoder.values() if a.content in template}


def _llava_pad_token(tokenizer: Any) -> str:
    """Make pad and unk one existing special token that no text or template uses; returns how it was chosen.

    LLaVA's train.py sets ``pad_token = unk_token`` and builds ``attention_mask = input_ids != pad``:
    Llama-3 has no unk token (the collator then pads with None and crashes), and a pad token that
    real text contains (eos, an end-of-turn token) would be masked out of attention wherever it appears.
    An existing token needs no new embedding row, so the vocabulary keeps its size.
    """
    used = _template_tokens(tokenizer)
    vocab = tokenizer.get_vocab()
    reserved = sorted((int(m.group(1)), t) for t in vocab if (m := _RESERVED.fullmatch(t)))
    candidates = [(tokenizer.unk_token, "its unk token"), (tokenizer.pad_token, "its pad token"),
                  ("<|finetune_right_pad_id|>", "Llama-3.1's padding token"),
                  *((t, "the first reserved special token") for _, t in reserved[:1])]
    for token, why in candidates:
        if token and token in vocab and token not in used:
            tokenizer.unk_token = tokenizer.pad_token = token
            return f"pad and unk set to {token!r} ({why}, id {vocab[token]}; no chat-template or text use, no resize)"
    raise ExportError("--for llava: the tokenizer has no special token that its chat template and eos/bos leave"
                      " unused (an unk, a pad or a reserved token) to pad with; LLaVA pads with the unk token")


def _rope_for_old_transformers(rope: dict) -> tuple[dict | None, str | None]:
    """``rope_scaling`` in the spelling of transformers 4.37 (two fields, type and factor) where it has one,
    else in 4.43's; returns it and the transformers version the result needs (None: 4.37 reads it)."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    rest = {k: v for k, v in rope.items() if k not in ("rope_type", "type", "rope_theta")}
    if kind == "default":
        return None, None
    if kind in ("linear", "dynamic") and set(rest) == {"factor"}:
        return {"type": kind, "factor": float(rest["factor"])}, None
    # llama3 (Llama-3.1/3.2), yarn, longrope: no 4.37 equivalent. Dropping the scaling would change the
    # rotary frequencies at every length (docs/llava.md measures it), so it is kept, exactly, as 4.43+ reads it.
    return {"rope_type": kind, **rest}, "transformers>=4.43" if kind == "llama3" else f"a transformers that knows rope_type {kind!r}"


def _rewrite_for_llava(folder: Path) -> tuple[list[str], str | None]:
    """Rewrite the saved config and tokenizer files in the field names transformers 4.37 / tokenizers 0.15 read."""
    done: list[str] = []
    requires = None
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.pop("rope_parameters", None)
    if rope is not None:
        config["rope_theta"] = rope.get("rope_theta", 10000.0)
        config["rope_scaling"], requires = _rope_for_old_transformers(rope)
        done.append(f"config.json: rope_parameters -> rope_theta {config['rope_theta']} (4.37 ignores rope_parameters"
                    " and would use 10000) and rope_scaling " + json.dumps(config["rope_scaling"])
                    + (f" (needs {requires}; 4.37.2 rejects it)" if requires else ""))
    if "dtype" in config:
        config["torch_dtype"] = config.pop("dtype")
        done.append(f"config.json: dtype -> torch_dtype {config['torch_dtype']!r}")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    path = folder / "tokenizer_config.json"
    tok_config = json.loads(path.read_text(encoding="utf-8"))
    old_class = tok_config.get("tokenizer_class")
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    done.append(f"tokenizer_config.json: tokenizer_class {old_class!r} -> 'PreTrainedTokenizerFast' (4.37 knows no"
                " 'TokenizersBackend'; with LLaVA's use_fast=False it loads this class from tokenizer.json, no slow files)")
    dropped = [k for k in _NEW_TOKENIZER_KEYS if tok_config.pop(k, None) is not None]
    if isinstance(tok_config.get("extra_special_tokens"), list):
        tok_config["additional_special_tokens"] = tok_config.pop("extra_special_tokens")
        dropped.append("extra_special_tokens (as additional_special_tokens)")
    if dropped:
        done.append(f"tokenizer_config.json: 5.x-only keys moved or removed: {', '.join(dropped)}")
    template = folder / "chat_template.jinja"
    if template.is_file() and "chat_template" not in tok_config:
        tok_config["chat_template"] = template.read_text(encoding="utf-8")
        done.append("tokenizer_config.json: chat_template copied in from chat_template.jinja (4.37 reads it there)")
    path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    merges = spec.get("model", {}).get("merges")
    if merges and isinstance(merges[0], list):
        if all(" " not in part for pair in merges for part in pair):
            spec["model"]["merges"] = [" ".join(pair) for pair in merges]
            path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            done.append("tokenizer.json: merges as 'a b' strings (tokenizers < 0.20 cannot read merges as pairs)")
        else:
            done.append("tokenizer.json: merges kept as pairs (a merge contains a space): needs tokenizers >= 0.20")
    return done, requires


# ---------------------------------------------------------------- the export

def _next_token_logits(model: Any, tokenizer: Any, prompts: tuple[str, ...]) -> list[Any]:
    import torch

    out = []
    with torch.no_grad():
        for text in prompts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            # use_cache=False: no cache object at all, so nothing can leak between prompts
            out.append(model(input_ids=ids, use_cache=False).logits[0, -1].float())
    return out


def export_run(run_dir: str | Path, output: str | Path, *, dtype: str | None = None, target: str | None = None,
               verify: bool = True, overwrite: bool = False, log: Any = None) -> dict[str, Any]:
    """Write ``run_dir`` (a run folder or a ``checkpoint-N`` in one) as a plain checkpoint in ``output``;
    returns what was done (and the check). ``target="llava"``: loadable by the official LLaVA code too."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from . import runs
    from .prompts import PromptBuilder

    log = log or (lambda msg: None)
    run_dir, output = Path(run_dir), Path(output)
    if target not in (None, *TARGETS):
        raise ExportError(f"--for must be one of {', '.join(TARGETS)}, not {target!r}")
    dtype = dtype or DEFAULT_DTYPE[target]
    if dtype not in TOLERANCE:
        raise ExportError(f"--dtype must be one of {', '.join(TOLERANCE)}, not {dtype!r}")
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ExportError(f"{output}: exists and is not empty; choose another --output or pass --overwrite")
        if not (output / runs.EXPORT_FILE).is_file():
            raise ExportError(f"{output}: --overwrite only replaces an earlier cings export, and this folder is not one")
    tmp = output.with_name(f".{output.name}.partial")
    source = _load(run_dir, output.with_name(f".{output.name}.gather"))
    log(f"loaded {run_dir} ({source.kind}{'; ' + source.notes[0] if source.notes else ''})")
    if target == "llava":
        _check_llava_model(source.model.config)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    tok = source.tokenizer
    # The reference is the model as it came (before the cast): `.to(bf16)` would also round its rotary
    # frequencies, which from_pretrained keeps in fp32, and make it a worse reference than the export.
    reference = _next_token_logits(source.model.eval(), tok, VERIFY_PROMPTS) if verify else None
    model = source.model.to(torch_dtype)
    pad = _llava_pad_token(tok) if target == "llava" else _with_pad_token(tok)
    stop = PromptBuilder(tok, source.options).stop_token_ids()
    model.generation_config = GenerationConfig(eos_token_id=stop, pad_token_id=tok.pad_token_id,
                                               bos_token_id=getattr(tok, "bos_token_id", None), do_sample=False)
    model.config.pad_token_id = tok.pad_token_id
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="2GB")
    tok.save_pretrained(tmp)
    info: dict[str, Any] = {"kind": source.kind, "dtype": dtype, "pad_token": pad, "stop_token_ids": stop,
                            "source": {"folder": str(source.folder.resolve()), "read": source.read, "notes": source.notes}}
    if target == "llava":
        adjustments, requires = _rewrite_for_llava(tmp)
        info.update({"for": "llava", "adjustments": [pad, *adjustments],
                     "llava_transformers": requires or "transformers==4.37.2 (LLaVA's pin) or newer"})
    runs.write_export_record(source.run.folder, tmp, info)
    if output.exists():
        shutil.rmtree(output)  # an earlier export, checked above; replaced only once the new one is whole
    tmp.rename(output)  # a killed export never leaves a folder that looks whole
    report: dict[str, Any] = {"output": str(output), **{k: info[k] for k in ("kind", "dtype", "pad_token", "source")}}
    if target == "llava":
        report.update({k: info[k] for k in ("for", "adjustments", "llava_transformers")})
    if verify:
        report["verify"] = _verify(reference, tok, output, dtype, torch_dtype, AutoModelForCausalLM, AutoTokenizer)
        log(f"verified: reloaded, next-token logits within {report['verify']['max_abs_logit_diff']:.2g} of the"
            f" {'gathered model' if source.read in ('zero', 'fsdp') else 'run'}'s on {len(VERIFY_PROMPTS)} prompts,"
            " same token ids")
    return report


def _verify(before: list, tok: Any, output: Path, dtype: str, torch_dtype: Any, auto_model: Any, auto_tok: Any) -> dict:
    reloaded = auto_model.from_pretrained(output, dtype=torch_dtype).eval()
    reloaded_tok = auto_tok.from_pretrained(output)
    for text in VERIFY_PROMPTS:
        if reloaded_tok(text).input_ids != tok(text).input_ids:
            raise ExportError(f"{output}: the reloaded tokenizer splits {text!r} otherwise than the run's")
    if reloaded_tok.pad_token_id is None or reloaded_tok.pad_token_id != tok.pad_token_id:
        raise ExportError(f"{output}: the reloaded tokenizer's pad token is {reloaded_tok.pad_token!r}, not {tok.pad_token!r}")
    after = _next_token_logits(reloaded, reloaded_tok, VERIFY_PROMPTS)
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    if not diff <= TOLERANCE[dtype]:
        raise ExportError(f"{output}: the reloaded export's next-token logits differ by {diff:.3g} from the source"
                          f" model's (tolerance {TOLERANCE[dtype]} for {dtype}); the export is not trustworthy")
    return {"prompts": len(VERIFY_PROMPTS), "max_abs_logit_diff": diff, "tolerance": TOLERANCE[dtype],
            "tokenizer_ids_equal": True}
