import gzip
import json

import pytest

from cings.counterfactual import ANSWER_TYPES, CounterfactualStats, answer_type, make_counterfactual
from cings.records import Context, Record, Segment, read_records, write_records

from .conftest import DATA

SQUAD_DEV = DATA / "squad_dev_v1.1.json.gz"


def rec(rid, question, passage, *answers, title="Art", meta=None):
    return Record(id=rid, instruction=question, contexts=(Context(text=passage, title=title, gold=True),),
                  response=answers[0], answers=tuple(answers), meta=meta or {"source": "test", "title": title})


def squad_records(path):
    """Grounded records as ``cings prepare --format squad`` writes them, built here from the raw file."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)["data"]
    out = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                out.append(Record(id=qa["id"], instruction=qa["question"], response=answers[0], answers=answers,
                                  contexts=(Context(text=paragraph["context"], title=article["title"].replace("_", " "),
                                                    gold=True),),
                                  meta={"source": "squad", "title": article["title"]}))
    return out


@pytest.mark.parametrize("text, kind", [
    ("1990", "year"), ("2016.", "year"), ("1980s", "decade"), ("the 1970s", "decade"),
    ("October 16, 2012", "date"), ("12 December 1963", "date"), ("June", "date"),
    ("3%", "percent"), ("7 to 10 percent", "percent"), ("$2 million", "money"), ("£76 million", "money"),
    ("third", "ordinal"), ("20th", "ordinal"),
    ("six", "number"), ("30,000", "number"), ("1/6", "number"), ("twenty-five", "number"), ("three million", "number"),
    ("Denver Broncos", "name"), ("University of Chicago", "name"), ("Super Bowl 50", "name"), ("the Broncos", "name"),
    ("Treaty on European Union (TEU)", "name"), ("Xbox One", "name"),
    ("since 1979", "time"), ("spring of 1349", "time"), ("5th century", "time"),
    ("25 nm", "quantity"), ("over 50 letters", "quantity"),
    ("oxygen", "word"), ("a double membrane", "phrase"), ("one of the poorest", "phrase"),
    ("the expansion of the railways into the west", "clause"),
])
def test_answer_type(text, kind):
    assert kind in ANSWER_TYPES
    assert answer_type(text) == kind


# Four articles, so that every record has donors of its type from another article.
HAND = [
    rec("q1", "Who won the game?", "The Denver Broncos beat the Panthers. The Broncos won 24-10.", "Denver Broncos", "Broncos",
        title="Football"),
    rec("q2", "When was the bridge built?", "The bridge was built in 1890 and painted in 1920.", "1890", title="Bridges"),
    rec("q3", "Who designed the bridge?", "It was designed by Gustave Eiffel, an engineer.", "Gustave Eiffel", title="Bridges"),
    rec("q4", "When did the city grow?", "The city grew fast after 1850, as rail arrived.", "1850", title="Cities"),
    rec("q5", "Who founded the city?", "The city was founded by Marcus Aurelius on a hill.", "Marcus Aurelius", title="Cities"),
    rec("q6", "When did the war end?", "The war ended in 1763 with a treaty.", "1763", title="Wars"),
    rec("q7", "Who led the army?", "The army was led by Robert Clive, a general.", "Robert Clive", title="Wars"),
    rec("q8", "What gas burns?", "Oxygen feeds the fire; without oxygen it dies.", "oxygen", title="Fire"),
    rec("q9", "What metal rusts?", "Iron rusts in wet air.", "iron", title="Metals"),
]


def check_record(out, source):
    passage = " ".join(c.text for c in out.contexts).lower()
    assert out.answers == (out.response,)
    assert out.response.lower() in passage
    for original in out.parametric_answers:
        assert original.lower() not in passage
    assert answer_type(out.response) == answer_type(out.parametric_answers[0]) == out.meta["answer_type"]
    assert out.id == source.id and out.instruction == source.instruction
    assert [c.title for c in out.contexts] == [c.title for c in source.contexts]
    assert out.parametric_answers == source.answers
    assert out.meta["counterfactual"] is True and out.meta["original_answer"] == source.answers[0]
    assert out.meta["substituted_from"] != source.id


def test_hand_made_records_are_rewritten():
    out, stats = make_counterfactual(HAND, seed=0)
    assert stats.records_in == 9 and stats.records_out == len(out) == 9 and not stats.dropped
    by_id = {r.id: r for r in HAND}
    for r in out:
        check_record(r, by_id[r.id])
    first = out[0]
    # Both answers gone, each occurrence replaced once ("Denver Broncos" as a whole, not "Denver X").
    assert first.response in {"Gustave Eiffel", "Marcus Aurelius", "Robert Clive"}
    assert first.contexts[0].text == f"The {first.response} beat the Panthers. The {first.response} won 24-10."
    assert first.meta["source"] == "test"
    assert stats.by_type == {"name": 4, "year": 3, "word": 2}


def test_donors_come_from_other_articles_and_keep_a_sentence_capital():
    out, _ = make_counterfactual(HAND, seed=0)
    article = {r.id: r.meta["title"] for r in HAND}
    for r in out:
        assert article[r.meta["substituted_from"]] != r.meta["title"]
    oxygen = next(r for r in out if r.id == "q8")
    assert oxygen.response == "iron"
    assert oxygen.contexts[0].text == "Iron feeds the fire; without iron it dies."


def test_same_article_other_paragraph_when_nothing_else_fits():
    records = [rec("a", "Who?", "Alan Turing wrote it.", "Alan Turing", title="T"),
               rec("b", "Who?", "Ada Lovelace wrote it.", "Ada Lovelace", title="T")]
    out, stats = make_counterfactual(records)
    assert [r.response for r in out] == ["Ada Lovelace", "Alan Turing"]
    # Never from the same paragraph: a second question on the passage has no donor.
    same = [rec("a", "Who?", "Alan Turing met Ada Lovelace.", "Alan Turing"),
            rec("b", "Whom?", "Alan Turing met Ada Lovelace.", "Ada Lovelace")]
    out, stats = make_counterfactual(same)
    assert out == [] and stats.dropped == {"no_donor_of_same_type": 2}


def test_substitute_must_not_be_in_the_passage_or_equal_an_answer():
    # "Ada Lovelace" is already in the passage; "A Turing" is "A. Turing" once normalised.
    records = [rec("a", "Who?", "A. Turing met Ada Lovelace.", "A. Turing", title="T"),
               rec("b", "Who?", "Ada Lovelace wrote it.", "Ada Lovelace", title="U"),
               rec("c", "Who?", "A Turing machine.", "A Turing", title="V"),
               rec("d", "Who?", "Grace Hopper wrote it.", "Grace Hopper", title="W")]
    for seed in range(10):
        out, _ = make_counterfactual(records, seed=seed)
        assert next(r for r in out if r.id == "a").response == "Grace Hopper"


@pytest.mark.parametrize("record, reason", [
    (Record(id="x", instruction="Who?", contexts=(), response="Denver", answers=("Denver",)), "no_context"),
    (rec("x", "Which letter?", "Super Bowl L was played.", "Super Bowl L", "L"), "answer_too_short"),
    (rec("x", "Who beat the Broncos?", "The Broncos won.", "Broncos"), "answer_in_question"),
    (rec("x", "Who won?", "Denver won.", "Denver", title="Denver"), "answer_in_title"),
    (rec("x", "Who won?", "The home side won.", "Denver"), "answer_not_in_passage"),
    (rec("x", "Who won?", "Denver won; Denverites cheered.", "Denver"), "answer_inside_word"),
    (rec("x", "How many?", "It sold 8 copies in 1980.", "8"), "answer_inside_word"),
    (rec("x", "Which?", "Blue wins.", "99 red balloons"), "answer_not_in_passage"),
])
def test_drop_reasons(record, reason):
    out, stats = make_counterfactual([record, *HAND])
    assert record.id not in {r.id for r in out}
    assert stats.dropped == {reason: 1}
    assert stats.records_in == stats.records_out + sum(stats.dropped.values())


def test_segments_and_missing_donor_type():
    segmented = Record(id="s", instruction="Who won?", contexts=(Context("Denver won."),), response="Denver",
                       answers=("Denver",), segments=(Segment((Context("Denver won."),), "Denver"),))
    lonely = rec("m", "How much?", "It cost $5 million.", "$5 million")
    _, stats = make_counterfactual([segmented, lonely, *HAND])
    assert stats.dropped == {"has_segments": 1, "no_donor_of_same_type": 1}


def test_answer_without_answers_field_uses_response():
    records = [Record(id=r.id, instruction=r.instruction, contexts=r.contexts, response=r.response, meta=r.meta)
               for r in HAND]
    out, stats = make_counterfactual(records)
    assert stats.records_out == 9
    assert all(r.parametric_answers == (src.response,) for r, src in zip(out, records))


def test_determinism_on_hand_made_records():
    first, _ = make_counterfactual(HAND, seed=5)
    again, _ = make_counterfactual(list(reversed(HAND)), seed=5)
    assert first == make_counterfactual(HAND, seed=5)[0]
    # Pools are sorted by id and each record has its own generator, so input order changes no substitute.
    assert {r.id: r.response for r in first} == {r.id: r.response for r in again}
    assert isinstance(make_counterfactual([])[1], CounterfactualStats)


@pytest.fixture(scope="module")
def squad():
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD v1.1 dev not available: {SQUAD_DEV} is absent (the shared folder is not mounted)")
    records = squad_records(SQUAD_DEV)
    out, stats = make_counterfactual(records, seed=0)
    return records, out, stats


def test_squad_dev_whole_output(squad, tmp_path):
    records, out, stats = squad
    assert stats.records_in == len(records) == 10570
    assert stats.records_out == len(out) >= 5000
    assert stats.records_in == stats.records_out + sum(stats.dropped.values())
    assert sum(stats.by_type.values()) == stats.records_out
    source = {r.id: r for r in records}
    for r in out:
        check_record(r, source[r.id])
        donor = source[r.meta["substituted_from"]]
        assert donor.contexts[0].text != r.contexts[0].text and donor.id != r.id
    path = tmp_path / "cf.jsonl"
    write_records(out, path)
    assert list(read_records(path)) == out


def test_squad_dev_determinism(squad):
    records, out, _ = squad
    again, _ = make_counterfactual(records, seed=0)
    assert again == out
    other, _ = make_counterfactual(records, seed=1)
    by_id = {r.id: r.response for r in out}
    changed = sum(by_id.get(r.id) not in (None, r.response) for r in other)
    assert changed > 0.8 * len(other)


def test_a_substitute_that_recreates_an_answer_is_not_used():
    fire = rec("f", "What burned?", "It burned in a 100% oxygen atmosphere.", "100% oxygen", "oxygen atmosphere", title="Fire")
    risky = rec("r", "How much?", "Air of 50% oxygen is toxic.", "50% oxygen", title="Air")
    out, stats = make_counterfactual([fire, risky])
    # "50% oxygen" + " atmosphere" would bring "oxygen atmosphere" back.
    assert stats.dropped == {"unsafe_replacement": 1} and [r.id for r in out] == ["r"]
    safe = rec("s", "How much?", "Some 20% was lost.", "20%", title="Loss")
    out, stats = make_counterfactual([fire, risky, safe])
    assert next(r for r in out if r.id == "f").contexts[0].text == "It burned in a 20% atmosphere."
