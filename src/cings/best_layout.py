"""Each model in its best prompt layout, chosen without peeking at the records it is scored on.

A model trained with the passage in the assistant turn (CINGS) is at home in the ``prefill`` layout;
standard instruction tuning and the untrained instruct model read a passage best from the user turn
(``input``). Comparing every model in one layout favours the model trained for it, and taking each
model's best layout on the test records themselves favours whoever is luckiest on them. So the
layout is chosen by two-fold cross-fitting: the records are split in two halves by a hash of their
id; each half is scored in the layout that did best on the *other* half. Every record is scored
once, by a choice made without it, and the interval is a bootstrap over records as for any score.

Stdlib only: per-record scores come in, numbers go out.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Mapping, Sequence

__all__ = ["fold_of", "crossfit_best_layout"]


def fold_of(record_id: str, folds: int = 2) -> int:
    """A record's fold: stable across runs, machines and Python's hash seed."""
    return int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16) % folds


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def crossfit_best_layout(per_layout: Mapping[str, Mapping[str, float]], *, bootstrap: int = 1000,
                         seed: int = 0) -> dict[str, Any]:
    """Cross-fitted score of the best layout.

    ``per_layout``: ``{layout: {record id: score}}`` (score 0/1 or any per-record value), every layout
    over the same ids; layouts are tried in the given order, so a tie goes to the first. Returns the
    score ×100 with its 95% interval, each record's score (``values``, for paired comparisons between
    models), the layout chosen for each fold (from the other fold), and, for
    reference, each layout's own score and the layout best on all records (``best_in_hindsight``).
    """
    if not per_layout:
        raise ValueError("no layouts to choose from")
    layouts = list(per_layout)
    ids = sorted(per_layout[layouts[0]])
    for name in layouts[1:]:
        if set(per_layout[name]) != set(ids):
            missing = sorted(set(ids) ^ set(per_layout[name]))[:3]
            raise ValueError(f"layout {name!r} was scored on other records than {layouts[0]!r} (e.g. {missing});"
                             " the layouts must be compared on the same records")
    if not ids:
        raise ValueError("no records")
    folds = {f: [i for i in ids if fold_of(i) == f] for f in (0, 1)}
    chosen: dict[int, str] = {}
    for f in (0, 1):
        other = folds[1 - f] or folds[f]  # a one-record set has one fold: it is chosen on itself
        means = {name: _mean([per_layout[name][i] for i in other]) for name in layouts}
        chosen[f] = max(layouts, key=lambda name: (means[name], -layouts.index(name)))
    values = [per_layout[chosen[fold_of(i)]][i] for i in ids]
    out: dict[str, Any] = {"n": len(ids), "value": 100 * _mean(values), "values": dict(zip(ids, values)),
                           "chosen": {"fold0": chosen[0], "fold1": chosen[1]},
                           "layout": chosen[0] if chosen[0] == chosen[1] else f"{chosen[0]}/{chosen[1]}",
                           "per_layout": {name: 100 * _mean([per_layout[name][i] for i in ids]) for name in layouts}}
    out["best_in_hindsight"] = max(layouts, key=lambda name: (out["per_layout"][name], -layouts.index(name)))
    if bootstrap > 0:
        rng, n = random.Random(seed), len(values)
        means = sorted(sum(values[j] for j in rng.choices(range(n), k=n)) / n for _ in range(bootstrap))
        lo, hi = means[int(0.025 * (bootstrap - 1))], means[int(round(0.975 * (bootstrap - 1)))]
        out["value_ci"] = [100 * lo, 100 * hi]
    return out
