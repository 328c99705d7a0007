"""The QA readers on the real files in ../shared/data (counts checked) and on small hand-made files."""

import gzip
import json

import pytest

from cings.formats import PrepareOptions
from cings.prepare import prepare
from cings.records import RecordError, parse_record

from .conftest import DATA


def shared(name):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real data {name!r} not available: {path} is absent (the shared folder is not mounted)")
    return path


def valid(records):
    for r in records:
        assert parse_record(r.to_dict()) == r  # every output is a valid grounded record
    return records


def test_squad_dev_gives_every_question(tmp_path):
    records, stats = prepare("squad", [shared("squad_dev_v1.1.json.gz")])
    valid(records)
    assert len(records) == stats.items_in == 10570 and not stats.dropped
    first = records[0]
    assert first.id == "56be4db0acb8001400a502ec" and first.response == "Denver Broncos"
    assert first.contexts[0].title == "Super Bowl 50" and first.contexts[0].gold is True
    assert first.answers == ("Denver Broncos",)
    assert len({r.contexts[0].text for r in records}) == 2067  # all paragraphs
    assert len({r.meta["title"] for r in records}) == 48


def test_nq_open_oracle_as_dpr():
    records, stats = prepare("dpr", [shared("nq_open_oracle.jsonl.gz")])
    valid(records)
    assert len(records) == 2655 and not stats.dropped and not stats.removed
    assert all(len(r.contexts) == 1 and r.contexts[0].gold for r in records)
    assert records[0].id == "nq_open_oracle-1" and records[0].answers == ("Wilhelm Conrad Röntgen",)


def test_hotpotqa_marks_supporting_paragraphs_gold():
    records, stats = prepare("hotpotqa", [shared("hotpotqa_train_distractor_100.json")])
    valid(records)
    assert len(records) == 100 and not stats.dropped
    assert all(sum(c.gold for c in r.contexts) == 2 for r in records)
    assert sorted(len(r.contexts) for r in records)[:2] == [4, 10]
    first = records[0]
    assert first.response == "a spirit" and first.meta["type"] == "bridge"
    assert {c.title for c in first.contexts if c.gold} == {"Alû", "Lilu (mythology)"}


def test_retrievalqa_skips_blank_passages_and_counts_them():
    records, stats = prepare("retrievalqa", [shared("retrievalqa_gpt4_popqa_triviaqa_retrieved.jsonl")])
    valid(records)
    assert len(records) == 250 and not stats.dropped
    assert stats.removed == {"empty_passage": 90}  # 50 popqa + 32 triviaqa + 8 title-only freshqa
    toolqa = [r for r in records if r.meta["data_source"] == "toolqa"]
    assert len(toolqa) == 50 and all(len(r.contexts) == 10 for r in toolqa)  # plain strings
    assert {r.meta["data_source"] for r in records} == {"realtimeqa", "freshqa", "toolqa", "popqa", "triviaqa"}


def write(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_squad_v2_unanswerable_questions_are_kept_and_flagged(tmp_path):
    doc = {"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [{"context": "The Normans were in France.", "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "France", "answer_start": 20}], "is_impossible": False},
        {"id": "b", "question": "When did they leave?", "answers": [], "plausible_answers": [{"text": "never"}],
         "is_impossible": True}]}]}]}
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(doc))
    records, _ = prepare("squad", [path])
    valid(records)
    assert records[1].answers == () and records[1].meta["unanswerable"] and records[1].response == "unanswerable"
    custom, _ = prepare("squad", [path], PrepareOptions(unanswerable_response="The context does not say."))
    assert custom[1].response == "The context does not say."


def test_flashrag_with_and_without_retrieval_results(tmp_path):
    path = write(tmp_path, "nq.jsonl", [
        {"id": "test_0", "question": "who wrote hamlet", "golden_answers": ["Shakespeare", "William Shakespeare"],
         "metadata": {"split": "test"}},
        {"id": "test_1", "question": "capital of france", "golden_answers": ["Paris"],
         "retrieval_result": [{"id": "9", "contents": "\"Paris\"\nParis is the capital of France.", "score": 0.8}]}])
    records, _ = prepare("flashrag", [path])
    valid(records)
    assert records[0].contexts == () and records[0].answers == ("Shakespeare", "William Shakespeare")
    ctx = records[1].contexts[0]
    assert (ctx.title, ctx.text, ctx.score) == ("Paris", "Paris is the capital of France.", 0.8)


def test_alce_uses_the_long_answer_and_keeps_short_ones(tmp_path):
    path = tmp_path / "asqa.json"
    path.write_text(json.dumps([{"sample_id": "s1", "question": "Who won?", "answer": "Team A won in 2001 and Team B in 2002.",
                                 "qa_pairs": [{"short_answers": ["Team A"]}, {"short_answers": ["Team B"]}],
                                 "docs": [{"title": "T", "text": "Team A won in 2001.", "score": 1.2}, {"title": "U", "text": " "}]}]))
    (record,), stats = prepare("alce", [path])
    assert record.id == "s1" and record.response.startswith("Team A won") and record.answers == ("Team A", "Team B")
    assert len(record.contexts) == 1 and stats.removed == {"empty_passage": 1}


