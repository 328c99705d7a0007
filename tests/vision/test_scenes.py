"""The synthetic world of the VLM study: deterministic, co-occurring, and POPE questions that are true,
balanced per split, and whose adversarial negatives are the co-occurring partners."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cings.vision import scenes as sc


def test_same_seed_same_scenes_and_pixels_other_seed_other_scenes():
    a, b, c = sc.make_scenes(20, seed=3), sc.make_scenes(20, seed=3), sc.make_scenes(20, seed=4)
    assert a == b and a != c
    assert np.array_equal(np.asarray(sc.draw(a[0])), np.asarray(sc.draw(b[0])))
    assert {s.id for s in a}.isdisjoint({s.id for s in c})


def test_scene_sizes_kinds_and_drawing():
    scenes = sc.make_scenes(300, seed=0, min_objects=1, max_objects=3)
    assert all(1 <= len(s.objects) <= 3 and len(s.kinds) == len(s.objects) for s in scenes)
    img = np.asarray(sc.draw(scenes[0]))
    assert img.shape == (64, 64, 3)
    # each object leaves pixels of its own colour on the background
    for obj in scenes[0].objects:
        rgb = np.array(sc.COLOURS[obj.kind][1])
        assert (np.abs(img.astype(int) - rgb).sum(axis=2) < 10).sum() > 10, obj
    assert sc.multi_hot(scenes[0]) == [int(k in scenes[0].kinds) for k in sc.KINDS]
    with pytest.raises(ValueError, match="min_objects"):
        sc.make_scenes(1, seed=0, min_objects=0)


def test_partners_co_occur_far_more_than_other_kinds():
    scenes = sc.make_scenes(2000, seed=0)
    with_kind = Counter(k for s in scenes for k in s.kinds)
    pair = Counter((a, b) for s in scenes for a in s.kinds for b in s.kinds if a != b)
    for kind in sc.KINDS:
        partner_rate = pair[(kind, sc.PARTNER[kind])] / with_kind[kind]
        others = [pair[(kind, k)] / with_kind[kind] for k in sc.KINDS if k not in (kind, sc.PARTNER[kind])]
        assert partner_rate > 0.4 and partner_rate > 3 * max(others), (kind, partner_rate, others)


def test_caption_names_each_kind_once_in_a_fixed_order():
    scene = sc.Scene("s", (sc.Obj("square", 10, 10, 16), sc.Obj("circle", 40, 40, 16)))
    assert sc.caption(scene) == "A red circle and a blue square."
    three = sc.Scene("t", (sc.Obj("ring", 10, 10, 16), sc.Obj("bar", 40, 40, 16), sc.Obj("star", 30, 10, 16)))
    assert sc.caption(three) == "A yellow star, an orange ring and a black bar."


def test_pope_questions_are_true_balanced_and_split_as_named():
    train, test = sc.make_scenes(1000, seed=0), sc.make_scenes(200, seed=1)
    rows = sc.pope_questions(test, seed=0, per_split=1, statistics_from=train)
    by_scene = {s.id: s for s in test}
    assert len({r["id"] for r in rows}) == len(rows)
    for split in sc.SPLITS:
        labels = Counter(r["label"] for r in rows if r["split"] == split)
        assert labels["yes"] == labels["no"] == len(test), (split, labels)
    for r in rows:
        kind = r["question"].removeprefix("Is there a ").removesuffix(" in the image?")
        present = kind in by_scene[r["image"].removesuffix(".png")].kinds
        assert present == (r["label"] == "yes"), r


def _question_kind(row):
    return row["question"].removeprefix("Is there a ").removesuffix(" in the image?")


def test_adversarial_negatives_are_the_partners_of_what_is_there():
    train, test = sc.make_scenes(1000, seed=0), sc.make_scenes(300, seed=1)
    rows = sc.pope_questions(test, seed=0, statistics_from=train)
    kinds = {s.id: set(s.kinds) for s in test}

    def partner_share(split):
        # over the scenes where some present kind's partner is absent (elsewhere no negative can be one)
        negs = [r for r in rows if r["split"] == split and r["label"] == "no"
                and any(sc.PARTNER[p] not in kinds[r["image"][:-4]] for p in kinds[r["image"][:-4]])]
        hits = [any(sc.PARTNER[p] == _question_kind(r) for p in kinds[r["image"][:-4]]) for r in negs]
        assert len(hits) > 50
        return sum(hits) / len(hits)

    assert partner_share("adversarial") > 0.9
    assert partner_share("adversarial") > 2.5 * partner_share("random")


def test_popular_negatives_follow_the_training_frequencies():
    train = [sc.Scene(f"t{i}", (sc.Obj("bar", 10, 10, 16),)) for i in range(5)] + [sc.Scene("u", (sc.Obj("star", 9, 9, 16),))]
    test = [sc.Scene("q", (sc.Obj("circle", 20, 20, 16),))]
    rows = sc.pope_questions(test, seed=0, statistics_from=train)
    popular_no = [r for r in rows if r["split"] == "popular" and r["label"] == "no"]
    assert [_question_kind(r) for r in popular_no] == ["bar"]
    # without training statistics the test scenes' own counts decide (circle is present, so ties -> KINDS order)
    own = sc.pope_questions(test, seed=0)
    assert [_question_kind(r) for r in own if r["split"] == "popular" and r["label"] == "no"] == ["square"]


def test_records_are_llava_format_with_true_answers():
    scenes = sc.make_scenes(50, seed=2)
    caps = sc.caption_records(scenes)
    assert caps[0]["conversations"][0]["value"].startswith("<image>\n")
    assert [c["from"] for c in caps[0]["conversations"]] == ["human", "gpt"]
    inst = sc.instruction_records(scenes, seed=0)
    assert inst == sc.instruction_records(scenes, seed=0)
    first_asks = Counter()
    for scene, rec in zip(scenes, inst):
        conv = rec["conversations"]
        assert rec["image"] == f"{scene.id}.png" and conv[0]["value"].startswith("<image>\n")
        assert sum("<image>" in c["value"] for c in conv) == 1
        assert conv[-1]["value"] == sc.caption(scene)
        for q, a in zip(conv[:-2:2], conv[1:-2:2]):
            kind = _question_kind({"question": q["value"].removeprefix("<image>\n")})
            assert (kind in scene.kinds) == (a["value"] == "Yes"), (scene, q, a)
        first_asks[conv[1]["value"]] += 1
    assert first_asks["Yes"] > 10 and first_asks["No"] > 10  # order shuffled, so no position gives the answer away


def test_all_questions_rule_asks_every_present_kind_and_as_many_absent():
    scenes = sc.make_scenes(50, seed=2)
    pair = sc.instruction_records(scenes, seed=0)
    assert pair == sc.instruction_records(scenes, seed=0, questions="pair")
    for scene, rec in zip(scenes, sc.instruction_records(scenes, seed=0, questions="all")):
        conv = rec["conversations"]
        asked = [_question_kind({"question": q["value"].removeprefix("<image>\n")}) for q in conv[:-2:2]]
        answers = [a["value"] for a in conv[1:-2:2]]
        assert len(set(asked)) == len(asked) and set(scene.kinds) <= set(asked)
        assert answers.count("Yes") == answers.count("No") == len(scene.kinds)
        assert all((k in scene.kinds) == (a == "Yes") for k, a in zip(asked, answers))
        assert conv[-1]["value"] == sc.caption(scene)
    with pytest.raises(ValueError, match="questions"):
        sc.instruction_records(scenes, seed=0, questions="some")


def test_write_study_writes_reuses_and_refuses(tmp_path):
    out = tmp_path / "study"
    logs = []
    summary = sc.write_study(out, n_train=40, n_test=10, seed=5, log=logs.append)
    assert summary["pope_questions"] == 60 and summary["pope_per_split"] == {"random": 20, "popular": 20, "adversarial": 20}
    assert len(json.loads((out / "pretrain.json").read_text())) == 40
    assert len(json.loads((out / "finetune.json").read_text())) == 40
    pope = [json.loads(line) for line in (out / "pope.jsonl").read_text().splitlines()]
    images = {p.name for p in (out / "images").iterdir()}
    assert len(images) == 50 and {r["image"] for r in pope} <= images
    train_ids = {r["id"] for r in json.loads((out / "pretrain.json").read_text())}
    assert not {r["image"][:-4] for r in pope} & train_ids, "POPE asks about held-out scenes only"
    assert not (tmp_path / "study.partial").exists()

    mtime = (out / "pope.jsonl").stat().st_mtime_ns
    assert sc.write_study(out, n_train=40, n_test=10, seed=5) == summary
    assert (out / "pope.jsonl").stat().st_mtime_ns == mtime, "same settings: reused, not rewritten"
    with pytest.raises(ValueError, match="made with"):
        sc.write_study(out, n_train=41, n_test=10, seed=5)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a scenes folder"):
        sc.write_study(other, n_train=4, n_test=2)
    assert (other / "notes.txt").read_text() == "mine"
