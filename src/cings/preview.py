"""Show rendered examples with the trained tokens marked, so the mask is seen before GPU hours are spent."""

from __future__ import annotations

from itertools import chain
from pathlib import Path
from typing import Iterable, TextIO

from .dataset import bound_contexts
from .records import RecordError, read_records
from .render import Dropped, Kind, Rendered, Renderer

__all__ = ["preview", "preview_file", "mark_trained"]

LEGEND_PLAIN = "legend: [[...]] = trained (the loss is on these tokens); everything else is masked (label -100)"
LEGEND_PARTLY = "{{...}} = trained at the context loss weight"


def _char_classes(rendered: Rendered) -> list[str]:
    """Per character: 'train' if a trained token covers it ('partly' at a context loss weight below 1),
    'context' for masked passage text, else 'mask'."""
    classes = ["mask"] * len(rendered.text)
    for s, e, kind in rendered.spans:
        if kind is Kind.CONTEXT:
            for c in range(s, e):
                classes[c] = "context"
    weights = rendered.loss_weights or [1.0] * len(rendered.labels)
    for (a, b), label, weight in zip(rendered.offsets or [], rendered.labels, weights):
        if label != -100:
            for c in range(a, b):
                classes[c] = "train" if weight >= 1 else "partly"
    return classes


def _runs(text: str, classes: list[str]) -> Iterable[tuple[str, str]]:
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or classes[i] != classes[start]:
            yield text[start:i], classes[start]
            start = i


def mark_trained(rendered: Rendered) -> str:
    """The rendered text with every trained run wrapped in ``[[ ]]``."""
    out = []
    for text, cls in _runs(rendered.text, _char_classes(rendered)):
        out.append(f"[[{text}]]" if cls == "train" else f"{{{{{text}}}}}" if cls == "partly" else text)
    return "".join(out)


def preview(records: Iterable, renderer: Renderer, *, n: int = 3, plain: bool = False,
            stream: TextIO | None = None, color: bool | None = None) -> int:
    """Print up to ``n`` examples; returns how many were shown. ``color`` forces colour on or off."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, highlight=False, soft_wrap=True, no_color=plain, force_terminal=color)
    if color is None and not console.is_terminal:
        plain = True  # colour would be lost in a pipe or a log file: mark the trained text with [[ ]]
    mode = renderer.options.mode.value
    shown = dropped = tokens = trained = 0
    for record in records:
        if shown >= n:
            break
        renderer.check(record)
        result = renderer.render(bound_contexts(record, renderer), with_offsets=True)
        shown += 1
        if isinstance(result, Dropped):
            dropped += 1
            console.print(f"── {record.id} · mode {mode} · DROPPED: {result.reason} ({result.num_tokens} tokens)")
            continue
        tokens += len(result.input_ids)
        trained += result.num_trained
        cut = " · contexts cut to fit" if result.truncated else ""
        header = (f"── {result.id} · mode {mode} · {len(result.input_ids)} tokens · {result.num_trained} trained"
                  f" · template {renderer.template_source}{cut}")
        if plain:
            console.print(header, markup=False)
            console.print(mark_trained(result), markup=False)
        else:
            console.print(Text(header, style="bold"))
            body = Text()
            styles = {"train": "bold black on green", "partly": "black on cyan", "context": "yellow dim", "mask": "dim"}
            for text, cls in _runs(result.text, _char_classes(result)):
                body.append(text, style=styles[cls])
            console.print(body)
        console.print()
    console.print(f"shown {shown}: {shown - dropped} rendered, {dropped} dropped; tokens {tokens}, trained {trained}",
                  markup=False)
    weight = renderer.options.context_loss_weight if 0 < (renderer.options.context_loss_weight or 0) < 1 else None
    if plain:
        console.print(LEGEND_PLAIN + (f"; {LEGEND_PARTLY} {weight:g}" if weight else ""), markup=False)
    else:
        partly = [("trained at the context loss weight", "black on cyan"), f" ({weight:g}) · "] if weight else []
        console.print(Text.assemble("legend: ", ("trained (loss)", "bold black on green"), " · ", *partly,
                                    ("masked context", "yellow dim"), " · ", ("masked prompt and template", "dim")))
    return shown


def preview_file(path: str | Path, renderer: Renderer, *, n: int = 3, plain: bool = False,
                 stream: TextIO | None = None, color: bool | None = None) -> int:
    """:func:`preview` of a records file; a file without records is a :class:`RecordError` naming it,
    checked before anything is printed, so the user is not left with an empty table and exit 1."""
    records = read_records(path)
    first = next(records, None)
    if first is None:
        raise RecordError(f"{path}: no records")
    return preview(chain([first], records), renderer, n=n, plain=plain, stream=stream, color=color)
