"""``cings eval-suite``: one model over a YAML list of (dataset, docs, layout) -> predictions -> metrics -> one report.

With a router (``--router has-docs --ctx-adapter A --noctx-adapter B``) each entry is answered by
:func:`cings.route.route_records` instead: two models, each record by the one the rule picks.

A suite file has ``entries`` (each: ``name``, ``data``, optional ``format``, ``docs``, ``ndocs``, ``prompt``,
``limit``, ``max_new_tokens``, ``retrieve``) and optional ``limit``, ``seed``, ``max_new_tokens`` and ``metrics``.
A relative ``data`` (or ``retrieve``) path is read from the suite file's folder.

``retrieve`` replaces the records' passages by an index's top ``k`` before generating (``docs: topk`` then,
the prompt showing the best ``ndocs``): ``{index: DIR}`` searches a folder ``cings index`` wrote, and
``{corpus: PASSAGES, retriever: dense|bm25|hybrid, k: K}`` indexes a corpus first, in
``OUTPUT_DIR/indexes/`` (kept for the next run when its manifest says it indexes the same corpus the same
way; a killed build resumes). The retrieved records and their recall@k, MRR and answer-in-passage are
written beside the entry's predictions (``retrieved.jsonl``, ``retrieval.json``). The default suite ships inside the
package and reads the slices under the repository's ``examples/``; an installed package has no
such folder, and then asks for ``--suite``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .generate import GenerationSettings

if TYPE_CHECKING:
    from .records import Record
    from .route import RouteRule

__all__ = ["DEFAULT_SUITE", "Suite", "SuiteEntry", "RetrieveSpec", "load_suite", "run_suite", "spread_sample",
           "examples_dir"]

DEFAULT_SUITE = Path(__file__).resolve().parent / "suites" / "default.yaml"
_ENTRY_KEYS = {"name", "data", "format", "docs", "ndocs", "prompt", "limit", "max_new_tokens", "retrieve"}
_RETRIEVE_KEYS = {"index", "corpus", "retriever", "encoder", "k"}
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


@dataclass(frozen=True)
class RetrieveSpec:
    """An entry's retrieval: with ``corpus``, the index is built from it (in ``index`` when given, else under the
    output folder); without, ``index`` is searched as it is (``retriever``: a hybrid index as dense or bm25)."""

    k: int
    index: Path | None = None
    corpus: Path | None = None
    retriever: str | None = None
    encoder: str | None = None


@dataclass
class SuiteEntry:
    name: str
    data: Path
    format: str
    limit: int | None
    settings: GenerationSettings
    retrieve: RetrieveSpec | None = None


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


def _retrieve_spec(where: str, value: Any, root: Path, ndocs: int) -> RetrieveSpec:
    """The checked ``retrieve`` of an entry: its corpus or index is there and its settings are valid."""
    from .jsonl import RecordError
    from .retrieval.corpus import corpus_layout
    from .retrieval.index import RETRIEVERS, read_manifest

    if not isinstance(value, dict):
        raise ValueError(f"{where}: 'retrieve' must be a mapping such as {{corpus: passages.jsonl, retriever: dense,"
                         f" k: 5}} or {{index: DIR}}, not {value!r}")
    unknown = sorted(set(value) - _RETRIEVE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in 'retrieve'; it has {sorted(_RETRIEVE_KEYS)}")
    if not value.get("corpus") and not value.get("index"):
        raise ValueError(f"{where}: 'retrieve' needs 'corpus' (a passage file to index) or 'index' (a folder"
                         " cings index wrote)")

    def path(key: str) -> Path | None:
        if not value.get(key):
            return None
        found = Path(str(value[key])).expanduser()
        return found if found.is_absolute() else root / found

    corpus, index, retriever, encoder = path("corpus"), path("index"), value.get("retriever"), value.get("encoder")
    if retriever is not None and retriever not in RETRIEVERS:
        raise ValueError(f"{where}: retrieve.retriever must be one of {', '.join(RETRIEVERS)}, not {retriever!r}")
    k = _whole(where, "retrieve.k", value.get("k", max(5, ndocs)))
    if k < ndocs:
        raise ValueError(f"{where}: retrieve.k ({k}) must be at least ndocs ({ndocs}): the prompt shows the best"
                         " ndocs of the k retrieved passages")
    try:
        if corpus is not None:
            if not corpus.is_file():
                raise ValueError(f"{where}: no corpus file {corpus}")
            corpus_layout(corpus)
            if retriever == "bm25" and encoder is not None:
                raise ValueError(f"{where}: retrieve.encoder is for dense and hybrid indexes; a bm25 index has none")
        else:
            built = read_manifest(index)["retriever"]  # type: ignore[arg-type]
            if retriever not in (None, built) and not (built == "hybrid" and retriever in ("dense", "bm25")):
                raise ValueError(f"{where}: retrieve.retriever {retriever}: the index {index} is {built}"
                                 " (only a hybrid index can be searched as dense or bm25)")
    except RecordError as err:
        raise ValueError(f"{where}: retrieve: {err}") from None
    return RetrieveSpec(k=k, index=index, corpus=corpus, retriever=retriever,
                        encoder=None if encoder is None else str(encoder))


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
        retrieve = entry.get("retrieve")
        docs = entry.get("docs", "topk" if retrieve is not None else "gold")
        if retrieve is not None and docs != "topk":
            raise ValueError(f"{where}: an entry that retrieves shows the retrieved passages best first: docs must be"
                             f" topk (its default with 'retrieve'), not {docs!r}")
        try:
            settings = GenerationSettings(docs=docs, ndocs=entry.get("ndocs", 1),
                                          prompt=entry.get("prompt", "prefill"),
                                          max_new_tokens=entry.get("max_new_tokens", default_tokens)
                                          if max_new_tokens is None else max_new_tokens,
                                          batch_size=batch_size, extra={"dataset": entry["name"]})
        except ValueError as err:
            raise ValueError(f"{where}: {str(err).removeprefix('--')}") from None
        spec_r = None if retrieve is None else _retrieve_spec(where, retrieve, root, settings.ndocs)
        if spec_r is not None:
            # In every row, so a resume refuses predictions made from another retrieval.
            settings.extra["retrieve"] = {k: v if isinstance(v, int) else str(v)
                                          for k, v in asdict(spec_r).items() if v is not None}
        fmt = entry.get("format", "records")
        if fmt != "records" and fmt not in FORMATS:
            raise ValueError(f"{where}: format {fmt!r} is not one of records, {', '.join(FORMATS)}")
        n = entry.get("limit", limit)
        out.append(SuiteEntry(entry["name"], data, fmt,
                              None if n is None else _whole(where, "limit", n), settings, spec_r))
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
    # Indexes first: a corpus that cannot be indexed stops the suite before a model is loaded.
    indexes = {e.name: _index_for(e.retrieve, out, progress) for e in spec.entries if e.retrieve is not None}
    if router is not None:
        from .route import load_endpoints, route_records

        ends = load_endpoints(*ctx, *noctx)
        title = f"{router.name} router: ctx {ends[0].describe()}, noctx {ends[1].describe()}"
    else:
        model_obj, tok, options, model_spec = load_for_generation(model, adapter=adapter, gguf_file=gguf_file)
        title = f"{model_spec}{' + ' + adapter if adapter else ''}"
    runs, opened = [], {}
    try:
        for entry in spec.entries:
            records = list(read_records(entry.data)) if entry.format == "records" else prepare(entry.format, [entry.data])[0]
            records = spread_sample(records, entry.limit, spec.seed)
            if entry.retrieve is not None:
                records = _retrieved(records, entry.retrieve, indexes[entry.name], opened, out / entry.name, progress)
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
    finally:
        for index in opened.values():
            index.close()
    report, _ = compare_runs(runs, out / "report.md", metrics=spec.metrics,
                             title=f"{title}: {spec.path.name}")
    return report


def _log(message: str) -> None:
    print(f"cings eval-suite: {message}", file=sys.stderr, flush=True)


def _index_for(spec: RetrieveSpec, out: Path, progress: bool) -> Path:
    """The index folder an entry searches: ``spec.index`` as it is, or the index of ``spec.corpus``, kept when
    its manifest records this corpus (sha256) and these settings, else built (resumed after a kill)."""
    from .jsonl import file_sha256
    from .retrieval.encoder import encoder_fingerprint, resolve_encoder
    from .retrieval.index import IndexFiles, IndexOptions, build_index, choose_retriever

    if spec.corpus is None:
        return spec.index  # type: ignore[return-value]
    options = IndexOptions(retriever=spec.retriever, encoder=spec.encoder)
    retriever, _ = choose_retriever(options)
    options = replace(options, retriever=retriever)
    folder = spec.index
    if folder is None:
        # One folder per corpus and settings, shared by the entries that name the same ones.
        tag = hashlib.sha256(json.dumps([str(spec.corpus.resolve()), retriever, spec.encoder]).encode()).hexdigest()[:8]
        folder = out / "indexes" / f"{spec.corpus.name.split('.')[0]}-{retriever}-{tag}"
    sha = file_sha256(spec.corpus)
    manifest_path, build_path = folder / IndexFiles.MANIFEST, folder / IndexFiles.BUILD
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    if manifest is not None:
        same = manifest.get("corpus", {}).get("sha256") == sha and manifest.get("options") == asdict(options)
        if same and retriever != "bm25":
            same = manifest["dense"]["encoder"]["fingerprint"] == encoder_fingerprint(resolve_encoder(spec.encoder)[1])
        if same:
            _log(f"index {folder}: kept (its manifest records this corpus and these settings)")
            return folder
    # A finished index of other settings, or a build of another corpus, is replaced; a killed build of this
    # corpus resumes (its finished embedding shards are kept).
    state = json.loads(build_path.read_text(encoding="utf-8")) if build_path.is_file() else None
    overwrite = manifest is not None or (state is not None and state.get("corpus_sha256") != sha)
    _log(f"index {folder}: {'rebuilding' if overwrite else 'building'} from {spec.corpus}")
    build_index(spec.corpus, folder, options, overwrite=overwrite, progress=progress)
    return folder


def _retrieved(records: list[Record], spec: RetrieveSpec, folder: Path, opened: dict, entry_dir: Path,
               progress: bool) -> list[Record]:
    """``records`` with their top ``spec.k`` passages; writes them and their retrieval metrics to ``entry_dir``."""
    from .records import write_records
    from .retrieval.metrics import score_retrieval
    from .retrieval.retrieve import Index, retrieve_records

    searched_as = spec.retriever if spec.corpus is None else None
    key = (folder, searched_as)
    if key not in opened:  # one query encoder per index, whatever the number of entries searching it
        opened[key] = Index(folder, encoder=spec.encoder, retriever=searched_as)
    index = opened[key]
    found = list(retrieve_records(records, index, spec.k, progress=progress, total=len(records)))
    entry_dir.mkdir(parents=True, exist_ok=True)
    write_records(found, entry_dir / "retrieved.jsonl")
    metrics = score_retrieval([r.to_dict() for r in found])
    summary = {"index": str(folder), "retriever": index.retriever, "passages": index.n, "k": spec.k,
               "records": len(found), "metrics": metrics}
    (entry_dir / "retrieval.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if metrics and "recall@1" in metrics:
        deepest = f"recall@{metrics['depth']}"
        _log(f"{entry_dir.name}: top {spec.k} by {index.retriever} search of {index.n} passages; recall@1"
             f" {metrics['recall@1']:.1f}, {deepest} {metrics[deepest]:.1f}")
    return found
