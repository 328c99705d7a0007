"""The ``cings`` command. Thin: each command parses flags and calls one module."""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from dataclasses import fields
from typing import Sequence

from .config import json_object
from .render import MODE_ALIASES, Mode, RenderOptions, parse_mode

__all__ = ["main", "build_parser"]

# Flag spellings of the authors' reference code, so users can keep the commands they know.
_FLAG_ALIASES = {"mode": ["--loss-mask-context", "--loss_mask_context"]}


def _mode_arg(value: str) -> Mode:
    try:
        return parse_mode(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RenderOptions field (dashes and underscores both work); help comes from the field."""
    from .config import add_dataclass_arguments

    modes = f"{', '.join(m.value for m in Mode)} (aliases: {', '.join(sorted(MODE_ALIASES))})"
    custom = {"mode": {"type": _mode_arg, "metavar": "MODE",
                       "help": f"{RenderOptions.__dataclass_fields__['mode'].metadata['help']}: {modes} (default: context)"},
              "template_kwargs": {"type": json_object, "metavar": "JSON"},
              "numbering": {"choices": ["auto", "always", "never"]}}
    add_dataclass_arguments(parser.add_argument_group("rendering"), RenderOptions, aliases=_FLAG_ALIASES, custom=custom)


def render_options_from(args: argparse.Namespace) -> RenderOptions:
    given = {f.name: getattr(args, f.name) for f in fields(RenderOptions) if getattr(args, f.name, None) is not None}
    if given.get("system_prompt") == "":
        given["system_prompt"] = None
    return RenderOptions(**given)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="grounded records, JSON Lines (docs/data-format.md)")
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer folder, a .gguf file, 'smollm2' (the bundled model) or a hub id")
    add_render_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cings", description="Context-grounded instruction tuning (CINGS).")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"cings {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tok = sub.add_parser("tokenize", help="records -> token ids and labels (-100 where not trained)",
                         description="Render and tokenize grounded records for training.")
    _common(tok)
    tok.add_argument("--output", required=True,
                     help="X.jsonl: one {id, input_ids, labels} a line; any other path: a datasets folder for training")
    tok.add_argument("--num-proc", "--num_proc", type=int, default=None, help="worker processes for datasets.map")
    tok.add_argument("--batch-size", "--batch_size", type=int, default=1000, help="records per map batch")
    tok.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tok.set_defaults(func=cmd_tokenize)

    pre = sub.add_parser("preview", help="show rendered examples with the trained tokens highlighted",
                         description="Show N rendered examples with the trained tokens marked.")
    _common(pre)
    pre.add_argument("-n", "--num", type=int, default=3, dest="n", help="how many examples to show")
    pre.add_argument("--plain", action="store_true", help="no colour: mark trained text with [[ ]]")
    pre.set_defaults(func=cmd_preview)
    _add_data_commands(sub)
    _add_context_mix_command(sub)
    _add_vlm_commands(sub)

    from .config import add_train_arguments

    tr = sub.add_parser("train", help="fine-tune a causal LM on grounded records (LoRA or full; any launcher)",
                        description="Train with a YAML recipe (configs/) and flag overrides. Distributed runs:"
                                    " accelerate launch [--config_file configs/accelerate/X.yaml] -m cings train ...,"
                                    " or torchrun --nproc_per_node N -m cings train ...")
    add_train_arguments(tr)
    tr.add_argument("--no-progress", action="store_true", help="hide progress bars")
    tr.set_defaults(func=cmd_train)
    _add_eval_commands(sub)
    _add_analyze_commands(sub)
    _add_route_commands(sub)
    _add_retrieval_commands(sub)
    return parser


# ---------------------------------------------------------------- inference and evaluation

# The GenerationSettings fields that are `cings generate` flags (model and adapter have their own).
_GENERATE_FLAGS = ("docs", "ndocs", "prompt", "max_new_tokens", "batch_size", "decoding", "cad_alpha", "adacad_offset",
                   "cad_backoff")
# `cings generate` only: route loads its two models with transformers and scores with them.
_ENGINE_FLAGS = ("engine", "prefix_cache")


def _add_eval_commands(sub) -> None:
    from .config import add_dataclass_arguments
    from .generate import DECODINGS, ENGINES, GenerationSettings
    from .prompts import DOCS, LAYOUTS

    gen = sub.add_parser("generate", help="answer grounded records with a model (+ LoRA adapter): one prediction a line",
                         description="Generate predictions with or without retrieved documents, in the paper's layouts.")
    gen.add_argument("--model", help="model folder, hub id, .gguf file or 'smollm2'; omit with --adapter of a cings run")
    gen.add_argument("--adapter", help="LoRA adapter folder (a cings run: its base model and settings are read from it)")
    gen.add_argument("--gguf-file", "--gguf_file", help="GGUF file name inside the model folder")
    gen.add_argument("--tokenizer", help="tokenizer, when not the run's or the model's")
    gen.add_argument("--input", required=True, help="grounded records")
    add_dataclass_arguments(gen, GenerationSettings, only=_GENERATE_FLAGS,
                            custom={"docs": {"choices": DOCS}, "prompt": {"choices": LAYOUTS}, "ndocs": {"metavar": "K"},
                                    "decoding": {"choices": DECODINGS}, "cad_alpha": {"metavar": "A"},
                                    "cad_backoff": {"metavar": "TAU"}})
    add_dataclass_arguments(gen, GenerationSettings, only=_ENGINE_FLAGS, custom={"engine": {"choices": ENGINES}})
    gen.add_argument("--no-prefix-cache", "--no_prefix_cache", dest="prefix_cache", action="store_const", const=False,
                     help="prefill every prompt whole (the same as --prefix-cache false)")
    gen.add_argument("--output", required=True,
                     help="predictions, JSON Lines; an existing file needs --resume or --overwrite")
    gen.add_argument("--limit", type=int, help="only the first N records")
    gen.add_argument("--resume", action="store_true",
                     help="skip ids already in --output; refused when its rows were made with other settings"
                          " (docs, ndocs, prompt, max-new-tokens, engine, model, adapter, ...; batch size and prefix"
                          " cache may differ)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    gen.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="fp32",
                     help="weights' precision; auto = bf16 on a GPU or CPU with fast bf16 (AVX-512 BF16, AMX), else fp32")
    gen.add_argument("--no-merge", action="store_true",
                     help="keep the LoRA adapter apart from the weights (default: merged in, faster on a CPU)")
    gen.add_argument("--no-progress", action="store_true")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="score predictions: acc, EM, F1 (+ conflict rates), with 95%% intervals",
                        description="Score predictions; writes METRICS.json and a markdown table beside it.")
    ev.add_argument("--predictions", required=True, help="output of cings generate")
    ev.add_argument("--output", required=True, help="METRICS.json")
    ev.add_argument("--rouge", action="store_true", help="also ROUGE-L (long answers)")
    ev.add_argument("--fever", action="store_true", help="map SUPPORTS/REFUTES <-> true/false before scoring")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (0: none)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--closed-book", "--closed_book", metavar="CB.jsonl",
                    help="predictions of the same records with --docs none: adds neutral_regressions (right closed-book,"
                         " wrong with the documents; acc, matched by id) and context_gains (the reverse)")
    ev.set_defaults(func=cmd_evaluate)

    cmp_ = sub.add_parser("compare", help="a table and a bar chart of several runs' metrics",
                          description="Compare metrics files: RUN is METRICS.json or NAME=METRICS.json.")
    cmp_.add_argument("runs", nargs="+", metavar="RUN")
    cmp_.add_argument("--output", required=True, help="report.md (the chart goes beside it as .png)")
    cmp_.add_argument("--metrics", default="acc,em,f1", help="comma-separated metrics to chart; each must be in every file")
    cmp_.set_defaults(func=cmd_compare)

    suite = sub.add_parser("eval-suite", help="run a YAML list of (dataset, docs, layout) for one model; one report",
                           description="Generate and evaluate a suite of settings, then compare them in one report.")
    suite.add_argument("--suite", help="suite YAML; relative data paths are read from its folder (default: the"
                                       " packaged suite over the repository's examples/ slices, as configs/eval/default.yaml)")
    suite.add_argument("--model")
    suite.add_argument("--adapter")
    suite.add_argument("--gguf-file", "--gguf_file")
    suite.add_argument("--output-dir", "--output_dir", required=True)
    suite.add_argument("--limit", type=int, help="records per dataset (overrides the suite)")
    suite.add_argument("--batch-size", "--batch_size", type=int, default=8)
    suite.add_argument("--max-new-tokens", "--max_new_tokens", type=int)
    suite.add_argument("--resume", action="store_true", help="add the missing ids to existing predictions (same settings)")
    suite.add_argument("--overwrite", action="store_true", help="replace existing predictions in --output-dir")
    _add_router_arguments(suite, flag="--router")
    suite.set_defaults(func=cmd_eval_suite)

    exp = sub.add_parser("export", help="a training run -> a plain Hugging Face checkpoint (LoRA merged), verified",
                         description="Write a run folder as a plain checkpoint that AutoModelForCausalLM and AutoTokenizer"
                                     " load: a LoRA run merged into its base (a GGUF base dequantized), DeepSpeed ZeRO or"
                                     " FSDP shards gathered, the tokenizer with a pad token, the chat template, a"
                                     " generation config and the run's recipe. The export is reloaded and its"
                                     " next-token logits compared with the source model's.")
    exp.add_argument("run_dir", help="a cings train output folder (finished), or a checkpoint-N folder inside one")
    exp.add_argument("--output", required=True, help="the folder to write (must not exist or be empty)")
    exp.add_argument("--merge-lora", "--merge_lora", action="store_true",
                     help="merge a LoRA adapter into the base (always done: a plain checkpoint has no adapter)")
    exp.add_argument("--dtype", choices=("fp32", "bf16"), help="weights' precision in the export (default fp32;"
                     " bf16 with --for llava)")
    exp.add_argument("--for", dest="target", choices=("llava",), help="llava: also loadable by the official LLaVA code"
                     " (haotian-liu/LLaVA): config and tokenizer files in its transformers' field names, pad = unk ="
                     " an unused special token; docs/llava.md")
    exp.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    exp.add_argument("--overwrite", action="store_true", help="replace an earlier cings export in --output")
    exp.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="the main job: SmolLM2 CINGS-trained against its baselines, evaluated, reported",
                          description="Train the base model in several modes on SQuAD (LoRA, same data order, steps and"
                                      " seed), evaluate all of them with and without documents and under knowledge"
                                      " conflict, and write report.md, report.png and metrics.json. Stages resume.")
    demo.add_argument("--quick", action="store_true", help="a few steps and records, same stages (1-2 minutes)")
    demo.add_argument("--vlm", action="store_true",
                      help="then the VLM study: a small CLIP tower, LLaVA models on the standard-IT and CINGS backbones,"
                           " POPE on held-out scenes (OUTPUT_DIR/vlm/report.md; docs/llava.md)")
    demo.add_argument("--studies", action="store_true",
                      help="after the demo, the paper's behavioural studies on its models: attention to the passage,"
                           " knowledge under conflict, reliance per checkpoint, CAD, routing vs one model"
                           " (OUTPUT_DIR/studies/report.md)")
    demo.add_argument("--known-facts", "--known_facts", metavar="DIR",
                      help="--studies: the known-facts set (conflict.jsonl, original.jsonl); default examples/known_facts")
    demo.add_argument("--conflict-records", "--conflict_records", type=int, metavar="N",
                      help="--studies: known-facts records for the knowledge, reliance, CAD and routing studies"
                           " (default 100, which keeps the studies inside 40 minutes on a 2-core CPU; 0 = all)")
    demo.add_argument("--vlm-finetune-steps", type=int, help="--vlm: finetune steps per backbone (default 60; --quick 2)")
    demo.add_argument("--vlm-lora-layers", type=int, help="--vlm: LoRA on the top N LM layers in finetuning (default 15)")
    demo.add_argument("--vlm-questions", choices=("pair", "all"), help="--vlm: yes/no questions per finetune dialogue"
                      " (pair: one present + one absent kind; all: every present kind + as many absent)")
    demo.add_argument("--all-modes", action="store_true", help="also train input_context and no_mask")
    demo.add_argument("--output-dir", "--output_dir", default="runs/demo")
    demo.add_argument("--model", default="smollm2", help="model folder, .gguf file, or 'smollm2' (the default)")
    demo.add_argument("--gguf-file", "--gguf_file")
    demo.add_argument("--data-dir", "--data_dir", default="",
                      help="folder with the demo's data slices (default: examples/demo of this checkout)")
    demo.add_argument("--modes", help="comma-separated training modes (overrides --all-modes)")
    from .demo import DemoConfig

    default, quick = DemoConfig(), DemoConfig.quick_preset()
    sizes = ", ".join(f"{k} {v}" for k, v in default.eval_n.items())
    demo.add_argument("--steps", type=int, help=f"optimizer steps per mode (default {default.steps}; --quick {quick.steps})")
    demo.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float,
                      help=f"learning rate (default {default.learning_rate:g})")
    demo.add_argument("--lora-r", type=int, help=f"LoRA rank (default {default.lora_r}; alpha = 2 x rank)")
    demo.add_argument("--eval-sets", help="comma-separated evaluation sets (default: all)")
    demo.add_argument("--eval-n", type=int, help=f"records per evaluation set, all sets alike (default: {sizes})")
    demo.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                      help="auto: bf16 where the CPU/GPU has fast bf16, else fp32")
    demo.add_argument("--retriever", choices=("dense", "bm25", "hybrid"),
                      help=f"the retrieved sets' retriever (default {default.retriever}; --quick {quick.retriever};"
                           " dense = all-MiniLM-L6-v2)")
    demo.add_argument("--retrieval-passages", type=int, metavar="N",
                      help=f"index a seeded sample of N of the 3,359 passages, every gold one kept (default: all;"
                           f" --quick {quick.retrieval_passages})")
    demo.set_defaults(func=cmd_demo)


def _check_local(flag: str, value: str | None, *, must_exist: bool = False) -> None:
    """A --model/--adapter that is written as a path (or must be local) names a missing folder plainly,
    before loading turns it into a less direct error."""
    from pathlib import Path

    if not value or value.lower() == "smollm2" or Path(value).expanduser().exists():
        return
    looks_local = value.startswith((".", "/", "~")) or value.endswith(("/", "\\", ".gguf")) or value.count("/") > 1
    if must_exist or looks_local:
        raise ValueError(f"{flag} {value}: no such {'file' if value.endswith('.gguf') else 'folder'}")


def cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .generate import GenerationSettings, generate_records
    from .loading import resolve_precision
    from .records import read_records
    from .runs import load_for_generation

    # Settings and paths first: a bad value is refused before a model is loaded or --output touched.
    given = {k: getattr(args, k) for k in _GENERATE_FLAGS + _ENGINE_FLAGS}
    if given["engine"] == "vllm" and given["batch_size"] is None:
        from .generate.vllm_engine import DEFAULT_BATCH

        given["batch_size"] = DEFAULT_BATCH  # vLLM batches a call's requests itself: give it many
    settings = GenerationSettings(**{k: v for k, v in given.items() if v is not None}, model=args.model, adapter=args.adapter)
    _check_local("--model", args.model)
    # Without --model the base model is read from the adapter's folder, so it must be here.
    _check_local("--adapter", args.adapter, must_exist=args.model is None)
    if settings.engine == "vllm":
        from .generate.vllm_engine import check_available

        check_available()  # an explicit choice: refused where it cannot run, never replaced by the default engine
    precision = resolve_precision(args.dtype, allowed=("auto", "bf16", "fp32"))
    print(f"cings generate: precision {precision.describe()}", file=sys.stderr)
    if precision.warning:
        print(f"cings generate: warning: {precision.warning}", file=sys.stderr)
    dtype = precision.dtype
    if settings.engine == "vllm":
        model, tok, options, spec = _load_for_vllm(args, dtype, settings.prefix_cache)
    else:
        model, tok, options, spec = load_for_generation(args.model, adapter=args.adapter, gguf_file=args.gguf_file,
                                                        tokenizer=args.tokenizer, dtype=dtype, merge=not args.no_merge)
    extra = {"dtype": str(dtype).removeprefix("torch.")}
    if args.adapter:
        extra["adapter_merged"] = not args.no_merge
    settings = replace(settings, model=spec, extra=extra)
    report = generate_records(read_records(args.input), model, tok, options, settings, args.output,
                              resume=args.resume, overwrite=args.overwrite, limit=args.limit,
                              progress=not args.no_progress)
    skipped = ", ".join(f"{k} {v}" for k, v in report["skipped"].items()) or "none"
    print(f"cings generate: {report['generated']} generated, {report['already_done']} already written,"
          f" skipped {skipped}; {report['seconds']}s; wrote {args.output}", file=sys.stderr)
    return 0


def _load_for_vllm(args: argparse.Namespace, dtype, prefix_cache: bool):
    """``(vLLM engine, tokenizer, render options, model spec)``: the tokenizer and render options that
    ``load_for_generation`` would find for ``--model`` (a run's recipe, when it is one), the weights left to vLLM."""
    from pathlib import Path

    from .generate.vllm_engine import VllmEngine
    from .loading import load_tokenizer, resolve_model
    from .render import RenderOptions
    from .runs import run_and_weights

    if args.model is None:
        raise ValueError("--engine vllm needs --model: a model folder (an exported run), hub id or .gguf file")
    found = run_and_weights(args.model) if Path(args.model).is_dir() else None
    if found and (found[1] / "adapter_config.json").is_file():
        raise ValueError(f"--model {args.model}: a LoRA run; --engine vllm reads merged weights: `cings export"
                         f" {args.model} --output DIR`, then --model DIR")
    recipe = found[0].config if found else None
    folder, gguf = resolve_model(args.model, args.gguf_file)
    weights = str(Path(folder) / gguf) if gguf else folder
    own = folder if not gguf and (Path(folder) / "tokenizer_config.json").is_file() else None
    tok = load_tokenizer(args.tokenizer or own or (recipe.tokenizer if recipe is not None and recipe.tokenizer else None)
                         or weights)
    options = recipe.render_options() if recipe is not None else RenderOptions()
    engine = VllmEngine(weights, dtype=str(dtype).removeprefix("torch."), prefix_cache=prefix_cache)
    return engine, tok, options, args.model


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_file

    metrics, table_path = evaluate_file(args.predictions, args.output, rouge=args.rouge, fever=args.fever,
                                        bootstrap=args.bootstrap, seed=args.seed, closed_book=args.closed_book)
    print(_read_text(table_path))
    return 0


def _read_text(path) -> str:
    from pathlib import Path

    return Path(path).read_text(encoding="utf-8")


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import compare_runs

    md, png = compare_runs(args.runs, args.output, metrics=[m.strip() for m in args.metrics.split(",") if m.strip()])
    print(_read_text(md))
    print(f"cings compare: wrote {md} and {png}", file=sys.stderr)
    return 0


def cmd_eval_suite(args: argparse.Namespace) -> int:
    from .suite import run_suite

    report = run_suite(args.suite, model=args.model, adapter=args.adapter, gguf_file=args.gguf_file,
                       output_dir=args.output_dir, limit=args.limit, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, resume=args.resume, overwrite=args.overwrite,
                       **_suite_router(args))
    print(f"cings eval-suite: wrote {report}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    log = lambda msg: print(f"cings export: {msg}", file=sys.stderr)  # noqa: E731
    report = export_run(args.run_dir, args.output, dtype=args.dtype, target=args.target, verify=not args.no_verify,
                        overwrite=args.overwrite, log=log)
    log(f"wrote {report['output']} ({report['kind']}, {report['dtype']}; pad token {report['pad_token']})")
    if report.get("for") == "llava":
        for line in report["adjustments"][1:]:
            log(f"for llava: {line}")
        log(f"for llava: LLaVA's environment needs {report['llava_transformers']}; see docs/llava.md")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import ALL_MODES, EVAL_SETS, MODES, DemoConfig, run_demo

    kw: dict = {"output_dir": args.output_dir, "model": args.model, "gguf_file": args.gguf_file, "precision": args.precision,
                "data_dir": args.data_dir}
    kw["modes"] = tuple(m.strip() for m in args.modes.split(",")) if args.modes else (ALL_MODES if args.all_modes else MODES)
    for name in ("steps", "learning_rate", "retriever", "retrieval_passages"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.lora_r is not None:
        kw.update(lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    if args.eval_sets:
        known = {e.name for e in EVAL_SETS}
        kw["eval_sets"] = tuple(s.strip() for s in args.eval_sets.split(","))
        bad = [s for s in kw["eval_sets"] if s not in known]
        if bad:
            raise ValueError(f"--eval-sets {bad}: choose from {', '.join(sorted(known))}")
    cfg = DemoConfig.quick_preset(**kw) if args.quick else DemoConfig(**kw)
    if args.eval_n is not None:
        cfg.eval_n = {k: args.eval_n for k in cfg.eval_n}
    if args.vlm:
        from .demo_vlm import VlmDemoConfig, run_vlm_demo

        vcfg = VlmDemoConfig.quick_preset() if args.quick else VlmDemoConfig()
        for flag, name in (("vlm_finetune_steps", "finetune_steps"), ("vlm_lora_layers", "lora_top_layers"),
                           ("vlm_questions", "questions")):
            if getattr(args, flag) is not None:
                setattr(vcfg, name, getattr(args, flag))
        run_vlm_demo(cfg, vcfg)
    elif args.studies:
        from .demo_studies import StudiesConfig, run_studies

        scfg = StudiesConfig.quick_preset() if args.quick else StudiesConfig()
        if args.known_facts:
            scfg.known_facts = args.known_facts
        if args.conflict_records is not None:
            if args.conflict_records < 0:
                raise ValueError(f"--conflict-records must be 0 (all) or more, not {args.conflict_records}")
            scfg.conflict_records = args.conflict_records
        run_studies(cfg, scfg)
    else:
        run_demo(cfg)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import config_from_args
    from .train import train

    result = train(config_from_args(args), progress=not args.no_progress)
    metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result["metrics"].items())
    print(f"cings train: {result['global_step']} steps; {metrics}; model in {result['output_dir']}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- data commands

def _field_map(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        if not part.strip():
            continue
        name, sep, source = part.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise argparse.ArgumentTypeError(f"expected grounded=source pairs like instruction=question, not {part!r}")
        out[name.strip()] = source.strip()
    return out


def _add_data_commands(sub) -> None:
    from .formats import FORMATS
    from .prepare import ON_ERROR

    prep = sub.add_parser("prepare", help="raw data (Self-RAG, SQuAD, DPR, HotpotQA, ...) -> grounded records",
                          description="Convert raw files of a known format into grounded records (docs/data-format.md).")
    prep.add_argument("--format", required=True, choices=FORMATS, help="the input format")
    prep.add_argument("--input", required=True, nargs="+", help="input files (json, jsonl, csv, tsv, parquet; .gz/.bz2/.xz)")
    prep.add_argument("--output", required=True, help="grounded records, JSON Lines")
    prep.add_argument("--on-error", "--on_error", choices=ON_ERROR, default="raise",
                      help="a malformed row stops the run (raise, default) or is skipped and counted (skip)")
    prep.add_argument("--response-field", "--response_field", help="QA formats: the field holding the response (default: the first answer)")
    prep.add_argument("--max-contexts", "--max_contexts", type=int, metavar="K", help="keep at most K passages per record")
    prep.add_argument("--unanswerable-response", default="unanswerable", help="squad v2: response of unanswerable questions")
    prep.add_argument("--field-map", "--field_map", type=_field_map, default={}, metavar="MAP",
                      help="jsonl: grounded=source fields, e.g. instruction=question,response=answer,contexts=docs")
    sr = prep.add_argument_group("selfrag filters (each drop is counted)")
    sr.add_argument("--passages", choices=["any", "single", "multi"], default="any", help="records with one passage, several, or any")
    sr.add_argument("--support", choices=["any", "partial", "full"], default="any",
                    help="keep sentences fully supported (full), at least partially (partial), or all (any)")
    sr.add_argument("--irrelevant", choices=["drop", "keep-as-distractor", "drop-record"], default="drop",
                    help="[Irrelevant] paragraphs: removed, kept as distractor passages, or their record dropped")
    sr.add_argument("--subset", choices=["all", "retrieval", "no_retrieval"], default="all", help="which records to keep")
    sr.add_argument("--min-utility", "--min_utility", type=int, metavar="K", help="drop records whose [Utility:K] is lower")
    sr.add_argument("--dataset-name", "--dataset_name", nargs="+", default=[], metavar="NAME", help="keep only these dataset_name values")
    prep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    prep.set_defaults(func=cmd_prepare)

    spl = sub.add_parser("split", help="deterministic train/dev/test splits by a key (no article shared across splits)",
                         description="Split records by a key so that no key value is shared across splits.")
    spl.add_argument("--input", required=True, help="grounded records")
    spl.add_argument("--output-dir", "--output_dir", required=True, help="folder for NAME.jsonl per split and summary.json")
    spl.add_argument("--by", default="title", help="title (first passage's title), context (paragraph), id, or meta.FIELD")
    spl.add_argument("--fractions", default="0.8,0.1,0.1", help="split sizes, e.g. 0.8,0.1,0.1 or 8:1:1")
    spl.add_argument("--names", default="train,dev,test", help="split names, as many as fractions")
    spl.add_argument("--seed", type=int, default=0)
    spl.set_defaults(func=cmd_split)

    mix = sub.add_parser("mix", help="mix record files by ratio or count (e.g. context and context-free subsets)",
                         description="Sample record files by ratio or count into one shuffled mixture.")
    mix.add_argument("--input", required=True, nargs="+", help="grounded record files")
    mix.add_argument("--output", required=True)
    mix.add_argument("--ratio", help="parts per input, e.g. 1:1 (default: equal)")
    mix.add_argument("--size", type=int, help="total records (with --ratio; default: the largest the inputs allow)")
    mix.add_argument("--count", type=int, nargs="+", help="records per input, instead of --ratio")
    mix.add_argument("--replace", action="store_true", help="sample with replacement (allows more than available)")
    mix.add_argument("--seed", type=int, default=0)
    mix.set_defaults(func=cmd_mix)

    cf = sub.add_parser("counterfactual", help="knowledge-conflict set: swap the answer in the passage for another",
                        description="Build a knowledge-conflict evaluation set from extractive QA records (SQuAD).")
    cf.add_argument("--input", required=True, help="grounded records from extractive QA (cings prepare --format squad)")
    cf.add_argument("--output", required=True)
    cf.add_argument("--seed", type=int, default=0)
    cf.add_argument("--known-from", "--known_from", metavar="PRED.jsonl",
                    help="closed-book predictions of the input (cings generate --docs none): rewrite only the records"
                         " the model answers by exact match (numbers, years, yes/no and answers of 1-2 characters"
                         " excluded), each cut to one passage holding its answer; every record needs a prediction")
    cf.add_argument("--known-match", "--known_match", choices=("exact", "words"), default="exact",
                    help="with --known-from: exact = the whole normalised prediction is a gold answer; words = a gold"
                         " answer occurs in it as whole words and not in the question (for models that answer in"
                         " sentences); short, numeric, year and yes/no answers never count")
    cf.add_argument("--originals", metavar="FILE",
                    help="with --known-from: also write the kept records before the swap (their one passage and"
                         " original answer, same ids), to ask the same questions closed-book or with the true passage")
    cf.set_defaults(func=cmd_counterfactual)


def _finish_data(summary: dict, output: str) -> int:
    from .summary import print_summary, write_summary

    print_summary(summary)
    path = write_summary(summary, output)
    print(f"cings {summary['command']}: wrote {output} (summary: {path})", file=sys.stderr)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .formats import PrepareOptions
    from .prepare import run_prepare

    options = PrepareOptions(response_field=args.response_field, max_contexts=args.max_contexts,
                             unanswerable_response=args.unanswerable_response, field_map=args.field_map,
                             passages=args.passages, support=args.support, irrelevant=args.irrelevant,
                             subset=args.subset, min_utility=args.min_utility, dataset_names=tuple(args.dataset_name))
    summary = run_prepare(args.format, args.input, args.output, options, args.on_error, progress=not args.no_progress)
    return _finish_data(summary, args.output)


def _read_all(path: str) -> list:
    from .records import read_records

    return list(read_records(path))


def cmd_split(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .records import write_records
    from .splits import parse_ratio, split_records
    from .summary import describe

    fractions = parse_ratio(args.fractions)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if len(names) != len(fractions):
        raise ValueError(f"--names has {len(names)} names for {len(fractions)} fractions")
    records = _read_all(args.input)
    parts, keys = split_records(records, fractions, by=args.by, seed=args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in zip(names, parts):
        write_records(part, out / f"{name}.jsonl")
    summary = {"command": "split", "input": args.input, "by": args.by, "seed": args.seed, "records_in": len(records),
               "records_out": sum(map(len, parts)), "dropped": {},
               "splits": {name: {"records": len(part), "keys": len(k), "shape": describe(part)}
                          for name, part, k in zip(names, parts, keys)},
               "keys": dict(zip(names, keys)), "shape": describe(records),
               "extra": {f"split {n}": f"{len(p)} records, {len(k)} keys" for n, p, k in zip(names, parts, keys)}}
    return _finish_data(summary, str(out))


def cmd_mix(args: argparse.Namespace) -> int:
    from .records import write_records
    from .splits import mix_records, parse_ratio, source_name
    from .summary import describe

    if args.count and (args.ratio or args.size):
        raise ValueError("give --count, or --ratio (with --size), not both")
    sources = [(source_name(p), _read_all(p)) for p in args.input]
    names = [n for n, _ in sources]
    if len(set(names)) != len(names):
        sources = [(f"{i}-{n}", recs) for i, (n, recs) in enumerate(sources)]
    mixed, report = mix_records(sources, counts=args.count, ratio=parse_ratio(args.ratio) if args.ratio else None,
                                size=args.size, seed=args.seed, replace=args.replace)
    write_records(mixed, args.output)
    summary = {"command": "mix", "inputs": args.input, "records_in": sum(len(r) for _, r in sources),
               "records_out": len(mixed), "dropped": {}, **report, "shape": describe(mixed),
               "extra": {f"from {s['name']}": f"{s['taken']} of {s['available']}" for s in report["sources"]}}
    return _finish_data(summary, args.output)


def cmd_counterfactual(args: argparse.Namespace) -> int:
    from .counterfactual import make_counterfactual
    from .records import write_records
    from .summary import describe

    records = _read_all(args.input)
    if args.originals and not args.known_from:
        raise ValueError("--originals needs --known-from")
    if args.known_from:
        return _known_counterfactual(args, records)
    out, stats = make_counterfactual(records, seed=args.seed)
    write_records(out, args.output)
    summary = {"command": "counterfactual", "input": args.input, "seed": args.seed, "records_in": stats.records_in,
               "records_out": stats.records_out, "dropped": dict(stats.dropped), "by_type": dict(stats.by_type),
               "shape": describe(out), "extra": {"kept by answer type": ", ".join(
                   f"{k} {v}" for k, v in sorted(stats.by_type.items()))}}
    return _finish_data(summary, args.output)


def _known_counterfactual(args: argparse.Namespace, records: list) -> int:
    from .known_facts import known_counterfactual
    from .records import write_records
    from .summary import describe

    out, originals, known, stats = known_counterfactual(records, args.known_from, seed=args.seed,
                                                        known_match=args.known_match)
    write_records(out, args.output)
    if args.originals:
        write_records(originals, args.originals)
    extra = {f"known ({args.known_match} match, not excluded)": str(known.known),
             "kept by answer type": ", ".join(f"{k} {v}" for k, v in sorted(stats.by_type.items())) or "none",
             "predictions of other ids (unused)": str(known.predictions_unused)}
    extra.update({f"source {name}": ", ".join(f"{k} {v}" for k, v in counts.items())
                  for name, counts in sorted(known.by_source.items())})
    summary = {"command": "counterfactual", "input": args.input, "known_from": args.known_from,
               "known_match": args.known_match, "originals": args.originals, "seed": args.seed,
               "records_in": known.records_in, "records_out": len(out),
               "dropped": dict(known.dropped + stats.dropped), "known": known.to_dict(), "counterfactual": stats.to_dict(),
               "shape": describe(out), "extra": extra}
    return _finish_data(summary, args.output)


# ---------------------------------------------------------------- which passages each record shows (RAFT, KAFT)

def _add_context_mix_command(sub) -> None:
    from .config import add_dataclass_arguments
    from .context_mix import ContextMixOptions

    cm = sub.add_parser("context-mix", help="RAFT/KAFT training data: per record, the oracle passage (+ distractors),"
                                            " distractors only, irrelevant passages, or a counterfactual swap",
                        description="Choose which passages each record of a context dataset shows: its oracle passage"
                                    " with probability --oracle-rate (RAFT's P), else distractors only; K distractors"
                                    " beside it (--distractors); a share of rows with irrelevant passages and the"
                                    " original target (--irrelevant, KAFT) or with the answer swapped in passage and"
                                    " target (--counterfactual, KAFT). Deterministic by --seed; each record's"
                                    " meta.context_kind says what was done, and every kind is counted.")
    cm.add_argument("--input", required=True, help="grounded records with passages")
    cm.add_argument("--output", required=True, help="grounded records, one per input record, in the input's order")
    add_dataclass_arguments(cm, ContextMixOptions, custom={"distractors": {"metavar": "K"},
                                                          "oracle_rate": {"metavar": "P"}})
    cm.set_defaults(func=cmd_context_mix)


def cmd_context_mix(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .context_mix import KINDS, ContextMixOptions, mix_contexts
    from .records import write_records
    from .summary import describe

    options = ContextMixOptions(**{f.name: getattr(args, f.name) for f in fields(ContextMixOptions)
                                   if getattr(args, f.name, None) is not None})
    records = _read_all(args.input)
    out, stats = mix_contexts(records, options)
    write_records(out, args.output)
    counts = stats.to_dict()
    extra = {"context kinds": ", ".join(f"{k} {stats.by_kind[k]}" for k in KINDS if stats.by_kind[k]) or "none",
             "fallbacks": ", ".join(f"{k} {v}" for k, v in counts["fallbacks"].items()) or "none",
             "unchanged": ", ".join(f"{k} {v}" for k, v in counts["unchanged"].items()) or "none",
             "passages added": f"{stats.distractors_added} ({stats.short_of_passages} rows got fewer than asked)"}
    summary = {"command": "context-mix", "input": args.input, "options": asdict(options), **counts, "dropped": {},
               "shape": describe(out), "extra": extra}
    return _finish_data(summary, args.output)


def _renderer(args: argparse.Namespace):
    from .loading import load_tokenizer
    from .render import Renderer

    return Renderer(load_tokenizer(args.tokenizer), render_options_from(args))


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .dataset import render_manifest, tokenize_file, write_tokenized

    started = time.perf_counter()
    renderer = _renderer(args)
    dataset, stats = tokenize_file(args.input, renderer, num_proc=args.num_proc, batch_size=args.batch_size,
                                   progress=not args.no_progress)
    manifest = render_manifest(renderer, args.tokenizer, args.input, stats)
    manifest_path = write_tokenized(dataset, args.output, manifest)
    for line in stats.lines():
        print(f"cings tokenize: {line}", file=sys.stderr)
    print(f"cings tokenize: wrote {args.output} (and {manifest_path}) in {time.perf_counter() - started:.1f}s",
          file=sys.stderr)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from .preview import preview_file

    renderer = _renderer(args)
    shown = preview_file(args.input, renderer, n=args.n, plain=args.plain)
    return 0 if shown else 1


# ---------------------------------------------------------------- vision-language commands

def _add_vlm_commands(sub) -> None:
    from .config import add_dataclass_arguments
    from .train_vlm import VlmTrainConfig

    vlm = sub.add_parser("vlm", help="the vision-language stage: build a LLaVA model, train it in two stages, POPE",
                         description="A LLaVA-style model on transformers' LlavaForConditionalGeneration: a CLIP or SigLIP"
                                     " tower, a 2-layer MLP projector and a (cings-trained) language model.")
    verbs = vlm.add_subparsers(dest="vlm_command", required=True, metavar="VERB")
    build = verbs.add_parser("build", help="vision tower + language model -> a LLaVA folder (AutoProcessor included)")
    build.add_argument("--vision-tower", "--vision_tower", required=True, help="a CLIP or SigLIP (vision) model folder")
    build.add_argument("--language-model", "--language_model", required=True,
                       help="a causal LM folder with a chat template and a pad token (`cings export` writes one)")
    build.add_argument("--output", required=True, help="the folder to write")
    build.add_argument("--overwrite", action="store_true", help="replace an earlier `cings vlm build` in --output")
    build.set_defaults(func=cmd_vlm_build)

    train = verbs.add_parser("train", help="pretrain (projector) or finetune (projector + LM, LoRA or full) on LLaVA data",
                             description="One stage of LLaVA training; launch with accelerate for several processes.")
    add_dataclass_arguments(train, VlmTrainConfig, custom={"stage": {"choices": ["pretrain", "finetune"]},
                                                           "precision": {"choices": ["auto", "bf16", "fp32"]}})
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_vlm_train)

    gen = verbs.add_parser("generate", help="answer image questions (JSONL: id, image, question) with a LLaVA folder")
    gen.add_argument("--model", required=True, help="a LLaVA folder (`cings vlm build` or `vlm train` output)")
    gen.add_argument("--questions", "--input", dest="questions", required=True, help="JSONL: id, image, question (+ label, split)")
    gen.add_argument("--image-folder", "--image_folder", help="images are relative to it (default: the questions' folder)")
    gen.add_argument("--output", required=True, help="predictions, one JSON a line")
    gen.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=16,
                     help="1 = one forward per question (enough for POPE's yes/no)")
    gen.add_argument("--batch-size", "--batch_size", type=int, default=16)
    gen.add_argument("--short-answer", action="store_true", help=f"append LLaVA's {SHORT_ANSWER_TEXT!r}")
    gen.add_argument("--resume", action="store_true", help="add the missing ids to an existing output (same settings)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output")
    gen.set_defaults(func=cmd_vlm_generate)

    scenes = verbs.add_parser("scenes", help="synthetic shape scenes: images, pretrain/finetune LLaVA data, POPE questions",
                              description="The data of the CPU VLM study (cings.vision.scenes): training scenes as"
                                          " captions (pretrain.json) and yes/no + description dialogues (finetune.json),"
                                          " POPE questions on held-out scenes (pope.jsonl), images/.")
    scenes.add_argument("--output", required=True, help="the folder to write (reused if written with the same settings)")
    scenes.add_argument("--train", type=int, default=480, help="training scenes")
    scenes.add_argument("--test", type=int, default=100, help="held-out scenes for POPE")
    scenes.add_argument("--seed", type=int, default=1, help="training scenes' seed (test scenes: seed + 1)")
    scenes.add_argument("--per-split", "--per_split", type=int, default=1, help="yes (and as many no) questions per scene and split")
    scenes.add_argument("--questions", choices=("pair", "all"), default="pair",
                        help="finetune dialogues: one present + one absent kind (pair), or every present kind + as many absent")
    scenes.set_defaults(func=cmd_vlm_scenes)

    tower = verbs.add_parser("tower", help="train a small CLIP vision tower on the synthetic scenes (no download needed)",
                             description="A CLIPVisionModel (64 px, 16 px patches) trained to tell which shapes are in a"
                                         " scene, saved with save_pretrained and its processor so `vlm build` takes it.")
    tower.add_argument("--output", required=True, help="the folder to write")
    tower.add_argument("--train", type=int, default=2000, help="training scenes")
    tower.add_argument("--steps", type=int, default=600, help="optimizer steps")
    tower.add_argument("--batch-size", "--batch_size", type=int, default=64)
    tower.add_argument("--layers", type=int, default=4, help="encoder layers")
    tower.add_argument("--hidden-size", "--hidden_size", type=int, default=128)
    tower.add_argument("--seed", type=int, default=0)
    tower.add_argument("--overwrite", action="store_true", help="replace an earlier `cings vlm tower` in --output")
    tower.set_defaults(func=cmd_vlm_tower)

    ev = verbs.add_parser("evaluate", help="POPE metrics of yes/no predictions: accuracy, precision, recall, F1, yes-ratio",
                          description="Rows carry id, prediction (the model's text), label (yes/no) and optionally split;"
                                      " the official POPE rule parses the prediction (--rule strict: a first word yes/no)")
    ev.add_argument("--predictions", required=True, help="JSONL from `cings vlm generate` (or any with the same fields)")
    ev.add_argument("--output", required=True, help="METRICS.json")
    ev.add_argument("--rule", choices=("official", "strict"), default="official", help="how an answer is read as yes/no")
    ev.set_defaults(func=cmd_vlm_evaluate)


SHORT_ANSWER_TEXT = "Answer the question using a single word or phrase."


def cmd_vlm_build(args: argparse.Namespace) -> int:
    from .vision.build import build_vlm

    log = lambda msg: print(f"cings vlm build: {msg}", file=sys.stderr)  # noqa: E731
    build_vlm(args.vision_tower, args.language_model, args.output, overwrite=args.overwrite, log=log)
    return 0


def cmd_vlm_train(args: argparse.Namespace) -> int:
    from .train_vlm import VlmTrainConfig, train_vlm

    given = {f.name: getattr(args, f.name) for f in fields(VlmTrainConfig) if getattr(args, f.name, None) is not None}
    result = train_vlm(VlmTrainConfig(**given), progress=not args.no_progress)
    losses = ("loss " + " -> ".join(f"{result[k]:.4g}" for k in ("first_loss", "last_loss"))
              if result["first_loss"] is not None else "no loss logged (fewer steps than --logging-steps)")
    print(f"cings vlm train: {result['stage']}, {result['steps']} steps, {losses}; model in {result['output_dir']}",
          file=sys.stderr)
    return 0


def cmd_vlm_generate(args: argparse.Namespace) -> int:
    from .vision.generate import SHORT_ANSWER, generate_answers

    log = lambda msg: print(f"cings vlm generate: {msg}", file=sys.stderr)  # noqa: E731
    report = generate_answers(args.model, args.questions, args.output, image_folder=args.image_folder,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                              suffix=SHORT_ANSWER if args.short_answer else "", resume=args.resume,
                              overwrite=args.overwrite, log=log)
    log(f"wrote {report['output']} ({report['generated']} new, {report['kept']} kept)")
    return 0


def cmd_vlm_scenes(args: argparse.Namespace) -> int:
    from .vision.scenes import write_study

    log = lambda msg: print(f"cings vlm scenes: {msg}", file=sys.stderr)  # noqa: E731
    write_study(args.output, n_train=args.train, n_test=args.test, seed=args.seed, per_split=args.per_split,
                questions=args.questions, log=log)
    return 0


def cmd_vlm_tower(args: argparse.Namespace) -> int:
    from .vision.tower import train_tower

    log = lambda msg: print(f"cings vlm tower: {msg}", file=sys.stderr)  # noqa: E731
    train_tower(args.output, n_train=args.train, steps=args.steps, batch_size=args.batch_size, layers=args.layers,
                hidden_size=args.hidden_size, seed=args.seed, overwrite=args.overwrite, log=log)
    return 0


def cmd_vlm_evaluate(args: argparse.Namespace) -> int:
    from .pope import evaluate_file

    metrics = evaluate_file(args.predictions, args.output, rule=args.rule)
    shown = ", ".join(f"{k} {metrics[k]:.1f}" for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
    splits = "; ".join(f"{name}: acc {m['accuracy']:.1f} f1 {m['f1']:.1f}" for name, m in metrics.get("splits", {}).items())
    print(f"cings vlm evaluate: n {metrics['n']}: {shown}" + (f" ({splits})" if splits else "") + f"; wrote {args.output}",
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------- analyses

def _add_analyze_commands(sub) -> None:
    from .analysis.attention import GROUPS, LAYOUT_MODES, METHODS, QUERIES, AttentionSettings
    from .config import add_dataclass_arguments
    from .prompts import DOCS

    analyze = sub.add_parser("analyze", help="studies of a model: attention to the passage, context reliance",
                             description="Analyses of a (cings-trained) model on grounded records.")
    verbs = analyze.add_subparsers(dest="analyze_command", required=True, metavar="ANALYSIS")
    att = verbs.add_parser("attention", help="per layer, the share of the answer's attention on the passage",
                           description="Render each record with its gold response (teacher-forced) and measure, per"
                                       " layer, the attention mass the answer tokens put on the passage tokens (and on"
                                       " the prompt, markers, template, answer and first token), averaged over heads,"
                                       " answer tokens and records. Writes OUTPUT/attention.json and attention.png.")
    att.add_argument("--model", help="model folder, hub id, .gguf file or 'smollm2'; omit with --adapter of a cings run")
    att.add_argument("--adapter", help="LoRA adapter folder (a cings run: its base model and settings are read from it)")
    att.add_argument("--gguf-file", "--gguf_file", help="GGUF file name inside the model folder")
    att.add_argument("--tokenizer", help="tokenizer, when not the run's or the model's")
    att.add_argument("--input", required=True, help="grounded records with gold responses (and gold passages)")
    att.add_argument("--output", required=True, help="folder for attention.json and attention.png")
    add_dataclass_arguments(att, AttentionSettings,
                            custom={"layout": {"choices": list(LAYOUT_MODES)}, "queries": {"choices": QUERIES},
                                    "method": {"choices": METHODS}, "ndocs": {"metavar": "K"},
                                    "docs": {"choices": [d for d in DOCS if d != "none"]}})
    att.add_argument("--label", help="the name in charts and comparisons (default: the adapter's or model's name)")
    att.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="fp32",
                     help="weights' precision; fp32 keeps the shares exact to float rounding")
    att.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT/attention.json")
    att.add_argument("--no-progress", action="store_true")
    att.set_defaults(func=cmd_analyze_attention)

    cmp_ = verbs.add_parser("attention-compare", help="several attention.json side by side in one chart",
                            description="One line per measurement (e.g. base, standard IT, CINGS) of a group's share"
                                        " by layer. RUN is an output folder of `cings analyze attention`, its"
                                        " attention.json, or NAME=FOLDER.")
    cmp_.add_argument("runs", nargs="+", metavar="RUN")
    cmp_.add_argument("--output", required=True, help="the chart (.png)")
    cmp_.add_argument("--group", choices=GROUPS, default="context", help="which share to draw (default: context)")
    cmp_.set_defaults(func=cmd_analyze_attention_compare)
    _add_reliance_command(verbs)
    _add_knowledge_command(verbs)


def cmd_analyze_attention(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .analysis.attention import AttentionSettings, check_output, measure_records, write_attention
    from .loading import resolve_precision
    from .records import read_records
    from .runs import load_for_generation

    fields_ = {f.name for f in fields(AttentionSettings)}
    settings = AttentionSettings(**{k: getattr(args, k) for k in fields_ if getattr(args, k, None) is not None})
    check_output(args.output, args.overwrite)
    _check_local("--model", args.model)
    _check_local("--adapter", args.adapter, must_exist=args.model is None)
    if not Path(args.input).is_file():
        raise ValueError(f"--input {args.input}: no such file")
    precision = resolve_precision(args.dtype, allowed=("auto", "bf16", "fp32"))
    log = lambda msg: print(f"cings analyze attention: {msg}", file=sys.stderr)  # noqa: E731
    log(f"precision {precision.describe()}")
    model, tok, options, spec = load_for_generation(args.model, adapter=args.adapter, gguf_file=args.gguf_file,
                                                    tokenizer=args.tokenizer, dtype=precision.dtype)
    result = measure_records(model, tok, options, read_records(args.input), settings, progress=not args.no_progress)
    label = args.label or Path(args.adapter or spec).name or spec
    result = {"label": label, "model": spec, "adapter": args.adapter, "tokenizer": args.tokenizer,
              "input": args.input, "dtype": str(precision.dtype).removeprefix("torch."), **result}
    json_path, png_path = write_attention(result, args.output)
    shares = result["per_layer"]
    skipped = ", ".join(f"{k} {v}" for k, v in result["skipped"].items()) or "none"
    log(f"{result['n']} records ({skipped} skipped), {result['seconds_per_record']}s each; context share by layer:"
        f" {' '.join(f'{v:.3f}' for v in shares)} (mean {sum(shares) / len(shares):.3f})")
    log(f"wrote {json_path} and {png_path}")
    return 0


def cmd_analyze_attention_compare(args: argparse.Namespace) -> int:
    from .analysis.attention import compare_attention

    png, lines = compare_attention(args.runs, args.output, group=args.group)
    for line in lines:
        print(line)
    print(f"cings analyze attention-compare: wrote {png}", file=sys.stderr)
    return 0


def _add_knowledge_command(verbs) -> None:
    kn = verbs.add_parser("knowledge", help="closed-book accuracy and conflict context/memory rates, model by model",
                          description="One table, a row per model (the first is the reference, e.g. the base model):"
                                      " closed-book acc and EM, EM on the conflict set's facts without their passage"
                                      " (known kept), and context / memory rate on a knowledge-conflict set; paired"
                                      " differences against the first model. Reads prediction files only.")
    kn.add_argument("--model", nargs=3, action="append", required=True, dest="models",
                    metavar=("NAME", "CLOSED_BOOK", "CONFLICT"),
                    help="a model's name and its predictions (cings generate) without passages (--docs none) and on"
                         " the conflict set (with passages); repeat per model, the same ids in every file")
    kn.add_argument("--output", required=True, help="OUT.json")
    kn.add_argument("--markdown", help="also the table as OUT.md")
    kn.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (0: none)")
    kn.add_argument("--seed", type=int, default=0)
    kn.set_defaults(func=cmd_analyze_knowledge)


def cmd_analyze_knowledge(args: argparse.Namespace) -> int:
    from .analysis.knowledge import ModelPredictions, analyze_knowledge, knowledge_markdown, write_knowledge

    models = [ModelPredictions(name, closed, conflict) for name, closed, conflict in args.models]
    result = analyze_knowledge(models, bootstrap=args.bootstrap, seed=args.seed)
    written = write_knowledge(result, args.output, args.markdown)
    print(knowledge_markdown(result))
    print(f"cings analyze knowledge: wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0


def _add_reliance_command(verbs) -> None:
    from .analysis.reliance import RelianceSettings
    from .config import add_dataclass_arguments
    from .prompts import DOCS

    rel = verbs.add_parser("reliance", help="context vs memory rate on a conflict set at every checkpoint of a run",
                           description="Generate on a knowledge-conflict set (cings counterfactual) in the prefill"
                                       " layout with the run's base model (step 0), every complete checkpoint-N and"
                                       " its final weights, and score how often each answer follows the passage"
                                       " (context_rate), the original answer (memory_rate) or neither (other_rate)."
                                       " Writes OUTPUT/reliance.json and reliance.png; predictions are kept per"
                                       " step, so a rerun resumes and adds only new checkpoints.")
    rel.add_argument("--run", required=True, help="a cings train output folder (LoRA or full; finished or not)")
    rel.add_argument("--input", required=True, help="knowledge-conflict records (answers and parametric_answers)")
    rel.add_argument("--output", required=True, help="folder for reliance.json, reliance.png and predictions/")
    add_dataclass_arguments(rel, RelianceSettings, custom={"docs": {"choices": [d for d in DOCS if d != "none"]},
                                                          "dtype": {"choices": ["fp32", "bf16", "auto"]},
                                                          "ndocs": {"metavar": "K"}})
    rel.add_argument("--overwrite", action="store_true", help="start afresh: remove earlier predictions in OUTPUT")
    rel.add_argument("--no-progress", action="store_true")
    rel.set_defaults(func=cmd_analyze_reliance)


def cmd_analyze_reliance(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .analysis.reliance import RelianceSettings, points_of, reliance_curve
    from .generate import GenerationSettings, generate_records
    from .loading import resolve_precision
    from .runs import load_for_generation, load_run_base, weights_by_step

    settings = RelianceSettings(**{f.name: getattr(args, f.name) for f in fields(RelianceSettings)
                                   if getattr(args, f.name, None) is not None})
    points = points_of(weights_by_step(args.run))
    precision = resolve_precision(settings.dtype, allowed=("auto", "bf16", "fp32"))
    log = lambda msg: print(f"cings analyze reliance: {msg}", file=sys.stderr)  # noqa: E731
    log(f"{len(points)} points (base + {len(points) - 1} saved); precision {precision.describe()}")
    generation = GenerationSettings(docs=settings.docs, ndocs=settings.ndocs, prompt="prefill",
                                    max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)

    def predict(point, records, path):
        import gc
        from pathlib import Path

        if point.weights is None:
            model, tok, options, spec = load_run_base(args.run, dtype=precision.dtype)
        else:
            lora = (Path(point.weights) / "adapter_config.json").is_file()
            model, tok, options, spec = load_for_generation(None if lora else point.weights, dtype=precision.dtype,
                                                            adapter=point.weights if lora else None)
        point_settings = replace(generation, model=spec, adapter=point.weights,
                                 extra={"step": point.step, "dtype": str(precision.dtype).removeprefix("torch.")})
        try:
            return generate_records(records, model, tok, options, point_settings, path, resume=path.is_file(),
                                    progress=not args.no_progress)
        finally:
            del model  # one point's model at a time
            gc.collect()

    result = reliance_curve(points, args.input, args.output, settings, predict, run=args.run,
                            overwrite=args.overwrite, log=log)
    log(f"wrote {args.output}/reliance.json and reliance.png ({len(result['rows'])} points)")
    return 0


# ---------------------------------------------------------------- routing between two models

def _add_router_arguments(parser: argparse.ArgumentParser, *, flag: str) -> None:
    """The rule and the two models of a routed run (``cings route``; ``eval-suite --router``)."""
    from .route import RULES

    group = parser.add_argument_group("routing between a context-trained and a context-free model")
    group.add_argument(flag, dest="rule", choices=RULES, default="has-docs" if flag == "--rule" else None,
                       help="has-docs: records shown documents go to the ctx model, the rest closed-book to noctx;"
                            " score: ctx only when the best passage score is at least --score-threshold; confidence:"
                            " both answer, the higher mean token log-probability wins"
                            + (" (default: has-docs)" if flag == "--rule" else " (instead of --model/--adapter)"))
    group.add_argument("--score-threshold", "--score_threshold", type=float, metavar="T",
                       help="--rule score: a record goes to ctx when its best passage score is at least T")
    for side, what in (("ctx", "trained with documents"), ("noctx", "trained without documents")):
        group.add_argument(f"--{side}-model", f"--{side}_model", dest=f"{side}_model",
                           help=f"the model {what}: folder, hub id, .gguf or 'smollm2'; omit with --{side}-adapter"
                                " of a cings run")
        group.add_argument(f"--{side}-adapter", f"--{side}_adapter", dest=f"{side}_adapter",
                           help="its LoRA adapter folder (a cings run: base model and settings read from it)")


def _check_router_models(args: argparse.Namespace) -> None:
    for side in ("ctx", "noctx"):
        model, adapter = getattr(args, f"{side}_model"), getattr(args, f"{side}_adapter")
        if model is None and adapter is None:
            raise ValueError(f"give --{side}-model, or --{side}-adapter with a cings run folder")
        _check_local(f"--{side}-model", model)
        _check_local(f"--{side}-adapter", adapter, must_exist=True)


def _suite_router(args: argparse.Namespace) -> dict:
    """run_suite's routing arguments: none without --router; with it, the rule and both models."""
    from .route import RouteRule

    sides = [f"--{s.replace('_', '-')}" for s in ("ctx_model", "ctx_adapter", "noctx_model", "noctx_adapter",
                                                 "score_threshold") if getattr(args, s) is not None]
    if args.rule is None:
        if sides:
            raise ValueError(f"{', '.join(sides)}: give --router too (or --model/--adapter alone)")
        return {}
    if args.model or args.adapter or args.gguf_file:
        raise ValueError("--router answers with --ctx-model/--ctx-adapter and --noctx-model/--noctx-adapter;"
                         " give those instead of --model/--adapter")
    rule = RouteRule(args.rule, args.score_threshold)
    _check_router_models(args)
    return {"router": rule, "ctx": (args.ctx_model, args.ctx_adapter), "noctx": (args.noctx_model, args.noctx_adapter)}


def _add_route_commands(sub) -> None:
    from .config import add_dataclass_arguments
    from .generate import DECODINGS, GenerationSettings
    from .prompts import DOCS, LAYOUTS

    route = sub.add_parser("route", help="answer each record with a context-trained or a context-free model, by a rule",
                           description="Route records between two models (CINGS v2): by default a record shown"
                                       " documents goes to the ctx model with them, one without (empty 'contexts')"
                                       " to the noctx model closed-book. The output is `cings generate`'s, plus"
                                       " routed_to (ctx or noctx) and route_evidence per row. The generation"
                                       " flags are the ctx model's; noctx answers closed-book, greedily.")
    route.add_argument("--input", required=True, help="grounded records")
    route.add_argument("--output", required=True,
                       help="predictions, JSON Lines; an existing file needs --resume or --overwrite")
    _add_router_arguments(route, flag="--rule")
    add_dataclass_arguments(route, GenerationSettings, only=_GENERATE_FLAGS,
                            custom={"docs": {"choices": DOCS}, "prompt": {"choices": LAYOUTS}, "ndocs": {"metavar": "K"},
                                    "decoding": {"choices": DECODINGS}, "cad_alpha": {"metavar": "A"},
                                    "cad_backoff": {"metavar": "TAU"}})
    route.add_argument("--limit", type=int, help="only the first N records")
    route.add_argument("--resume", action="store_true",
                       help="go on with a stopped run or add the missing ids; refused when the rows there were made"
                            " with another rule, threshold, model or setting (batch size may differ)")
    route.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    route.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="fp32",
                       help="weights' precision; auto = bf16 on a GPU or CPU with fast bf16 (AVX-512 BF16, AMX), else fp32")
    route.add_argument("--no-merge", action="store_true", help="keep LoRA adapters apart from the weights")
    route.add_argument("--no-progress", action="store_true")
    route.set_defaults(func=cmd_route)

    drop = sub.add_parser("drop-contexts", help="empty 'contexts' in a share of records (test sets for routing)",
                          description="Keep the documents of a --context-fraction share of the records that have"
                                      " any and empty the rest, chosen by --seed and each id (not file order).")
    drop.add_argument("--input", required=True, help="grounded records")
    drop.add_argument("--output", required=True)
    drop.add_argument("--context-fraction", "--context_fraction", type=float, required=True, metavar="F",
                      help="the share of records with documents that keep them (0 to 1)")
    drop.add_argument("--seed", type=int, default=0)
    drop.set_defaults(func=cmd_drop_contexts)


def cmd_route(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .generate import GenerationSettings
    from .loading import resolve_precision
    from .records import read_records
    from .route import RouteRule, load_endpoints, route_records

    # Settings and paths first: a bad value is refused before a model is loaded.
    rule = RouteRule(args.rule, args.score_threshold)
    settings = GenerationSettings(**{k: getattr(args, k) for k in _GENERATE_FLAGS if getattr(args, k) is not None})
    _check_router_models(args)
    if not Path(args.input).is_file():
        raise ValueError(f"--input {args.input}: no such file")
    precision = resolve_precision(args.dtype, allowed=("auto", "bf16", "fp32"))
    log = lambda msg: print(f"cings route: {msg}", file=sys.stderr)  # noqa: E731
    log(f"precision {precision.describe()}")
    if precision.warning:
        log(f"warning: {precision.warning}")
    ctx, noctx = load_endpoints(args.ctx_model, args.ctx_adapter, args.noctx_model, args.noctx_adapter,
                                dtype=precision.dtype, merge=not args.no_merge)
    report = route_records(read_records(args.input), ctx, noctx, settings, args.output, rule=rule,
                           resume=args.resume, overwrite=args.overwrite, limit=args.limit, progress=not args.no_progress)
    dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items()) or "none"
    both = f" (both answered {report['answered_by_both']})" if rule.name == "confidence" else ""
    log(f"{rule.name}: {report['routed']['ctx']} routed to ctx ({report['ctx']}), {report['routed']['noctx']} to"
        f" noctx ({report['noctx']}){both}; dropped {dropped}; {report['already_done']} already written;"
        f" {report['seconds']}s; wrote {args.output}")
    return 0


def cmd_drop_contexts(args: argparse.Namespace) -> int:
    from .records import write_records
    from .splits import drop_contexts
    from .summary import describe

    records = _read_all(args.input)
    out, report = drop_contexts(records, args.context_fraction, seed=args.seed)
    write_records(out, args.output)
    summary = {"command": "drop-contexts", "input": args.input, "records_in": len(records), "records_out": len(out),
               "dropped": {}, **report, "shape": describe(out),
               "extra": {"kept their documents": f"{report['kept']} of {report['with_contexts_in']}",
                         "documents emptied": report["emptied"], "had none already": report["already_without"]}}
    return _finish_data(summary, args.output)


# ---------------------------------------------------------------- retrieval

def _add_retrieval_commands(sub) -> None:
    from .config import add_dataclass_arguments
    from .retrieval.index import DTYPES, FAISS_KINDS, RETRIEVERS, IndexOptions

    idx = sub.add_parser("index", help="a passage corpus -> a dense (FAISS), BM25 or hybrid index folder; resumable",
                         description="Index passages for cings retrieve. Dense embeddings are written in shards: run the"
                                     " same command again after a kill and only the unfinished shards are embedded.")
    idx.add_argument("--corpus", required=True, metavar="PASSAGES",
                     help="passages: JSON Lines {id, title, text} (FlashRAG's {id, contents} too) or DPR's"
                          " psgs_w100.tsv; .gz/.bz2/.xz allowed")
    idx.add_argument("--output", required=True, metavar="DIR", help="the index folder")
    add_dataclass_arguments(idx.add_argument_group("index settings"), IndexOptions,
                            custom={"retriever": {"choices": RETRIEVERS}, "faiss": {"choices": FAISS_KINDS},
                                    "dtype": {"choices": DTYPES}, "encoder": {"metavar": "PATH"}})
    idx.add_argument("--overwrite", action="store_true",
                     help="replace an index of another corpus in DIR (only the index's own files are removed)")
    idx.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    idx.set_defaults(func=cmd_index)

    ret = sub.add_parser("retrieve", help="records -> the same records with their top-k passages from an index",
                         description="Replace each record's contexts by the index's top K passages for its instruction"
                                     " (with score, corpus id and, where the record names its gold passage, gold);"
                                     " prints recall@k, MRR and answer-in-passage and writes them to OUT.summary.json.")
    ret.add_argument("--index", required=True, metavar="DIR", help="a folder written by cings index")
    ret.add_argument("--input", required=True, metavar="RECORDS.jsonl", help="grounded records; the instruction is the query")
    ret.add_argument("--k", type=int, default=5, metavar="K", help="passages per record, best first (default: 5)")
    ret.add_argument("--output", required=True, metavar="OUT.jsonl", help="the records with their retrieved contexts")
    ret.add_argument("--encoder", metavar="PATH",
                     help="query encoder (default: the one that built the index; any other is refused)")
    ret.add_argument("--retriever", choices=RETRIEVERS,
                     help="default: the index's own; a hybrid index can also be searched as dense or bm25 alone")
    ret.add_argument("--batch-size", "--batch_size", type=int, default=64, help="queries per batch (default: 64)")
    ret.add_argument("--device", default="auto", help="query encoder device: auto, cpu or cuda (default: auto)")
    ret.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (0: none)")
    ret.add_argument("--seed", type=int, default=0)
    ret.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ret.set_defaults(func=cmd_retrieve)


def cmd_index(args: argparse.Namespace) -> int:
    from .retrieval.index import IndexOptions, build_index

    options = IndexOptions(**{f.name: getattr(args, f.name) for f in fields(IndexOptions)
                              if getattr(args, f.name, None) is not None})
    manifest = build_index(args.corpus, args.output, options, overwrite=args.overwrite, progress=not args.no_progress)
    if "shard" in manifest:  # one process's share of the embeddings: no index yet
        done = manifest["embeddings"]
        print(f"cings index: shard {manifest['shard']} of {args.output}: {done['embedded_now']} passages embedded now"
              f" ({done['resumed_shards']} of its shards were already); when every shard is done, run the same command"
              " without --shard to build the index", file=sys.stderr)
        return 0
    parts = [f"{manifest['passages']} passages", manifest["retriever"]]
    if "dense" in manifest:
        dense = manifest["dense"]
        rate = dense["embeddings"]["passages_per_s"]
        parts.append(f"{dense['encoder']['name']}, {dense['faiss']['type']}"
                     + (f" ({rate} passages/s embedded)" if rate else " (every shard already embedded)"))
        recall = dense["faiss"].get("recall")
        if recall:
            key = next(k for k in recall if k.startswith("recall_vs_exact@"))
            parts.append(f"{key} {recall[key]}")
    print(f"cings index: wrote {args.output}: {'; '.join(parts)}; {manifest['seconds']}s", file=sys.stderr)
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from .retrieval.metrics import retrieval_table_markdown
    from .retrieval.retrieve import retrieve_file
    from .summary import write_summary

    summary = retrieve_file(args.index, args.input, args.output, args.k, encoder=args.encoder,
                            retriever=args.retriever, batch_size=args.batch_size, device=args.device,
                            progress=not args.no_progress, bootstrap=args.bootstrap, seed=args.seed)
    if summary["metrics"]:
        print("| metric | value |\n|---|---:|\n" + retrieval_table_markdown(summary["metrics"]))
    path = write_summary(summary, args.output)
    fewer = summary["records_with_fewer_than_k"]
    print(f"cings retrieve: {summary['records']} records, top {args.k} by {summary['retriever']} search"
          + (f" ({fewer} with fewer: fewer than {args.k} passages share a word with them)" if fewer else "")
          + (f"; segments dropped from {summary['segments_dropped']}" if summary["segments_dropped"] else "")
          + f"; {summary['queries_per_s']} queries/s; wrote {args.output} (summary: {path})", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .chat_frame import TemplateError
    from .config import ConfigError
    from .demo import DemoError
    from .loading import LoadError
    from .records import RecordError

    try:
        return args.func(args)
    # EOFError and zlib.error: a truncated or corrupt .gz read outside cings' own reader (datasets, yaml).
    except (RecordError, TemplateError, LoadError, ConfigError, DemoError, ValueError, OSError, EOFError,
            zlib.error) as err:
        print(f"cings {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
