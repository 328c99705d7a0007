"""Speed options: each GPU-only one falls back on CPU with one line (asked, why, instead), the run records
what it used, and the options that run everywhere give the same training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cings import runs
from cings.config import ConfigError, TrainConfig, load_config
from cings.records import write_records
from cings.speed_options import Machine, resolve_speed_options
from cings.train import train

from .conftest import build_tiny_bpe
from .test_train import TINY, memorable_records

CPU = Machine(cuda=False, torch_version="2.13.0+cpu", cpp_compiler="/usr/bin/g++")
H100 = Machine(cuda=True, gpu="NVIDIA H100", capability=(9, 0), torch_version="2.13.0", cpp_compiler="/usr/bin/g++",
               liger_model_types=frozenset({"llama", "qwen3"}))
T4 = Machine(cuda=True, gpu="Tesla T4", capability=(7, 5), torch_version="2.13.0")


def recipe(**kw) -> TrainConfig:
    return TrainConfig(model_config=TINY, tokenizer="t", data="d", **kw)


def used(plan) -> dict:
    return {c.option: c.used for c in plan.choices}


# ---------------------------------------------------------------- what each option becomes, machine by machine

def test_on_a_cpu_every_gpu_only_option_falls_back_with_one_line_saying_what_why_and_instead():
    plan = resolve_speed_options(recipe(attn_implementation="flash_attention_2", liger_kernel=True), "bf16", CPU)
    assert used(plan) == {"attn_implementation": "sdpa", "liger_kernel": False, "torch_compile": False,
                          "fused_optimizer": False, "gradient_checkpointing": False}
    lines = [c.line() for c in plan.fallbacks()]
    assert lines == [
        "attn_implementation flash_attention_2 is unavailable here (no CUDA GPU (torch 2.13.0+cpu sees none));"
        " using sdpa instead (the same attention, PyTorch's kernel)",
        "liger_kernel true is unavailable here (its kernels are Triton kernels, GPU only; no CUDA GPU (torch"
        " 2.13.0+cpu sees none)); using false instead (transformers' own layers)"]
    flex = resolve_speed_options(recipe(attn_implementation="flex_attention"), "fp32", CPU).fallbacks()
    assert [(c.used, "no backward pass on CPU" in c.why) for c in flex] == [("sdpa", True)]


@pytest.mark.parametrize("attn", ["flash_attention_3", "flash_attention_4"])
def test_every_flash_attention_version_falls_back_without_a_gpu(attn):
    (choice,) = resolve_speed_options(recipe(attn_implementation=attn), "bf16", CPU).fallbacks()
    assert (choice.asked, choice.used) == (attn, "sdpa") and choice.why.startswith("no CUDA GPU")


def test_options_that_run_on_a_cpu_are_kept_there():
    plan = resolve_speed_options(recipe(attn_implementation="eager", torch_compile=True, fused_optimizer=True,
                                        gradient_checkpointing=True), "fp32", CPU)
    assert not plan.fallbacks()
    assert plan.training_arguments() == {"optim": "adamw_torch_fused", "torch_compile": True, "use_liger_kernel": False,
                                         "activation_checkpointing": True}
    assert plan.load_kwargs() == {"attn_implementation": "eager"}
    no_compiler = Machine(cuda=False, torch_version="2.13.0+cpu", cpp_compiler=None)
    (choice,) = resolve_speed_options(recipe(torch_compile=True), "fp32", no_compiler).fallbacks()
    assert choice.used is False and "no compiler was found" in choice.why


def test_on_a_gpu_with_the_packages_the_options_are_used():
    plan = resolve_speed_options(recipe(attn_implementation="flash_attention_2", liger_kernel=True, torch_compile=True,
                                        fused_optimizer=True), "bf16", H100)
    assert not plan.fallbacks()
    assert plan.training_arguments() == {"optim": "adamw_torch_fused", "torch_compile": True, "use_liger_kernel": True,
                                         "activation_checkpointing": False}
    assert plan.load_kwargs() == {"attn_implementation": "flash_attention_2"}
    assert used(resolve_speed_options(recipe(attn_implementation="flex_attention"), "fp32", H100))["attn_implementation"] \
        == "flex_attention"


@pytest.mark.parametrize("machine, attn, precision, reason", [
    (H100, "flash_attention_2", "fp32", "bf16/fp16 only and the precision is fp32"),
    (T4, "flash_attention_2", "fp16", "compute capability 7.5; flash_attention_2 needs 8.0"),
    (Machine(cuda=True, gpu="A100", capability=(8, 0)), "flash_attention_4", "bf16", "needs 9.0"),
    (Machine(cuda=True, gpu="H100", capability=(9, 0), unusable={"flash-attn": "flash-attn does not import (ImportError:"
                                                                 " undefined symbol)"}),
     "flash_attention_2", "bf16", "flash-attn does not import (ImportError: undefined symbol)"),
    (Machine(cuda=True, gpu="H100", capability=(9, 0), unusable={"triton": "triton does not import"}),
     "flex_attention", "bf16", "compiles its kernels with Triton: triton does not import"),
])
def test_on_a_gpu_flash_and_flex_attention_fall_back_naming_what_is_missing(machine, attn, precision, reason):
    (choice,) = resolve_speed_options(recipe(attn_implementation=attn), precision, machine).fallbacks()
    assert choice.used == "sdpa" and reason in choice.why, choice.why


def test_liger_falls_back_for_a_model_type_it_does_not_patch_and_where_it_does_not_import():
    (choice,) = resolve_speed_options(recipe(liger_kernel=True), "bf16", H100, model_type="gpt2").fallbacks()
    assert choice.used is False and choice.why == "Liger has no kernels for model type 'gpt2'"
    broken = Machine(cuda=True, gpu="H100", capability=(9, 0), unusable={"liger-kernel": "liger-kernel does not import"})
    (choice,) = resolve_speed_options(recipe(liger_kernel=True), "bf16", broken).fallbacks()
    assert choice.why == "liger-kernel does not import"


def test_strict_speed_options_refuses_naming_every_unavailable_option():
    with pytest.raises(ConfigError) as caught:
        resolve_speed_options(recipe(attn_implementation="flash_attention_2", liger_kernel=True,
                                     strict_speed_options=True), "bf16", CPU)
    message = str(caught.value)
    assert "attn_implementation flash_attention_2 is unavailable" in message
    assert "liger_kernel true is unavailable" in message and "strict_speed_options false" in message
    resolve_speed_options(recipe(fused_optimizer=True, strict_speed_options=True), "fp32", CPU)  # nothing missing


def test_this_machine_is_read_without_importing_gpu_packages_when_there_is_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    machine = Machine.detect(["flash-attn", "liger-kernel", "triton"])
    assert machine.cuda is False and machine.gpu is None
    assert set(machine.unusable) == {"flash-attn", "liger-kernel", "triton"}


# ---------------------------------------------------------------- the recipe: values and flags

def test_an_unknown_attention_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"attn_implementation must be one of sdpa, eager, .*"
                                          r"not 'flash_attention2' \(did you mean 'flash_attention_2'\?\)"):
        load_config(None, {"model": "m", "data": "d", "attn_implementation": "flash_attention2"})


def test_every_speed_option_is_a_flag():
    import argparse

    from cings.config import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--attn-implementation", "flex_attention", "--liger-kernel",
                              "--torch-compile", "false", "--fused-optimizer", "--gradient-checkpointing", "true",
                              "--strict-speed-options"])
    cfg = config_from_args(args)
    assert (cfg.attn_implementation, cfg.liger_kernel, cfg.torch_compile, cfg.fused_optimizer,
            cfg.gradient_checkpointing, cfg.strict_speed_options) == ("flex_attention", True, False, True, True, True)


def test_a_resume_may_change_every_speed_option(tmp_path):
    cfg = TrainConfig(model="m", data="d", output_dir=str(tmp_path), save_strategy="steps")
    runs.start_run(tmp_path, cfg, {})
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (tmp_path / "checkpoint-3" / "model.safetensors").write_bytes(b"w")
    again = TrainConfig(**{**cfg.__dict__, "resume": True, "attn_implementation": "flash_attention_2",
                           "liger_kernel": True, "torch_compile": True, "fused_optimizer": True,
                           "gradient_checkpointing": True, "strict_speed_options": True})
    assert runs.open_output(again, {}).name == "checkpoint-3"


# ---------------------------------------------------------------- through train(), on this machine

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    build_tiny_bpe().save_pretrained(root / "tok")
    write_records(memorable_records(), root / "train.jsonl")
    return root


def tiny_recipe(tiny, out, **kw) -> TrainConfig:
    base = dict(model_config=TINY, tokenizer=str(tiny / "tok"), data=str(tiny / "train.jsonl"), output_dir=str(out),
                max_length=256, learning_rate=1e-2, global_batch_size=4, micro_batch_size=2, num_epochs=1,
                max_steps=4, logging_steps=1, save_strategy="no", system_prompt="", precision="fp32")
    return load_config(None, {**base, **kw})


class Seen:
    """What the Trainer really ran with: the model's attention and the optimizer."""

    def __init__(self):
        from transformers import TrainerCallback

        seen = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
                seen.attention = model.config._attn_implementation
                seen.fused = optimizer.defaults.get("fused")
                seen.liger = args.use_liger_kernel

        self.callback = Callback()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")