def test_dpr_max_contexts_and_response_field(tmp_path):
    rows = [{"question": "q?", "answers": ["a1", "a2"], "long": "A long answer.",
             "ctxs": [{"title": f"t{i}", "text": f"text {i}", "score": str(10 - i), "hasanswer": i == 0} for i in range(5)]}]
    path = write(tmp_path, "dpr.jsonl", rows)
    (record,), stats = prepare("dpr", [path], PrepareOptions(max_contexts=2, response_field="long"))
    assert [c.title for c in record.contexts] == ["t0", "t1"] and record.contexts[0].score == 10.0
    assert record.response == "A long answer." and record.answers == ("a1", "a2")
    assert stats.removed == {"passage_beyond_max_contexts": 3} and record.meta["hasanswer"] == [True, False]


def test_jsonl_field_map_csv_and_parquet(tmp_path):
    rows = [{"q": "Who?", "a": "Me", "docs": ["A passage.", {"title": "T", "text": "Another."}], "extra": {"k": 1}}]
    options = PrepareOptions(field_map={"instruction": "q", "response": "a", "contexts": "docs", "meta": "extra"})
    (record,), _ = prepare("jsonl", [write(tmp_path, "x.jsonl", rows)], options)
    assert record.instruction == "Who?" and [c.text for c in record.contexts] == ["A passage.", "Another."]
    assert record.meta == {"k": 1} and record.id == "x-1"
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("question,answer,passage\nWho?,Me,\"A passage, with a comma.\"\n")
    (row,), _ = prepare("jsonl", [csv_path], PrepareOptions(field_map={"instruction": "question", "response": "answer",
                                                                      "contexts": "passage"}))
    assert row.contexts[0].text == "A passage, with a comma." and row.id == "x-2"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"instruction": "Who?", "response": "Me", "contexts": ["P."]}]), tmp_path / "y.parquet")
    (pr,), _ = prepare("jsonl", [tmp_path / "y.parquet"])
    assert pr.response == "Me" and pr.id == "y-1"
    gz = tmp_path / "z.jsonl.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(json.dumps({"id": "g", "instruction": "Q", "response": "R", "contexts": []}) + "\n")
    assert prepare("jsonl", [gz])[0][0].id == "g"


def test_field_map_errors_name_the_source_field(tmp_path):
    path = write(tmp_path, "x.jsonl", [{"q": "Who?", "a": 3}])
    with pytest.raises(RecordError) as info:
        prepare("jsonl", [path], PrepareOptions(field_map={"instruction": "q", "response": "a"}))
    assert str(info.value) == f"{path}:1: field 'a' must be a string, not a number (--field-map response=a)"
    with pytest.raises(ValueError, match="--field-map: question is not a grounded field"):
        prepare("jsonl", [path], PrepareOptions(field_map={"question": "q"}))


def test_jsonl_field_map_on_a_real_file():
    options = PrepareOptions(field_map={"instruction": "question", "contexts": "ctxs"})
    records, stats = prepare("jsonl", [shared("nq_open_oracle.jsonl.gz")], options)
    assert len(records) == 2655 and not stats.dropped
    assert records[0].response == "Wilhelm Conrad Röntgen" and records[0].contexts[0].gold is True


HOTPOT_ROW = {"_id": "h1", "question": "If Gallu is a demon Lilu is what?", "answer": "a spirit", "type": "bridge",
              "level": "easy", "supporting_facts": [["Alû", 0], ["Lilu (mythology)", 0]],
              "context": [["Alû", ["Alû is a demon."]], ["Lilu (mythology)", ["A lilu is a spirit."]],
                          ["Demon Dice", ["Demon Dice is a game."]]]}


def test_hotpotqa_record_whose_supporting_title_is_absent_is_dropped_and_reported(tmp_path, capsys):
    from cings.cli import main

    missing = {**HOTPOT_ROW, "_id": "h2", "supporting_facts": [["Alû", 0], ["Nowhere", 1]]}
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([HOTPOT_ROW, missing]), encoding="utf-8")
    records, stats = prepare("hotpotqa", [path])
    assert [r.id for r in records] == ["h1"] and sum(c.gold for c in records[0].contexts) == 2
    assert stats.items_in == 2 and stats.dropped == {"supporting_fact_title_not_in_context": 1}
    out = tmp_path / "hotpot.grounded.jsonl"
    code = main(["prepare", "--format", "hotpotqa", "--input", str(path), "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0 and "supporting_fact_title_not_in_context 1" in err


def test_hotpotqa_malformed_supporting_fact_names_the_field(tmp_path):
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([{**HOTPOT_ROW, "supporting_facts": [["Alû", 0], "Lilu"]}]), encoding="utf-8")
    with pytest.raises(RecordError, match=r"hotpot.json:\[0\]: field 'supporting_facts\[1\]' must be \[title, sentence"):
        prepare("hotpotqa", [path])
