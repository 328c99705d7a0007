"""``cings vlm generate``: answer image questions with a LLaVA folder; one prediction a line.

Questions are JSONL rows with ``id``, ``image`` (relative to ``--image-folder``) and ``question``
(POPE's own files call it ``text``); ``label`` and ``split`` are carried through, so the output
is what ``cings vlm evaluate`` reads. The prompt is built by the same renderer as training
(:class:`cings.vision.data.ConversationRenderer`), so the model sees at test time the format it was
trained on, and it equals what ``LlavaProcessor.apply_chat_template`` gives (tested).

Greedy decoding, batched with left padding. For POPE's yes/no questions ``--max-new-tokens 1``
is one forward per question: the first word decides the official parser's answer. The output
grows one batch at a time; ``--resume`` adds the missing ids after a kill (same settings, checked).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

__all__ = ["VlmGenerateError", "generate_answers", "SHORT_ANSWER"]

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's suffix for short answers


class VlmGenerateError(ValueError):
    pass


def _questions(path: Path, image_folder: Path) -> list[dict[str, Any]]:
    from ..jsonl import iter_jsonl

    rows, seen = [], set()
    for where, _, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise VlmGenerateError(f"{where}: a question is a JSON object")
        question = row.get("question", row.get("text"))
        for name, value in (("id", row.get("id", row.get("question_id"))), ("image", row.get("image")), ("question", question)):
            if value is None:
                raise VlmGenerateError(f"{where}: field {name!r} missing")
        rid = str(row.get("id", row.get("question_id")))
        if rid in seen:
            raise VlmGenerateError(f"{where}: id {rid!r} appears twice")
        seen.add(rid)
        image = image_folder / str(row["image"])
        if not image.is_file():
            raise VlmGenerateError(f"{where}: field 'image': {image} does not exist")
        rows.append({"id": rid, "path": str(image), "image": str(row["image"]), "question": str(question),
                     **{k: row[k] for k in ("label", "split") if k in row}})
    if not rows:
        raise VlmGenerateError(f"{path}: no questions")
    return rows


def generate_answers(model_dir: str | Path, questions: str | Path, output: str | Path, *, image_folder: str | Path | None = None,
                     max_new_tokens: int = 16, batch_size: int = 16, suffix: str = "", resume: bool = False,
                     overwrite: bool = False, model: Any = None, processor: Any = None,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write one ``{id, prediction, label?, split?, question, image}`` line per question."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ..jsonl import iter_jsonl
    from .build import IMAGE_TOKEN
    from .data import ConversationRenderer

    log = log or (lambda msg: None)
    questions, output = Path(questions), Path(output)
    folder = Path(image_folder) if image_folder else questions.parent
    rows = _questions(questions, folder)
    settings = {"model": str(Path(model_dir).resolve()), "questions": str(questions.resolve()), "max_new_tokens": max_new_tokens,
                "suffix": suffix, "decoding": "greedy"}
    meta = output.with_name(output.name + ".settings.json")
    done: set[str] = set()
    if output.exists():
        if resume:
            saved = json.loads(meta.read_text()) if meta.is_file() else None
            if saved != settings:
                raise VlmGenerateError(f"--resume: {output} was written with other settings ({saved}); use --overwrite")
            done = {str(r["id"]) for _, _, r in iter_jsonl(output)}
        elif not overwrite:
            raise VlmGenerateError(f"{output}: exists; pass --resume to add the missing ids or --overwrite to replace it")
        else:
            output.unlink()
    output.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(settings, indent=2) + "\n")
    processor = processor or AutoProcessor.from_pretrained(model_dir)
    model = model or LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tok = processor.tokenizer
    n_image = int(model.config.image_seq_length)
    renderer = ConversationRenderer(tok, IMAGE_TOKEN, n_image)
    todo = [r for r in rows if r["id"] not in done]
    log(f"{len(rows)} questions, {len(done)} answered before, {len(todo)} to go")
    stop = model.generation_config.eos_token_id
    from PIL import Image

    with open(output, "a", encoding="utf-8") as out, torch.no_grad():
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            prompts = [renderer.prompt_ids([{"role": "user", "content": f"{IMAGE_TOKEN}\n{r['question']}"
                                             + (f"\n{suffix}" if suffix else "")}]) for r in batch]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
                ids[i, width - len(p):] = torch.tensor(p)
                mask[i, width - len(p):] = 1
            images = []
            for r in batch:
                with Image.open(r["path"]) as img:
                    images.append(img.convert("RGB"))
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(model.dtype)
            new = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id)[:, width:]
            for r, seq in zip(batch, new.tolist()):
                if stop is not None:
                    stops = set(stop) if isinstance(stop, list) else {stop}
                    seq = seq[:next((k for k, t in enumerate(seq) if t in stops), len(seq))]
                text = tok.decode(seq, skip_special_tokens=True).strip()
                out.write(json.dumps({"id": r["id"], "prediction": text, **{k: r[k] for k in ("label", "split") if k in r},
                                      "question": r["question"], "image": r["image"]}, ensure_ascii=False) + "\n")
            out.flush()
            log(f"{min(start + batch_size, len(todo))}/{len(todo)}")
    return {"output": str(output), "questions": len(rows), "generated": len(todo), "kept": len(done)}
