"""Retrieval metrics over ranked passages: recall@k, MRR and answer-in-passage (DPR's ``has_answer``).

A row is a record as ``cings retrieve`` writes it (``contexts``: passages best first, ``gold`` on each
when the record named its gold passage; ``answers``) or a prediction row that carries its passages the
same way (``contexts``, or ``docs`` whose items have ``text`` or ``id``). No torch: ``cings evaluate``
imports this.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Iterable, Mapping, Sequence

import regex

from ..jsonl import RecordError
from ..metrics import summarise_columns
from ..records import type_name

__all__ = ["dpr_tokens", "has_answer", "first_gold_rank", "passages_of", "score_retrieval", "retrieval_table_markdown",
           "DEFINITIONS"]

# DPR's SimpleTokenizer (dpr/utils/tokenizers.py, from DrQA): runs of letters, digits and combining marks, or
# any other single character that is not a separator or a control character.
_DPR_TOKEN = regex.compile(r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)
_KS = (1, 5, 10, 20, 50, 100)

DEFINITIONS: dict[str, str] = {
    "recall@k": "records whose gold passage (named by id or text) is among the top k retrieved, % of the records"
                " that name one",
    "mrr": "mean over those records of 1/rank of the first gold passage among all retrieved (0 when none is)",
    "has_answer@k": "DPR has_answer (match_type 'string'): text and answers NFD-normalised, tokenised by DPR's"
                    " SimpleTokenizer, lowercased; an answer counts when its token sequence occurs in a passage's"
                    " text (title not included); % of the records with answers with such a passage in the top k;"
                    " an answer with no tokens never counts (DPR would count it in every passage)",
}


def dpr_tokens(text: str) -> list[str]:
    """DPR's SimpleTokenizer ``words(uncased=True)`` of the NFD-normalised text."""
    return [m.group().lower() for m in _DPR_TOKEN.finditer(unicodedata.normalize("NFD", text))]


def _contains(tokens: list[str], answer: list[str]) -> bool:
    n = len(answer)
    return any(tokens[i:i + n] == answer for i in range(len(tokens) - n + 1))


def has_answer(answers: str | Sequence[str], text: str) -> bool:
    """DPR's ``has_answer(answers, text, SimpleTokenizer(), "string")``, except that an empty answer never counts."""
    answer_tokens = [t for t in (dpr_tokens(a) for a in ([answers] if isinstance(answers, str) else answers)) if t]
    tokens = dpr_tokens(text)
    return any(_contains(tokens, a) for a in answer_tokens)


def first_gold_rank(golds: Sequence[bool | None]) -> int | None:
    """1-based rank of the first gold passage, or None."""
    return next((i + 1 for i, g in enumerate(golds) if g), None)


def passages_of(row: Mapping[str, Any], where: str) -> list[Mapping[str, Any]] | None:
    """The ranked passages a row carries (``contexts``, else ``docs`` that have text or ids), checked; None if none."""
    for key in ("contexts", "docs"):
        value = row.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            raise RecordError(f"{where}: field '{key}' must be a list of passages, not {type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise RecordError(f"{where}: field '{key}[{i}]' must be an object, not {type_name(item)}")
            for name, kind, said in (("gold", bool, "a boolean"), ("text", str, "a string")):
                if item.get(name) is not None and not isinstance(item[name], kind):
                    raise RecordError(f"{where}: field '{key}[{i}].{name}' must be {said}, not {type_name(item[name])}")
        # cings generate keeps id and text only of retrieved passages; its rows of given (gold) passages name
        # title and gold alone, and there is no ranking to score.
        if key == "docs" and not any("text" in item or "id" in item for item in value):
            return None
        return value
    return None


def _names_gold(row: Mapping[str, Any], passages: Sequence[Mapping[str, Any]]) -> bool:
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    retrieval = meta.get("retrieval") if isinstance(meta.get("retrieval"), dict) else {}
    return bool(retrieval.get("gold_passages")) or any(isinstance(p.get("gold"), bool) for p in passages)


def score_retrieval(rows: Iterable[Mapping[str, Any]], *, ks: Sequence[int] | None = None, bootstrap: int = 1000,
                    seed: int = 0, source: str | None = None) -> dict[str, Any] | None:
    """recall@k and MRR over the rows that name a gold passage, has_answer@k over the rows with answers, in %
    (MRR in [0, 1]) with 95% bootstrap intervals; None when no row carries passages to score.

    ``ks`` defaults to 1, 5, 10, 20, 50, 100 below the deepest ranking, and that depth itself; ``source`` (the
    file the rows came from) opens error messages.
    """
    gold_rows: list[list[bool]] = []
    answer_rows: list[list[bool]] = []
    depth = 0
    for i, row in enumerate(rows):
        where = f"{source + ': ' if source else ''}row {i + 1} (id {row.get('id')!r})"
        passages = passages_of(row, where)
        if passages is None:
            continue
        depth = max(depth, len(passages))
        if _names_gold(row, passages):
            gold_rows.append([p.get("gold") is True for p in passages])
        answers = [a for a in row.get("answers") or () if isinstance(a, str)]
        if answers and all(isinstance(p.get("text"), str) for p in passages):
            answer_tokens = [t for t in map(dpr_tokens, answers) if t]
            answer_rows.append([any(_contains(dpr_tokens(p["text"]), a) for a in answer_tokens) for p in passages])
    if not gold_rows and not answer_rows:
        return None
    ks = sorted({k for k in (ks or [k for k in _KS if k < depth] + [depth]) if k >= 1})
    result: dict[str, Any] = {"depth": depth, "n_with_gold": len(gold_rows), "n_with_answers": len(answer_rows)}
    if gold_rows:
        columns = {f"recall@{k}": [float(any(g[:k])) for g in gold_rows] for k in ks}
        columns["mrr"] = [1 / r if (r := first_gold_rank(g)) else 0.0 for g in gold_rows]
        summary = summarise_columns(columns, bootstrap, seed)
        # A rank's reciprocal is read as a fraction, not a percentage.
        summary["mrr"] /= 100
        if "mrr_ci" in summary:
            summary["mrr_ci"] = [v / 100 for v in summary["mrr_ci"]]
        result.update(summary)
    if answer_rows:
        result.update(summarise_columns({f"has_answer@{k}": [float(any(h[:k])) for h in answer_rows] for k in ks},
                                        bootstrap, seed))
    result["definitions"] = {k: v for k, v in DEFINITIONS.items()
                             if (k != "has_answer@k" or answer_rows) and (k == "has_answer@k" or gold_rows)}
    if bootstrap > 0:
        result["definitions"]["ci"] = f"95% percentile bootstrap over records, B={bootstrap}, seed={seed}"
    return result


def retrieval_table_markdown(result: Mapping[str, Any]) -> str:
    """Rows of a markdown table (``| metric | value [lo, hi] |``) for a :func:`score_retrieval` result."""
    lines = []
    def at(prefix: str) -> list[str]:
        return sorted((k for k in result if k.startswith(prefix) and not k.endswith("_ci")), key=lambda k: int(k[len(prefix):]))

    for key in at("recall@") + (["mrr"] if "mrr" in result else []) + at("has_answer@"):
        n = result["n_with_gold"] if not key.startswith("has_answer") else result["n_with_answers"]
        ci = result.get(f"{key}_ci")
        digits = 3 if key == "mrr" else 1
        cell = f"{result[key]:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")
        lines.append(f"| {key} (n={n}) | {cell} |\n")
    return "".join(lines)
