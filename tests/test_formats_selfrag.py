"""Self-RAG generator data -> grounded records (cings.formats.selfrag).

The fixture (tests/fixtures/selfrag_sample.jsonl) is hand-written in the shape of
``selfrag/selfrag_train_data``; the round-trip tests write grounded records (SQuAD dev from the shared
folder, hand-made ones, random ones) in Self-RAG form and read them back.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cings.formats import PrepareOptions, get_reader
from cings.formats.common import ConvertStats
from cings.formats.selfrag import SUPPORT, TOKENS, UTILITY, SelfRAGReader
from cings.records import Context, Record, RecordError, Segment, parse_record

from .conftest import DATA

FIXTURE = Path(__file__).parent / "fixtures" / "selfrag_sample.jsonl"
SQUAD_DEV = DATA / "squad_dev_v1.1.json.gz"
ROWS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
BY_ID = {row["id"]: row for row in ROWS}
NO_RETRIEVAL_IDS = {"arc_easy_train_901", "sharegpt_AbC12x_0", "oasst1_7f3a_0", "gpt4_alpaca_3307", "sharegpt_Zx77aa_2",
                    "flan_v2_88120"}
_PARAGRAPH = re.compile(r"<paragraph>.*?</paragraph>", re.S)


def convert(row, where="f.jsonl:3", **options):
    stats = ConvertStats()
    return SelfRAGReader(PrepareOptions(**options)).convert(row, where, stats), stats


def one(row, **options):
    records, _ = convert(row, **options)
    assert len(records) == 1
    return records[0]


def convert_fixture(**options):
    reader, stats = SelfRAGReader(PrepareOptions(**options)), ConvertStats()
    records = [r for where, row in reader.items(FIXTURE) for r in reader.convert(row, where, stats)]
    return records, stats


def row(output, instruction="Q?", **extra):
    return {"instruction": instruction, "input": "", "output": output, "id": "r1", "dataset_name": "nq", **extra}


def sentence_words(output):
    """The words of the answer as written: paragraphs cut out and every token replaced by a space."""
    text = _PARAGRAPH.sub(" ", output)
    for token in TOKENS:
        text = text.replace(token, " ")
    return text.split()


def pairs(contexts):
    return [(c.title, c.text) for c in contexts]


# ---------------------------------------------------------------- the fixture itself

def test_fixture_covers_the_whole_grammar():
    outputs = "".join(r["output"] for r in ROWS)
    assert all(token in outputs for token in TOKENS), sorted(t for t in TOKENS if t not in outputs)
    assert {"nq", "asqa", "fever", "wow", "arc_easy", "obqa", "sharegpt", "oasst1"} <= {r["dataset_name"] for r in ROWS}
    assert len(ROWS) >= 15 and len(BY_ID) == len(ROWS)
    assert any(r["input"] for r in ROWS)
    assert any(not r["output"].rstrip().endswith(tuple(UTILITY)) for r in ROWS)       # a missing utility token
    assert any(re.search(r"<paragraph>[^\n]*</paragraph>", r["output"]) for r in ROWS)  # a paragraph without title
    assert any(ord(ch) > 0x2000 for r in ROWS for ch in r["output"])                    # CJK, not only accents


@pytest.mark.parametrize("options", [{}, {"irrelevant": "keep-as-distractor"}, {"support": "full"}, {"support": "partial"},
                                     {"subset": "retrieval", "passages": "single"}])
def test_every_fixture_response_is_clean(options):
    records, _ = convert_fixture(**options)
    assert records
    for record in records:
        original = BY_ID[record.id]["output"]
        assert not any(token in record.response for token in TOKENS), record.id
        assert not re.search(r"</?paragraph>|\[(Utility|Retrieval|No Retrieval|Relevant|Irrelevant)", record.response)
        assert record.response == record.response.strip() and not re.search(r"\S {2,}\S", record.response)
        # No word glued to its neighbour: every word of the response is a word of the answer as written.
        assert set(record.response.split()) <= set(sentence_words(original)), record.id
        assert parse_record(record.to_dict(), "x") == record


def test_default_options_keep_every_word_of_every_answer():
    records, stats = convert_fixture()
    assert [r.id for r in records] == [r["id"] for r in ROWS]
    for record in records:
        assert Counter(record.response.split()) == Counter(sentence_words(BY_ID[record.id]["output"])), record.id
    assert stats.dropped == {}
    assert stats.removed == {"irrelevant_paragraph": 2, "missing_utility_token": 1, "missing_support_token": 1,
                             "duplicate_paragraph": 1}


# ---------------------------------------------------------------- conversion rules, record by record

def test_single_paragraph_record():
    record = one(BY_ID["nq_train_1041"])
    assert record.id == "nq_train_1041" and record.instruction == "who sang i want to know what love is"
    assert record.response == "Foreigner"
    (ctx,) = record.contexts
    assert ctx.title == "I Want to Know What Love Is" and ctx.gold is True
    assert ctx.text.startswith('"I Want to Know What Love Is" is a power ballad') and ctx.text.endswith("Agent Provocateur.")
    assert record.segments is None
    assert record.meta == {"source": "selfrag", "dataset_name": "nq", "utility": 5, "support": ["full"], "retrieval": True}


def test_several_paragraphs_give_segments_in_order():
    record = one(BY_ID["asqa_train_318"])
    wilder, depp = record.contexts
    assert wilder.title == "Willy Wonka & the Chocolate Factory" and depp.title == "Charlie and the Chocolate Factory (film)"
    assert depp.text == ("Charlie and the Chocolate Factory is a 2005 musical fantasy film directed by Tim Burton.\n"
                         "It stars Johnny Depp as Willy Wonka and Freddie Highmore as Charlie Bucket.")  # 1st newline splits
    assert wilder.gold is depp.gold is True
    # Sentences were glued ("novel.[Retrieval]...Gene"): one space between them now.
    assert "novel. Gene Wilder" in record.response and "Factory. Johnny Depp" in record.response
    first, second, third = record.segments
    assert first == Segment(contexts=(), response="Willy Wonka has been played by two actors in the film adaptations of "
                                                   "Roald Dahl's novel.")
    assert second.contexts == (wilder,) and second.response.startswith("Gene Wilder")
    # [Continue to Use Evidence] keeps the sentence with the paragraph before it.
    assert third.contexts == (depp,) and third.response.endswith("The 2005 film follows the book more closely than the 1971 one.")
    assert record.meta["support"] == [None, "full", "full", None]


def test_continue_to_use_evidence_after_no_retrieval_and_with_a_support_token():
    record = one(BY_ID["asqa_train_2045"])
    (curie,) = record.contexts
    assert [s.contexts for s in record.segments] == [(curie,), (), ()]  # the passage is already above the third sentence
    assert record.segments[2].response == "She was born in Warsaw and later became a French citizen."
    assert record.meta["support"] == ["full", None, "partial"]


def test_duplicate_paragraph_is_one_context_and_the_segments_agree():
    record, stats = convert(BY_ID["asqa_train_1571"])
    (record,) = record
    assert [c.title for c in record.contexts] == ["The Lion King (1994 soundtrack)", "Hans Zimmer"]
    assert [len(s.contexts) for s in record.segments] == [1, 1, 0]
    assert record.segments[2].response == "Zimmer and John both won Academy Awards for the film."
    assert stats.removed == {"duplicate_paragraph": 1}


def test_bare_sentence_joins_the_sentence_before():
    record = one(BY_ID["sharegpt_Qr9u01_1"])
    assert [s.response for s in record.segments] == [
        "A comet is an icy body that releases gas and forms a tail when it gets close to the Sun. In short:",
        "asteroids are mostly rock or metal and do not grow tails."]
    assert record.meta["support"] == ["full", None, "partial"]


@pytest.mark.parametrize("rid, response", [
    ("arc_easy_train_901", "B"),
    ("oasst1_7f3a_0", "Die Hauptstadt von Österreich ist Wien. "
                      "Mit rund zwei Millionen Einwohnern ist Wien auch die größte Stadt des Landes."),
    ("flan_v2_88120", "A man playing a guitar on stage is performing music. So the answer is yes."),
    ("sharegpt_Zx77aa_2", "I'm sorry, but I can't browse the internet or access real-time weather data."),
])
def test_no_retrieval_records(rid, response):
    record = one(BY_ID[rid])
    assert record.response == response and record.contexts == () and record.segments is None
    assert record.meta["retrieval"] is False and record.meta["dataset_name"] == BY_ID[rid]["dataset_name"]


def test_code_answer_keeps_its_lines_and_brackets():
    record = one(BY_ID["sharegpt_AbC12x_0"])
    assert "```python\ndef largest(arr):\n    best = arr[0]\n    for x in arr[1:]:\n        if x > best:\n" in record.response
    assert "like arr[0] does; see the [docs](https://docs.python.org/3/library/functions.html#max) for" in record.response


def test_input_is_appended_to_the_instruction():
    record = one(BY_ID["gpt4_alpaca_3307"])
    assert record.instruction == "Translate the following sentence into French.\n\nThe weather is nice today, isn't it?"
    assert record.response == "Il fait beau aujourd'hui, n'est-ce pas ?"
    assert one(row("[No Retrieval]x", input="  \n")).instruction == "Q?"


def test_unicode_title_and_brackets_inside_a_paragraph():
    record = one(BY_ID["nq_train_4410"])
    assert record.response == "Beijing (北京)"
    assert record.contexts[0].title == "北京" and "China.[1] It is" in record.contexts[0].text


def test_stray_spaces_and_paragraph_without_title():
    record = one(BY_ID["nq_train_3318"])
    assert record.response == "330 metres"
    assert record.contexts == (Context(title="", gold=True, text="The Eiffel Tower is a wrought-iron lattice tower on the "
                                       "Champ de Mars in Paris, France. It is 330 metres (1,083 ft) tall."),)


def test_missing_support_and_utility_tokens_are_tolerated_and_counted():
    (record,), stats = convert(BY_ID["asqa_train_1200"])
    assert record.meta["utility"] is None and record.meta["support"] == ["full", None]
    assert [c.gold for c in record.contexts] == [True, None]  # the second paragraph's sentence was not graded
    assert stats.removed == {"missing_support_token": 1, "missing_utility_token": 1}


def test_partial_and_contradicted_support_set_gold():
    assert one(BY_ID["fever_train_77"]).contexts[0].gold is True
    record = one(BY_ID["obqa_train_64"])
    assert record.contexts[0].gold is False and record.meta["support"] == ["no_support"]


@pytest.mark.parametrize("output, response", [
    ("[No Retrieval]The answer is [No Retrieval] yes[Utility:5]", "The answer is yes"),  # the reference made "isyes"
    ("[No Retrieval]It is.[No Retrieval]Yes, it is.[Utility:5]", "It is. Yes, it is."),
    ("[No Retrieval]Steps:\n\n[No Retrieval]1. Mix  the flour.\n[No Retrieval]2. Bake.[Utility:4]",
     "Steps:\n\n1. Mix the flour.\n2. Bake."),
    ("[Retrieval]<paragraph>T\nP</paragraph>[Relevant]A.[Fully supported]\n\n[Retrieval]<paragraph>U\nQ</paragraph>[Relevant]B.",
     "A.\n\nB."),
])
def test_spacing_between_sentences_is_repaired(output, response):
    assert one(row(output)).response == response


# ---------------------------------------------------------------- irrelevant paragraphs: the three policies

def test_irrelevant_drop_keeps_the_sentence_without_the_paragraph():
    (record,), stats = convert(BY_ID["wow_train_5512"])
    (zermatt,) = record.contexts
    assert zermatt.title == "Zermatt" and zermatt.gold is True
    assert record.response.endswith("must be amazing! Do you also ski off-piste?")
    assert [s.contexts for s in record.segments] == [(zermatt,), ()]
    assert stats.removed == {"irrelevant_paragraph": 1}
    only = one(BY_ID["nq_train_2290"])
    assert only.contexts == () and only.response == "the Carolina Panthers" and only.meta["retrieval"] is True


def test_irrelevant_keep_as_distractor():
    (record,), stats = convert(BY_ID["wow_train_5512"], irrelevant="keep-as-distractor")
    zermatt, skiing = record.contexts
    assert (zermatt.gold, skiing.title, skiing.gold) == (True, "Alpine skiing", False)
    assert [(s.contexts, s.response) for s in record.segments][1] == ((skiing,), "Do you also ski off-piste?")
    assert stats.removed == {}
    only = one(BY_ID["nq_train_2290"], irrelevant="keep_as_distractor")  # either spelling
    assert [c.gold for c in only.contexts] == [False] and only.segments is None


def test_irrelevant_drop_record():
    records, stats = convert_fixture(irrelevant="drop-record")
    assert {"wow_train_5512", "nq_train_2290"}.isdisjoint(r.id for r in records) and len(records) == len(ROWS) - 2
    assert stats.dropped == {"irrelevant_paragraph": 2}


# ---------------------------------------------------------------- filters, counted

def kept_ids(**options):
    records, stats = convert_fixture(**options)
    return {r.id for r in records}, stats


def test_subset_filters():
    ids, stats = kept_ids(subset="retrieval")
    assert ids == set(BY_ID) - NO_RETRIEVAL_IDS - {"nq_train_2290"}  # its only paragraph was irrelevant, so dropped
    assert stats.dropped == {"subset_retrieval_only": 7}
    ids, stats = kept_ids(subset="no_retrieval")
    assert ids == NO_RETRIEVAL_IDS and stats.dropped == {"subset_no_retrieval_only": 12}
    records, _ = convert_fixture(subset="no-retrieval")
    assert all(r.contexts == () for r in records) and len(records) == 6


def test_passages_filters():
    ids, stats = kept_ids(passages="single")
    assert ids == {"nq_train_1041", "fever_train_77", "wow_train_5512", "obqa_train_64", "nq_train_3318", "nq_train_4410",
                   "asqa_train_2045"}
    assert stats.dropped == {"passages_not_single": 11}
    multi = {"asqa_train_318", "asqa_train_1200", "asqa_train_1571", "sharegpt_Qr9u01_1"}
    ids, stats = kept_ids(passages="multi")
    assert ids == multi and stats.dropped == {"passages_not_multi": 14}
    ids, _ = kept_ids(passages="multi", irrelevant="keep-as-distractor")  # the distractor counts as a passage
    assert ids == multi | {"wow_train_5512"}


def test_support_full():
    records, stats = convert_fixture(support="full")
    by_id = {r.id: r for r in records}
    assert set(BY_ID) - set(by_id) == {"fever_train_77", "obqa_train_64"}
    assert stats.dropped == {"no_supported_sentence": 2}
    assert stats.removed["unsupported_sentence"] == 5 and stats.removed["unsupported_paragraph"] == 2
    # The ungraded [Continue to Use Evidence] sentence goes; the [No Retrieval] one claims nothing and stays.
    assert by_id["asqa_train_318"].meta["support"] == [None, "full", "full"]
    assert not by_id["asqa_train_318"].response.endswith("1971 one.")
    berlin = by_id["asqa_train_1200"]
    assert [c.title for c in berlin.contexts] == ["Berlin Wall"] and berlin.segments is None
    assert by_id["asqa_train_2045"].response == ("Marie Skłodowska-Curie was the first woman to win a Nobel Prize, in 1903. "
                                                  "She remains a symbol of women in science.")
    assert by_id["wow_train_5512"].response.endswith("Do you also ski off-piste?")  # after [Irrelevant]: not judged
    assert by_id["sharegpt_Qr9u01_1"].contexts[0].title == "Comet" and len(by_id["sharegpt_Qr9u01_1"].contexts) == 1
    assert all(s in (None, "full") for r in records for s in r.meta["support"])


def test_support_partial():
    records, stats = convert_fixture(support="partial")
    assert set(BY_ID) - {r.id for r in records} == {"obqa_train_64"}
    assert stats.dropped == {"no_supported_sentence": 1} and stats.removed["unsupported_sentence"] == 2


def test_min_utility_and_dataset_names():
    ids, stats = kept_ids(min_utility=4)
    assert set(BY_ID) - ids == {"obqa_train_64", "sharegpt_Qr9u01_1", "sharegpt_Zx77aa_2", "asqa_train_1200"}
    assert stats.dropped == {"utility_below_4": 3, "utility_missing": 1}
    ids, stats = kept_ids(dataset_names=("nq", "asqa"))
    assert ids == {i for i, r in BY_ID.items() if r["dataset_name"] in ("nq", "asqa")} and len(ids) == 8
    assert stats.dropped == {"dataset_name": 10}


def test_filters_combined_count_the_first_reason_only():
    records, stats = convert_fixture(subset="retrieval", passages="single", support="full", min_utility=5,
                                     dataset_names=("nq", "fever", "asqa", "wow", "obqa"))
    assert [r.id for r in records] == ["nq_train_1041", "nq_train_3318", "nq_train_4410"]
    assert sum(stats.dropped.values()) == len(ROWS) - 3
    assert stats.dropped == {"dataset_name": 7, "utility_below_5": 4, "utility_missing": 1, "no_supported_sentence": 1,
                             "subset_retrieval_only": 1, "passages_not_single": 1}


# ---------------------------------------------------------------- leniency and errors

@pytest.mark.parametrize("output, note", [
    ("<paragraph>T\nP</paragraph>[Relevant]A[Fully supported][Utility:5]", "paragraph_without_retrieval_token"),
    ("[Retrieval]<paragraph>T\nP</paragraph>A[Fully supported][Utility:5]", "missing_relevance_token"),
    ("[Continue to Use Evidence]A[Utility:5]", "continue_without_paragraph"),
    ("[Retrieval]<paragraph>T\nP</paragraph>[Relevant][No Retrieval]A[Utility:5]", "paragraph_without_sentence"),
])
def test_odd_outputs_are_tolerated_and_counted(output, note):
    (record,), stats = convert(row(output))
    assert record.response == "A" and stats.removed == {note: 1}


@pytest.mark.parametrize("output, problem", [
    ("[Retrieval]<paragraph>T\ntext[Relevant]ans[Fully supported][Utility:5]",
     "has '<paragraph>' without '</paragraph>' at character 11"),
    ("[Retrieval]<paragraph>A<paragraph>B</paragraph>[Relevant]x", "has '<paragraph>' without '</paragraph>'"),
    ("[No Retrieval]ans</paragraph>[Utility:5]", "has '</paragraph>' without '<paragraph>' at character 17"),
    ("[No Retrieval]ans[Utility:6]", "has an unknown reflection token '[Utility:6]' at character 17"),
    ("[Retrieval]<paragraph>T\nx</paragraph>[Relevant]ans[Fully Supported]", "unknown reflection token '[Fully Supported]'"),
    ("[No Retrieval]ans[Retrieve][Utility:5]", "unknown reflection token '[Retrieve]'"),
    ("[No Retrieval][Utility:5]", "has no answer text, only reflection tokens"),
    ("  \n ", "must not be empty"),
    ("[Retrieval]ans[Utility:5]", "has [Retrieval] not followed by a <paragraph> at character 0"),
    ("[Retrieval]<paragraph>Title\n  </paragraph>[Relevant]ans", "has a paragraph without text at character 11"),
    ("[No Retrieval][Relevant]ans", "has [Relevant] not right after a </paragraph>"),
    ("[Retrieval]<paragraph>T\nx</paragraph>[Relevant][Fully supported][Utility:5]",
     "has [Fully supported] not right after a sentence"),
    ("[No Retrieval]ans[Utility:5] more", "has text 'more' after [Utility:5] at character 28"),
    ("[No Retrieval]ans[Utility:5][Utility:4]", "has [Utility:4] after [Utility:5]"),
    ("[No Retrieval]ans[Utility:1]<paragraph>T\nP</paragraph>", "has a <paragraph> after [Utility:1] at character 28"),
])
def test_malformed_output_names_the_field(output, problem):
    with pytest.raises(RecordError) as info:
        convert(row(output))
    message = str(info.value)
    assert message.startswith("f.jsonl:3: field 'output' ") and problem in message, message


@pytest.mark.parametrize("obj, message", [
    ({"instruction": "Q", "output": "[No Retrieval]a"}, "f.jsonl:3: field 'id' is missing"),
    (row("[No Retrieval]a", id=True), "f.jsonl:3: field 'id' must be a string, not a boolean"),
    (row("[No Retrieval]a", instruction=" "), "f.jsonl:3: field 'instruction' must not be empty"),
    ({"id": "x", "output": "[No Retrieval]a"}, "f.jsonl:3: field 'instruction' is missing"),
    ({"id": "x", "instruction": "Q"}, "f.jsonl:3: field 'output' is missing"),
    (row(["[No Retrieval]a"]), "f.jsonl:3: field 'output' must be a string, not a list"),
    (row("[No Retrieval]a", input=5), "f.jsonl:3: field 'input' must be a string, not a number"),
    (["not", "an", "object"], "f.jsonl:3: expected a JSON object, not a list"),
])
def test_malformed_row(obj, message):
    with pytest.raises(RecordError) as info:
        convert(obj)
    assert str(info.value) == message


def test_integer_id_and_missing_dataset_name():
    record = one({"id": 7, "instruction": "Q", "output": "[No Retrieval]a[Utility:5]"})
    assert record.id == "7" and record.meta["dataset_name"] == ""
    assert convert({"id": 7, "instruction": "Q", "output": "[No Retrieval]a"}, dataset_names=("nq",))[0] == []


@pytest.mark.parametrize("options, name", [
    ({"passages": "two"}, "passages"), ({"support": "strong"}, "support"), ({"irrelevant": "ignore"}, "irrelevant"),
    ({"subset": "both"}, "subset"), ({"min_utility": 0}, "min_utility"), ({"min_utility": 6}, "min_utility"),
    ({"min_utility": True}, "min_utility"), ({"dataset_names": ("nq", 3)}, "dataset_names"), ({"support": None}, "support"),
])
def test_bad_options_are_refused(options, name):
    with pytest.raises(ValueError, match=f"option '{name}'"):
        SelfRAGReader(PrepareOptions(**options))


def test_reader_reads_the_fixture_file_with_line_numbers():
    reader = get_reader("selfrag", PrepareOptions(support="full"))
    assert isinstance(reader, SelfRAGReader) and reader.name == "selfrag" and reader.support == "full"
    wheres = [where for where, _ in reader.items(FIXTURE)]
    assert wheres[0] == f"{FIXTURE}:1" and len(wheres) == len(ROWS)
    records, _ = convert_fixture()
    assert records[4].source == f"{FIXTURE}:5"


# ---------------------------------------------------------------- generator and round trips

def paragraph(ctx: Context) -> str:
    return f"{ctx.title}\n{ctx.text}" if ctx.title or "\n" in ctx.text else ctx.text


def to_selfrag(record: Record, *, dataset_name: str = "squad", utility: int = 5, split_input: bool = False) -> dict:
    """A grounded record in Self-RAG generator form: each segment's passage, [Relevant], its answer, [Fully supported].

    Self-RAG puts one paragraph before a sentence, so each segment (or the record, without segments) has at most one
    context; a segment without contexts becomes a [No Retrieval] sentence.
    """
    segments = record.segments or (Segment(contexts=record.contexts, response=record.response),)
    out = []
    for seg in segments:
        if len(seg.contexts) > 1:
            raise ValueError(f"{record.id}: Self-RAG has one paragraph per sentence")
        if seg.contexts:
            out.append(f"[Retrieval]<paragraph>{paragraph(seg.contexts[0])}</paragraph>[Relevant]{seg.response}[Fully supported]")
        else:
            out.append(f"[No Retrieval]{seg.response}")
    instruction, extra = record.instruction, ""
    if split_input and "\n\n" in instruction:
        instruction, _, extra = instruction.partition("\n\n")
    return {"instruction": instruction, "input": extra, "output": "".join(out) + f"[Utility:{utility}]", "id": record.id,
            "dataset_name": dataset_name}


def assert_round_trip(record: Record, **kw):
    back = one(to_selfrag(record, **kw))
    assert (back.id, back.instruction, back.response) == (record.id, record.instruction, record.response)
    assert pairs(back.contexts) == pairs(record.contexts)
    assert all(c.gold is True for c in back.contexts)
    if record.segments is None:
        assert back.segments is None
    else:
        view = [(pairs(s.contexts), s.response) for s in record.segments]
        assert [(pairs(s.contexts), s.response) for s in back.segments] == view
    return back


def _tidy(text: str) -> str:
    return " ".join(text.split())


def squad_grounded(path: Path, limit: int = 3000) -> list[Record]:
    """Grounded records from SQuAD v1.1: one per question, and one per three paragraphs of an article (with segments)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        articles = json.load(handle)["data"]
    out: list[Record] = []
    for article in articles:
        title = article["title"].replace("_", " ")
        firsts = []
        for para in article["paragraphs"]:
            ctx = Context(text=para["context"].strip(), title=title, gold=True)
            for qa in para["qas"]:
                if len(out) < limit:
                    out.append(Record(id=qa["id"], instruction=qa["question"].strip(), contexts=(ctx,),
                                      response=_tidy(qa["answers"][0]["text"])))
            if para["qas"]:
                firsts.append((ctx, para["qas"][0]))
        for i in range(0, len(firsts) - 2, 3):
            group = firsts[i:i + 3]
            if len({c.text for c, _ in group}) < 3:
                continue
            segs = tuple(Segment(contexts=(c,), response=_tidy(qa["answers"][0]["text"])) for c, qa in group)
            out.append(Record(id=f"{group[0][1]['id']}+3", instruction="\n".join(qa["question"].strip() for _, qa in group),
                              contexts=tuple(c for c, _ in group), response=" ".join(s.response for s in segs), segments=segs))
    return out


