"""How much of the answer's attention lands on the passage, layer by layer.

Each record is rendered teacher-forced, with its gold response, in the layout under study
(``prefill``: the CINGS layout, the passage opening the assistant turn; ``input``: the passage in
the user turn), by the training :class:`~cings.render.Renderer`, so every token's kind is known
by construction and nothing is searched for in the text. For layer ``l`` and key group ``g``

    share[l, g] = mean over heads h and query positions q of  sum over keys k in g of A[l, h, q, k]

and records are averaged with equal weight. Every position belongs to exactly one group (see
:data:`GROUPS`), so a layer's shares sum to 1 and the context share can be read against where the
rest went (an attention sink parks much of it on the first token).

The weights are reduced while the model runs: an attention function registered with transformers
calls the model's own eager attention, folds the layer's weights into the sums and returns none,
so at most one layer's ``B x H x T x T`` weights exist at a time. It is registered together with
transformers' eager mask: an attention implementation without a mask function gets no mask at all
and would attend to future tokens without a word. ``method="eager"`` is the plain
``output_attentions=True`` path (every layer held at once), kept as the reference the reduction is
tested against. No KV cache is built (``use_cache=False``).
"""

from __future__ import annotations

import bisect
import inspect
import json
import math
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..masking import Kind
from ..prompts import DOCS, select_docs
from ..records import Record
from ..render import Dropped, Mode, Renderer, RenderOptions
from ..report import save_figure

__all__ = ["AttentionSettings", "GROUPS", "GROUP_HELP", "LAYOUT_MODES", "QUERIES", "METHODS", "Probe", "ShareSums",
           "build_probes", "token_groups", "measure", "summarize", "measure_records", "check_output",
           "write_attention", "plot_layers", "load_attention", "compare_attention"]

LAYOUT_MODES = {"prefill": Mode.CONTEXT, "input": Mode.INPUT_CONTEXT}
QUERIES = ("answer", "predicting")
METHODS = ("reduce", "eager")

GROUPS = ("context", "answer", "prompt", "markers", "template", "first_token")
CONTEXT, ANSWER, PROMPT, MARKERS, TEMPLATE, FIRST = range(len(GROUPS))
GROUP_HELP = {
    "context": "tokens touching passage text (a token straddling a passage and anything else counts here)",
    "answer": "the gold response's tokens (a query sees only itself and the answer tokens before it)",
    "prompt": "the system prompt and the question",
    "markers": "'## Context', passage numbering, ' ## Answer'",
    "template": "chat-template text: role headers and end-of-turn",
    "first_token": "position 0 whatever its kind (BOS or the template's first token): the usual attention sink",
}
# A token covering characters of several kinds is counted once, under the first kind listed here.
_PRIORITY = (Kind.CONTEXT, Kind.ANSWER, Kind.PROMPT, Kind.MARKER, Kind.ANSWER_MARKER, Kind.EOT, Kind.FRAME)
_KIND_GROUP = {Kind.CONTEXT: CONTEXT, Kind.ANSWER: ANSWER, Kind.PROMPT: PROMPT, Kind.MARKER: MARKERS,
               Kind.ANSWER_MARKER: MARKERS, Kind.EOT: TEMPLATE, Kind.FRAME: TEMPLATE}

ATTENTION_NAME = "cings_attention_share"
_SUMS_KWARG = "cings_attention_sums"  # carries the ShareSums through the model's forward to every layer


