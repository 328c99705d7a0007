"""``cings index --shard i/n``: n processes embed disjoint shares of one index at once, and the same command
without ``--shard`` then builds the index from their shards, embedding nothing again."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cings.retrieval.index import IndexOptions, build_index
from cings.retrieval.retrieve import Index
from cings.retrieval.shards import parse_shard, shard_device

from .fakes import HashEncoder, write_corpus
from .test_index import shards

ROOT = Path(__file__).resolve().parents[2]


def test_a_shard_is_i_of_n_or_read_from_the_launcher(monkeypatch):
    assert parse_shard(None) is None and parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parse_shard("auto") == (0, 1)  # one process, not launched by accelerate or torchrun
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard("auto") == (2, 3)
    for bad in ("4/4", "1/0", "a/b", "2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="a bm25 index has none to split"):
        IndexOptions(retriever="bm25", shard="0/2")


def test_each_process_gets_the_gpu_of_its_local_rank_only_when_asked(monkeypatch):
    import torch

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert shard_device("auto", "auto") == "cuda:1"
    assert shard_device("cpu", "auto") == "cpu" and shard_device("auto", "1/2") == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert shard_device("auto", "auto") == "cpu"


def test_two_processes_at_once_then_the_merge_equal_one_build(tmp_path):
    corpus = write_corpus(tmp_path / "c.jsonl", n=30)
    folder = tmp_path / "ix"

    def launch(i: int) -> subprocess.Popen:
        script = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r})\n"
                  "from tests.retrieval.fakes import HashEncoder\n"
                  "from cings.retrieval.index import IndexOptions, build_index\n"
                  "encoder = HashEncoder()\n"
                  f"result = build_index({str(corpus)!r}, {str(folder)!r}, IndexOptions(shard_size=4, shard='{i}/2'),"
                  " encoder=encoder, progress=False)\n"
                  "print(json.dumps({**result, 'calls': encoder.calls, 'embedded': encoder.passages}))\n")
        return subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    second = launch(1)  # started first: it must wait for process 0 to write the passages
    time.sleep(0.5)
    first = launch(0)
    results = []
    for proc in (first, second):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    assert "waiting for --shard 0/n" in err
    # 8 shards of 4 passages (the last of 2): shards 0, 2, 4, 6 to process 0, the rest to process 1.
    assert [(r["calls"], r["embedded"]) for r in results] == [(4, 16), (4, 14)]
    assert not (folder / "manifest.json").exists()  # no index until the merge
    merge = HashEncoder()
    manifest = build_index(corpus, folder, IndexOptions(shard_size=4), encoder=merge, progress=False)
    assert merge.calls == 0 and manifest["dense"]["embeddings"]["resumed_shards"] == 8
    build_index(corpus, tmp_path / "whole", IndexOptions(shard_size=4), encoder=HashEncoder(), progress=False)
    assert shards(folder) == shards(tmp_path / "whole")
    with Index(folder, encoder=HashEncoder()) as a, Index(tmp_path / "whole", encoder=HashEncoder()) as b:
        assert a.search(["volcano town7", "castle colour1"], 5) == b.search(["volcano town7", "castle colour1"], 5)
