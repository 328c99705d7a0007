"""Cross-fitted best layout: chosen on the other half of the records, never on the records it scores."""

from __future__ import annotations

import pytest

from cings.best_layout import crossfit_best_layout, fold_of


def _ids(n: int) -> list[str]:
    return [f"q{i}" for i in range(n)]


def test_folds_are_stable_and_both_used():
    ids = _ids(200)
    folds = [fold_of(i) for i in ids]
    assert folds == [fold_of(i) for i in ids]
    assert 60 < sum(folds) < 140  # a hash split, roughly half and half


def test_a_layout_better_everywhere_is_chosen_in_both_folds():
    ids = _ids(40)
    good = {i: 1.0 for i in ids}
    bad = {i: float(k % 4 == 0) for k, i in enumerate(ids)}
    r = crossfit_best_layout({"prefill": bad, "input": good}, bootstrap=0)
    assert r["layout"] == "input" and r["chosen"] == {"fold0": "input", "fold1": "input"}
    assert r["value"] == 100.0 and r["best_in_hindsight"] == "input"
    assert r["per_layout"]["prefill"] == pytest.approx(25.0)


def test_each_fold_is_scored_by_the_choice_of_the_other_fold():
    # Layout A wins on fold 0's records only, B on fold 1's only: each fold then gets the layout that
    # lost on it, which is what cross-fitting means (no record chooses its own layout).
    ids = _ids(60)
    a = {i: float(fold_of(i) == 0) for i in ids}
    b = {i: float(fold_of(i) == 1) for i in ids}
    r = crossfit_best_layout({"A": a, "B": b}, bootstrap=0)
    assert r["chosen"] == {"fold0": "B", "fold1": "A"} and r["layout"] == "B/A"
    assert r["value"] == 0.0  # while the best in hindsight would score about 50
    assert all(v == 0.0 for v in r["values"].values())


def test_a_tie_goes_to_the_first_layout_given():
    ids = _ids(10)
    same = {i: float(k % 2) for k, i in enumerate(ids)}
    r = crossfit_best_layout({"prefill": dict(same), "input": dict(same)}, bootstrap=0)
    assert r["layout"] == "prefill" and r["best_in_hindsight"] == "prefill"


def test_interval_holds_the_value():
    ids = _ids(50)
    r = crossfit_best_layout({"x": {i: float(k % 3 == 0) for k, i in enumerate(ids)}}, bootstrap=500)
    lo, hi = r["value_ci"]
    assert lo <= r["value"] <= hi and hi - lo > 0


def test_layouts_scored_on_other_records_are_refused():
    with pytest.raises(ValueError, match="same records"):
        crossfit_best_layout({"prefill": {"a": 1.0, "b": 0.0}, "input": {"a": 1.0}})
    with pytest.raises(ValueError, match="no layouts"):
        crossfit_best_layout({})
