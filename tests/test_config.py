"""Flags generated from options dataclasses: one generator for the training recipe and the render options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from cings.config import add_dataclass_arguments


@dataclass
class Options:
    name: str = field(default="x", metadata={"help": "a name"})
    verbose: bool = field(default=False, metadata={"help": "say more"})
    steps: int = field(default=3, metadata={"help": "how many"})
    limit: int | None = field(default=None, metadata={"help": "at most"})
    rate: float = field(default=0.5, metadata={"help": "how fast"})
    extra: dict = field(default_factory=dict, metadata={"help": "anything"})


def parser_for(cls, **kw):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_dataclass_arguments(parser, cls, **kw)
    return parser


def test_one_flag_per_field_typed_from_the_annotation_help_from_the_field():
    parser = parser_for(Options, aliases={"steps": ["--n"]})
    given = parser.parse_args(["--name", "y", "--verbose", "--steps", "4", "--limit", "none", "--rate", "1e-3",
                               "--extra", '{"a": 1}'])
    assert vars(given) == {"name": "y", "verbose": True, "steps": 4, "limit": None, "rate": 0.001, "extra": {"a": 1}}
    assert vars(parser.parse_args(["--verbose", "false", "--n", "2"]))["verbose"] is False
    assert vars(parser.parse_args(["--n", "2"]))["steps"] == 2
    # nothing given: None, so the recipe or the dataclass default decides
    assert set(vars(parser.parse_args([])).values()) == {None}
    text = parser.format_help()
    assert "how many (default: 3)" in text and "--steps N" in text and "--limit N" in text
    for bad in (["--steps", "2.5"], ["--verbose", "maybe"], ["--extra", "[1]"]):
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(bad)


def test_train_and_render_flags_come_from_the_same_generator(capsys):
    from cings.cli import build_parser
    from cings.render import RenderOptions

    parser = build_parser()
    args = parser.parse_args(["train", "--model", "m", "--data", "d", "--save-total-limit", "none", "--lora", "false",
                              "--max_steps", "5", "--template-kwargs", '{"enable_thinking": true}'])
    assert (args.save_total_limit, args.lora, args.max_steps, args.template_kwargs) == (None, False, 5, {"enable_thinking": True})
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--max-steps", "many"])
    assert "--max-steps" in capsys.readouterr().err
    args = parser.parse_args(["tokenize", "--input", "i", "--tokenizer", "t", "--output", "o", "--max_length", "64",
                              "--train-markers", "--numbering", "never"])
    assert (args.max_length, args.train_markers, args.numbering) == (64, True, "never")
    help_text = " ".join(parser._subparsers._group_actions[0].choices["tokenize"].format_help().split())
    assert f"{RenderOptions.__dataclass_fields__['title_separator'].metadata['help']} (default: ' ')" in help_text
    assert "(default: {'enable_thinking': False})" in help_text
