"""benchmarks/retrieval_corpus.py: the NQ + SQuAD + HotpotQA passage set, deduplicated, with NQ gold passages by id."""

import json
import sys
from pathlib import Path

import pytest

from cings.records import read_records

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from retrieval_corpus import build
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return build


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def record(rid, text, title="T", gold=True, question="q?"):
    return {"id": rid, "instruction": question, "response": "a", "answers": ["a"],
            "contexts": [{"title": title, "text": text, "gold": gold}]}


@pytest.fixture
def inputs(tmp_path):
    return {
        # two questions share one gold passage
        "nq": write(tmp_path / "nq.jsonl", [record("n1", "Gold one."), record("n2", "Gold one."), record("n3", "Gold two.")]),
        "squad": write(tmp_path / "squad.jsonl", [record("s1", "Para A."), record("s2", "Para A."), record("s3", "Para B.")]),
        # one paragraph is SQuAD's Para B with other whitespace: kept once, under its first source
        "hotpotqa": write(tmp_path / "hotpotqa.jsonl", [{
            "id": "h1", "instruction": "q?", "response": "a", "answers": ["a"],
            "contexts": [{"title": "X", "text": "Para  B.", "gold": True}, {"title": "Y", "text": "Other.", "gold": False}]}]),
    }


def test_passages_are_kept_once_in_source_order_and_nq_golds_carry_their_ids(build, inputs, tmp_path):
    summary = build(inputs, tmp_path / "out")
    passages = [json.loads(line) for line in (tmp_path / "out" / "passages.jsonl").read_text().splitlines()]
    assert [(p["id"], p["text"]) for p in passages] == [
        ("nq-0", "Gold one."), ("nq-1", "Gold two."), ("squad-0", "Para A."), ("squad-1", "Para B."), ("hotpotqa-0", "Other.")]
    questions = list(read_records(tmp_path / "out" / "nq_questions.jsonl"))
    assert [(q.id, [c.id for c in q.contexts]) for q in questions] == [("n1", ["nq-0"]), ("n2", ["nq-0"]), ("n3", ["nq-1"])]
    assert summary["by_source"]["hotpotqa"] == {"records": 1, "passages_seen": 2, "passages_new": 1,
                                                "repeats_of_other_sources": 1}
    first = (tmp_path / "out" / "passages.jsonl").read_bytes()
    build(inputs, tmp_path / "again")
    assert (tmp_path / "again" / "passages.jsonl").read_bytes() == first


def test_per_source_keeps_the_first_passages_and_the_questions_they_answer(build, inputs, tmp_path):
    summary = build(inputs, tmp_path / "out", per_source=1)
    assert summary["passages"] == 3 and summary["nq_questions"] == 2
    assert summary["nq_questions_dropped_gold_not_in_corpus"] == 1
