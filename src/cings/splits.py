"""``cings split``, ``cings mix`` and ``cings drop-contexts``: deterministic splits by a key, mixtures by ratio
or count, and test sets where only a share of the records keep their documents."""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from dataclasses import replace as replace_fields
from pathlib import Path
from typing import Sequence

from .records import Record

__all__ = ["split_key", "split_records", "mix_records", "drop_contexts", "SPLIT_KEYS"]

SPLIT_KEYS = ("title", "context", "id", "meta.FIELD")


def split_key(record: Record, by: str) -> str:
    """The grouping key: records sharing it always land in the same split.

    ``title``: the first passage's title (SQuAD article), falling back to ``meta.title``;
    ``context``: the first passage's text (SQuAD paragraph); ``id``; ``meta.FIELD``.
    """
    if by == "id":
        return record.id
    if by == "title":
        if record.contexts and record.contexts[0].title:
            return record.contexts[0].title
        title = record.meta.get("title")
        if title:
            return str(title)
        raise ValueError(f"record {record.id!r}: --by title needs a titled first passage or meta.title")
    if by == "context":
        if not record.contexts:
            raise ValueError(f"record {record.id!r}: --by context needs a passage")
        return hashlib.sha1(record.contexts[0].text.encode("utf-8")).hexdigest()
    if by.startswith("meta."):
        value = record.meta.get(by[5:])
        if value is None:
            raise ValueError(f"record {record.id!r}: --by {by}: meta has no field {by[5:]!r}")
        return str(value)
    raise ValueError(f"--by {by!r}: choose one of {', '.join(SPLIT_KEYS)}")


def split_records(records: Sequence[Record], fractions: Sequence[float], *, by: str = "title",
                  seed: int = 0) -> tuple[list[list[Record]], list[list[str]]]:
    """Assign whole key groups to splits so that record counts approach ``fractions``.

    Keys are sorted, then shuffled with ``seed``, so the result depends only on the data and the
    seed. Returns the records of each split (file order kept) and the keys that went to each.
    """
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be non-negative and sum to more than 0, not {list(fractions)}")
    total = sum(fractions)
    fractions = [f / total for f in fractions]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        groups[split_key(record, by)].append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    targets = [f * len(records) for f in fractions]
    filled = [0] * len(fractions)
    assigned: list[list[str]] = [[] for _ in fractions]
    for key in keys:
        # The split furthest below its target takes the next group.
        j = max(range(len(fractions)), key=lambda k: (targets[k] - filled[k], -k))
        assigned[j].append(key)
        filled[j] += len(groups[key])
    owner = {key: j for j, ks in enumerate(assigned) for key in ks}
    out: list[list[Record]] = [[] for _ in fractions]
    for record in records:
        out[owner[split_key(record, by)]].append(record)
    return out, [sorted(ks) for ks in assigned]


def parse_ratio(text: str) -> list[float]:
    """'1:1' or '0.8,0.1,0.1' -> floats."""
    parts = text.replace(",", ":").split(":")
    try:
        values = [float(p) for p in parts if p.strip()]
    except ValueError:
        raise ValueError(f"ratio {text!r}: expected numbers separated by ':' (e.g. 1:1)") from None
    if not values or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"ratio {text!r}: expected non-negative numbers with a positive sum")
    return values


def mix_records(sources: Sequence[tuple[str, Sequence[Record]]], *, counts: Sequence[int] | None = None,
                ratio: Sequence[float] | None = None, size: int | None = None, seed: int = 0,
                replace: bool = False) -> tuple[list[Record], dict]:
    """Sample each source (without replacement unless ``replace``) and shuffle the union.

    Give ``counts`` per source, or ``ratio`` (with ``size``, the total; without it, the largest
    mixture the sources allow). Ids repeated across sources are prefixed with the source name.
    """
    rng = random.Random(seed)
    sizes = [len(recs) for _, recs in sources]
    if counts is None:
        if ratio is None:
            ratio = [1.0] * len(sources)
        if len(ratio) != len(sources):
            raise ValueError(f"--ratio has {len(ratio)} parts for {len(sources)} inputs")
        weights = [r / sum(ratio) for r in ratio]
        if size is None:
            size = int(min(n / w for n, w in zip(sizes, weights) if w > 0))
        counts = [int(round(w * size)) for w in weights]
        counts[max(range(len(counts)), key=lambda i: weights[i])] += size - sum(counts)
    if len(counts) != len(sources):
        raise ValueError(f"--count has {len(counts)} numbers for {len(sources)} inputs")
    for (name, recs), want in zip(sources, counts):
        if want > len(recs) and not replace:
            raise ValueError(f"{name}: {want} records asked for, {len(recs)} available (use --replace to repeat)")
    ids = Counter(r.id for _, recs in sources for r in recs)
    mixed: list[Record] = []
    for (name, recs), want in zip(sources, counts):
        picks = [rng.randrange(len(recs)) for _ in range(want)] if replace else rng.sample(range(len(recs)), want)
        repeats = Counter(picks)
        for n, i in enumerate(picks):
            r = recs[i]
            rid = r.id if ids[r.id] == 1 else f"{name}:{r.id}"
            if repeats[i] > 1:  # drawn again with --replace: ids must stay unique
                rid = f"{rid}#{n}"
            mixed.append(replace_fields(r, id=rid, meta={**r.meta, "mix_source": name}))
    rng.shuffle(mixed)
    report = {"sources": [{"name": name, "available": n, "taken": c} for (name, _), n, c in zip(sources, sizes, counts)],
              "seed": seed, "replace": replace}
    return mixed, report


def source_name(path: str | Path) -> str:
    return Path(path).name.split(".")[0]


def drop_contexts(records: Sequence[Record], context_fraction: float, *, seed: int = 0) -> tuple[list[Record], dict]:
    """Empty ``contexts`` in all but ``context_fraction * n`` (rounded half up) of the ``n`` records that have any.

    Which records keep theirs depends on the seed and each id alone (not on file order), and with one
    seed a smaller fraction keeps a subset of what a larger one keeps, so test sets at several
    fractions differ only in the records that lose their documents. An emptied record also loses its
    segments (they hold the passages) and says how many passages it had in ``meta.contexts_dropped``.
    """
    if isinstance(context_fraction, bool) or not 0 <= context_fraction <= 1:
        raise ValueError(f"--context-fraction must be between 0 and 1, not {context_fraction!r}")
    with_docs = [r.id for r in records if r.contexts]
    order = sorted(with_docs, key=lambda rid: hashlib.sha256(f"{seed}\0{rid}".encode("utf-8")).hexdigest())
    keep = set(order[:int(context_fraction * len(with_docs) + 0.5)])  # half rounds up
    out = [r if not r.contexts or r.id in keep else
           replace_fields(r, contexts=(), segments=None, meta={**r.meta, "contexts_dropped": len(r.contexts)})
           for r in records]
    report = {"context_fraction": context_fraction, "seed": seed, "with_contexts_in": len(with_docs),
              "kept": len(keep), "emptied": len(with_docs) - len(keep),
              "already_without": len(records) - len(with_docs)}
    return out, report
