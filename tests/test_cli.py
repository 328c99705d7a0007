"""The command line, as users type it: `cings tokenize` / `cings preview`, and their errors."""

import json
import subprocess
import sys

import pytest

from cings.cli import main

from .conftest import EXAMPLES, ROOT, TOKENIZERS

GOOD = {"id": "q1", "instruction": "Who won?", "contexts": [{"title": "SB", "text": "Denver won."}], "response": "Denver"}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from .conftest import build_tiny_bpe

    path = tmp_path_factory.mktemp("tok")
    build_tiny_bpe().save_pretrained(path)
    return str(path)


def write(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def run_main(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tokenize_writes_ids_and_labels(tmp_path, tok_dir, capsys):
    src = write(tmp_path, [GOOD, dict(GOOD, id="q2", response="The Denver Broncos")])
    out = tmp_path / "out.jsonl"
    code, _, err = run_main(capsys, "tokenize", "--input", str(src), "--tokenizer", tok_dir, "--mode", "context",
                            "--output", str(out), "--max-length", "512", "--no-progress")
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2"]
    assert all(len(r["input_ids"]) == len(r["labels"]) and -100 in r["labels"] for r in rows)
    assert "examples in 2, out 2; dropped 0" in err and "trained" in err
    manifest = json.loads((tmp_path / "out.stats.json").read_text())
    assert manifest["options"]["max_length"] == 512 and manifest["stats"]["examples_out"] == 2


def test_tokenize_to_a_dataset_folder(tmp_path, tok_dir, capsys):
    src = write(tmp_path, [GOOD])
    code, _, _ = run_main(capsys, "tokenize", "--input", str(src), "--tokenizer", tok_dir, "--mode", "no_mask",
                          "--output", str(tmp_path / "ds"), "--no-progress")
    import datasets

    assert code == 0 and datasets.load_from_disk(str(tmp_path / "ds")).column_names == ["id", "input_ids", "labels", "chars"]


@pytest.mark.parametrize("rows, expected", [
    ([GOOD, '{"id": "q2", "instruction": "x", '], ":2: not valid JSON"),
    ([{k: v for k, v in GOOD.items() if k != "instruction"}], ":1: field 'instruction' is missing"),
    ([dict(GOOD, contexts=[{"text": "a"}, {"text": "b"}, {"text": 3}])], ":1: field 'contexts[2].text' must be a string"),
    ([GOOD, dict(GOOD, id="q2", response="")], ":2: field 'response' must not be empty"),
    ([GOOD, dict(GOOD, id="q2", contexts=[])], ":2: field 'contexts' is empty, but mode 'context'"),
])
def test_bad_input_exits_non_zero_naming_file_line_and_field(tmp_path, tok_dir, capsys, rows, expected):
    src = write(tmp_path, rows)
    for command in (["tokenize", "--output", str(tmp_path / "o.jsonl")], ["preview"]):
        code, _, err = run_main(capsys, *command, "--input", str(src), "--tokenizer", tok_dir, "--mode", "context")
        assert code != 0
        assert f"{src}{expected}" in err


def test_unknown_mode_is_a_usage_error(tmp_path, tok_dir, capsys):
    src = write(tmp_path, [GOOD])
    with pytest.raises(SystemExit) as info:
        main(["tokenize", "--input", str(src), "--tokenizer", tok_dir, "--mode", "contxt", "--output", "o.jsonl"])
    assert info.value.code == 2
    assert "unknown mode 'contxt'" in capsys.readouterr().err


def test_authors_flag_names_and_strict_booleans(tmp_path, tok_dir, capsys):
    src = write(tmp_path, [GOOD])
    code, out, _ = run_main(capsys, "preview", "--input", str(src), "--tokenizer", tok_dir,
                            "--loss_mask_context", "context_with_sp", "--train-markers", "false", "--plain")
    assert code == 0 and "mode context" in out and "[[ Denver<|im_end|>]]" in out
    code, out, _ = run_main(capsys, "preview", "--input", str(src), "--tokenizer", tok_dir, "--train-markers", "--plain")
    assert "[[ ## Answer Denver<|im_end|>]]" in out
    with pytest.raises(SystemExit):
        main(["preview", "--input", str(src), "--tokenizer", tok_dir, "--train-markers", "maybe"])


def test_missing_tokenizer_is_a_clear_error(tmp_path, capsys):
    src = write(tmp_path, [GOOD])
    code, _, err = run_main(capsys, "preview", "--input", str(src), "--tokenizer", str(tmp_path / "nope"))
    assert code == 1 and "not a tokenizer folder" in err


def test_python_dash_m_and_the_console_script(tmp_path, tok_dir):
    src = write(tmp_path, [GOOD])
    for command in ([sys.executable, "-m", "cings"], [str(ROOT / ".venv" / "bin" / "cings")]):
        if not (command[0] == sys.executable or (ROOT / ".venv" / "bin" / "cings").exists()):
            continue
        done = subprocess.run(command + ["preview", "--input", str(src), "--tokenizer", tok_dir, "--plain"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "[[ Denver<|im_end|>]]" in done.stdout


def test_preview_of_a_llama31_record_on_bundled_squad(capsys):
    if not (TOKENIZERS / "llama3_1" / "tokenizer.json").is_file():
        pytest.skip("the shared Llama-3.1 tokenizer is absent")
    code, out, _ = run_main(capsys, "preview", "--input", str(EXAMPLES / "squad_dev_sample.jsonl"),
                            "--tokenizer", str(TOKENIZERS / "llama3_1"), "--mode", "context", "-n", "1", "--plain")
    assert code == 0
    assert "## Answer[[ Denver Broncos<|eot_id|>]]" in out
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n## Context Super Bowl 50 Super Bowl 50 was" in out
