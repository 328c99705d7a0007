"""python benchmarks/retrieval_corpus.py --nq NQ.jsonl --squad SQUAD.jsonl --hotpotqa HOTPOT.jsonl --output-dir DIR
       [--per-source N]

Builds, deterministically, the retrieval set of issue 17 from ``cings prepare`` outputs of ../shared/data:

* DIR/passages.jsonl: every distinct passage of the three files ({id, title, text}): NQ-open's gold
  passages, SQuAD dev's paragraphs and HotpotQA's gold and distractor paragraphs, in that order and in
  file order within each, a passage kept once (whitespace runs compared as one space). Ids are
  ``nq-N``, ``squad-N``, ``hotpotqa-N``.
* DIR/nq_questions.jsonl: the NQ records, each with its one gold passage carrying its corpus id, so
  ``cings retrieve`` marks it by id in the ranking.
* DIR/corpus.summary.json: counts, the sha256 of each input and output, and what the data is derived from.

This is derived data (CC BY-SA, like its sources: see ../shared/data/PROVENANCE.md), not a benchmark of
its own: NQ questions over their own gold passages mixed with SQuAD and HotpotQA paragraphs as
distractors. ``--per-source N`` keeps the first N distinct passages of each source (and the NQ questions
whose gold passage is among them): a small set to check the pipeline. The full measurement:

    cings prepare --format dpr --input ../shared/data/nq_open_oracle.jsonl.gz --output data/retrieval/nq.jsonl
    cings prepare --format squad --input ../shared/data/squad_dev_v1.1.json.gz --output data/retrieval/squad.jsonl
    cings prepare --format hotpotqa --input ../shared/data/hotpotqa_train_distractor_100.json --output data/retrieval/hotpotqa.jsonl
    python benchmarks/retrieval_corpus.py --nq data/retrieval/nq.jsonl --squad data/retrieval/squad.jsonl \\
        --hotpotqa data/retrieval/hotpotqa.jsonl --output-dir data/retrieval
    cings index --corpus data/retrieval/passages.jsonl --output runs/retrieval/index --retriever hybrid
    for r in dense bm25 hybrid; do
      cings retrieve --index runs/retrieval/index --retriever $r --input data/retrieval/nq_questions.jsonl \\
          --k 5 --output runs/retrieval/nq.$r.jsonl     # recall@5 in runs/retrieval/nq.$r.summary.json
    done
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from cings.jsonl import file_sha256
from cings.records import read_records, write_records

_WS = re.compile(r"\s+")
SOURCES = ("nq", "squad", "hotpotqa")


def _key(text: str) -> str:
    return _WS.sub(" ", text).strip()


def build(inputs: dict[str, Path], output_dir: Path, per_source: int | None = None) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}          # passage text (normalised) -> corpus id
    passages: list[dict] = []
    counts = {s: {"records": 0, "passages_seen": 0, "passages_new": 0, "repeats_of_other_sources": 0} for s in SOURCES}
    nq_records = []
    for source in SOURCES:
        kept = 0
        for record in read_records(inputs[source]):
            counts[source]["records"] += 1
            if source == "nq":
                nq_records.append(record)
            for context in record.contexts:
                counts[source]["passages_seen"] += 1
                key = _key(context.text)
                if key in ids:
                    counts[source]["repeats_of_other_sources"] += not ids[key].startswith(source + "-")
                    continue
                if per_source is not None and kept >= per_source:
                    continue
                ids[key] = f"{source}-{kept}"
                passages.append({"id": ids[key], "title": context.title, "text": context.text})
                kept += 1
        counts[source]["passages_new"] = kept
    corpus = output_dir / "passages.jsonl"
    corpus.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")

    questions, without_gold = [], 0
    for record in nq_records:
        golds = [c for c in record.contexts if c.gold]
        found = [ids.get(_key(c.text)) for c in golds]
        if not golds or None in found:
            without_gold += 1  # its gold passage was cut by --per-source (or it names none)
            continue
        contexts = tuple(replace(c, id=pid) for c, pid in zip(golds, found))
        questions.append(replace(record, contexts=contexts, segments=None))
    questions_path = output_dir / "nq_questions.jsonl"
    write_records(questions, questions_path)
    summary = {
        "derived_from": "../shared/data via cings prepare: NQ-open oracle gold passages, SQuAD v1.1 dev paragraphs,"
                        " HotpotQA (train, distractor setting) paragraphs; NQ questions over all of them."
                        " Derived data, not an original benchmark.",
        "per_source": per_source, "passages": len(passages), "by_source": counts,
        "nq_questions": len(questions), "nq_questions_dropped_gold_not_in_corpus": without_gold,
        "inputs": {s: {"path": str(p), "sha256": file_sha256(p)} for s, p in inputs.items()},
        "outputs": {"passages": {"path": str(corpus), "sha256": file_sha256(corpus)},
                    "nq_questions": {"path": str(questions_path), "sha256": file_sha256(questions_path)}},
    }
    (output_dir / "corpus.summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for source in SOURCES:
        parser.add_argument(f"--{source}", required=True, type=Path, help=f"cings prepare output for {source}")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--per-source", type=int, help="keep the first N distinct passages of each source")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    summary = build({s: getattr(args, s) for s in SOURCES}, args.output_dir, args.per_source)
    by_source = ", ".join(f"{s} {c['passages_new']}" for s, c in summary["by_source"].items())
    print(f"{summary['passages']} passages ({by_source}), {summary['nq_questions']} NQ questions;"
          f" {time.perf_counter() - started:.1f}s; wrote {args.output_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
