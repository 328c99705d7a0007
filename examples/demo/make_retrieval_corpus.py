"""python examples/demo/make_retrieval_corpus.py

Rebuilds retrieval_passages.jsonl.gz, the passage corpus that `cings demo`'s retrieved-document sets and
configs/eval/retrieval.yaml search, from the three slices beside it (byte-for-byte reproducible; see
PROVENANCE.md): every distinct passage of nq_open_oracle_300 (its gold passages), SQuAD v1.1 dev (all
2,067 paragraphs, whole) and the 100 HotpotQA records (gold and distractor paragraphs), ids ``nq-N``,
``squad-N``, ``hotpotqa-N``. It is benchmarks/retrieval_corpus.py (the corpus of the recall@5
measurement in docs/results.md) run on these slices instead of the full files of ../shared/data.
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))

from retrieval_corpus import build  # noqa: E402

from cings.prepare import prepare  # noqa: E402
from cings.records import write_records  # noqa: E402

SLICES = {"nq": ("dpr", "nq_open_oracle_300.jsonl.gz"), "squad": ("squad", "squad_dev_v1.1.json.gz"),
          "hotpotqa": ("hotpotqa", "hotpotqa_train_distractor_100.json.gz")}
OUTPUT = HERE / "retrieval_passages.jsonl.gz"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inputs = {}
        for source, (fmt, name) in SLICES.items():
            records, _ = prepare(fmt, [HERE / name])
            inputs[source] = Path(tmp) / f"{source}.jsonl"
            write_records(records, inputs[source])
        summary = build(inputs, Path(tmp) / "corpus")
        data = (Path(tmp) / "corpus" / "passages.jsonl").read_bytes()
    # mtime=0 and no file name in the header: the same input gives the same bytes.
    with open(OUTPUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(data)
    counts = ", ".join(f"{s} {c['passages_new']}" for s, c in summary["by_source"].items())
    print(f"wrote {OUTPUT}: {summary['passages']} passages ({counts})")


if __name__ == "__main__":
    main()
