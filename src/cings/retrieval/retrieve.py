"""``cings retrieve``: records -> the same records with ``contexts`` replaced by their top-k passages.

Each record's ``instruction`` is the query. Every retrieved passage comes with its ``score`` (inner
product for dense, BM25 for bm25, the fused reciprocal-rank score for hybrid), its corpus ``id`` when the
corpus has ids, and ``gold`` when the record named its gold passage(s) (the input contexts marked
``gold: true``, matched by id or by text, whitespace runs compared as one space).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..jsonl import RecordError, open_for_writing
from ..loading import LoadError
from ..records import Context, Record, read_records
from .corpus import Passage
from .index import IndexFiles, PassageEncoder, bm25_tokenize, load_vectors, read_manifest, shard_paths
from .metrics import score_retrieval

__all__ = ["Hit", "Index", "fuse_rrf", "retrieve_records", "retrieve_file"]

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Hit:
    row: int  # the passage's position in the corpus
    score: float


def fuse_rrf(rankings: Sequence[Sequence[int]], k: int, rrf_k: int = 60) -> list[Hit]:
    """Reciprocal-rank fusion: a passage scores Σ 1/(rrf_k + rank) over the rankings it is in (rank 1 = best).

    Ties go to the passage ranked first by an earlier ranking, so the order is the same on every run.
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (rrf_k + rank)
    order = sorted(scores, key=lambda row: -scores[row])  # stable: first-seen order breaks ties
    return [Hit(row, scores[row]) for row in order[:k]]


