"""Multi-process training on CPU: DDP (torchrun, accelerate + ddp.yaml) and DeepSpeed ZeRO-2/3 (gloo).

Every distributed run is checked against a 1-process run of the same recipe and global batch:

- the same optimizer steps see the same examples: the Trainer's sampler draws one permutation from
  ``data_seed``, and accelerate deals consecutive micro batches to the ranks, so the 8 examples of a
  step are the 2 micro batches of 4 that the 1-process run accumulates;
- the loss is normalised by the trained tokens of the whole global batch (transformers'
  ``average_tokens_across_devices``, on by default), as the 1-process run normalises over its
  accumulated micro batches. With a per-device mean instead, step 1 loss differs by 6e-4 (relative)
  and the weights by up to 4.8e-3 after 3 steps (measured; CINGS trains only the few answer tokens,
  so token counts differ a lot between micro batches);
- the model starts from one saved random checkpoint (``from_pretrained`` on every rank), so the
  initialisation does not depend on how each launcher builds the model (ZeRO-3's ``zero.Init``
  draws a different random init than a plain ``from_config``).

Tolerance: max |w_dist - w_single| <= 1e-5 over all parameters. Adam moves each weight by about the
learning rate (1e-3) per step, so this is 1 % of one step; measured: 0.0 for DDP and ZeRO-2 and
6.8e-7 for ZeRO-3 (its reduce-scatter sums in another order). Per-step logged losses agree within
1e-5 relative (measured: identical).

The runs are real launches (subprocesses with a timeout); each checks that two processes took part
(``cings_data.json`` ``world_size`` 2 and, through a callback, the ``torch.distributed`` backend, the
accelerate distributed type and ZeRO-3's parameter partition). FSDP is not run: on CPU the Trainer
does not shard with it (it silently runs DDP), see docs/distributed.md.

``cings export`` of a ZeRO-3 run that kept only its shards (``zero3_save_16bit_model: false``) is
checked the same way: the gathered export (final folder and ``checkpoint-N``) must hold the 1-process
run's weights within the same tolerance, and its own reload check must have passed.

Run: ``.venv/bin/python -m pytest -q -m dist tests/test_distributed.py`` (about 3-4 minutes on 2 cores;
the first DeepSpeed run JIT-compiles a communication op, about 40 s more).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
RUN_TIMEOUT_S = 1200  # bounds a hang (a stuck rendezvous); not the budget: a busy machine is several times slower
LR = 1e-3
WEIGHT_TOL = 1e-5  # absolute, max over all parameters: 1 % of one Adam step at lr 1e-3
LOSS_RTOL = 1e-5
STEPS = 3

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
              "tie_word_embeddings": True}

# `cings train` with one more callback (through train()'s public `callbacks`): each rank writes what
# the distributed runtime says, so a test can tell 2 real processes from 2 copies of a 1-process run.
PROBE = '''
import json, os, sys

from transformers import TrainerCallback

import cings.train


class Probe(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch.distributed as dist
        from accelerate.state import AcceleratorState

        accel = AcceleratorState()
        params = list(model.parameters())
        info = {
            "rank": dist.get_rank() if dist.is_initialized() else 0,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "distributed_type": str(accel.distributed_type).rsplit(".", 1)[-1],
            "zero_stage": accel.deepspeed_plugin.zero_stage if accel.deepspeed_plugin else None,
            # ZeRO-3 keeps 1/world of each parameter in ds_tensor (the parameter itself is empty)
            "local_param_numel": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params),
            "full_param_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        }
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, f"probe-rank{info['rank']}.json"), "w") as handle:
            json.dump(info, handle)


_train = cings.train.train


def train(cfg, *, callbacks=(), progress=True):
    return _train(cfg, callbacks=[*callbacks, Probe()], progress=progress)


cings.train.train = train
from cings.cli import main  # noqa: E402

sys.exit(main())
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str, module: str) -> list[str]:
    """The venv's console script (torchrun, accelerate) or its module form."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.is_file() else [sys.executable, "-m", module]


