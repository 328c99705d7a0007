"""Fakes for fast retrieval tests: a small corpus, and a stand-in dense encoder (bag-of-words hashed into a few
signed dimensions, L2-normalised).

Passages sharing words get close vectors, so searches mean something, and it counts its calls, so a test can
prove which passages were embedded. ``fail_after`` raises in the call after that many; ``kill_after`` kills the
whole process there (SIGKILL: no cleanup runs), like a machine losing power mid-build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import numpy as np

from cings.retrieval.encoder import EncoderInfo, passage_text

TOPICS = ["river", "castle", "volcano", "orchestra", "glacier"]


def write_corpus(path: Path, n: int = 30, ids: bool = True) -> Path:
    """``n`` passages 'The TOPIC near townI has featureJ and colourK.', ids p0, p1, ... (or none)."""
    lines = []
    for i in range(n):
        row = {"title": f"Place {i}", "text": f"The {TOPICS[i % 5]} near town{i} has feature{i % 7} and colour{i % 3}."}
        lines.append(json.dumps(({"id": f"p{i}"} if ids else {}) | row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Interrupted(Exception):
    pass


class HashEncoder:
    def __init__(self, dim: int = 16, salt: str = "", fail_after: int | None = None, kill_after: int | None = None):
        self.dim, self.salt = dim, salt
        self.fail_after, self.kill_after = fail_after, kill_after
        self.calls, self.passages = 0, 0
        fingerprint = hashlib.sha256(f"hash-bow/{dim}/{salt}".encode()).hexdigest()[:16]
        self.info = EncoderInfo(spec=f"hash{salt}", name="hash-bow", fingerprint=fingerprint, dim=dim,
                                pooling="bag of words", normalize=True, max_length=0, settings="test")

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.md5((self.salt + word).encode()).digest()[:4], "little")
                out[row, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def encode_passages(self, passages):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted(f"stopped after {self.calls} shards")
        if self.kill_after is not None and self.calls >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self.calls += 1
        self.passages += len(passages)
        return self.encode([passage_text(p) for p in passages])

    def encode_queries(self, queries):
        return self.encode(list(queries))