def test_a_cpu_run_asked_for_gpu_options_trains_with_the_fallbacks_and_records_them(tiny, tmp_path, capsys):
    seen = Seen()
    train(tiny_recipe(tiny, tmp_path / "run", attn_implementation="flash_attention_2", liger_kernel=True,
                      fused_optimizer=True), callbacks=[seen.callback], progress=False)
    err = capsys.readouterr().err
    assert "cings train: attn_implementation flash_attention_2 is unavailable here (no CUDA GPU" in err
    assert "cings train: liger_kernel true is unavailable here" in err
    assert (seen.attention, seen.fused, seen.liger) == ("sdpa", True, False)
    recorded = yaml.safe_load((tmp_path / "run" / runs.CONFIG_FILE).read_text())
    assert (recorded["attn_implementation"], recorded["liger_kernel"], recorded["fused_optimizer"]) == ("sdpa", False, True)
    speed = json.loads((tmp_path / "run" / runs.DATA_FILE).read_text())["speed_options"]
    assert speed["attn_implementation"]["asked"] == "flash_attention_2" and speed["attn_implementation"]["used"] == "sdpa"
    assert speed["attn_implementation"]["why"].startswith("no CUDA GPU")
    assert speed["fused_optimizer"] == {"asked": True, "used": True}


def test_fused_adamw_takes_over_a_resumed_run_with_the_same_weights(tiny, tmp_path):
    """Fused and plain AdamW keep the same state and make the same update: a run resumed with the other
    one ends where the whole run does."""
    from safetensors.torch import load_file

    from .test_train import StopAt

    common = dict(max_steps=4, save_strategy="steps", save_steps=2)
    train(tiny_recipe(tiny, tmp_path / "whole", **common), progress=False)
    train(tiny_recipe(tiny, tmp_path / "cut", **common), callbacks=[StopAt(2).callback], progress=False)
    assert (tmp_path / "cut" / "checkpoint-2").is_dir()
    seen = Seen()
    train(tiny_recipe(tiny, tmp_path / "cut", resume=True, fused_optimizer=True, **common), callbacks=[seen.callback],
          progress=False)
    assert seen.fused is True
    whole, resumed = (load_file(Path(tmp_path) / name / "model.safetensors") for name in ("whole", "cut"))
    for name, tensor in whole.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6, rtol=0), name
