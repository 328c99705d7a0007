"""python examples/demo/make_slices.py [--shared ../shared/data]

Rebuilds the data `cings demo` reads, from the real QA files in ../shared/data, so the demo runs on
a machine without them (CI, a user's laptop). Byte-for-byte reproducible; see PROVENANCE.md.
- squad_dev_v1.1.json.gz: the SQuAD v1.1 dev set, unchanged (the demo splits it by article);
- nq_open_oracle_300.jsonl.gz: 300 NQ-open oracle lines, spread over the file (seed 0), unchanged;
- hotpotqa_train_distractor_100.json.gz: the 100 HotpotQA distractor records, unchanged.
"""

from __future__ import annotations

import argparse
import gzip
import random
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _gzip_bytes(data: bytes, path: Path) -> None:
    # mtime=0 and no file name in the header: the same input gives the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "data")
    args = parser.parse_args()
    shutil.copyfile(args.shared / "squad_dev_v1.1.json.gz", HERE / "squad_dev_v1.1.json.gz")
    lines = gzip.open(args.shared / "nq_open_oracle.jsonl.gz", "rt", encoding="utf-8").read().splitlines(keepends=True)
    keep = sorted(random.Random(0).sample(range(len(lines)), 300))
    _gzip_bytes("".join(lines[i] for i in keep).encode("utf-8"), HERE / "nq_open_oracle_300.jsonl.gz")
    _gzip_bytes((args.shared / "hotpotqa_train_distractor_100.json").read_bytes(),
                HERE / "hotpotqa_train_distractor_100.json.gz")
    shutil.copyfile(args.shared / "PROVENANCE.md", HERE / "PROVENANCE-shared-data.md")


if __name__ == "__main__":
    main()