def test_round_trip_squad():
    if not SQUAD_DEV.is_file():
        pytest.skip(f"SQuAD dev is not available: {SQUAD_DEV} is absent (the shared folder is not mounted)")
    records = squad_grounded(SQUAD_DEV)
    assert len(records) > 3000 and any(r.segments for r in records)
    for record in records:
        parse_record(record.to_dict(), record.id)  # the generator writes valid grounded records
        assert_round_trip(record)


P1 = Context(title="Zürich", text="Zürich is the largest city in Switzerland.\nIt lies on Lake Zürich.", gold=True)
P2 = Context(title="", text="東京は日本の首都である。", gold=True)
P3 = Context(title="", text="A passage\nwhose first line is not a title.", gold=True)
HAND_MADE = [
    Record(id="h1", instruction="What is the largest Swiss city?", contexts=(P1,), response="Zürich"),
    Record(id="h2", instruction="Name two capitals.\n\nAnswer in one sentence each.", contexts=(P1, P2),
           response="Sure. Zürich is not a capital. 東京 is.",
           segments=(Segment((), "Sure."), Segment((P1,), "Zürich is not a capital."), Segment((P2,), "東京 is."))),
    Record(id="h3", instruction="Tell me a joke.", contexts=(),
           response="Why did the chicken cross the road?\nTo get to the other side."),
    Record(id="h4", instruction="Q", contexts=(P3,), response="first.\nthen. last.",
           segments=(Segment((P3,), "first.\nthen."), Segment((), "last."))),
]