@dataclass(frozen=True)
class AttentionSettings:
    """What `cings analyze attention` measures. Field help drives the CLI flags."""

    layout: str = field(default="prefill", metadata={"help": "prefill: the passage opens the assistant turn (CINGS);"
                                                             " input: the passage in the user turn"})
    docs: str = field(default="gold", metadata={"help": "which passages: gold (the longest gold one), gold+distractors"
                                                        " (all count as context), topk"})
    ndocs: int = field(default=1, metadata={"help": "passages shown (gold+distractors, topk)"})
    queries: str = field(default="answer", metadata={"help": "answer: the response's own tokens; predicting: the"
                                                             " positions that predict them (the last token before the"
                                                             " response and every response token but the last)"})
    per_head: bool = field(default=False, metadata={"help": "also write the context share of every layer x head"})
    method: str = field(default="reduce", metadata={"help": "reduce: each layer's weights folded into sums as they are"
                                                            " computed; eager: output_attentions=True, all layers held"
                                                            " at once (the reference)"})
    batch_size: int = field(default=1, metadata={"help": "records per forward (right-padded; results do not change)"})
    limit: int | None = field(default=None, metadata={"help": "measure only the first N usable records"})

    def __post_init__(self) -> None:
        if self.layout not in LAYOUT_MODES:
            raise ValueError(f"--layout must be one of {', '.join(LAYOUT_MODES)}, not {self.layout!r}")
        if self.docs not in DOCS or self.docs == "none":
            raise ValueError(f"--docs must be one of {', '.join(d for d in DOCS if d != 'none')}, not {self.docs!r}"
                             " (attention to context needs a passage)")
        if self.queries not in QUERIES:
            raise ValueError(f"--queries must be one of {', '.join(QUERIES)}, not {self.queries!r}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        for name in ("ndocs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, not {self.limit}")


# ---------------------------------------------------------------- records -> probes

@dataclass
class Probe:
    """One teacher-forced sequence: its ids, the group of every position, and the query positions."""

    id: str
    input_ids: list[int]
    groups: list[int]
    queries: list[int]
    truncated: bool = False


def token_groups(spans: Sequence[tuple[int, int, Kind]], offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The group (index into :data:`GROUPS`) of every token, from the rendered character spans."""
    starts = [s for s, _, _ in spans]
    groups = []
    for t, (a, b) in enumerate(offsets):
        if t == 0:
            groups.append(FIRST)
            continue
        b = max(b, a + 1)  # a token with an empty span takes the kind of the character it sits on
        i = max(bisect.bisect_right(starts, a) - 1, 0)
        kinds = set()
        while i < len(spans) and spans[i][0] < b:
            if spans[i][1] > a:
                kinds.add(spans[i][2])
            i += 1
        groups.append(next((_KIND_GROUP[k] for k in _PRIORITY if k in kinds), TEMPLATE))
    return groups


def build_probes(records: Iterable[Record], tokenizer: Any, options: RenderOptions,
                 settings: AttentionSettings) -> tuple[list[Probe], Counter]:
    """Render records teacher-forced in the settings' layout; records that cannot be measured are counted."""
    renderer = Renderer(tokenizer, replace(options, mode=LAYOUT_MODES[settings.layout], train_markers=False,
                                           allow_no_context=False))
    probes: list[Probe] = []
    skipped: Counter = Counter()
    for record in records:
        if settings.limit is not None and len(probes) >= settings.limit:
            break
        docs = select_docs(record, settings.docs, settings.ndocs)
        if not docs:
            skipped["no_gold_passage" if docs is None else "no_passage"] += 1
            continue
        rendered = renderer.render(replace(record, contexts=docs, segments=None), with_offsets=True)
        if isinstance(rendered, Dropped):
            skipped[rendered.reason] += 1
            continue
        groups = token_groups(rendered.spans, rendered.offsets)
        answer = [t for t, g in enumerate(groups) if g == ANSWER]
        if CONTEXT not in groups:
            skipped["no_context_tokens"] += 1
            continue
        if not answer:
            skipped["no_answer_tokens"] += 1
            continue
        queries = answer if settings.queries == "answer" else [t - 1 for t in answer]
        probes.append(Probe(rendered.id, rendered.input_ids, groups, queries, rendered.truncated))
    return probes, skipped


# ---------------------------------------------------------------- weights -> shares

class ShareSums:
    """Each record's share of every group, per layer (mean over heads and queries), filled layer by layer."""

    def __init__(self, num_layers: int, *, per_head: bool = False):
        self.num_layers, self.per_head = num_layers, per_head
        self.records: list[Any] = []   # one (layers, groups) float64 tensor per record
        self.head_context: Any = None  # (layers, heads): the sum over records of the context share
        self._keys = self._queries = None
        self._batch: dict[int, Any] = {}

    def begin(self, key_groups: Any, query_weights: Any) -> None:
        """``key_groups`` (B, T, G) one-hot, zero at padding; ``query_weights`` (B, T), each row summing to 1."""
        self._keys, self._queries, self._batch = key_groups, query_weights, {}

    def add(self, layer: int, weights: Any) -> None:
        """One layer's attention weights (B, H, T, T) for the batch given to :meth:`begin`."""
        if layer in self._batch:
            raise RuntimeError(f"layer {layer} gave attention weights twice in one forward")
        batch, length = self._keys.shape[:2]
        if weights.shape[0] != batch or weights.shape[-2:] != (length, length):
            raise RuntimeError(f"layer {layer}: attention weights of shape {tuple(weights.shape)} for {batch} sequences"
                               f" of {length} tokens (a KV cache, or a model that cuts its inputs?)")
        w = weights.float()
        per_key = (self._queries[:, None, None, :] @ w).squeeze(2)  # (B, H, T): mean over queries
        self._batch[layer] = per_key @ self._keys                     # (B, H, G)

    def end(self) -> None:
        import torch

        missing = [layer for layer in range(self.num_layers) if layer not in self._batch]
        if missing:
            raise RuntimeError(f"no attention weights from layer(s) {missing[:8]}: the model does not pass its"
                               f" forward's keyword arguments to its attention (try --method eager)")
        shares = torch.stack([self._batch[layer] for layer in range(self.num_layers)], 1).double().cpu()
        self.records.extend(shares.mean(2))  # (B, L, H, G) -> per record (L, G)
        heads = shares[..., CONTEXT].sum(0)
        if self.per_head:
            self.head_context = heads if self.head_context is None else self.head_context + heads
        self._batch = {}


def _eager_attention(module: Any) -> Callable:
    """The eager attention of the module's own model file (softcapping, sinks, ... included)."""
    found = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if found is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as found
    return found


def _reducing_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
    sums = kwargs.pop(_SUMS_KWARG, None)
    if sums is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention needs the sums to fill: run it through measure()")
    if attention_mask is None:
        # Only a mask function registered under this implementation's name gives it one.
        raise RuntimeError(f"layer {getattr(module, 'layer_idx', '?')} got no attention mask: its keys would include"
                           " future tokens (the mask function is not registered)")
    output, weights = _eager_attention(module)(module, query, key, value, attention_mask, **kwargs)
    sums.add(module.layer_idx, weights)
    return output, None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, _reducing_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


@contextmanager
def _attention_implementation(model: Any, name: str) -> Iterator[None]:
    previous, was_training = model.config._attn_implementation, model.training
    model.set_attn_implementation(name)
    model.eval()
    try:
        if model.config._attn_implementation != name:
            raise ValueError(f"{type(model).__name__} cannot switch to attention implementation {name!r}"
                             " (it does not dispatch through transformers' AttentionInterface)")
        yield
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)


def _batch_tensors(batch: Sequence[Probe], device: Any) -> tuple[Any, Any, Any, Any]:
    """Right-padded ids and mask, one-hot key groups and query weights. Right padding keeps every real
    token's positions and causal past exactly as when it runs alone."""
    import torch

    length = max(len(p.input_ids) for p in batch)
    ids = torch.zeros(len(batch), length, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.long)
    keys = torch.zeros(len(batch), length, len(GROUPS))
    queries = torch.zeros(len(batch), length)
    for b, probe in enumerate(batch):
        n = len(probe.input_ids)
        ids[b, :n] = torch.tensor(probe.input_ids)
        mask[b, :n] = 1
        keys[b, torch.arange(n), torch.tensor(probe.groups)] = 1.0
        queries[b, probe.queries] = 1.0 / len(probe.queries)
    return ids.to(device), mask.to(device), keys.to(device), queries.to(device)


def measure(model: Any, probes: Sequence[Probe], settings: AttentionSettings, *, progress: bool = False) -> ShareSums:
    """Run the model over the probes (no cache, no gradients) and return the per-record shares."""
    import torch

    if not probes:
        raise ValueError("no record to measure")
    num_layers = model.config.get_text_config().num_hidden_layers
    sums = ShareSums(num_layers, per_head=settings.per_head)
    device = next(model.parameters()).device
    # Logits are not needed: keep only the last position's (a vocabulary-sized row instead of T of them).
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    order = sorted(probes, key=lambda p: -len(p.input_ids))  # similar lengths share a batch: less padding
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="attention", unit="batch")
    if settings.method == "reduce":
        _register()
    name = ATTENTION_NAME if settings.method == "reduce" else "eager"
    with torch.inference_mode(), _attention_implementation(model, name):
        for batch in batches:
            ids, mask, keys, queries = _batch_tensors(batch, device)
            sums.begin(keys, queries)
            if settings.method == "reduce":
                model(input_ids=ids, attention_mask=mask, use_cache=False, **extra, **{_SUMS_KWARG: sums})
            else:
                out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_attentions=True, **extra)
                for layer, weights in enumerate(out.attentions):
                    sums.add(layer, weights)
            sums.end()
    return sums


