"""Tables and bar charts from metrics files: the thing a user pastes into a paper or a pull request."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Sequence

from .metrics import metrics_table_markdown

__all__ = ["load_runs", "compare_runs", "bar_chart", "check_metrics", "save_figure"]


def load_runs(specs: Sequence[str]) -> dict[str, dict]:
    """``NAME=path`` or ``path`` (named by its folder or file stem) -> {name: metrics}."""
    runs: dict[str, dict] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            p = Path(spec)
            name = p.parent.name if p.stem == "metrics" else p.stem
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{path}: no such metrics file")
        try:
            runs[name] = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a metrics JSON ({err})") from None
    return runs


def _charted(run: dict) -> set[str]:
    """The figures of a metrics file a chart can draw: percentages, not counts, intervals or notes."""
    return {k for k, v in run.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "n" and not k.startswith("n_") and not k.endswith("_ci")}


def check_metrics(runs: dict[str, dict], metrics: Sequence[str]) -> None:
    """Refuse a metric that some run lacks: the chart would draw it as a 0 % bar."""
    if not metrics:
        raise ValueError("--metrics is empty; name at least one metric")
    common = set.intersection(*(_charted(r) for r in runs.values())) if runs else set()
    for m in metrics:
        if m in common:
            continue
        lacking = [name for name, run in runs.items() if m not in _charted(run)]
        # A prefix too: "accuracy" is too far from "acc" for difflib alone.
        close = [k for k in sorted(common) if m.startswith(k) or k.startswith(m)] or \
            difflib.get_close_matches(m, sorted(common), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = "the metrics files" if len(lacking) == len(runs) else ", ".join(lacking)
        raise ValueError(f"--metrics: no metric {m!r} in {where}{hint} (in every file: {', '.join(sorted(common)) or 'none'})")


def bar_chart(runs: dict[str, dict], metrics: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Grouped bars (one group per metric, one bar per run) with 95% bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(metrics) * max(len(names), 1) ** 0.5 + 3), 4))
    for i, name in enumerate(names):
        values, errs = [], [[], []]
        for m in metrics:
            v = runs[name].get(m)
            ci = runs[name].get(f"{m}_ci") or [v, v]
            values.append(v if v is not None else 0.0)
            errs[0].append(max((v or 0.0) - (ci[0] if ci[0] is not None else 0.0), 0.0))
            errs[1].append(max((ci[1] if ci[1] is not None else 0.0) - (v or 0.0), 0.0))
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, values, width, yerr=errs, capsize=3, label=f"{name} (n={runs[name].get('n', '?')})")
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("score (%), 95% bootstrap interval")
    ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (120 dpi, parents made) and close a figure: every chart cings draws ends here."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare_runs(specs: Sequence[str], output: str | Path, *, metrics: Sequence[str] = ("acc", "em", "f1"),
                 title: str = "") -> tuple[Path, Path]:
    runs = load_runs(specs)
    check_metrics(runs, metrics)
    output = Path(output)
    png = bar_chart(runs, metrics, output.with_suffix(".png"), title=title)
    table = metrics_table_markdown({name: run for name, run in runs.items()})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(f"# {title or 'Comparison'}\n\n{table}\n\n![chart]({png.name})\n", encoding="utf-8")
    return output, png
