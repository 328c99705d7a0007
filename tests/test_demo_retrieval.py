"""The demo's retrieved-document sets: each evaluated question's gold passage is found in the corpus by the
paragraph that holds its (windowed) passage, a sampled corpus keeps every gold passage, and nothing is
dropped unsaid. End to end (index, search, evaluation, report): tests/test_demo.py's quick demo."""

import gzip
import json

import pytest

from cings.demo import DemoError
from cings.demo_retrieval import CORPUS_FILE, build_retrieval_data
from cings.records import Context, Record, read_records, write_records

PARAGRAPHS = [("Rivers", "The Nile is long. It flows north into the Mediterranean Sea."),
              ("Rivers", "The Amazon carries the most water. It  flows east."),
              ("Mountains", "Everest is the highest mountain. It is in the Himalaya."),
              ("Lakes", "Baikal is the deepest lake.")] + [("Other", f"Filler passage {i}.") for i in range(20)]


def setup(tmp_path):
    data_dir, root = tmp_path / "slices", tmp_path / "demo"
    data_dir.mkdir()
    with gzip.open(data_dir / CORPUS_FILE, "wt", encoding="utf-8") as handle:
        for i, (title, text) in enumerate(PARAGRAPHS):
            handle.write(json.dumps({"id": f"p{i}", "title": title, "text": text}) + "\n")
    # Windowed SQuAD passages: a piece of a paragraph (whitespace may differ), found under the same title only.
    squad = [Record(id="s1", instruction="Where does the Nile flow?", response="north", answers=("north",),
                    contexts=(Context(text="It flows north into the Mediterranean Sea.", title="Rivers", gold=True),)),
             Record(id="s2", instruction="What carries the most water?", response="Amazon", answers=("Amazon",),
                    contexts=(Context(text="The Amazon carries the most water. It flows east.", title="Rivers", gold=True),)),
             Record(id="s3", instruction="Highest?", response="Everest", answers=("Everest",),
                    contexts=(Context(text="Everest is the highest mountain.", title="Lakes", gold=True),))]
    nq = [Record(id="n1", instruction="Deepest lake?", response="Baikal", answers=("Baikal",),
                 contexts=(Context(text="Baikal is the deepest lake.", title="Lakes", gold=True),))]
    write_records(squad, root / "data" / "eval" / "squad-heldout.jsonl")
    write_records(nq, root / "data" / "eval" / "nq.jsonl")
    return data_dir, root


def test_gold_passages_are_named_by_corpus_id_and_a_missing_one_is_counted(tmp_path):
    data_dir, root = setup(tmp_path)
    result = build_retrieval_data(data_dir, root, ["squad-retrieved", "nq-retrieved"], None)
    squad = {r.id: r for r in read_records(root / "data" / "retrieval" / "squad-retrieved.jsonl")}
    assert [c.id for c in squad["s1"].contexts] == ["p0"] and squad["s1"].contexts[0].text == PARAGRAPHS[0][1]
    assert [c.id for c in squad["s2"].contexts] == ["p1"]  # "It  flows" in the corpus: whitespace runs as one space
    assert squad["s3"].contexts == ()  # its passage is under another title: no gold, counted, not guessed
    assert result["questions"] == {"squad-retrieved": {"questions": 3, "gold_passage_not_in_corpus": 1},
                                   "nq-retrieved": {"questions": 1, "gold_passage_not_in_corpus": 0}}
    assert result["passages"] == result["of_shipped"] == len(PARAGRAPHS) and result["gold_passages"] == 3
    assert len((root / "data" / "retrieval" / "passages.jsonl").read_text().splitlines()) == len(PARAGRAPHS)


def test_a_sampled_corpus_keeps_every_gold_passage_in_corpus_order(tmp_path):
    data_dir, root = setup(tmp_path)
    result = build_retrieval_data(data_dir, root, ["squad-retrieved", "nq-retrieved"], 8)
    ids = [json.loads(line)["id"] for line in (root / "data" / "retrieval" / "passages.jsonl").read_text().splitlines()]
    assert len(ids) == 8 == result["passages"] and {"p0", "p1", "p3"} <= set(ids)
    assert ids == sorted(ids, key=lambda i: int(i[1:]))
    again = build_retrieval_data(data_dir, root, ["squad-retrieved", "nq-retrieved"], 8)  # seeded: the same sample
    assert again == result


def test_a_missing_corpus_says_how_to_build_it(tmp_path):
    _, root = setup(tmp_path)
    with pytest.raises(DemoError, match="make_retrieval_corpus.py"):
        build_retrieval_data(tmp_path / "empty", root, ["nq-retrieved"], None)
