"""One small reader per input format; each turns raw rows into grounded records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .common import ConvertStats, Reader

__all__ = ["PrepareOptions", "ConvertStats", "Reader", "get_reader", "FORMATS"]


@dataclass
class PrepareOptions:
    """Options of ``cings prepare``; each reader reads the ones it knows."""

    response_field: str | None = field(default=None, metadata={"help": "QA formats: the field holding the response (default: the first answer)"})
    max_contexts: int | None = field(default=None, metadata={"help": "keep at most K passages per record (in file order)"})
    unanswerable_response: str = field(default="unanswerable", metadata={"help": "response of SQuAD v2 questions without an answer"})
    field_map: dict[str, str] = field(default_factory=dict, metadata={"help": "jsonl: grounded field=source field, e.g. instruction=question,response=answer"})
    # Self-RAG filters (see cings.formats.selfrag).
    passages: str = field(default="any", metadata={"help": "selfrag: keep records with a single passage, several (multi), or any"})
    support: str = field(default="any", metadata={"help": "selfrag: keep sentences whose support is full, partial or better, or any"})
    irrelevant: str = field(default="drop", metadata={"help": "selfrag: [Irrelevant] paragraphs: drop them, keep-as-distractor, or drop-record"})
    subset: str = field(default="all", metadata={"help": "selfrag: retrieval records, no_retrieval records, or all"})
    min_utility: int | None = field(default=None, metadata={"help": "selfrag: drop records whose [Utility:K] is below K"})
    dataset_names: tuple[str, ...] = field(default=(), metadata={"help": "selfrag: keep only these dataset_name values"})
    extra: dict[str, Any] = field(default_factory=dict)


FORMATS = ("selfrag", "squad", "dpr", "hotpotqa", "flashrag", "alce", "retrievalqa", "jsonl")
# Imported on demand: reading SQuAD needs no Self-RAG code.
_READERS = {"selfrag": "selfrag:SelfRAGReader", "squad": "qa:SquadReader", "dpr": "qa:DPRReader",
            "hotpotqa": "qa:HotpotQAReader", "flashrag": "qa:FlashRAGReader", "alce": "qa:ALCEReader",
            "retrievalqa": "qa:RetrievalQAReader", "jsonl": "jsonl:JsonlReader"}


def get_reader(name: str, options: PrepareOptions | None = None) -> Reader:
    if name not in _READERS:
        raise ValueError(f"unknown format {name!r}: choose one of {', '.join(FORMATS)}")
    from importlib import import_module

    module, cls = _READERS[name].split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)(options or PrepareOptions())