def _round(values: Iterable[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


def summarize(sums: ShareSums, probes: Sequence[Probe], skipped: Counter, settings: AttentionSettings) -> dict:
    """The attention.json content (without the model's identity, which the caller adds)."""
    import torch

    shares = torch.stack(sums.records)  # (n, L, G)
    n = shares.shape[0]
    mean = shares.mean(0)
    sd = shares[..., CONTEXT].std(0) if n > 1 else torch.zeros(shares.shape[1], dtype=shares.dtype)
    tokens = {g: round(sum(p.groups.count(i) for p in probes) / n, 2) for i, g in enumerate(GROUPS)}
    out = {
        "metric": "per layer, the attention mass on each key group, averaged over heads and query positions and"
                  " then over records (each record weighs the same); per_layer is the context group's,"
                  " per_layer_sd its standard deviation over records",
        **{k: v for k, v in asdict(settings).items() if k not in ("batch_size", "per_head")},
        "n": n, "skipped": dict(sorted(skipped.items())), "truncated": sum(p.truncated for p in probes),
        "queries_are": ("the gold response's tokens" if settings.queries == "answer" else
                        "the positions whose next token is a response token"),
        "context_is": GROUP_HELP["context"], "groups": GROUP_HELP,
        "tokens_per_record": tokens,
        "queries_per_record": round(sum(len(p.queries) for p in probes) / n, 2),
        "num_layers": sums.num_layers,
        "per_layer": _round(mean[:, CONTEXT]),
        "per_layer_sd": _round(sd),
        "per_layer_groups": {g: _round(mean[:, i]) for i, g in enumerate(GROUPS)},
    }
    if sums.head_context is not None:
        out["num_heads"] = sums.head_context.shape[1]
        out["per_head_is"] = "the context share of each layer (row) and head (column)"
        out["per_head"] = [_round(row) for row in sums.head_context / n]
    return out


def measure_records(model: Any, tokenizer: Any, options: RenderOptions, records: Iterable[Record],
                    settings: AttentionSettings, *, progress: bool = False) -> dict:
    """Records -> probes -> shares -> the summary, with the measuring time."""
    probes, skipped = build_probes(records, tokenizer, options, settings)
    if not probes:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "the input is empty"
        raise ValueError(f"no record to measure (skipped: {counts})")
    started = time.perf_counter()
    sums = measure(model, probes, settings, progress=progress)
    seconds = time.perf_counter() - started
    result = summarize(sums, probes, skipped, settings)
    result["seconds"] = round(seconds, 2)
    result["seconds_per_record"] = round(seconds / len(probes), 4)
    return result


# ---------------------------------------------------------------- files and charts

OUTPUT_JSON, OUTPUT_PNG = "attention.json", "attention.png"


def check_output(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse to replace an earlier measurement unless asked; checked before any model is loaded."""
    if (Path(out_dir) / OUTPUT_JSON).exists() and not overwrite:
        raise ValueError(f"{Path(out_dir) / OUTPUT_JSON} exists: pass --overwrite to replace it")


def write_attention(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / OUTPUT_JSON
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path, plot_layers(result, out / OUTPUT_PNG)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _describe(result: dict) -> str:
    return f"{result.get('layout', '?')} layout, n={result.get('n', '?')}"


def plot_layers(result: dict, path: str | Path) -> Path:
    """Every group's share by layer; the context share drawn heavier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for group, values in result["per_layer_groups"].items():
        ax.plot(range(len(values)), values, marker="o" if group == "context" else None, ms=3,
                lw=2.5 if group == "context" else 1.0, alpha=1.0 if group == "context" else 0.75, label=group)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the queries' attention")
    ax.set_ylim(0, 1)
    ax.set_title(f"{result.get('label') or result.get('model', '')}: {_describe(result)}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)


def load_attention(spec: str) -> tuple[str, dict]:
    """``DIR``, ``DIR/attention.json`` or ``NAME=DIR`` -> (name, result); named by its label or folder."""
    name, sep, where = spec.partition("=")
    if not sep:
        name, where = "", spec
    path = Path(where)
    if path.is_dir():
        path = path / OUTPUT_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a `cings analyze attention` output folder holds {OUTPUT_JSON})")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(result, dict) or "per_layer_groups" not in result:
        raise ValueError(f"{path}: not a `cings analyze attention` result (no 'per_layer_groups')")
    return name or result.get("label") or path.parent.name, result


def compare_attention(specs: Sequence[str], output: str | Path, *, group: str = "context") -> tuple[Path, list[str]]:
    """One line per measurement of ``group``'s share by layer, in one figure; also a text summary per line."""
    if group not in GROUPS:
        raise ValueError(f"--group must be one of {', '.join(GROUPS)}, not {group!r}")
    runs = [load_attention(spec) for spec in specs]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    lines = []
    for name, result in runs:
        values = result["per_layer_groups"].get(group)
        if values is None:
            raise ValueError(f"{name}: no {group!r} share in its attention.json")
        ax.plot(range(len(values)), values, marker="o", ms=3, label=f"{name} ({_describe(result)})")
        lines.append(f"{name}: {group} share mean {sum(values) / len(values):.3f}, max {max(values):.3f} (layer"
                     f" {values.index(max(values))}), last layer {values[-1]:.3f}; {_describe(result)}")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"share of the answer's attention on {group}")
    top = max(max(r["per_layer_groups"][group]) for _, r in runs)
    ax.set_ylim(0, min(1.0, math.ceil(top * 10 + 0.5) / 10))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, output), lines
