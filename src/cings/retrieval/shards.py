"""``cings index --shard i/n``: one of ``n`` processes (or GPUs) embedding the same corpus at once.

Process ``i`` embeds the embedding shards ``j`` with ``j % n == i`` into the index folder's usual layout
(``embeddings/shard-NNNNN.npy``) and stops; process 0 writes the passages first and the others wait for
them. The same command without ``--shard``, run once all ``n`` have finished, finds every shard embedded
(the resume path of an interrupted build) and builds the FAISS and BM25 indexes and the manifest: that is
the merge. ``--shard auto`` reads ``RANK`` and ``WORLD_SIZE``, as ``accelerate launch`` and ``torchrun``
set them, and puts each process on the GPU of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from ..jsonl import RecordError

__all__ = ["parse_shard", "shard_device", "wait_for_passages"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``(i, n)`` from ``i/n`` (0 <= i < n) or ``auto`` (``RANK``/``WORLD_SIZE``, 0/1 when unset); None for None."""
    if spec is None:
        return None
    if spec.strip().lower() == "auto":
        try:
            i, n = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError:
            raise ValueError(f"--shard auto: RANK={os.environ.get('RANK')!r} and WORLD_SIZE="
                             f"{os.environ.get('WORLD_SIZE')!r} must be whole numbers") from None
    else:
        match = _SHARD.match(spec)
        if not match:
            raise ValueError(f"--shard must be i/n (this process's slice, 0 <= i < n) or auto, not {spec!r}")
        i, n = int(match.group(1)), int(match.group(2))
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec}: the slice {i} of {n} must satisfy 0 <= i < n")
    return i, n


def shard_device(device: str, spec: str | None) -> str:
    """``device``, except that ``auto`` in a ``--shard auto`` process with a ``LOCAL_RANK`` and GPUs is that GPU."""
    if device != "auto" or spec is None or spec.strip().lower() != "auto" or "LOCAL_RANK" not in os.environ:
        return device
    import torch

    return f"cuda:{int(os.environ['LOCAL_RANK'])}" if torch.cuda.is_available() else "cpu"


def wait_for_passages(state_path: Path, corpus_sha: str, *, poll_s: float = 1.0, timeout_s: float = 24 * 3600) -> dict:
    """The build state once process 0 has written the passages of this corpus (``passages`` set, same sha256)."""
    started, said = time.monotonic(), False
    while True:
        if state_path.is_file():
            state = json.loads(state_path.read_text(encoding="utf-8"))  # written whole, then renamed
            if state.get("corpus_sha256") == corpus_sha and state.get("passages"):
                return state
        if time.monotonic() - started > timeout_s:
            raise RecordError(f"{state_path.parent}: waited {timeout_s:.0f} s for --shard 0/n to write the passages")
        if not said:
            print(f"cings index: waiting for --shard 0/n to write the passages into {state_path.parent}",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_s)
