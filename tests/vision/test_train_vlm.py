"""cings.train_vlm: both stages on small models, end to end through the CLI (build -> pretrain ->
finetune -> generate -> evaluate); what each stage trains; resume after a kill equals an unbroken run;
a resume with other settings is refused."""

from __future__ import annotations

import json

import pytest
import torch

from cings.config import ConfigError
from cings.train_vlm import VlmTrainConfig, train_vlm
from tests.vision.conftest import COLOURS


def _weights(folder, prefix):
    """The loaded model's weights under ``prefix`` (its own names, not the file's legacy ones)."""
    from transformers import LlavaForConditionalGeneration

    state = LlavaForConditionalGeneration.from_pretrained(folder).state_dict()
    found = {k: v for k, v in state.items() if k.startswith(prefix)}
    assert found, f"no weights under {prefix!r}"
    return found


def _cfg(model, data, out, **kw):
    base = dict(model=str(model), data=str(data), output_dir=str(out), global_batch_size=4, micro_batch_size=2,
                logging_steps=1, save_steps=5, precision="fp32", warmup_ratio=0.0)
    return VlmTrainConfig(**{**base, **kw})


def test_pretrain_trains_the_projector_only(tmp_path, tiny_vlm, caption_set):
    result = train_vlm(_cfg(tiny_vlm, caption_set, tmp_path / "pre", stage="pretrain", max_steps=12, learning_rate=1e-2),
                       progress=False)
    assert result["steps"] == 12 and result["last_loss"] < result["first_loss"]
    for prefix in ("model.language_model.", "model.vision_tower.", "lm_head."):
        before, after = _weights(tiny_vlm, prefix), _weights(tmp_path / "pre", prefix)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), prefix
    before, after = _weights(tiny_vlm, "model.multi_modal_projector."), _weights(tmp_path / "pre", "model.multi_modal_projector.")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert result["data_order"]["examples"] == 48 and result["data"]["kept"] == 4


def test_end_to_end_through_the_cli_memorises_the_captions(tmp_path, tiny_lm, tiny_tower, caption_set):
    """The four images differ only in colour, so answering each one right needs the image."""
    from cings.cli import main

    vlm, pre, fine = tmp_path / "vlm", tmp_path / "pre", tmp_path / "fine"
    common = ["--data", str(caption_set), "--global-batch-size", "4", "--micro-batch-size", "4", "--precision", "fp32",
              "--no-progress", "--warmup-ratio", "0"]
    assert main(["vlm", "build", "--vision-tower", str(tiny_tower), "--language-model", str(tiny_lm), "--output", str(vlm)]) == 0
    assert main(["vlm", "train", "--model", str(vlm), "--stage", "pretrain", "--output-dir", str(pre), "--max-steps", "20",
                 "--learning-rate", "1e-2", *common]) == 0
    assert main(["vlm", "train", "--model", str(pre), "--stage", "finetune", "--output-dir", str(fine), "--max-steps", "60",
                 "--learning-rate", "3e-3", *common]) == 0
    losses = [json.loads(line)["loss"] for line in (fine / "loss_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < 0.1 * losses[0]

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": c, "image": f"{c}.png", "question": "What colour is this?",
                                             "label": "yes", "split": "random"}) + "\n" for c in COLOURS))
    pred = tmp_path / "pred.jsonl"
    assert main(["vlm", "generate", "--model", str(fine), "--questions", str(questions), "--image-folder",
                 str(caption_set.parent), "--output", str(pred), "--max-new-tokens", "24"]) == 0
    answers = {json.loads(line)["id"]: json.loads(line)["prediction"] for line in pred.read_text().splitlines()}
    assert answers == {c: f"It is {c}." for c in COLOURS}
    assert main(["vlm", "evaluate", "--predictions", str(pred), "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 4 and metrics["yes_ratio"] == 100.0 and set(metrics["splits"]) == {"random"}


def test_lora_finetune_is_merged_into_a_plain_folder(tmp_path, tiny_vlm, caption_set):
    from transformers import LlavaForConditionalGeneration

    result = train_vlm(_cfg(tiny_vlm, caption_set, tmp_path / "lora", stage="finetune", lora=True, lora_r=4, lora_alpha=8,
                            lora_top_layers=1, max_steps=6, learning_rate=1e-2), progress=False)
    assert result["steps"] == 6
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "lora")  # no adapter files needed
    assert not any("lora" in name for name in model.state_dict())
    before, after = _weights(tiny_vlm, "model.language_model."), _weights(tmp_path / "lora", "model.language_model.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers.1." in k for k in changed)  # only the top layer's projections


class _Kill(Exception):
    pass


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_after_a_kill_equals_an_unbroken_run(tmp_path, tiny_vlm, caption_set, lora):
    """A full checkpoint is in LLaVA's legacy key names, which Trainer's own resume does not map."""
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 7:
                raise _Kill()

    whole = train_vlm(_cfg(tiny_vlm, caption_set, tmp_path / "whole", stage="finetune", max_steps=10, learning_rate=1e-3, lora=lora),
                      progress=False)
    broken = _cfg(tiny_vlm, caption_set, tmp_path / "broken", stage="finetune", max_steps=10, learning_rate=1e-3, lora=lora)
    with pytest.raises(_Kill):
        train_vlm(broken, callbacks=[KillAt()], progress=False)
    with pytest.raises(ConfigError, match="not empty"):
        train_vlm(broken, progress=False)
    changed = _cfg(tiny_vlm, caption_set, tmp_path / "broken", stage="finetune", max_steps=10, learning_rate=5e-4, resume=True,
                   lora=lora)
    with pytest.raises(ConfigError, match="learning_rate"):
        train_vlm(changed, progress=False)
    resumed = train_vlm(_cfg(tiny_vlm, caption_set, tmp_path / "broken", stage="finetune", max_steps=10, learning_rate=1e-3,
                             resume=True, lora=lora), progress=False)
    assert resumed["steps"] == 10 and resumed["data_order"]["sha256"] == whole["data_order"]["sha256"]
    a, b = _weights(tmp_path / "whole", ""), _weights(tmp_path / "broken", "")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_config_errors():
    with pytest.raises(ConfigError, match="pretrain or finetune"):
        VlmTrainConfig(model=".", data="x", stage="both").validate()
    with pytest.raises(ConfigError, match="--lora applies"):
        VlmTrainConfig(model=".", data="x", stage="pretrain", lora=True).validate()
    with pytest.raises(ConfigError, match="no such folder"):
        VlmTrainConfig(model="/nowhere", data="x").validate()


def test_a_run_shorter_than_the_logging_interval_still_logs_its_loss(tmp_path, tiny_vlm, caption_set, capsys):
    from cings.cli import main

    out = tmp_path / "short"
    assert main(["vlm", "train", "--model", str(tiny_vlm), "--stage", "pretrain", "--data", str(caption_set),
                 "--max-steps", "2", "--logging-steps", "5", "--global-batch-size", "4", "--micro-batch-size", "4",
                 "--precision", "fp32", "--output-dir", str(out), "--no-progress"]) == 0
    assert "2 steps, loss " in capsys.readouterr().err
    assert json.loads((out / "cings_vlm_run.json").read_text())["last_loss"] is not None
