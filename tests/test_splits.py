import json

import pytest

from cings.cli import main
from cings.prepare import prepare
from cings.records import Context, Record, read_records
from cings.splits import mix_records, split_key, split_records

from .conftest import DATA


def recs(n, title=lambda i: f"T{i % 7}", prefix="r"):
    return [Record(id=f"{prefix}{i}", instruction="Q", contexts=(Context(text=f"p{i % 3}", title=title(i)),), response="A")
            for i in range(n)]


def test_split_by_title_on_squad_shares_no_article(tmp_path, capsys):
    squad = DATA / "squad_dev_v1.1.json.gz"
    if not squad.is_file():
        pytest.skip(f"{squad} is absent (the shared folder is not mounted)")
    records, _ = prepare("squad", [squad])
    src = tmp_path / "squad.jsonl"
    from cings.records import write_records

    write_records(records, src)
    assert main(["split", "--input", str(src), "--output-dir", str(tmp_path / "s"), "--by", "title", "--seed", "3"]) == 0
    parts = {name: list(read_records(tmp_path / "s" / f"{name}.jsonl")) for name in ("train", "dev", "test")}
    titles = {name: {r.contexts[0].title for r in part} for name, part in parts.items()}
    assert not titles["train"] & titles["dev"] and not titles["train"] & titles["test"] and not titles["dev"] & titles["test"]
    assert sum(map(len, parts.values())) == 10570 and all(parts.values())
    assert 0.6 < len(parts["train"]) / 10570 < 0.95
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert sorted(summary["keys"]["train"] + summary["keys"]["dev"] + summary["keys"]["test"]) == sorted(
        {r.contexts[0].title for r in records})


def test_split_is_deterministic_and_groups_never_straddle():
    records = recs(200)
    a, keys_a = split_records(records, [0.5, 0.5], by="title", seed=1)
    b, keys_b = split_records(records, [0.5, 0.5], by="title", seed=1)
    assert a == b and keys_a == keys_b
    assert not set(keys_a[0]) & set(keys_a[1])
    by_context, _ = split_records(records, [0.5, 0.5], by="context", seed=1)
    assert not {r.contexts[0].text for r in by_context[0]} & {r.contexts[0].text for r in by_context[1]}
    with pytest.raises(ValueError, match="--by 'nope': choose one of"):
        split_key(records[0], "nope")


def test_mix_by_ratio_size_and_count():
    a, b = recs(100, prefix="a"), recs(50, prefix="b")
    mixed, report = mix_records([("a", a), ("b", b)], ratio=[1, 1], size=60, seed=0)
    assert len(mixed) == 60 and sum(r.meta["mix_source"] == "a" for r in mixed) == 30
    again, _ = mix_records([("a", a), ("b", b)], ratio=[1, 1], size=60, seed=0)
    assert [r.id for r in mixed] == [r.id for r in again]
    largest, _ = mix_records([("a", a), ("b", b)], ratio=[1, 1], seed=0)
    assert len(largest) == 100  # limited by b's 50
    counted, _ = mix_records([("a", a), ("b", b)], counts=[10, 5])
    assert len(counted) == 15 and len({r.id for r in counted}) == 15
    with pytest.raises(ValueError, match="b: 80 records asked for, 50 available"):
        mix_records([("a", a), ("b", b)], counts=[10, 80])
    repeated, _ = mix_records([("b", b)], counts=[120], replace=True)
    assert len(repeated) == 120 and len({r.id for r in repeated}) == 120


def test_mix_cli_prefixes_ids_repeated_across_inputs(tmp_path, capsys):
    from cings.records import write_records

    write_records(recs(10), tmp_path / "x.jsonl")
    write_records(recs(10), tmp_path / "y.jsonl")
    assert main(["mix", "--input", str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl"), "--ratio", "1:1",
                 "--output", str(tmp_path / "m.jsonl")]) == 0
    mixed = list(read_records(tmp_path / "m.jsonl"))
    assert len(mixed) == 20 and all(r.id.startswith(("x:", "y:")) for r in mixed)


def with_and_without(n_with, n_without):
    return recs(n_with) + [Record(id=f"bare{i}", instruction="Q", contexts=(), response="A") for i in range(n_without)]


def test_drop_contexts_keeps_the_asked_share_by_id_and_nests_across_fractions():
    from cings.splits import drop_contexts

    records = with_and_without(10, 3)
    out, report = drop_contexts(records, 0.25, seed=1)
    assert report == {"context_fraction": 0.25, "seed": 1, "with_contexts_in": 10, "kept": 3, "emptied": 7,
                      "already_without": 3}  # 2.5 rounds up
    assert [r.id for r in out] == [r.id for r in records]  # nothing dropped or moved
    kept = {r.id for r in out if r.contexts}
    assert len(kept) == 3 and kept <= {r.id for r in records[:10]}
    emptied = [r for r in out if r.meta.get("contexts_dropped")]
    assert len(emptied) == 7 and all(r.contexts == () and r.meta["contexts_dropped"] == 1 for r in emptied)
    # The choice follows the ids, not the file order; a larger fraction keeps a superset; another seed differs.
    again, _ = drop_contexts(list(reversed(records)), 0.25, seed=1)
    assert {r.id for r in again if r.contexts} == kept
    more, _ = drop_contexts(records, 0.6, seed=1)
    assert kept < {r.id for r in more if r.contexts} and sum(bool(r.contexts) for r in more) == 6
    others = [{r.id for r in drop_contexts(records, 0.5, seed=s)[0] if r.contexts} for s in range(4)]
    assert len({frozenset(o) for o in others}) > 1
    assert all(bool(r.contexts) for r in drop_contexts(records, 1.0)[0][:10])
    assert not any(r.contexts for r in drop_contexts(records, 0)[0])
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="--context-fraction must be between 0 and 1"):
            drop_contexts(records, bad)


def test_drop_contexts_cli_prints_and_writes_the_counts(tmp_path, capsys):
    from cings.records import write_records

    write_records(with_and_without(6, 2), tmp_path / "x.jsonl")
    assert main(["drop-contexts", "--input", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "y.jsonl"),
                 "--context-fraction", "0.5", "--seed", "3"]) == 0
    assert sum(bool(r.contexts) for r in read_records(tmp_path / "y.jsonl")) == 3
    err = capsys.readouterr().err
    assert "kept their documents" in err and "3 of 6" in err
    summary = json.loads((tmp_path / "y.summary.json").read_text())
    assert (summary["kept"], summary["emptied"], summary["already_without"]) == (3, 3, 2)
    assert summary["shape"]["passages_per_record"]["records_without_passages"] == 5