def _launch(cmd: list[str], log: Path, env_extra: dict | None = None) -> float:
    """Run a launcher in its own process group; kill the whole group on timeout. Returns seconds."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    for key, value in (env_extra or {}).items():
        env[key] = os.pathsep.join(filter(None, [value, env.get(key)])) if key == "PYTHONPATH" else value
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"timed out after {RUN_TIMEOUT_S} s: {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    if code != 0:
        pytest.fail(f"exit {code}: {' '.join(cmd)}\n{log.read_text()[-4000:]}")
    return time.monotonic() - started


def _train_args(recipe: Path, out: Path) -> list[str]:
    return ["train", "--config", str(recipe), "--output-dir", str(out), "--no-progress"]


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def _params(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _probes(out: Path) -> list[dict]:
    return [json.loads((out / f"probe-rank{rank}.json").read_text()) for rank in (0, 1)]


def _check_two_processes(out: Path, log: Path) -> None:
    data = json.loads((out / "cings_data.json").read_text())
    assert data["world_size"] == 2, data
    assert data["gradient_accumulation_steps"] == 1, data  # 8 = 4 per device x 2 devices x 1
    # cmd_train reports on every rank: two processes finished the run.
    assert log.read_text().count(f"cings train: {STEPS} steps") == 2, log.read_text()[-3000:]


def _check_agreement(out: Path, single: dict, log: Path) -> float:
    _check_two_processes(out, log)
    assert _losses(out) == pytest.approx(single["losses"], rel=LOSS_RTOL)
    weights = _params(out)  # also: the saved model loads with plain from_pretrained
    diff = _max_diff(weights, single["weights"])
    assert diff <= WEIGHT_TOL, f"max |w - w_single| = {diff:.3g} > {WEIGHT_TOL}"
    return diff


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    (folder / "probe").mkdir()
    (folder / "probe" / "cings_dist_probe.py").write_text(PROBE)
    return folder


@pytest.fixture(scope="module")
def recipe(workdir, smollm2) -> Path:
    """A saved random tiny Llama (the smoke model) and a short recipe that starts from it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(2)
    spec = dict(TINY_LLAMA, vocab_size=len(smollm2))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec), dtype=torch.float32)
    model.save_pretrained(workdir / "init")
    settings = {"model": str(workdir / "init"), "tokenizer": "smollm2", "data": str(ROOT / "examples" / "squad_dev_sample.jsonl"),
                "mode": "context", "max_length": 256, "learning_rate": LR, "num_epochs": 1, "max_steps": STEPS,
                "global_batch_size": 8, "micro_batch_size": 4, "logging_steps": 1, "save_strategy": "no", "seed": 2,
                "precision": "fp32"}
    path = workdir / "recipe.yaml"
    path.write_text(json.dumps(settings, indent=1))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def single(workdir, recipe) -> dict:
    """The reference: one process, micro batch 4, 2 accumulation steps."""
    out, log = workdir / "single", workdir / "single.log"
    seconds = _launch([sys.executable, "-m", "cings", *_train_args(recipe, out)], log)
    data = json.loads((out / "cings_data.json").read_text())
    assert data["world_size"] == 1 and data["gradient_accumulation_steps"] == 2, data
    weights = _params(out)
    moved = _max_diff(weights, _params(workdir / "init"))
    assert moved > LR / 2, f"training barely moved the weights ({moved:.3g}): the comparison would be empty"
    print(f"\n1 process: {seconds:.1f} s, losses {_losses(out)}")
    return {"weights": weights, "losses": _losses(out), "seconds": seconds}


