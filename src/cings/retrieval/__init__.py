"""Corpus -> index -> top-k passages: ``cings index`` and ``cings retrieve``, and the retrieval metrics.

corpus (passage files), encoder (dense text encoder), index (build: embeddings, FAISS, BM25, manifest),
retrieve (search, records with their top-k passages), metrics (recall@k, MRR, answer-in-passage; no torch).
Import the module you need: this package file imports nothing, so ``cings.evaluate`` can use the
metrics without loading torch or FAISS.
"""
