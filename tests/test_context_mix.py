"""`cings context-mix`: RAFT's oracle/distractor rows and KAFT's irrelevant/counterfactual rows, on hand-made records."""

from __future__ import annotations

import json
import random

import pytest

from cings.context_mix import ContextMixOptions, mix_contexts
from cings.counterfactual import counterfactual_of, donor_pools
from cings.records import Context, Record, Segment, read_records, write_records

BRONCOS = Context(title="Super Bowl 50", text="The Denver Broncos won Super Bowl 50 in the year 2016.", gold=True)
STADIUM = Context(title="Super Bowl 50", text="Levi's Stadium in Santa Clara hosted the game.", gold=True)
NILE = Context(title="Rivers", text="The Nile is the longest river of Africa.", gold=True)
AMAZON = Context(title="Rivers", text="The Amazon carries more water than any other river.", gold=True)
MOZART = Context(title="Music", text="Mozart composed The Magic Flute in Vienna.", gold=True)
FAN_CLUB = Context(title="Clubs", text="Fans of the Denver Broncos meet every Sunday.", gold=True)


def rec(rid, question, ctx, answer, **kw) -> Record:
    return Record(id=rid, instruction=question, contexts=(ctx,), response=answer, answers=(answer,), **kw)


def records() -> list[Record]:
    return [rec("winner", "Who won Super Bowl 50?", BRONCOS, "Denver Broncos"),
            rec("venue", "Where was Super Bowl 50 played?", STADIUM, "Santa Clara"),
            rec("longest", "Which is the longest river of Africa?", NILE, "The Nile"),
            rec("water", "Which river carries the most water?", AMAZON, "The Amazon"),
            rec("opera", "Who composed The Magic Flute?", MOZART, "Mozart"),
            rec("meet", "When do the fans meet?", FAN_CLUB, "every Sunday")]


def by_id(rows) -> dict[str, Record]:
    return {r.id: r for r in rows}


def test_the_defaults_keep_every_oracle_passage_and_say_so():
    out, stats = mix_contexts(records(), ContextMixOptions())
    assert [r.id for r in out] == [r.id for r in records()]
    for before, after in zip(records(), out):
        assert after.contexts == before.contexts and after.response == before.response
        assert after.meta == {"context_kind": "oracle"}
    assert stats.to_dict()["by_kind"] == {"oracle": 6} and stats.distractors_added == 0


def test_distractors_beside_the_oracle_come_from_the_same_article_first_and_never_hold_the_answer():
    out = by_id(mix_contexts(records(), ContextMixOptions(distractors=1))[0])
    winner = out["winner"]
    assert winner.meta["context_kind"] == "oracle"
    assert sorted(c.text for c in winner.contexts) == sorted([BRONCOS.text, STADIUM.text])  # the other paragraph
    assert [c.gold for c in winner.contexts if c.text == BRONCOS.text] == [True]
    assert [c.gold for c in winner.contexts if c.text == STADIUM.text] == [False]
    # 'Who won?': the fan-club passage names the Denver Broncos, so it is never a distractor, however many are asked
    # for; four are left (venue, rivers, music) and the fifth asked for is counted as missing.
    many, stats = mix_contexts(records(), ContextMixOptions(distractors=5))
    winner = by_id(many)["winner"]
    assert FAN_CLUB.text not in {c.text for c in winner.contexts} and len(winner.contexts) == 1 + 4
    # every other row finds its 5 among the 5 other passages
    assert stats.short_of_passages == 1 and stats.distractors_added == 4 + 5 * 5


def test_distractor_rows_show_no_oracle_but_as_many_passages_with_the_target_kept():
    out, stats = mix_contexts(records(), ContextMixOptions(oracle_rate=0, distractors=1))
    for before, after in zip(records(), out):
        assert after.meta["context_kind"] == "distractor" and after.response == before.response
        texts = [c.text for c in after.contexts]
        assert len(texts) == 2 and before.contexts[0].text not in texts  # oracle 1 + K 1, all distractors
        assert all(c.gold is False for c in after.contexts)
        assert not any(before.response.lower() in t.lower() for t in texts)
    assert by_id(out)["winner"].contexts[0].text == STADIUM.text or by_id(out)["winner"].contexts[1].text == STADIUM.text
    assert stats.to_dict()["by_kind"] == {"distractor": 6}


def test_irrelevant_rows_take_passages_of_other_articles_and_keep_the_original_answer():
    out, stats = mix_contexts(records(), ContextMixOptions(irrelevant=1))
    articles = {c.text: c.title for c in (BRONCOS, STADIUM, NILE, AMAZON, MOZART, FAN_CLUB)}
    for before, after in zip(records(), out):
        assert after.meta["context_kind"] == "irrelevant"
        assert (after.response, after.answers) == (before.response, before.answers)
        (shown,) = after.contexts
        assert articles[shown.text] != before.contexts[0].title and shown.gold is False
        assert before.response.lower() not in shown.text.lower()
    assert stats.to_dict()["by_kind"] == {"irrelevant": 6}


