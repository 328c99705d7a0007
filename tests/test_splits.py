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