@pytest.mark.parametrize("record", HAND_MADE, ids=lambda r: r.id)
def test_round_trip_hand_made(record):
    parse_record(record.to_dict(), record.id)
    back = assert_round_trip(record, split_input=True)
    assert to_selfrag(record, split_input=True)["input"] == ("Answer in one sentence each." if record.id == "h2" else "")
    assert back.meta["retrieval"] is bool(record.contexts)


_WORDS = ["the", "answer", "is", "yes", "no", "Paris", "北京", "Österreich", "größte", "arr[0]", "[1]", "3.14", "it's",
          "—",
          "x<y", "(a)", "e.g.", "Ωmega", "naïve", "über"]
words = st.lists(st.sampled_from(_WORDS), min_size=1, max_size=6)
sentences = st.lists(words.map(" ".join), min_size=1, max_size=2).map("\n".join)
titles = st.one_of(st.just(""), words.map(" ".join))
texts = st.lists(words.map(" ".join), min_size=1, max_size=3).map("\n".join)


@st.composite
def grounded_records(draw) -> Record:
    """A record Self-RAG can express: each context once, before its sentence; optional no-retrieval sentences between."""
    n = draw(st.integers(0, 3))
    contexts = []
    for i in range(n):  # distinct passages: the index makes them so
        contexts.append(Context(title=draw(titles), text=f"{draw(texts)} {i}", gold=True))
    segments: list[Segment] = []
    for ctx in contexts:
        if draw(st.booleans()):
            segments.append(Segment((), draw(sentences)))
        segments.append(Segment((ctx,), draw(sentences)))
    if not segments or draw(st.booleans()):
        segments.append(Segment((), draw(sentences)))
    response = " ".join(s.response for s in segments)
    return Record(id=draw(st.text("abc123_", min_size=1, max_size=8)), instruction=draw(sentences),
                  contexts=tuple(contexts), response=response, segments=tuple(segments) if len(segments) > 1 else None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grounded_records())