def test_counterfactual_rows_are_cings_counterfactuals_rewrite_and_the_rest_fall_back_counted():
    recs = records()
    out, stats = mix_contexts(recs, ContextMixOptions(counterfactual=1, seed=3))
    pools = donor_pools(recs)
    for before, after in zip(recs, out):
        reason, rewritten = counterfactual_of(before, pools, seed=3)
        if rewritten is None:
            assert after.meta["context_kind"] == "oracle" and after.contexts == before.contexts
            assert stats.fallbacks[f"counterfactual: {reason}"] >= 1
        else:
            assert after.meta["context_kind"] == "counterfactual"
            assert after.contexts == rewritten.contexts and after.response == rewritten.response != before.response
            assert after.parametric_answers == (before.response,) and after.meta["original_answer"] == before.response
    assert stats.by_kind["counterfactual"] >= 3, stats.to_dict()  # names and places swap among themselves
    assert stats.by_kind["counterfactual"] + sum(stats.fallbacks.values()) == 6


def test_shares_follow_the_options_on_many_records():
    many = [rec(f"q{i}", f"Question {i}?", Context(title=f"A{i % 20}", text=f"Passage {i} about topic {i % 20}."),
                f"answer{i}") for i in range(600)]
    _, stats = mix_contexts(many, ContextMixOptions(oracle_rate=0.7, irrelevant=0.2, distractors=2))
    kinds = stats.by_kind
    assert abs(kinds["irrelevant"] / 600 - 0.2) < 0.06
    assert abs(kinds["oracle"] / (kinds["oracle"] + kinds["distractor"]) - 0.7) < 0.08
    assert sum(kinds.values()) == 600 and stats.short_of_passages == 0 and not stats.fallbacks


def test_the_output_depends_on_the_seed_and_the_data_not_the_input_order():
    options = ContextMixOptions(oracle_rate=0.5, irrelevant=0.2, distractors=2, seed=7)
    first, _ = mix_contexts(records(), options)
    shuffled = records()
    random.Random(0).shuffle(shuffled)
    second, _ = mix_contexts(shuffled, options)
    assert [r.id for r in second] == [r.id for r in shuffled]  # the input's order
    assert by_id(first) == by_id(second)
    assert mix_contexts(records(), options)[0] == first


def test_records_without_passages_or_with_segments_pass_unchanged_and_counted():
    bare = Record(id="bare", instruction="Q?", contexts=(), response="A")
    seg = Record(id="seg", instruction="Q?", contexts=(NILE,), response="A",
                 segments=(Segment(contexts=(NILE,), response="A"),))
    out, stats = mix_contexts([*records(), bare, seg], ContextMixOptions(oracle_rate=0, distractors=1))
    assert by_id(out)["bare"].contexts == () and by_id(out)["seg"].segments == seg.segments
    assert by_id(out)["bare"].meta["context_kind"] == by_id(out)["seg"].meta["context_kind"] == "unchanged"
    assert stats.to_dict()["unchanged"] == {"no_context": 1, "has_segments": 1}


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="add up to more than 1"):
        ContextMixOptions(irrelevant=0.6, counterfactual=0.5)
    with pytest.raises(ValueError, match="--oracle-rate must be a number from 0 to 1"):
        ContextMixOptions(oracle_rate=1.5)
    with pytest.raises(ValueError, match="--distractors must be a whole number"):
        ContextMixOptions(distractors=-1)


def test_the_cli_writes_the_records_and_prints_and_saves_every_count(tmp_path, capsys):
    from cings.cli import main

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_records(records(), src)
    assert main(["context-mix", "--input", str(src), "--output", str(out), "--oracle-rate", "0.5",
                 "--distractors", "1", "--irrelevant", "0.3", "--seed", "1"]) == 0
    rows = list(read_records(out))
    assert [r.id for r in rows] == [r.id for r in records()]
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert sum(summary["by_kind"].values()) == summary["records_out"] == 6
    assert summary["options"] == {"oracle_rate": 0.5, "distractors": 1, "irrelevant": 0.3, "counterfactual": 0.0, "seed": 1}
    assert {r.meta["context_kind"] for r in rows} <= set(summary["by_kind"])
    err = capsys.readouterr().err
    assert "context kinds" in err and "passages added" in err
    assert main(["context-mix", "--input", str(src), "--output", str(out), "--irrelevant", "0.8",
                 "--counterfactual", "0.4"]) == 1
    assert "cings context-mix: error: --irrelevant 0.8 and --counterfactual 0.4 add up" in capsys.readouterr().err
