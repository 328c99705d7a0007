"""The demo report's best-layout comparison, on hand-made prediction files."""

from __future__ import annotations

import json
from pathlib import Path

from cings.demo import EVAL_SETS
from cings.demo_report import _best_layout_table, _verdict, best_layouts

SETS = [e for e in EVAL_SETS if e.name in ("squad-prefill", "squad-input", "squad-counterfactual",
                                           "squad-counterfactual-input", "nq-closed-book")]


def _write(root: Path, model: str, set_name: str, right: list[bool], conflict: bool = False) -> None:
    path = root / "evals" / model / set_name / "predictions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, ok in enumerate(right):
        row = {"id": f"q{k}", "prediction": "Paris" if ok else "Rome", "answers": ["Paris"]}
        if conflict:
            row["parametric_answers"] = ["Rome"]
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n")


def test_each_model_gets_its_own_best_layout_and_the_verdict_pairs_records(tmp_path):
    n = 40
    # base reads the passage from the user turn only; CINGS from the assistant turn only.
    _write(tmp_path, "base", "squad-prefill", [False] * n)
    _write(tmp_path, "base", "squad-input", [k % 2 == 0 for k in range(n)])
    _write(tmp_path, "context", "squad-prefill", [k % 4 != 3 for k in range(n)])
    _write(tmp_path, "context", "squad-input", [False] * n)
    for model in ("base", "context"):
        _write(tmp_path, model, "squad-counterfactual", [True] * n, conflict=True)
        _write(tmp_path, model, "squad-counterfactual-input", [False] * n, conflict=True)
    best = best_layouts(tmp_path, ["base", "context"], SETS)
    assert set(best) == {"squad", "squad-counterfactual"}  # closed-book has one layout: not a choice
    assert best["squad"]["base"]["layout"] == "input" and best["squad"]["base"]["value"] == 50.0
    assert best["squad"]["context"]["layout"] == "prefill" and best["squad"]["context"]["value"] == 75.0
    assert best["squad-counterfactual"]["base"]["metric"] == "context_rate"
    assert best["squad-counterfactual"]["base"]["value"] == 100.0

    verdict = _verdict(best)
    squad = next(line for line in verdict if line.startswith("- squad,"))
    # paired per record: CINGS right on 3 of 4, base on 2 of 4 -> +25 points
    assert "CINGS (prefill) 75.0 vs base (input) 50.0: +25.0 points" in squad and "paired over 40" in squad
    table = "\n".join(_best_layout_table(best, ["base", "context"]))
    assert "| base | 50.0 [" in table and "`input`" in table and "`prefill`" in table


def test_a_model_missing_a_layout_is_left_out_not_guessed(tmp_path):
    _write(tmp_path, "base", "squad-prefill", [True, False])
    assert best_layouts(tmp_path, ["base"], SETS) == {}
