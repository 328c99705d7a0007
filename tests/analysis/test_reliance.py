"""Context reliance over training: rates per point by hand, resume and refusals, and the command on a tiny
run with two checkpoints (its checkpoint's predictions equal `cings generate`'s)."""

from __future__ import annotations

import json

import pytest
import torch

from cings.analysis.reliance import Point, RelianceSettings, points_of, reliance_curve
from cings.cli import main
from cings.config import load_config
from cings.records import Context, Record, RecordError, write_records
from cings.train import train

from ..conftest import build_tiny_bpe

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
FACTS = [("Paris", "France", "Lyon"), ("Rome", "Italy", "Milan"), ("Berlin", "Germany", "Bonn"), ("Madrid", "Spain", "Seville")]


def conflicts() -> list[Record]:
    """The passage names another capital (answers) than the true one (parametric_answers)."""
    return [Record(id=f"c{i}", instruction=f"What is the capital of {country}?", response=fake, answers=(fake,),
                   parametric_answers=(city,), contexts=(Context(title=country, text=f"The capital of {country} is {fake}.",
                                                                 gold=True),))
            for i, (city, country, fake) in enumerate(FACTS)]


class Stub:
    """Answers by a table {step: [what each record's answer contains]}: 'c' the passage's, 'm' the original."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, point, records, path):
        self.calls.append(point.step)
        done = {json.loads(line)["id"] for line in path.read_text().splitlines()} if path.is_file() else set()
        with open(path, "a") as handle:
            for record, kind in zip(records, self.table[point.step]):
                if record.id in done:
                    continue
                text = {"c": record.answers[0], "m": record.parametric_answers[0], "b": " or ".join(
                    [record.answers[0], record.parametric_answers[0]]), "n": "I do not know"}[kind]
                handle.write(json.dumps({"id": record.id, "prediction": text, "answers": list(record.answers),
                                         "parametric_answers": list(record.parametric_answers)}) + "\n")
        return {"generated": len(records) - len(done), "skipped": {}}


POINTS = [Point(0, "base", None), Point(3, "checkpoint-3", "run/checkpoint-3"), Point(6, "final", "run")]
TABLE = {0: "mmmn", 3: "cmbn", 6: "cccb"}


def test_rates_per_point_are_the_conflict_outcomes_of_its_predictions(tmp_path):
    data = tmp_path / "conflict.jsonl"
    write_records(conflicts(), data)
    stub = Stub(TABLE)
    result = reliance_curve(POINTS, data, tmp_path / "out", RelianceSettings(bootstrap=200), stub, run="run")
    rows = {r["step"]: r for r in result["rows"]}
    assert [r["label"] for r in result["rows"]] == ["base", "checkpoint-3", "final"]
    # by hand: context counts 'c' and 'b', memory 'm' and 'b', other 'n'; 4 records each
    assert [(rows[s]["context_rate"], rows[s]["memory_rate"], rows[s]["other_rate"], rows[s]["both_rate"])
            for s in (0, 3, 6)] == [(0.0, 75.0, 25.0, 0.0), (50.0, 50.0, 25.0, 25.0), (100.0, 25.0, 0.0, 25.0)]
    assert all(rows[s]["n"] == 4 for s in rows)
    lo, hi = rows[3]["context_rate_ci"]
    assert 0 <= lo <= 50 <= hi <= 100 and lo < hi
    written = json.loads((tmp_path / "out" / "reliance.json").read_text())
    assert written["rows"] == result["rows"] and (tmp_path / "out" / "reliance.png").stat().st_size > 0
    assert stub.calls == [0, 3, 6]

    # Again: nothing is generated, the same curve comes back; a new batch size changes only speed.
    again = reliance_curve(POINTS, data, tmp_path / "out", RelianceSettings(bootstrap=200, batch_size=2), stub, run="run")
    assert stub.calls == [0, 3, 6] and again["rows"] == result["rows"]
    # A point cut short (no done marker, half its rows) is continued; a new checkpoint is added.
    path = tmp_path / "out" / "predictions" / "step-3.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    (tmp_path / "out" / "predictions" / "step-3.done.json").unlink()
    more = reliance_curve([*POINTS, Point(9, "checkpoint-9", "run/checkpoint-9")], data, tmp_path / "out",
                          RelianceSettings(bootstrap=200), Stub({**TABLE, 9: "cccc"}), run="run")
    assert [r["step"] for r in more["rows"]] == [0, 3, 6, 9]
    assert more["rows"][1] == result["rows"][1] and more["rows"][3]["context_rate"] == 100.0


def test_other_settings_or_input_are_refused_and_overwrite_starts_afresh(tmp_path):
    data = tmp_path / "conflict.jsonl"
    write_records(conflicts(), data)
    reliance_curve(POINTS, data, tmp_path / "out", RelianceSettings(bootstrap=0), Stub(TABLE), run="run")
    with pytest.raises(ValueError, match=r"made otherwise \(max_new_tokens: 32 -> 8\); pass --overwrite"):
        reliance_curve(POINTS, data, tmp_path / "out", RelianceSettings(bootstrap=0, max_new_tokens=8), Stub(TABLE), run="run")
    write_records(conflicts()[:3], data)
    with pytest.raises(ValueError, match=r"input_sha256: "):
        reliance_curve(POINTS, data, tmp_path / "out", RelianceSettings(bootstrap=0), Stub(TABLE), run="run")
    stub = Stub(TABLE)
    result = reliance_curve(POINTS, data, tmp_path / "out", RelianceSettings(bootstrap=0), stub, run="run", overwrite=True)
    assert stub.calls == [0, 3, 6] and result["rows"][0]["n"] == 3 and "context_rate_ci" not in result["rows"][0]
    bare = tmp_path / "bare.jsonl"
    write_records([Record(id="x", instruction="Q?", contexts=(Context(text="P", gold=True),), response="A",
                          answers=("A",))], bare)
    with pytest.raises(RecordError, match=rf"{bare}:1: field 'parametric_answers' is empty.*cings counterfactual"):
        reliance_curve(POINTS, bare, tmp_path / "o2", RelianceSettings(), Stub(TABLE))
    with pytest.raises(ValueError, match="a conflict needs its passage"):
        RelianceSettings(docs="none")


# ---------------------------------------------------------------- on a real (tiny) run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Full fine-tuning, 2 steps, a checkpoint after each; and a LoRA run of 1 step."""
    root = tmp_path_factory.mktemp("reliance_run")
    build_tiny_bpe().save_pretrained(root / "tok")
    train_data = root / "train.jsonl"
    write_records([Record(id=str(i), instruction=f"What is the capital of {country}?", response=city,
                          contexts=(Context(title=country, text=f"The capital of {country} is {city}."),))
                   for i, (city, country, _) in enumerate(FACTS)], train_data)
    common = dict(model_config=TINY, tokenizer=str(root / "tok"), data=str(train_data), max_length=128,
                  learning_rate=1e-2, global_batch_size=2, micro_batch_size=2, num_epochs=1, max_steps=2,
                  logging_steps=1, save_strategy="steps", save_steps=1, system_prompt="")
    train(load_config(None, {**common, "output_dir": str(root / "full")}), progress=False)
    train(load_config(None, {**common, "output_dir": str(root / "lora"), "lora": True, "max_steps": 1,
                             "lora_target_modules": ["q_proj", "v_proj"]}), progress=False)
    conflict = root / "conflict.jsonl"
    write_records(conflicts(), conflict)
    return root


