"""The demo's retrieved-document sets: the gold sets' questions with a retriever's top passages instead.

The held-out SQuAD questions and the NQ-open questions of the gold sets (the same records) search the
corpus shipped as ``examples/demo/retrieval_passages.jsonl.gz``: every SQuAD dev paragraph, whole, NQ's
gold passages and HotpotQA's paragraphs (see its PROVENANCE.md). Three kinds of stage, keyed like the
demo's others by the content they read and their settings, so a demo folder made before they existed
keeps every earlier stage and runs only these and the new evaluations:

1. ``retrieval-data``: the corpus (``data/retrieval/passages.jsonl``: the shipped one whole, or, with
   ``retrieval_passages``, a spread sample that keeps every evaluated question's gold passage) and the
   questions with their gold passage named by its corpus id (``data/retrieval/SOURCE.jsonl``). A
   question's gold passages are the corpus passages of its passage's title that hold its passage's text
   (whitespace runs as one space): the held-out SQuAD passages are windows of a corpus paragraph;
2. ``retrieval-index``: ``cings index`` of that corpus (``retrieval/index``);
3. ``retrieval-search-SET``: ``cings retrieve`` of the questions, top ``retrieval_k``, into
   ``data/eval/SET.jsonl`` (what the evaluation reads), with recall@k, MRR and answer-in-passage.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from .demo import DemoError, _file_sha, _fresh_unless_same, _key
from .records import read_records, write_records

__all__ = ["RETRIEVED", "GOLD_TWIN", "CORPUS_FILE", "build_retrieval_data", "retrieval_stages", "retrieval_commands"]

# A retrieved set's records -> the gold set whose questions (the same records) it retrieves for.
RETRIEVED = {"squad-retrieved": "squad-heldout", "nq-retrieved": "nq"}
# The gold-passage evaluation set each retrieved one is read beside (same questions, layout and passage count).
GOLD_TWIN = {"squad-retrieved": "squad-prefill", "nq-retrieved": "nq-gold"}
CORPUS_FILE = "retrieval_passages.jsonl.gz"
_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def build_retrieval_data(data_dir: Path, root: Path, sources: list[str], sample: int | None) -> dict[str, Any]:
    """``data/retrieval/passages.jsonl`` and the question files of ``sources`` (keys of :data:`RETRIEVED`)."""
    from .retrieval.corpus import iter_corpus

    shipped = data_dir / CORPUS_FILE
    if not shipped.is_file():
        raise DemoError(f"{shipped}: the retrieval corpus is missing; build it with"
                        " python examples/demo/make_retrieval_corpus.py (from the slices beside it)")
    passages = [p for _, p in iter_corpus(shipped)]
    by_title: dict[str, list[int]] = {}
    for row, passage in enumerate(passages):
        by_title.setdefault(passage.title, []).append(row)
    out = root / "data" / "retrieval"
    out.mkdir(parents=True, exist_ok=True)
    gold_rows: set[int] = set()
    questions: dict[str, dict[str, Any]] = {}
    for source in sources:
        records, unmatched = [], 0
        for record in read_records(root / "data" / "eval" / f"{RETRIEVED[source]}.jsonl"):
            golds = []
            for context in (c for c in record.contexts if c.gold):
                text = _norm(context.text)
                golds += [(row, passages[row]) for row in by_title.get(context.title, ()) if text in _norm(passages[row].text)]
            unmatched += not golds
            gold_rows.update(row for row, _ in golds)
            # Named by corpus id, so the retriever's hits are marked gold whatever their length.
            contexts = tuple(replace(next(c for c in record.contexts if c.gold), id=p.id, text=p.text) for _, p in golds)
            records.append(replace(record, contexts=contexts, segments=None))
        write_records(records, out / f"{source}.jsonl")
        questions[source] = {"questions": len(records), "gold_passage_not_in_corpus": unmatched}
    keep = set(range(len(passages)))
    if sample is not None and sample < len(passages):
        others = sorted(set(range(len(passages))) - gold_rows)
        keep = gold_rows | set(random.Random(0).sample(others, max(sample - len(gold_rows), 0)))
    with open(out / "passages.jsonl", "w", encoding="utf-8") as handle:
        for row in sorted(keep):
            handle.write(json.dumps(passages[row].to_dict(), ensure_ascii=False) + "\n")
    by_source: dict[str, int] = {}
    for row in keep:
        prefix = (passages[row].id or "").split("-")[0]
        by_source[prefix] = by_source.get(prefix, 0) + 1
    return {"corpus": str(shipped), "passages": len(keep), "of_shipped": len(passages), "by_source": by_source,
            "gold_passages": len(gold_rows), "questions": questions}


def _index_options(cfg: Any) -> Any:
    from .retrieval.index import IndexOptions

    return IndexOptions(retriever=cfg.retriever)


def retrieval_stages(cfg: Any, root: Path, stages: Any, sources: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run (or keep) the retrieval stages for ``sources``; returns ``{"data", "index", "search": {set: stage}}``."""
    from .retrieval.encoder import encoder_fingerprint, resolve_encoder
    from .retrieval.index import build_index
    from .retrieval.retrieve import retrieve_file

    if cfg.retrieval_passages is not None and cfg.retrieval_passages < 1:
        raise DemoError(f"--retrieval-passages must be at least 1, not {cfg.retrieval_passages}")
    data_dir, out = Path(cfg.data_dir), root / "data" / "retrieval"
    eval_files = {s: root / "data" / "eval" / f"{RETRIEVED[s]}.jsonl" for s in sources}
    data_key = _key("retrieval-data", _file_sha(data_dir / CORPUS_FILE) if (data_dir / CORPUS_FILE).is_file() else None,
                   {s: _file_sha(p) for s, p in eval_files.items()}, cfg.retrieval_passages)
    if not all((out / name).is_file() for name in ["passages.jsonl", *(f"{s}.jsonl" for s in sources)]):
        (stages.dir / "retrieval-data.json").unlink(missing_ok=True)  # the files are gone: build them again
    data = stages.run("retrieval-data", data_key,
                      lambda: build_retrieval_data(data_dir, root, sources, cfg.retrieval_passages))

    options = _index_options(cfg)
    # The encoder's weights are part of what the vectors are: another model re-indexes.
    encoder = None if cfg.retriever == "bm25" else encoder_fingerprint(resolve_encoder(None)[1])
    index_key = _key("retrieval-index", _file_sha(out / "passages.jsonl"), asdict(options), encoder)
    folder = root / "retrieval"
    if not (folder / "index" / "manifest.json").is_file():
        (stages.dir / "retrieval-index.json").unlink(missing_ok=True)

    def build() -> dict[str, Any]:
        _fresh_unless_same(folder, index_key)  # a killed build of the same key resumes from its shards
        manifest = build_index(out / "passages.jsonl", folder / "index", options)
        dense = manifest.get("dense", {})
        return {"retriever": manifest["retriever"], "passages": manifest["passages"],
                "encoder": dense.get("encoder", {}).get("name"), "faiss": dense.get("faiss", {}).get("type"),
                "passages_per_s": dense.get("embeddings", {}).get("passages_per_s"), "seconds": manifest["seconds"]}

    index = stages.run("retrieval-index", index_key, build)
    searched = {}
    for source in sources:
        target = root / "data" / "eval" / f"{source}.jsonl"
        name = f"retrieval-search-{source}"
        search_key = _key(name, index["key"], _file_sha(out / f"{source}.jsonl"), cfg.retrieval_k)
        if not target.is_file():
            (stages.dir / f"{name}.json").unlink(missing_ok=True)

        def search(source: str = source, target: Path = target) -> dict[str, Any]:
            summary = retrieve_file(folder / "index", out / f"{source}.jsonl", target, cfg.retrieval_k, progress=False)
            return {k: summary[k] for k in ("retriever", "records", "k", "records_with_fewer_than_k", "queries_per_s",
                                            "metrics")}

        searched[source] = stages.run(name, search_key, search)
        metrics = searched[source]["result"]["metrics"] or {}
        if "recall@1" in metrics:
            log(f"{source}: recall@1 {metrics['recall@1']:.1f}, recall@{cfg.retrieval_k}"
                f" {metrics.get(f'recall@{cfg.retrieval_k}', float('nan')):.1f} ({index['result']['retriever']},"
                f" {index['result']['passages']} passages)")
    return {"data": data, "index": index, "search": searched}


def retrieval_commands(cfg: Any, root: Path, sources: list[str]) -> list[str]:
    """The ``cings index`` / ``cings retrieve`` commands behind the retrieved sets' files."""
    import shlex

    corpus, folder = root / "data" / "retrieval" / "passages.jsonl", root / "retrieval" / "index"
    lines = [shlex.join(["cings", "index", "--corpus", str(corpus), "--output", str(folder), "--retriever", cfg.retriever])]
    lines += [shlex.join(["cings", "retrieve", "--index", str(folder), "--input", str(root / "data" / "retrieval" / f"{s}.jsonl"),
                          "--k", str(cfg.retrieval_k), "--output", str(root / "data" / "eval" / f"{s}.jsonl")])
              for s in sources]
    return lines
