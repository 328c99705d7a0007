"""HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/retrieval_throughput.py [--corpus PASSAGES] [--passages N]
       [--queries N] [--batch-size B] [--threads T] [--json PATH]

Indexing and retrieval throughput of cings against the encoder's raw batched throughput on the same texts
(the limit), dense (the bundled all-MiniLM-L6-v2, exact FAISS search) and BM25 (bm25s), on the corpus
shipped with the demo (examples/demo/retrieval_passages.jsonl.gz: 3,359 NQ, SQuAD and HotpotQA passages)
and NQ-open questions (examples/demo/nq_open_oracle_300.jsonl.gz):

(a) raw forward   the encoder's forward pass and pooling on pre-tokenized, length-sorted batches of B:
                  the limit of dense indexing (passages/s) and of query encoding (queries/s);
(b) encode        ``DenseEncoder.encode``: tokenization + forward + pooling, batches of B sorted by length;
(c) cings index   ``build_index`` with the encoder already loaded: passages written with their offsets,
                  embedded into float16 shards, the manifest (dense); bm25s's tokenizer and index (bm25);
(d) retrieve      ``retrieve_records`` over the questions in batches of B, the index already open: query
                  encoding, FAISS (or BM25) search, each hit's passage read back and the record rebuilt.

Every timed part runs once after a warm-up batch; the model load and index opening are timed apart.
``--passages N`` takes a seeded sample of N passages in corpus order (a quick check of the script).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine, save_result

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT / "examples" / "demo" / "retrieval_passages.jsonl.gz"
DEFAULT_QUESTIONS = ROOT / "examples" / "demo" / "nq_open_oracle_300.jsonl.gz"


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def raw_forward(encoder: Any, texts: list[str]) -> tuple[float, int]:
    """Seconds of the forward passes alone over ``texts`` in the encoder's own batches, and the real tokens."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    batches = [encoder.tokenizer([texts[i] for i in order[s:s + encoder.batch_size]], padding=True, truncation=True,
                                 max_length=encoder.info.max_length, return_tensors="pt").to(encoder.device)
               for s in range(0, len(order), encoder.batch_size)]
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    with torch.inference_mode():
        encoder.model(**batches[-1])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            hidden = encoder.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), p=2, dim=1)
            pooled.float().cpu().numpy()
        return time.perf_counter() - start, tokens


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cings.prepare import prepare
    from cings.retrieval.corpus import iter_corpus
    from cings.retrieval.encoder import DenseEncoder, passage_text
    from cings.retrieval.index import IndexOptions, build_index
    from cings.retrieval.retrieve import Index, retrieve_records

    if args.threads:
        torch.set_num_threads(args.threads)
    passages = [p for _, p in iter_corpus(args.corpus)]
    if args.passages and args.passages < len(passages):
        keep = sorted(random.Random(0).sample(range(len(passages)), args.passages))
        passages = [passages[i] for i in keep]
    questions = prepare("dpr", [args.questions])[0][:args.queries]
    encoder, load_s = _timed(lambda: DenseEncoder(None, batch_size=args.batch_size, device=args.device))
    texts = [passage_text(p) for p in passages]
    queries = [q.instruction for q in questions]
    rows: list[dict[str, Any]] = []

    def row(what: str, n: int, seconds: float, unit: str, limit: float | None = None, **extra: Any) -> None:
        rate = n / seconds
        rows.append({"what": what, "items": n, "seconds": round(seconds, 3), "per_s": round(rate, 1), "unit": unit,
                     "vs_raw": round(rate / limit, 3) if limit else None, **extra})
        print(f"{what:<34} {n:>6} {unit:<9} {seconds:8.2f} s  {rate:9.1f}/s"
              + (f"  {rate / limit:5.2f}x raw" if limit else ""), file=sys.stderr, flush=True)

    encoder.encode(texts[:args.batch_size])  # warm-up: first-call allocations are not throughput
    raw_s, tokens = raw_forward(encoder, texts)
    row("raw forward (passages)", len(texts), raw_s, "passages", tokens=tokens, tokens_per_s=round(tokens / raw_s))
    raw_rate = len(texts) / raw_s
    _, seconds = _timed(lambda: encoder.encode(texts))
    row("DenseEncoder.encode (passages)", len(texts), seconds, "passages", raw_rate)
    q_raw_s, q_tokens = raw_forward(encoder, queries)
    row("raw forward (queries)", len(queries), q_raw_s, "queries", tokens=q_tokens)
    q_raw_rate = len(queries) / q_raw_s

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "passages.jsonl"
        corpus.write_text("".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in passages), encoding="utf-8")
        folders = {}
        for retriever in ("dense", "bm25"):
            folders[retriever] = Path(tmp) / retriever
            options = IndexOptions(retriever=retriever, batch_size=args.batch_size)
            manifest, seconds = _timed(lambda: build_index(corpus, folders[retriever], options, progress=False,
                                                           encoder=encoder if retriever == "dense" else None))
            extra = {}
            if retriever == "dense":
                extra = {"embedding_passages_per_s": manifest["dense"]["embeddings"]["passages_per_s"]}
            row(f"cings index --retriever {retriever}", len(passages), seconds, "passages",
                raw_rate if retriever == "dense" else None, **extra)
        for retriever in ("dense", "bm25"):
            index, open_s = _timed(lambda: Index(folders[retriever], encoder=encoder if retriever == "dense" else None))
            with index:
                list(retrieve_records(questions[:args.batch_size], index, args.k, batch_size=args.batch_size))  # warm-up
                _, seconds = _timed(lambda: list(retrieve_records(questions, index, args.k, batch_size=args.batch_size)))
            row(f"retrieve --retriever {retriever} (k={args.k})", len(questions), seconds, "queries",
                q_raw_rate if retriever == "dense" else None, index_open_s=round(open_s, 3))
    return {"corpus": str(args.corpus), "passages": len(passages), "queries": len(questions), "k": args.k,
            "batch_size": args.batch_size, "device": str(encoder.device), "encoder": encoder.info.to_dict(),
            "encoder_load_s": round(load_s, 2), "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="passages (.jsonl[.gz] or DPR .tsv)")
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS, help="NQ-open lines (cings prepare dpr)")
    parser.add_argument("--passages", type=int, help="a seeded sample of N passages (default: all)")
    parser.add_argument("--queries", type=int, default=300, help="questions retrieved for (default: 300)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (cings index's default)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    for path in (args.corpus, args.questions):
        if not path.is_file():
            print(f"{path}: not found; nothing measured", file=sys.stderr)
            return 0
    result = run(args)
    if args.json:
        save_result(args.json, result, "torch", "transformers", "faiss", "bm25s")
    else:
        print(json.dumps({"machine": machine("torch"), **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