def test_round_trip_random_records(record):
    parse_record(record.to_dict(), record.id)
    assert_round_trip(record)


@st.composite
def selfrag_outputs(draw):
    """Random outputs in the full grammar, with stray whitespace; returns (output, words, relevant paragraphs in order)."""
    pool = [(draw(titles), f"{draw(texts)} {i}") for i in range(3)]
    pieces, all_words, relevant, ends_with_token = [], [], [], False
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["relevant", "irrelevant", "continue", "no_retrieval", "bare"]))
        if kind == "bare" and not ends_with_token:
            kind = "no_retrieval"  # Self-RAG glues a bare sentence to one that ends without a token: no boundary left
        sentence = draw(sentences)
        if draw(st.booleans()):
            sentence = sentence.replace(" ", "  ", 1)
        ws = draw(st.sampled_from(["", " ", "\n", " \n\n "]))
        support = draw(st.sampled_from(["", *SUPPORT]))
        if kind in ("relevant", "irrelevant"):
            title, text = pool[draw(st.integers(0, 2))]
            body = f"{title}\n{text}" if title or "\n" in text else text
            token = "[Relevant]" if kind == "relevant" else "[Irrelevant]"
            pieces.append(f"[Retrieval]{ws}<paragraph>{body}</paragraph>{ws}{token}{ws}{sentence}{ws}{support}")
            if kind == "relevant" and (title, text) not in relevant:
                relevant.append((title, text))
        elif kind == "continue":
            pieces.append(f"[Continue to Use Evidence]{sentence}{support}")
        elif kind == "no_retrieval":
            pieces.append(f"{ws}[No Retrieval]{sentence}{support}")
        else:
            pieces.append(f"{ws}{sentence}{support}")
        ends_with_token = bool(support)
        all_words += sentence.split()
    utility = draw(st.sampled_from(["", *UTILITY]))
    return "".join(pieces) + utility, all_words, relevant


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(selfrag_outputs())
def test_random_outputs_convert_cleanly(case):
    output, all_words, relevant = case
    (record,), _ = convert(row(output))
    assert record.response.split() == all_words          # every word, in order, none glued or lost
    assert not any(token in record.response for token in TOKENS)
    assert "  " not in record.response and record.response == record.response.strip()
    assert pairs(record.contexts) == relevant             # irrelevant paragraphs dropped, repeats once, first-use order
    (kept,), _ = convert(row(output), irrelevant="keep-as-distractor")
    assert kept.response == record.response
    assert set(pairs(record.contexts)) <= set(pairs(kept.contexts))
    assert all(c.gold is False for c in kept.contexts if (c.title, c.text) not in relevant)


_PIECES = sorted(TOKENS) + ["<paragraph>T\nP</paragraph>", "<paragraph>Q</paragraph>", "ans", " ", "\n", "[1]", "[Utility:9]", ""]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=10).map("".join),
       st.sampled_from(["drop", "keep-as-distractor", "drop-record"]), st.sampled_from(["any", "partial", "full"]))
def test_any_token_soup_converts_or_fails_with_a_record_error(output, irrelevant, support):
    try:
        records, _ = convert(row(output), irrelevant=irrelevant, support=support)
    except RecordError as err:
        assert str(err).startswith("f.jsonl:3: field 'output' ")
    else:
        for record in records:
            assert not any(token in record.response for token in TOKENS)
            assert parse_record(record.to_dict(), "x") == record