class Index:
    """An index folder opened for search: ``search(queries, k)`` -> hits, ``passage(row)`` -> the passage."""

    def __init__(self, folder: str | Path, *, encoder: str | PassageEncoder | None = None, device: str = "auto",
                 batch_size: int = 64, retriever: str | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        built = self.manifest["retriever"]
        # A hybrid index holds both halves: either may be searched alone (one embedding pass, three rankings).
        if retriever not in (None, built) and not (built == "hybrid" and retriever in ("dense", "bm25")):
            raise ValueError(f"--retriever {retriever}: the index {self.folder} is {built}"
                             f"{' (only a hybrid index can be searched as dense or bm25)' if built != 'hybrid' else ''}")
        self.retriever = retriever or built
        self.n = int(self.manifest["passages"])
        self.encoder: PassageEncoder | None = None
        self._faiss = self._bm25 = None
        if self.retriever in ("dense", "hybrid"):
            self.encoder = self._query_encoder(encoder, device, batch_size)
            self._faiss = self._open_faiss()
        elif encoder is not None:
            raise ValueError(f"--encoder: the {self.retriever} search of {self.folder} uses no dense vectors")
        if self.retriever in ("bm25", "hybrid"):
            import bm25s

            self._bm25 = bm25s.BM25.load(str(self.folder / IndexFiles.BM25))
        import numpy as np

        self._offsets = np.load(self.folder / IndexFiles.OFFSETS, mmap_mode="r")
        self._passages = open(self.folder / IndexFiles.PASSAGES, "rb")

    def close(self) -> None:
        self._passages.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _query_encoder(self, encoder: str | PassageEncoder | None, device: str, batch_size: int) -> PassageEncoder:
        """The query encoder, refused unless it is the model that embedded the passages (same fingerprint)."""
        from .encoder import DenseEncoder, encoder_fingerprint, resolve_encoder

        built = self.manifest["dense"]["encoder"]
        said = f"{built['name']} ({built['spec']}, fingerprint {built['fingerprint']})"
        if encoder is None or isinstance(encoder, str):
            spec = encoder or built["spec"]
            try:
                _, folder = resolve_encoder(spec)
            except LoadError as err:
                raise LoadError(f"{err}; the index {self.folder} was built with {said}") from None
            fingerprint = encoder_fingerprint(folder)
        else:
            spec, fingerprint = encoder.info.spec, encoder.info.fingerprint
        if fingerprint != built["fingerprint"]:
            raise LoadError(f"the query encoder {spec} (fingerprint {fingerprint}) is not the encoder that built the"
                            f" index {self.folder}: {said}. Queries and passages must be embedded by the same"
                            f" model; use that one (--encoder), or rebuild the index with this one")
        if encoder is None or isinstance(encoder, str):
            return DenseEncoder(spec, device=device, batch_size=batch_size)
        return encoder

    def _open_faiss(self) -> Any:
        import faiss

        dense = self.manifest["dense"]
        kind = dense["faiss"]["type"]
        if kind != "flat":
            index = faiss.read_index(str(self.folder / IndexFiles.FAISS))
            if kind == "hnsw":
                index.hnsw.efSearch = dense["faiss"]["ef_search"]
            else:
                index.nprobe = dense["faiss"]["nprobe"]
            return index
        index = faiss.IndexFlatIP(int(dense["encoder"]["dim"]))
        for path in shard_paths(self.folder, self.n, int(dense["embeddings"]["shard_size"])):
            index.add(load_vectors(path))
        return index

    def passage(self, row: int) -> Passage:
        self._passages.seek(int(self._offsets[row]))
        obj = json.loads(self._passages.readline())
        return Passage(id=obj.get("id"), title=obj["title"], text=obj["text"])

    def _dense(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        import numpy as np

        vectors = np.ascontiguousarray(self.encoder.encode_queries(queries), dtype=np.float32)  # type: ignore[union-attr]
        scores, rows = self._faiss.search(vectors, min(k, self.n))  # type: ignore[union-attr]
        return [[Hit(int(r), float(s)) for r, s in zip(rs, ss) if r >= 0] for rs, ss in zip(rows, scores)]

    def _bm25_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        tokens = bm25_tokenize(list(queries))
        vocab = {i: word for word, i in tokens.vocab.items()}
        words = [[vocab[i] for i in ids if vocab[i] in self._bm25.vocab_dict] for ids in tokens.ids]  # type: ignore[union-attr]
        out: list[list[Hit]] = [[] for _ in queries]
        asked = [i for i, w in enumerate(words) if w]
        if asked:
            rows, scores = self._bm25.retrieve([words[i] for i in asked], k=min(k, self.n),  # type: ignore[union-attr]
                                               show_progress=False)
            for i, rs, ss in zip(asked, rows, scores):
                # A passage sharing no word with the query scores 0; its place in the list would be arbitrary.
                out[i] = [Hit(int(r), float(s)) for r, s in zip(rs, ss) if s > 0]
        return out

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The top ``k`` passages of each query, best first (fewer for BM25 when fewer share a word with it)."""
        if self.retriever == "dense":
            return self._dense(queries, k)
        if self.retriever == "bm25":
            return self._bm25_search(queries, k)
        fusion = self.manifest["fusion"]
        depth = max(k, int(fusion["depth"]))
        dense, sparse = self._dense(queries, depth), self._bm25_search(queries, depth)
        return [fuse_rrf([[h.row for h in d], [h.row for h in s]], k, int(fusion["rrf_k"])) for d, s in zip(dense, sparse)]


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _with_hits(record: Record, hits: list[Hit], index: Index) -> Record:
    golds = [c for c in record.contexts if c.gold]
    gold_ids = {c.id for c in golds if c.id is not None}
    gold_texts = {_norm(c.text) for c in golds}
    contexts = []
    for hit in hits:
        passage = index.passage(hit.row)
        gold = (passage.id in gold_ids or _norm(passage.text) in gold_texts) if golds else None
        contexts.append(Context(text=passage.text, title=passage.title, gold=gold, score=round(hit.score, 6),
                                id=passage.id))
    meta = dict(record.meta)
    meta["retrieval"] = {"retriever": index.retriever, "index": str(index.folder), "gold_passages": len(golds)}
    # Segments tie answer pieces to the passages they came with; those passages are gone.
    return replace(record, contexts=tuple(contexts), segments=None, meta=meta)


def retrieve_records(records: Iterable[Record], index: Index, k: int, *, batch_size: int = 64,
                     progress: bool = False, total: int | None = None) -> Iterator[Record]:
    """Each record with its ``contexts`` replaced by the index's top ``k`` passages for its instruction."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="Retrieving", unit=" records")
    batch: list[Record] = []

    def flush() -> Iterator[Record]:
        for record, hits in zip(batch, index.search([r.instruction for r in batch], k)):
            yield _with_hits(record, hits, index)
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    for record in records:
        batch.append(record)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
    if bar is not None:
        bar.close()


def retrieve_file(index: str | Path, input: str | Path, output: str | Path, k: int, *,
                  encoder: str | None = None, retriever: str | None = None, batch_size: int = 64, device: str = "auto",
                  progress: bool = True, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``cings retrieve``: writes ``output`` and returns a summary with the retrieval metrics (when the
    records name gold passages or carry answers)."""
    for flag, value in (("--k", k), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be a whole number of at least 1, not {value!r}")
    records = list(read_records(input))  # all checked before the index is loaded or the output touched
    if not records:
        raise RecordError(f"{input}: no records")
    started = time.perf_counter()
    with Index(index, encoder=encoder, device=device, batch_size=batch_size, retriever=retriever) as opened:
        built = opened.manifest["retriever"]
        print(f"cings retrieve: {opened.retriever} search of the {built} index of {opened.n} passages ({index})",
              file=sys.stderr)
        loaded = time.perf_counter()
        rows, short, segmented = [], 0, sum(r.segments is not None for r in records)
        with open_for_writing(output) as handle:
            for record in retrieve_records(records, opened, k, batch_size=batch_size, progress=progress,
                                           total=len(records)):
                row = record.to_dict()
                short += len(row["contexts"]) < min(k, opened.n)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                rows.append(row)
    seconds = time.perf_counter() - loaded
    return {"command": "retrieve", "index": str(index), "retriever": opened.retriever, "input": str(input),
            "output": str(output), "records": len(rows), "k": k, "records_with_fewer_than_k": short,
            "segments_dropped": segmented, "seconds_loading": round(loaded - started, 2),
            "seconds_retrieving": round(seconds, 2), "queries_per_s": round(len(rows) / seconds, 1) if seconds else None,
            "metrics": score_retrieval(rows, bootstrap=bootstrap, seed=seed)}
