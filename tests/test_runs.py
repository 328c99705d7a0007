"""The run folder: read back, checkpoints, what --overwrite may remove, the loss log of a resumed run."""

from __future__ import annotations

import json

import pytest

from cings import runs
from cings.config import ConfigError, TrainConfig


def checkpoint(folder, step, *, state=True, weights=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if weights:
        (path / "adapter_model.safetensors").write_bytes(b"w")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_the_last_complete_checkpoint_skips_one_written_in_part(tmp_path):
    assert runs.last_complete_checkpoint(tmp_path / "none") is None
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 12, state=False)  # killed while saving: trainer_state.json comes last
    checkpoint(tmp_path, 14, weights=False)
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in runs.checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-12", "checkpoint-14"]
    assert runs.last_complete_checkpoint(tmp_path).name == "checkpoint-10"  # by step, not by name
    assert runs.checkpoint_step(tmp_path / "checkpoint-10") == 10


def test_load_run_tells_a_run_from_any_other_folder(tmp_path):
    assert runs.load_run(tmp_path / "missing") is None
    assert runs.load_run(tmp_path) is None
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w")
    assert runs.load_run(tmp_path) is None  # a plain model folder is no run

    cfg = TrainConfig(model="smollm2", data="d.jsonl", lora=True)
    runs.start_run(tmp_path / "run", cfg, {"train": {"dropped": {"too_long": 2}}, "render_options": {"mode": "context"}})
    run = runs.load_run(tmp_path / "run")
    assert run is not None and not run.finished and run.config == cfg
    assert (run.model, run.gguf_file, run.adapter, run.weights) == ("smollm2", None, False, False)
    assert run.dropped == {"too_long": 2} and run.render_options == {"mode": "context"}
    assert run.last_complete_checkpoint is None
    (tmp_path / "run" / "adapter_config.json").write_text("{}")
    (tmp_path / "run" / "adapter_model.safetensors").write_bytes(b"w")
    runs.finish_run(tmp_path / "run", cfg, {"train": {}})
    run = runs.load_run(tmp_path / "run")
    assert run.finished and run.adapter and run.weights


def test_overwrite_removes_exactly_what_the_run_wrote(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "demo_stage_key").write_text("k")  # there before the run
    runs.start_run(folder, TrainConfig(model="m", data="d"), {})
    checkpoint(folder, 1)
    (folder / "loss_log.jsonl").write_text("")
    (folder / "tb").mkdir()  # a logger's folder, listed at the next checkpoint or the end
    runs.record_written(folder)
    checkpoint(folder, 2, state=False)  # killed after the last listing
    assert set(runs.run_files(folder)) == {"cings_files.json", "cings_config.yaml", "cings_data.json", "checkpoint-1",
                                           "checkpoint-2", "loss_log.jsonl", "tb"}
    with pytest.raises(ConfigError, match=r"holds files no cings run wrote \(demo_stage_key\)"):
        runs.remove_run(folder)
    (folder / "my notes.txt").write_text("mine")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ConfigError, match=r"demo_stage_key, my notes.txt"):
        runs.remove_run(folder, keep=())
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing removed
    (folder / "my notes.txt").unlink()
    runs.remove_run(folder, keep=("demo_stage_key",))
    assert [p.name for p in folder.iterdir()] == ["demo_stage_key"]


def test_open_output_refuses_a_run_unless_told_what_to_do(tmp_path):
    fresh = TrainConfig(model="m", data="d", output_dir=str(tmp_path / "run"))
    assert runs.open_output(fresh, {}) is None  # no folder yet: just works
    runs.start_run(tmp_path / "run", fresh, {})
    with pytest.raises(ConfigError, match="partial .* pass --resume to continue it or --overwrite to replace it"):
        runs.open_output(fresh, {})
    with pytest.raises(ConfigError, match="no complete checkpoint in .*; start afresh with --overwrite"):
        runs.open_output(TrainConfig(model="m", data="d", output_dir=str(tmp_path / "run"), resume=True), {})
    with pytest.raises(ConfigError, match="choose one"):
        runs.open_output(TrainConfig(model="m", data="d", output_dir=str(tmp_path / "run"), resume=True,
                                     overwrite=True), {})
    assert runs.open_output(fresh, {}, main=False) is None  # other processes leave the folder to the main one
    assert runs.open_output(TrainConfig(model="m", data="d", output_dir=str(tmp_path / "run"), overwrite=True), {}) is None
    assert not (tmp_path / "run" / "cings_config.yaml").exists()


def test_resume_may_change_only_what_leaves_the_math_alone(tmp_path):
    cfg = TrainConfig(model="m", data="d", output_dir=str(tmp_path), save_strategy="steps")
    fingerprint = {"data": {"sha256": "a" * 64}, "tokenizer": {"vocab_sha256": "b" * 64, "chat_template_sha256": "c" * 64},
                   "render_options": {"mode": "context", "answer_marker": "## Answer"}, "world_size": 1}
    runs.start_run(tmp_path, cfg, {"fingerprint": fingerprint})
    checkpoint(tmp_path, 3)
    again = TrainConfig(**{**cfg.__dict__, "resume": True, "max_steps": 50, "logging_steps": 1, "save_steps": 7})
    assert runs.open_output(again, fingerprint).name == "checkpoint-3"
    changed = TrainConfig(**{**again.__dict__, "seed": 3, "global_batch_size": 64, "precision": "bf16"})
    other = {**fingerprint, "data": {"sha256": "d" * 64}, "world_size": 2,
             "render_options": {"mode": "context", "answer_marker": "Answer:"}}
    with pytest.raises(ConfigError) as caught:
        runs.open_output(changed, other)
    message = str(caught.value)
    for part in ("seed: 2 -> 3", "global_batch_size: 128 -> 64", "precision: 'auto' -> 'bf16'",
                 "data sha256: aaaaaaaaaaaa -> dddddddddddd", "world_size: 1 -> 2",
                 "render answer_marker: '## Answer' -> 'Answer:'"):
        assert part in message, message
    assert "max_steps:" not in message and "render mode" not in message


def test_a_resumed_loss_log_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    rows = [{"step": s, "loss": 1.0} for s in (1, 2, 3, 4, 5)] + [{"step": 5, "train_runtime": 1.0}]
    (tmp_path / "loss_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs.truncate_loss_log(tmp_path, 3)
    assert [json.loads(line)["step"] for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()] == [1, 2, 3]