@pytest.mark.dist
def test_ddp_torchrun_matches_one_process(workdir, recipe, single):
    out, log = workdir / "ddp-torchrun", workdir / "ddp-torchrun.log"
    cmd = [*_tool("torchrun", "torch.distributed.run"), "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "cings", *_train_args(recipe, out)]
    seconds = _launch(cmd, log)
    diff = _check_agreement(out, single, log)
    print(f"\ntorchrun DDP x2: {seconds:.1f} s, max |dw| {diff:.3g}")


@pytest.mark.dist
def test_ddp_accelerate_config_runs_gloo_on_cpu(workdir, recipe, single):
    # configs/accelerate/ddp.yaml (distributed_type MULTI_GPU, like `accelerate launch --multi_gpu`) is
    # what starts N processes on a CPU-only machine too: the Trainer then runs MULTI_CPU over gloo
    # (cings passes use_cpu=True without CUDA). `accelerate launch --cpu --num_processes 2` starts one.
    out, log = workdir / "ddp-accelerate", workdir / "ddp-accelerate.log"
    cmd = [*_tool("accelerate", "accelerate.commands.accelerate_cli"), "launch",
           "--config_file", str(ACCELERATE_CONFIGS / "ddp.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "cings_dist_probe", *_train_args(recipe, out)]
    seconds = _launch(cmd, log, {"PYTHONPATH": str(workdir / "probe")})
    diff = _check_agreement(out, single, log)
    for rank, probe in enumerate(_probes(out)):
        assert probe == {**probe, "rank": rank, "world_size": 2, "backend": "gloo", "distributed_type": "MULTI_CPU"}
    print(f"\naccelerate ddp.yaml x2: {seconds:.1f} s, max |dw| {diff:.3g}")


def _zero(workdir: Path, recipe: Path, stage: int) -> tuple[Path, Path, float]:
    pytest.importorskip("deepspeed")
    out, log = workdir / f"zero{stage}", workdir / f"zero{stage}.log"
    cmd = [*_tool("accelerate", "accelerate.commands.accelerate_cli"), "launch",
           "--config_file", str(ACCELERATE_CONFIGS / f"zero{stage}.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "cings_dist_probe", *_train_args(recipe, out)]
    seconds = _launch(cmd, log, {"PYTHONPATH": str(workdir / "probe")})
    return out, log, seconds


@pytest.mark.dist
def test_zero3_matches_one_process_and_saves_plain_hf_weights(workdir, recipe, single):
    out, log, seconds = _zero(workdir, recipe, 3)
    diff = _check_agreement(out, single, log)
    probes = _probes(out)
    for rank, probe in enumerate(probes):
        assert probe == {**probe, "rank": rank, "world_size": 2, "backend": "gloo", "distributed_type": "DEEPSPEED",
                         "zero_stage": 3}
        # really sharded: each rank holds about half of the parameters
        assert probe["local_param_numel"] <= probe["full_param_numel"] // 2 + 1024, probe
    # zero3_save_16bit_model: one consolidated safetensors file, no ZeRO shards or zero_to_fp32.py
    assert (out / "model.safetensors").is_file()
    assert not (out / "zero_to_fp32.py").exists() and not list(out.glob("global_step*"))
    print(f"\nZeRO-3 x2: {seconds:.1f} s, max |dw| {diff:.3g}")


@pytest.mark.dist
def test_zero3_shards_only_export_gathers_the_one_process_weights(workdir, recipe, single):
    """A ZeRO-3 run without 16-bit gathering keeps only shards; `cings export` gathers them (fp32 masters)."""
    pytest.importorskip("deepspeed")
    import re

    import yaml
    from transformers import AutoTokenizer

    from cings.runs import load_run

    accel = yaml.safe_load((ACCELERATE_CONFIGS / "zero3.yaml").read_text())
    accel["deepspeed_config"]["zero3_save_16bit_model"] = False
    (workdir / "zero3-shards.yaml").write_text(yaml.safe_dump(accel))
    out, log = workdir / "zero3-shards", workdir / "zero3-shards.log"
    cmd = [*_tool("accelerate", "accelerate.commands.accelerate_cli"), "launch",
           "--config_file", str(workdir / "zero3-shards.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "cings_dist_probe", *_train_args(recipe, out),
           "--save-strategy", "steps", "--save-steps", str(STEPS)]  # checkpoint-3: the same state as the end
    seconds = _launch(cmd, log, {"PYTHONPATH": str(workdir / "probe")})
    _check_two_processes(out, log)
    # What transformers 5.23's save_model writes here: config and tokenizer, the shards (global_stepN/,
    # latest) and zero_to_fp32.py; the dummy weights file it saved first is removed.
    assert not list(out.glob("model*.safetensors")) and (out / "config.json").is_file() and (out / "zero_to_fp32.py").is_file()
    assert (out / "latest").read_text().strip() == f"global_step{STEPS}" and (out / f"global_step{STEPS}").is_dir()
    run = load_run(out)
    assert run.finished and not run.weights and run.shards == "zero"
    diffs = {}
    for name, folder in (("final", out), ("checkpoint", out / f"checkpoint-{STEPS}")):
        export, export_log = workdir / f"zero3-export-{name}", workdir / f"zero3-export-{name}.log"
        _launch([sys.executable, "-m", "cings", "export", str(folder), "--output", str(export)], export_log)
        said = export_log.read_text()
        # export's own check: the reloaded export's next-token logits equal the gathered model's
        verified = re.search(r"verified: reloaded, next-token logits within (\S+) of the gathered model's", said)
        assert verified, said[-3000:]
        record = json.loads((export / "cings_export.json").read_text())
        assert record["source"]["read"] == "zero" and record["kind"] == "full"
        # the gather is right, not only self-consistent: the 1-process run's weights
        diffs[name] = (_max_diff(_params(export), single["weights"]), float(verified.group(1)))
        assert diffs[name][0] <= WEIGHT_TOL, f"{name}: max |w - w_single| = {diffs[name][0]:.3g} > {WEIGHT_TOL}"
        tok = AutoTokenizer.from_pretrained(export)
        assert tok.pad_token is not None and tok.chat_template
    print(f"\nZeRO-3 x2, shards only: {seconds:.1f} s; export max |dw| vs 1 process, logit check: {diffs}")


@pytest.mark.dist
def test_zero2_matches_one_process(workdir, recipe, single):
    out, log, seconds = _zero(workdir, recipe, 2)
    diff = _check_agreement(out, single, log)
    for rank, probe in enumerate(_probes(out)):
        assert probe == {**probe, "rank": rank, "world_size": 2, "backend": "gloo", "distributed_type": "DEEPSPEED",
                         "zero_stage": 2}
    print(f"\nZeRO-2 x2: {seconds:.1f} s, max |dw| {diff:.3g}")


@pytest.mark.dist
@pytest.mark.parametrize("name", ["ddp", "fsdp", "zero2", "zero3", "multinode"])
def test_accelerate_config_files(name):
    """The configs parse as accelerate configs and say what docs/distributed.md says (no launch)."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCELERATE_CONFIGS / f"{name}.yaml"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file configs/accelerate/") and f"/{name}.yaml " in first, first
    assert "-m cings train --config configs/" in first, first
    config = load_config_from_file(str(path))
    # precision comes from the cings recipe; 'bf16' here would autocast fp32 CPU runs too
    assert config.mixed_precision == "no"
    kind = str(config.distributed_type).rsplit(".", 1)[-1]
    assert kind == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "multinode": "FSDP"}[name]
    if kind == "FSDP":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert "fsdp_activation_checkpointing" in fsdp
        assert not fsdp["fsdp_cpu_ram_efficient_loading"] or fsdp["fsdp_sync_module_states"]  # accelerate requires it
    if kind == "DEEPSPEED":
        ds = config.deepspeed_config
        assert ds["zero_stage"] == int(name[-1])
        # left to the Trainer ("auto"): a fixed value here would fight global_batch_size / (micro x world)
        assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds
        if name == "zero3":
            assert ds["zero3_save_16bit_model"] is True
    if name == "multinode":
        assert config.num_machines == 2 and config.machine_rank == 0
        assert config.main_process_ip and config.main_process_port
        assert config.num_processes % config.num_machines == 0  # the total over all machines
    else:
        assert config.num_machines == 1
