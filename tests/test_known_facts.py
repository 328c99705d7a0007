import json

import pytest

from cings.cli import main
from cings.known_facts import EXCLUSIONS, answer_passage, exclusion, known_counterfactual, select_known
from cings.records import Context, Record, RecordError, read_records, write_records


def rec(rid, question, passages, *answers, source="nq"):
    contexts = tuple(p if isinstance(p, Context) else Context(text=p, title=f"T{rid}", gold=True) for p in passages)
    return Record(id=rid, instruction=question, contexts=contexts, response=answers[0], answers=tuple(answers),
                  meta={"source": source, "title": f"T{rid}"})


def pred(record, prediction, docs="none"):
    return {"id": record.id, "prediction": prediction, "answers": list(record.answers),
            "settings": {"docs": docs, "prompt": "prefill"}}


@pytest.mark.parametrize("answer, reason", [
    ("yes", "yes_no"), ("No.", "yes_no"), ("1990", "year"), ("2016.", "year"), ("30,000", "number"),
    ("six", "number"), ("1/6", "number"), ("Au", "too_short"), ("the UK", "too_short"), ("X", "too_short"),
    ("Paris", None), ("1990s", None), ("William Shakespeare", None), ("Super Bowl 50", None),
])
def test_exclusion(answer, reason):
    assert reason is None or reason in EXCLUSIONS
    assert exclusion(answer) == reason


HAMLET = rec("h", "Who wrote Hamlet?", ["Hamlet is a tragedy written by William Shakespeare around 1600."],
             "William Shakespeare", "Shakespeare")
PARIS = rec("p", "What is the capital of France?", ["Paris is the capital and largest city of France."], "Paris")
YEAR = rec("y", "When did the war end?", ["The war ended in 1945."], "1945")
YES = rec("q", "Is the sky blue?", ["Yes: the sky is blue by day."], "yes")
SIX = rec("s", "How many legs has an insect?", ["An insect has six legs."], "six")
UK = rec("u", "Which country is London in?", ["London is the capital of the UK."], "UK")
NOWHERE = rec("n", "Who painted the Mona Lisa?", ["A portrait kept in the Louvre."], "Leonardo da Vinci")
# Retrieved passages, none marked gold: the first that holds the answer is kept.
RETRIEVED = rec("r", "Who discovered penicillin?",
                [Context(text="Antibiotics changed medicine.", title="Antibiotics"),
                 Context(text="Alexander Fleming found penicillin in 1928.", title="Fleming"),
                 Context(text="Fleming (Alexander Fleming) was Scottish.", title="Fleming 2")],
                "Alexander Fleming", source="popqa")
# A gold passage wins over an earlier non-gold one.
GOLD_LATER = rec("g", "Where is the Eiffel Tower?",
                 [Context(text="Paris hotels near the tower.", title="Hotels", gold=False),
                  Context(text="The Eiffel Tower stands in Paris, France.", title="Eiffel Tower", gold=True)],
                 "Paris, France")

PREDICTIONS = {"h": "Shakespeare.", "p": "The capital of France is Paris.", "y": "1945", "q": "Yes.", "s": "six",
               "u": "the UK", "n": "Leonardo da Vinci", "r": "alexander fleming", "g": "Paris, France"}
ALL = [HAMLET, PARIS, YEAR, YES, SIX, UK, NOWHERE, RETRIEVED, GOLD_LATER]


def rows(records=ALL, **overrides):
    return [pred(r, overrides.get(r.id, PREDICTIONS[r.id])) for r in records]


def test_only_exact_matches_of_substantive_answers_are_known():
    kept, stats = select_known(ALL, rows())
    assert [r.id for r in kept] == ["h", "r", "g"]
    # Paris is in the prediction, but the prediction is a sentence: contained, not an exact match.
    assert stats.dropped == {"not_known": 1, "excluded_year": 1, "excluded_yes_no": 1, "excluded_number": 1,
                             "excluded_too_short": 1, "answer_not_in_passage": 1}
    assert stats.records_in == 9 and stats.known == 4 and stats.predictions_unused == 0
    assert stats.by_source == {"nq": {"records": 8, "known": 3, "not_known": 1, "year": 1, "yes_no": 1, "number": 1,
                                      "too_short": 1, "answer_not_in_passage": 1},
                               "popqa": {"records": 1, "known": 1}}


def test_words_match_takes_a_sentence_but_not_a_part_word_nor_the_question_echoed():
    echo = rec("e", "Which river flows through Paris, the Seine?", ["The Seine flows through Paris."], "Seine")
    part = rec("t", "Who wrote Hamlet?", ["Hamlet was written by Shakespeare."], "Shakespeare")
    records = [PARIS, echo, part, YEAR]
    predictions = [pred(PARIS, "The capital of France is Paris."), pred(echo, "Yes, the Seine flows there."),
                   pred(part, "Shakespeares were many."), pred(YEAR, "The war ended in 1945.")]
    kept, stats = select_known(records, predictions, known_match="words")
    assert [r.id for r in kept] == ["p"]
    assert stats.dropped == {"not_known": 2, "excluded_year": 1}  # echoed answer and a part word are not knowledge
    exact, _ = select_known(records, predictions)
    assert exact == []  # the same sentence is no exact match
    with pytest.raises(ValueError, match="known-match"):
        select_known(records, predictions, known_match="substring")


