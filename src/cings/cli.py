"""The ``cings`` command. Thin: each command parses flags and calls one module."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import MISSING, fields
from typing import Any, Sequence

from .render import MODE_ALIASES, Mode, RenderOptions, parse_mode

__all__ = ["main", "build_parser", "strict_bool"]

# Flag spellings of the authors' reference code, so users can keep the commands they know.
_FLAG_ALIASES = {"mode": ["--loss-mask-context", "--loss_mask_context"]}


def strict_bool(value: str) -> bool:
    """Parse true/false strictly: the reference CLI read 'false' as a truthy string."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _mode_arg(value: str) -> Mode:
    try:
        return parse_mode(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _json_object(value: str) -> dict:
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"enable_thinking\": false}'")
    return obj


def add_render_options(parser: argparse.ArgumentParser) -> None:
    """One flag per RenderOptions field (dashes and underscores both work); help comes from the field."""
    group = parser.add_argument_group("rendering")
    for f in fields(RenderOptions):
        names = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            names.append(f"--{f.name}")
        names += _FLAG_ALIASES.get(f.name, [])
        default = f.default if f.default is not MISSING else None
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help", ""), "default": None}
        if f.name == "mode":
            kwargs.update(type=_mode_arg, metavar="MODE",
                          help=f"{kwargs['help']}: {', '.join(m.value for m in Mode)} (aliases: {', '.join(sorted(MODE_ALIASES))})")
        elif isinstance(default, bool):
            kwargs.update(type=strict_bool, nargs="?", const=True, metavar="BOOL")
        elif isinstance(default, int):
            kwargs.update(type=int, metavar="N")
        elif f.name == "template_kwargs":
            kwargs.update(type=_json_object, metavar="JSON")
        elif f.name == "numbering":
            kwargs.update(choices=["auto", "always", "never"])
        kwargs["help"] += f" (default: {default!r})" if f.name != "mode" else " (default: context)"
        group.add_argument(*names, **kwargs)


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
    return parser


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
    from .preview import preview
    from .records import read_records

    renderer = _renderer(args)
    shown = preview(read_records(args.input), renderer, n=args.n, plain=args.plain)
    return 0 if shown else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .chat_frame import TemplateError
    from .loading import TokenizerNotFound
    from .records import RecordError

    try:
        return args.func(args)
    except (RecordError, TemplateError, TokenizerNotFound, ValueError, FileNotFoundError) as err:
        print(f"cings {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