def test_the_command_on_a_run_with_two_checkpoints_matches_cings_generate_and_resumes(tiny_run, tmp_path, capsys):
    run, out = tiny_run / "full", tmp_path / "rel"
    args = ["analyze", "reliance", "--run", str(run), "--input", str(tiny_run / "conflict.jsonl"), "--output", str(out),
            "--max-new-tokens", "4", "--bootstrap", "50", "--no-progress"]
    assert main([*args, "--limit", "3"]) == 0
    result = json.loads((out / "reliance.json").read_text())
    # the final weights are checkpoint-2's step, so they are not a point of their own
    assert [(r["step"], r["label"]) for r in result["rows"]] == [(0, "base"), (1, "checkpoint-1"), (2, "checkpoint-2")]
    for r in result["rows"]:
        assert r["n"] == 3 and all(r[k] is not None for k in ("context_rate", "memory_rate", "other_rate"))
        assert r["context_rate"] + r["memory_rate"] + r["other_rate"] - r["both_rate"] == pytest.approx(100.0)
    rows = [json.loads(line) for line in (out / "predictions" / "step-2.jsonl").read_text().splitlines()]
    assert {r["settings"]["step"] for r in rows} == {2} and rows[0]["settings"]["adapter"] == str(run / "checkpoint-2")
    # A checkpoint is what `cings generate --model RUN/checkpoint-N` answers with.
    assert main(["generate", "--model", str(run / "checkpoint-2"), "--input", str(tiny_run / "conflict.jsonl"),
                 "--limit", "3", "--docs", "gold", "--prompt", "prefill", "--max-new-tokens", "4",
                 "--output", str(tmp_path / "gen.jsonl"), "--no-progress"]) == 0
    generated = {r["id"]: r["prediction"] for r in map(json.loads, (tmp_path / "gen.jsonl").read_text().splitlines())}
    assert generated == {r["id"]: r["prediction"] for r in rows}
    capsys.readouterr()
    assert main([*args, "--limit", "3"]) == 0  # everything is there: no model is loaded
    err = capsys.readouterr().err
    assert err.count("predictions done before") == 3 and "generating" not in err, err
    assert main(args) == 1  # every record now: not the study in OUTPUT
    err = capsys.readouterr().err
    assert "cings analyze: error:" in err and "limit: 3 -> None" in err and "--overwrite" in err, err


def test_a_lora_runs_points_sit_on_the_base_it_trained_from(tiny_run):
    from cings.runs import load_for_generation, load_run_base, weights_by_step

    run = tiny_run / "lora"
    points = points_of(weights_by_step(run))
    assert [(p.step, p.label) for p in points] == [(0, "base"), (1, "checkpoint-1")]
    base, tok, options, spec = load_run_base(run)
    tuned, _, _, _ = load_for_generation(None, adapter=str(run / "checkpoint-1"))
    assert spec == "model_config" and options.system_prompt is None
    # LoRA on q/v only: the embeddings are the base's, so both were built from the run's seeded base.
    assert torch.equal(base.get_input_embeddings().weight, tuned.get_input_embeddings().weight)
    assert base.get_input_embeddings().num_embeddings == len(tok)
