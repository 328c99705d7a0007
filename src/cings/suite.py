"""``cings eval-suite``: one model over a YAML list of (dataset, docs, layout) -> predictions -> metrics -> one report.

With a router (``--router has-docs --ctx-adapter A --noctx-adapter B``) each entry is answered by
:func:`cings.route.route_records` instead: two models, each record by the one the rule picks.

A suite file has ``entries`` (each: ``name``, ``data``, optional ``format``, ``docs``, ``ndocs``, ``prompt``,
``limit``, ``max_new_tokens``) and optional ``limit``, ``seed``, ``max_new_tokens`` and ``metrics``.
A relative ``data`` path is read from the suite file's folder. The default suite ships inside the
package and reads the slices under the repository's ``examples/``; an installed package has no
such folder, and then asks for ``--suite``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .generate import GenerationSettings

if TYPE_CHECKING:
    from .route import RouteRule

__all__ = ["DEFAULT_SUITE", "Suite", "SuiteEntry", "load_suite", "run_suite", "spread_sample", "examples_dir"]

DEFAULT_SUITE = Path(__file__).resolve().parent / "suites" / "default.yaml"
_ENTRY_KEYS = {"name", "data", "format", "docs", "ndocs", "prompt", "limit", "max_new_tokens"}
_SUITE_KEYS = {"entries", "limit", "seed", "max_new_tokens", "metrics"}


def spread_sample(records: list, n: int | None, seed: int) -> list:
    """``n`` records spread over the whole file (seeded), in file order: the first 100 SQuAD questions
    are all about one Super Bowl."""
    if n is None or n >= len(records):
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in keep]


def examples_dir() -> Path | None:
    """The ``examples/`` folder of the checkout this package runs from, else of the current folder."""
    here = Path(__file__).resolve()
    for root in [*here.parents, Path.cwd()]:
        if (root / "pyproject.toml").is_file() and (root / "examples").is_dir():
            return root / "examples"
    return None


@dataclass
class SuiteEntry:
    name: str
    data: Path
    format: str
    limit: int | None
    settings: GenerationSettings


@dataclass
class Suite:
    path: Path
    entries: list[SuiteEntry]
    seed: int
    metrics: list[str]


def _data_root(path: Path) -> Path:
    if path.resolve() != DEFAULT_SUITE:
        return path.parent
    root = examples_dir()
    if root is None:
        raise ValueError(f"{path}: the default suite reads the data slices under the repository's examples/ folder,"
                         " and there is none here (an installed package ships no data); run from a clone of the"
                         " repository, or pass --suite with a suite of your own data files")
    return root


def _whole(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: '{key}' must be a whole number of at least 1, not {value!r}")
    return value


def load_suite(suite: str | Path | None = None, *, limit: int | None = None, batch_size: int = 8,
               max_new_tokens: int | None = None) -> Suite:
    """Read and check a suite file (every entry, its data file and its settings) before any model is loaded."""
    import yaml

    from .formats import FORMATS

    path = Path(suite) if suite else DEFAULT_SUITE
    if not path.is_file():
        raise ValueError(f"--suite {path}: no such file")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    entries = spec.get("entries") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a suite needs 'entries': a list of {{name, data, docs, prompt}}")
    unknown = sorted(set(spec) - _SUITE_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a suite has {sorted(_SUITE_KEYS)}")
    root = _data_root(path)
    limit = limit if limit is not None else spec.get("limit")
    if limit is not None:
        _whole(str(path), "limit", limit)
    default_tokens = spec.get("max_new_tokens", 300)
    out = []
    for i, entry in enumerate(entries, start=1):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("data"):
            raise ValueError(f"{where}: needs 'name' and 'data'")
        where = f"{path}: entry {entry['name']!r}"
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; an entry has {sorted(_ENTRY_KEYS)}")
        data = Path(entry["data"]).expanduser()
        data = data if data.is_absolute() else root / data
        if not data.is_file():
            raise ValueError(f"{where}: no data file {data}")
        try:
            settings = GenerationSettings(docs=entry.get("docs", "gold"), ndocs=entry.get("ndocs", 1),
                                          prompt=entry.get("prompt", "prefill"),
                                          max_new_tokens=entry.get("max_new_tokens", default_tokens)
                                          if max_new_tokens is None else max_new_tokens,
                                          batch_size=batch_size, extra={"dataset": entry["name"]})
        except ValueError as err:
            raise ValueError(f"{where}: {str(err).removeprefix('--')}") from None
        fmt = entry.get("format", "records")
        if fmt != "records" and fmt not in FORMATS:
            raise ValueError(f"{where}: format {fmt!r} is not one of records, {', '.join(FORMATS)}")
        n = entry.get("limit", limit)
        out.append(SuiteEntry(entry["name"], data, fmt,
                              None if n is None else _whole(where, "limit", n), settings))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: entry names repeat ({', '.join(sorted({n for n in names if names.count(n) > 1}))});"
                         " each names its output folder")
    return Suite(path, out, int(spec.get("seed", 0)), list(spec.get("metrics", ["acc", "em", "f1"])))


def run_suite(suite: str | Path | None, *, model: str | None, adapter: str | None = None, gguf_file: str | None = None,
              output_dir: str | Path, limit: int | None = None, batch_size: int = 8,
              max_new_tokens: int | None = None, resume: bool = False, overwrite: bool = False,
              router: RouteRule | None = None, ctx: tuple[str | None, str | None] = (None, None),
              noctx: tuple[str | None, str | None] = (None, None), progress: bool = True) -> Path:
    """Generate and evaluate every entry of a suite YAML for one model, or routed between ``ctx`` and
    ``noctx`` (each ``(model, adapter)``) by ``router`` (a :class:`cings.route.RouteRule`); returns the report path."""
    from .evaluate import evaluate_file
    from .generate import generate_records
    from .prepare import prepare
    from .records import read_records
    from .report import compare_runs
    from .runs import load_for_generation

    spec = load_suite(suite, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens)
    out = Path(output_dir)
    if not (resume or overwrite):
        # Refused here, before the model is loaded, rather than at the first entry.
        held = [e.name for e in spec.entries if (out / e.name / "predictions.jsonl").is_file()
                and (out / e.name / "predictions.jsonl").stat().st_size]
        if held:
            raise ValueError(f"--output-dir {out}: predictions of {', '.join(held)} exist; pass --resume to add the"
                             " missing ids (same settings) or --overwrite to replace them")
    if router is not None:
        from .route import load_endpoints, route_records

        ends = load_endpoints(*ctx, *noctx)
        title = f"{router.name} router: ctx {ends[0].describe()}, noctx {ends[1].describe()}"
    else:
        model_obj, tok, options, model_spec = load_for_generation(model, adapter=adapter, gguf_file=gguf_file)
        title = f"{model_spec}{' + ' + adapter if adapter else ''}"
    runs = []
    for entry in spec.entries:
        records = list(read_records(entry.data)) if entry.format == "records" else prepare(entry.format, [entry.data])[0]
        records = spread_sample(records, entry.limit, spec.seed)
        pred = out / entry.name / "predictions.jsonl"
        if router is not None:
            route_records(records, *ends, entry.settings, pred, rule=router, resume=resume, overwrite=overwrite,
                          progress=progress)
        else:
            settings = replace(entry.settings, model=model_spec, adapter=adapter)
            generate_records(records, model_obj, tok, options, settings, pred, resume=resume, overwrite=overwrite,
                             progress=progress)
        evaluate_file(pred, out / entry.name / "metrics.json")
        runs.append(f"{entry.name}={out / entry.name / 'metrics.json'}")
    report, _ = compare_runs(runs, out / "report.md", metrics=spec.metrics,
                             title=f"{title}: {spec.path.name}")
    return report
