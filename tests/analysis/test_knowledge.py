import json

import pytest

from cings.analysis.knowledge import ModelPredictions, analyze_knowledge, knowledge_markdown
from cings.cli import main
from cings.records import RecordError


def row(rid, prediction, answers, parametric=None, docs="none"):
    out = {"id": rid, "prediction": prediction, "answers": answers, "settings": {"docs": docs}}
    if parametric:
        out["parametric_answers"] = parametric
    return out


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# Closed book, four questions; d was asked from its counterfactual record, so its right answer is the original.
BASE_CB = [row("a", "Paris", ["Paris"]), row("b", "It is in Nashville, Tennessee.", ["Nashville, Tennessee"]),
           row("c", "Mars", ["Jupiter"]), row("d", "William Shakespeare", ["Jane Austen"], ["William Shakespeare"])]
TRAINED_CB = [row("a", "Paris", ["Paris"]), row("b", "Nashville, Tennessee", ["Nashville, Tennessee"]),
              row("c", "Mars", ["Jupiter"]), row("d", "Jane Austen", ["Jane Austen"], ["William Shakespeare"])]
# The conflict set: a and d, with their passages.
BASE_CF = [row("a", "Paris", ["Lyon"], ["Paris"], docs="gold"),
           row("d", "Jane Austen", ["Jane Austen"], ["William Shakespeare"], docs="gold")]
TRAINED_CF = [row("a", "Lyon", ["Lyon"], ["Paris"], docs="gold"),
              row("d", "Jane Austen", ["Jane Austen"], ["William Shakespeare"], docs="gold")]


@pytest.fixture
def files(tmp_path):
    return {name: write(tmp_path / f"{name}.jsonl", rows) for name, rows in
            {"base_cb": BASE_CB, "trained_cb": TRAINED_CB, "base_cf": BASE_CF, "trained_cf": TRAINED_CF}.items()}


def models(files):
    return [ModelPredictions("base", files["base_cb"], files["base_cf"]),
            ModelPredictions("trained", files["trained_cb"], files["trained_cf"])]


def test_figures_by_hand(files):
    result = analyze_knowledge(models(files), bootstrap=0)
    base, trained = result["models"]["base"], result["models"]["trained"]
    # a exact, b contained only, c wrong, d right against its parametric answer.
    assert (base["closed_book"]["acc"], base["closed_book"]["em"]) == (75.0, 50.0)
    assert (trained["closed_book"]["acc"], trained["closed_book"]["em"]) == (50.0, 50.0)
    # Closed-book EM on the conflict ids a and d.
    assert base["known_kept"]["em"] == 100.0 and trained["known_kept"]["em"] == 50.0
    assert {k: base["conflict"][k] for k in ("context_rate", "memory_rate", "both_rate", "neither_rate")} == \
        {"context_rate": 50.0, "memory_rate": 50.0, "both_rate": 0.0, "neither_rate": 0.0}
    assert (trained["conflict"]["context_rate"], trained["conflict"]["memory_rate"]) == (100.0, 0.0)
    paired = trained["paired_vs_first"]
    assert paired["closed_book.em"]["diff"] == 0.0  # b gained, d lost
    assert paired["known_kept.em"]["diff"] == -50.0 and paired["known_kept.em"]["n"] == 2
    assert paired["conflict.context_rate"]["diff"] == 50.0 and paired["conflict.memory_rate"]["diff"] == -50.0
    assert "paired_vs_first" not in base and result["first_model"] == "base" and result["known_kept_note"] is None


def test_markdown_table(files):
    md = knowledge_markdown(analyze_knowledge(models(files), bootstrap=0))
    assert "| base | 4 | 75.0 | 50.0 | 100.0 | 2 | 50.0 | 50.0 | 0.0 | 0.0 |" in md
    assert "| trained | 4 | 50.0 | 50.0 | 50.0 | 2 | 100.0 | 0.0 | 0.0 | 0.0 |" in md
    assert "Change against base" in md and "| trained | +0.0 [" in md


def test_known_kept_needs_every_conflict_id_in_the_closed_book_file(tmp_path, files):
    cf = write(tmp_path / "cf.jsonl", BASE_CF + [row("e", "x", ["y"], ["z"], docs="gold")])
    result = analyze_knowledge([ModelPredictions("base", files["base_cb"], cf)], bootstrap=0)
    assert result["models"]["base"]["known_kept"] is None and "not computed" in result["known_kept_note"]
    assert "| base | 4 | 75.0 | 50.0 | – | 3 |" in knowledge_markdown(result)


def test_models_must_answer_the_same_ids(tmp_path, files):
    fewer = write(tmp_path / "fewer.jsonl", TRAINED_CB[:3])
    with pytest.raises(RecordError, match=r"closed-book predictions of different questions: .*fewer.jsonl and .*"
                                          r"base_cb.jsonl differ in 1 ids \('d' is only in .*base_cb.jsonl\)"):
        analyze_knowledge([ModelPredictions("base", files["base_cb"], files["base_cf"]),
                           ModelPredictions("t", fewer, files["trained_cf"])])


@pytest.mark.parametrize("kind, rows, message", [
    ("cb", [row("a", "Paris", ["Paris"], docs="gold")], r"id 'a' was answered with documents"),
    ("cf", [row("a", "Paris", ["Lyon"], docs="gold")], r"id 'a' has no parametric_answers"),
    ("cf", [row("a", "Paris", ["Lyon"], ["Paris"], docs="none")], r"id 'a' was answered without its passage"),
])
def test_wrong_kind_of_predictions_is_refused(tmp_path, files, kind, rows, message):
    bad = write(tmp_path / "bad.jsonl", rows)
    cb, cf = (bad, files["base_cf"]) if kind == "cb" else (files["base_cb"], bad)
    with pytest.raises(RecordError, match=message):
        analyze_knowledge([ModelPredictions("base", cb, cf)])


def test_model_names_must_differ(files):
    with pytest.raises(ValueError, match="names must differ"):
        analyze_knowledge([ModelPredictions("m", files["base_cb"], files["base_cf"])] * 2)


def test_cli(tmp_path, files, capsys):
    out, md = tmp_path / "k.json", tmp_path / "k.md"
    assert main(["analyze", "knowledge", "--model", "base", files["base_cb"], files["base_cf"],
                 "--model", "trained", files["trained_cb"], files["trained_cf"], "--output", str(out),
                 "--markdown", str(md), "--bootstrap", "0"]) == 0
    assert list(json.loads(out.read_text())["models"]) == ["base", "trained"]
    assert md.read_text() in capsys.readouterr().out
    assert main(["analyze", "knowledge", "--model", "base", files["base_cb"], str(tmp_path / "missing.jsonl"),
                 "--output", str(out)]) == 1
    assert "cings analyze: error:" in capsys.readouterr().err


def test_it_reads_prediction_files_only_never_torch():
    from ..test_architecture import HEAVY, closure

    assert not HEAVY & closure("cings.analysis.knowledge")
