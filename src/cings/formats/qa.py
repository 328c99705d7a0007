"""Readers for the public QA formats: SQuAD, DPR/NQ (``ctxs``), HotpotQA, FlashRAG, ALCE, RetrievalQA.

Common rules, so every format behaves the same:

* ``instruction`` is the question; ``answers`` keeps every distinct gold answer in order; the
  ``response`` is the first answer unless ``--response-field`` names another field of the row.
* Passages keep the file's order (retrievers already ranked them); blank passages are removed and
  counted (``removed``), never silently; ``--max-contexts K`` keeps the first K.
* ``gold`` is set where the format says which passage is the oracle (SQuAD's paragraph, DPR's
  ``isgold``, HotpotQA's supporting-fact titles); ``score`` is kept where the retriever gave one.
* Rows without an id get ``{file stem}-{line}``.
* Everything else of the row that is small and useful goes to ``meta``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..records import Context, Record
from .common import (
    ConvertStats,
    Reader,
    RecordError,
    as_answers,
    context_from,
    get_list,
    get_str,
    id_from_where,
    read_json_document,
    type_name,
)

__all__ = ["SquadReader", "DPRReader", "HotpotQAReader", "FlashRAGReader", "ALCEReader", "RetrievalQAReader"]


def _row_id(obj: dict, where: str, keys: tuple[str, ...]) -> str:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    return id_from_where(where)


class _QAReader(Reader):
    id_keys: tuple[str, ...] = ("id",)
    question_key = "question"
    answers_key = "answers"

    def _contexts(self, raw: list, where: str, name: str, stats: ConvertStats,
                  gold_titles: set[str] | None = None) -> tuple[Context, ...]:
        out: list[Context] = []
        for i, item in enumerate(raw):
            gold = None if gold_titles is None else (isinstance(item, dict) and item.get("title") in gold_titles)
            ctx = context_from(item, where, f"{name}[{i}]", gold=gold)
            if ctx is None:
                stats.remove("empty_passage")
                continue
            out.append(ctx)
        limit = self.options.max_contexts
        if limit is not None and len(out) > limit:
            stats.remove("passage_beyond_max_contexts", len(out) - limit)
            out = out[:limit]
        return tuple(out)

    def _response(self, obj: dict, answers: list[str], where: str, stats: ConvertStats) -> str | None:
        field = self.options.response_field
        if field:
            value = obj.get(field)
            if value is None:
                raise RecordError(f"{where}: field '{field}' (--response-field) is missing")
            values = as_answers(value, where, field)
            return values[0] if values else None
        return answers[0] if answers else None

    def _record(self, obj: dict, where: str, stats: ConvertStats, contexts: tuple[Context, ...], answers: list[str],
                meta: dict[str, Any], question: str | None = None) -> list[Record]:
        question = question if question is not None else get_str(obj, self.question_key, where)
        response = self._response(obj, answers, where, stats)
        if not response:
            stats.drop("no_answer")
            return []
        if not contexts:
            stats.remove("record_without_passages")
        return [Record(id=_row_id(obj, where, self.id_keys), instruction=question.strip(), contexts=contexts,
                       response=response, answers=tuple(answers), meta={"source": self.name, **meta})]


class SquadReader(_QAReader):
    """SQuAD v1.1 / v2.0 JSON: one record per question, its paragraph the one gold passage."""

    name = "squad"

    def items(self, path: Path) -> Iterator[tuple[str, Any]]:
        doc = read_json_document(path)
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise RecordError(f"{path}: field 'data' must be a list of articles (is this a SQuAD file?)")
        for a, article in enumerate(data):
            if not isinstance(article, dict):
                raise RecordError(f"{path}: data[{a}] must be an object, not {type_name(article)}")
            title = article.get("title", "")
            for p, paragraph in enumerate(get_list(article, "paragraphs", f"{path}: data[{a}]")):
                context = get_str(paragraph, "context", f"{path}: data[{a}].paragraphs[{p}]")
                for q, qa in enumerate(get_list(paragraph, "qas", f"{path}: data[{a}].paragraphs[{p}]")):
                    yield f"{path}: data[{a}].paragraphs[{p}].qas[{q}]", (title, context, qa)

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        title, context, qa = obj
        get_str(qa, "id", where)
        raw_answers = get_list(qa, "answers", where)
        answers: list[str] = []
        for i, ans in enumerate(raw_answers):
            text = get_str(ans, "text", where, f"answers[{i}].text")
            if text.strip() not in answers:
                answers.append(text.strip())
        passage = Context(title=str(title).replace("_", " "), text=context.strip(), gold=True)
        meta: dict[str, Any] = {"title": title}
        if not answers and qa.get("is_impossible"):
            # SQuAD 2.0: kept, flagged, with no gold answers; the response says so.
            meta["unanswerable"] = True
            question = get_str(qa, "question", where)
            return [Record(id=str(qa["id"]), instruction=question.strip(), contexts=(passage,),
                           response=self.options.unanswerable_response, answers=(),
                           meta={"source": self.name, **meta})]
        if raw_answers and "answer_start" in raw_answers[0]:
            meta["answer_start"] = raw_answers[0]["answer_start"]
        return self._record(qa, where, stats, (passage,), answers, meta)


class DPRReader(_QAReader):
    """DPR / NQ-open style rows: ``question``, ``answers``, ``ctxs[{title, text, hasanswer?, isgold?, score?}]``."""

    name = "dpr"
    id_keys = ("id", "question_id", "qid", "_id")

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        answers = as_answers(obj.get("answers", []) if isinstance(obj, dict) else None, where, "answers")
        ctxs = get_list(obj, "ctxs", where)
        contexts = self._contexts(ctxs, where, "ctxs", stats)
        meta: dict[str, Any] = {}
        has_answer = [c.get("hasanswer") for c in ctxs if isinstance(c, dict) and (c.get("text") or "").strip()]
        if any(h is not None for h in has_answer):
            meta["hasanswer"] = has_answer[:len(contexts)]
        return self._record(obj, where, stats, contexts, answers, meta)


class HotpotQAReader(_QAReader):
    """HotpotQA (original format): supporting-fact titles mark the gold paragraphs, the rest are distractors."""

    name = "hotpotqa"
    id_keys = ("_id", "id")

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        answer = get_str(obj, "answer", where)
        facts = get_list(obj, "supporting_facts", where)
        for i, fact in enumerate(facts):
            if not (isinstance(fact, list) and fact and isinstance(fact[0], str)):
                raise RecordError(f"{where}: field 'supporting_facts[{i}]' must be [title, sentence index],"
                                  f" not {type_name(fact)}")
        gold_titles = {fact[0] for fact in facts}
        paragraphs = []
        for i, item in enumerate(get_list(obj, "context", where)):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], list)):
                raise RecordError(f"{where}: field 'context[{i}]' must be [title, [sentences]]")
            # Sentences are consecutive pieces of the paragraph (later ones start with a space).
            paragraphs.append({"title": item[0], "text": "".join(str(s) for s in item[1])})
        missing = gold_titles - {p["title"] for p in paragraphs}
        if missing:
            # Its gold passage is not there to ground the answer: as a "grounded" record it would teach
            # answering from distractors alone.
            stats.drop("supporting_fact_title_not_in_context")
            return []
        contexts = self._contexts(paragraphs, where, "context", stats, gold_titles=gold_titles)
        meta = {"type": obj.get("type"), "level": obj.get("level"), "supporting_facts": facts}
        return self._record(obj, where, stats, contexts, [answer.strip()], meta)


class FlashRAGReader(_QAReader):
    """FlashRAG rows: ``{id, question, golden_answers, metadata}``, with ``retrieval_result`` when retrieved."""

    name = "flashrag"

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        answers = as_answers(obj.get("golden_answers", []) if isinstance(obj, dict) else None, where, "golden_answers")
        docs = obj.get("retrieval_result") or obj.get("docs") or []
        if not isinstance(docs, list):
            raise RecordError(f"{where}: field 'retrieval_result' must be a list, not {type_name(docs)}")
        contexts = self._contexts(docs, where, "retrieval_result", stats)
        meta = {"metadata": obj["metadata"]} if isinstance(obj.get("metadata"), dict) and obj["metadata"] else {}
        return self._record(obj, where, stats, contexts, answers, meta)


class ALCEReader(_QAReader):
    """ALCE (ASQA, QAMPARI, ELI5) JSON: ``question``, ``answer`` (long form), ``docs``, ``qa_pairs`` or ``answers``."""

    name = "alce"
    id_keys = ("id", "sample_id", "qid")

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, not {type_name(obj)}")
        short: list[str] = []
        if obj.get("answers") is not None:
            raw = obj["answers"]
            # QAMPARI nests aliases: [["a", "a2"], ["b"]] -> the first alias of each answer.
            flat = [a[0] if isinstance(a, list) and a else a for a in raw] if isinstance(raw, list) else raw
            short = as_answers(flat, where, "answers")
        for i, pair in enumerate(obj.get("qa_pairs") or []):
            if isinstance(pair, dict):
                for ans in as_answers(pair.get("short_answers", []), where, f"qa_pairs[{i}].short_answers"):
                    if ans not in short:
                        short.append(ans)
        long_form = obj.get("answer")
        if long_form is not None and not isinstance(long_form, str):
            raise RecordError(f"{where}: field 'answer' must be a string, not {type_name(long_form)}")
        answers = short or ([long_form.strip()] if long_form and long_form.strip() else [])
        contexts = self._contexts(get_list(obj, "docs", where), where, "docs", stats)
        record = self._record(obj, where, stats, contexts, answers, {})
        if record and long_form and long_form.strip() and not self.options.response_field:
            # The long-form answer is the response ALCE trains and scores; short answers stay for recall.
            record = [replace(record[0], response=long_form.strip())]
        return record


class RetrievalQAReader(_QAReader):
    """RetrievalQA-style rows: ``question``, ``ground_truth``, ``context`` (objects or strings)."""

    name = "retrievalqa"
    id_keys = ("question_id", "id")

    def convert(self, obj: Any, where: str, stats: ConvertStats) -> Iterable[Record]:
        answers = as_answers(obj.get("ground_truth", []) if isinstance(obj, dict) else None, where, "ground_truth")
        contexts = self._contexts(get_list(obj, "context", where), where, "context", stats)
        meta = {k: obj[k] for k in ("data_source", "prompt_token_num") if k in obj}
        return self._record(obj, where, stats, contexts, answers, meta)