def test_each_known_record_keeps_one_gold_passage_holding_its_answer():
    kept = {r.id: r for r in select_known(ALL, rows())[0]}
    assert kept["r"].contexts == (Context(text="Alexander Fleming found penicillin in 1928.", title="Fleming", gold=True),)
    assert kept["g"].contexts == (GOLD_LATER.contexts[1],)
    assert kept["h"].contexts == HAMLET.contexts and kept["h"].answers == HAMLET.answers


def test_answer_passage_needs_whole_words():
    inside = rec("w", "What metal?", ["Golden light and goldsmiths."], "gold")
    assert answer_passage(inside) is None
    assert answer_passage(rec("w", "What metal?", ["Rings of gold."], "gold")) is not None


def test_a_record_without_a_prediction_is_an_error_naming_it():
    with pytest.raises(RecordError, match=r"PRED\.jsonl: no prediction for 1 of 9 records, the first id 'g'"):
        select_known(ALL, rows(ALL[:-1]), path="PRED.jsonl")


def test_predictions_of_other_ids_are_counted():
    extra = pred(rec("z", "?", ["x"], "zz"), "zz")
    _, stats = select_known(ALL[:2], rows(ALL[:2]) + [extra])
    assert stats.predictions_unused == 1 and stats.records_in == 2


def test_predictions_with_documents_or_other_answers_are_refused():
    with pytest.raises(RecordError, match=r"id 'h' was answered with documents \(settings.docs 'gold'\)"):
        select_known([HAMLET], [pred(HAMLET, "Shakespeare", docs="gold")])
    other = {**pred(HAMLET, "Shakespeare"), "answers": ["Marlowe"]}
    with pytest.raises(RecordError, match=r"id 'h': the prediction's answers \['Marlowe'\] differ"):
        select_known([HAMLET], [other])


# Names of several articles, so that a known name finds a donor among the records the model did not know.
DONORS = [rec(f"d{i}", f"Who is person {i}?", [f"{name} was born here."], name)
          for i, name in enumerate(["Charles Dickens", "Jane Austen", "Mark Twain"])]


def write(tmp_path, records, predictions):
    src, pred_path = tmp_path / "records.jsonl", tmp_path / "pred.jsonl"
    write_records(records, src)
    pred_path.write_text("".join(json.dumps(p) + "\n" for p in predictions), encoding="utf-8")
    return src, pred_path


def test_known_records_are_rewritten_with_donors_from_every_record(tmp_path):
    records = [HAMLET, PARIS, *DONORS]
    _, pred_path = write(tmp_path, records, rows([HAMLET, PARIS]) + [pred(d, "I do not know") for d in DONORS])
    out, originals, stats, cf = known_counterfactual(records, pred_path, seed=0)
    assert [r.id for r in out] == ["h"] and originals == [HAMLET]
    (h,) = out
    assert h.parametric_answers == ("William Shakespeare", "Shakespeare")
    assert h.meta["substituted_from"] in {"d0", "d1", "d2"}  # none of them known: donors come from all records
    donor = h.answers[0]
    assert h.response == donor and donor in {"Charles Dickens", "Jane Austen", "Mark Twain"}
    assert h.contexts[0].text == f"Hamlet is a tragedy written by {donor} around 1600."
    assert stats.by_source["nq"]["kept"] == 1 and cf.records_in == 1 and cf.records_out == 1


def test_cli_writes_the_set_and_its_counts(tmp_path, capsys):
    records = [HAMLET, PARIS, YEAR, NOWHERE, *DONORS]
    src, pred_path = write(tmp_path, records, rows([HAMLET, PARIS, YEAR, NOWHERE]) + [pred(d, "?") for d in DONORS])
    out, originals = tmp_path / "known.jsonl", tmp_path / "original.jsonl"
    assert main(["counterfactual", "--input", str(src), "--known-from", str(pred_path), "--output", str(out),
                 "--originals", str(originals)]) == 0
    assert [r.id for r in read_records(out)] == ["h"]
    (original,) = read_records(originals)
    assert (original.id, original.answers, original.contexts) == ("h", HAMLET.answers, HAMLET.contexts)
    summary = json.loads((tmp_path / "known.summary.json").read_text())
    assert summary["records_in"] == 7 and summary["records_out"] == 1
    assert summary["dropped"] == {"not_known": 4, "excluded_year": 1, "answer_not_in_passage": 1}
    assert summary["known"]["known"] == 2


def test_cli_names_the_missing_id(tmp_path, capsys):
    src, pred_path = write(tmp_path, [HAMLET, PARIS], rows([HAMLET]))
    assert main(["counterfactual", "--input", str(src), "--known-from", str(pred_path),
                 "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "cings counterfactual: error:" in (err := capsys.readouterr().err) and "the first id 'p'" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert main(["counterfactual", "--input", str(src), "--originals", str(tmp_path / "x.jsonl"),
                 "--output", str(tmp_path / "o.jsonl")]) == 1
    assert "--originals needs --known-from" in capsys.readouterr().err


def test_it_is_data_work_never_torch():
    from .test_architecture import HEAVY, closure

    assert not HEAVY & closure("cings.known_facts")
