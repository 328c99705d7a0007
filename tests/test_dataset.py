import gzip
import json
import re

import pytest

from cings.dataset import render_manifest, tokenize_records, write_tokenized
from cings.records import Context, Record
from cings.render import Renderer, RenderOptions


def records():
    ok = Record(id="ok", instruction="Who won?", contexts=(Context(text="Denver won the game."),), response="Denver")
    cut = Record(id="cut", instruction="Who won?", contexts=(Context(text="word " * 200),), response="Denver")
    huge = Record(id="huge", instruction="Who won?", contexts=(Context(text="x"),), response="word " * 200)
    return [ok, cut, huge]


def test_every_example_is_counted_kept_cut_or_dropped_by_reason(tiny_bpe):
    renderer = Renderer(tiny_bpe, RenderOptions(mode="context", max_length=120, system_prompt=None))
    dataset, stats = tokenize_records(records(), renderer, progress=False)
    assert stats.examples_in == 3 and stats.examples_out == 2
    assert stats.dropped == {"too_long": 1} and stats.truncated == 1
    assert dataset["id"] == ["ok", "cut"]
    assert stats.tokens == sum(len(x) for x in dataset["input_ids"])
    assert stats.trained_tokens == sum(sum(label != -100 for label in x) for x in dataset["labels"])
    assert all(len(x) <= 120 for x in dataset["input_ids"])
    for ids, labels in zip(dataset["input_ids"], dataset["labels"]):
        assert len(ids) == len(labels) and any(label != -100 for label in labels)


def test_parallel_map_gives_the_same_rows(tiny_bpe):
    renderer = Renderer(tiny_bpe, RenderOptions(mode="no_mask", max_length=120, system_prompt=None))
    many = [Record(id=str(i), instruction=f"Question {i}?", contexts=(Context(text=f"Passage {i}."),), response=f"Answer {i}")
            for i in range(40)]
    one, s1 = tokenize_records(many, renderer, progress=False, batch_size=7)
    two, s2 = tokenize_records(many, renderer, progress=False, batch_size=7, num_proc=2)
    assert one["input_ids"] == two["input_ids"] and one["labels"] == two["labels"] and s1 == s2


def test_jsonl_and_dataset_folder_outputs(tmp_path, tiny_bpe):
    renderer = Renderer(tiny_bpe, RenderOptions(mode="context", max_length=120, system_prompt=None))
    dataset, stats = tokenize_records(records(), renderer, progress=False)
    manifest = render_manifest(renderer, "tiny", "in.jsonl", stats)
    path = write_tokenized(dataset, tmp_path / "out.jsonl", manifest)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["id", "input_ids", "labels"]] * 2
    assert json.loads(path.read_text())["stats"]["dropped"] == {"too_long": 1}
    import datasets

    write_tokenized(dataset, tmp_path / "ds", manifest)
    loaded = datasets.load_from_disk(str(tmp_path / "ds"))
    assert loaded["input_ids"] == dataset["input_ids"]
    assert json.loads((tmp_path / "ds" / "cings_stats.json").read_text())["options"]["mode"] == "context"


GOOD = {"instruction": "Who won?", "contexts": [{"title": "SB", "text": "Denver won the game. " * 20}], "response": "Denver"}


def faulty_inputs(tmp_path):
    """A .jsonl.gz cut short and a plain file with a 0xff byte on line 2, each with the message expected."""
    lines = [json.dumps({"id": f"q{i}", **GOOD}) for i in range(300)]
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(whole[:-40])  # the end-of-stream marker and the last rows are gone
    raw = [line.encode() for line in lines[:3]]
    raw[1] = raw[1].replace(b"Denver won", b"Denver \xff won", 1)
    binary = tmp_path / "bytes.jsonl"
    binary.write_bytes(b"\n".join(raw) + b"\n")
    return [(truncated, rf"{re.escape(str(truncated))}:\d+: the \.gz stream ends early: the file is truncated"),
            (binary, rf"{re.escape(str(binary))}:2: not UTF-8 text \(byte 0xff at byte \d+ of the line\)")]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from .conftest import build_tiny_bpe

    path = tmp_path_factory.mktemp("tok")
    build_tiny_bpe().save_pretrained(path)
    return str(path)


def test_cli_tokenize_of_a_truncated_gz_or_a_bad_byte_names_file_and_line(tmp_path, tok_dir, capsys):
    from cings.cli import main

    for path, expected in faulty_inputs(tmp_path):
        out = tmp_path / f"{path.name}.tok.jsonl"
        code = main(["tokenize", "--input", str(path), "--tokenizer", tok_dir, "--output", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code != 0 and "Traceback" not in err
        assert re.search(rf"^cings tokenize: error: {expected}", err, re.M), err
        assert not out.exists()  # nothing half-written from the rows read before the fault


# ---------------------------------------------------------------- bounding long passages before tokenizing

_PIECES = ["the", "quick", "brown", "fox", "Paris", "1999", "3.14", "北京", "naïve", "—", "-----", "====", "  ", "\n",
           "\n\n", "\t", "Context2:", "## Answer", "<|im_end|>", "<|eot_id|>", "</s>", "[INST]", "don't", "x" * 40,
           "🙂", ",", ".", "!!", "$", "-" * 120, " " * 50, "a" * 300, "\u00a0"]


def _text(rng, n):
    out, total = [], 0
    while total < n:
        piece = rng.choice(_PIECES) + rng.choice(["", " ", " "])
        out.append(piece)
        total += len(piece)
    return "".join(out).strip() or "x"


def _long_record(rng, i, max_length):
    from cings.dataset import CHARS_PER_TOKEN
    from cings.records import Segment

    bound = max_length * CHARS_PER_TOKEN
    contexts = []
    for _ in range(rng.randint(1, 4)):
        size = rng.choice([rng.randint(5, 200), rng.randint(bound // 2, bound * 3)])
        # Some passages are one repeated character: runs that tokenize into few, long tokens.
        body = _text(rng, size) if rng.random() < 0.85 else rng.choice(["z", "-", "é"]) * size
        title = rng.choice(["", "T", "A title", _text(rng, bound + 10) if rng.random() < 0.1 else "Short"])
        contexts.append(Context(title=title, text=body))
    contexts = tuple(contexts)
    response, segments = rng.choice(["Denver", "the answer is 42", _text(rng, 30)]), None
    if len(contexts) > 1 and rng.random() < 0.25:
        k = rng.randint(1, len(contexts) - 1)
        segments = (Segment(contexts=contexts[:k], response="part one"), Segment(contexts=contexts[k:], response="part two"))
        response = "part one part two"
    return Record(id=str(i), instruction=rng.choice(["Who won?", _text(rng, 60)]), contexts=contexts,
                  response=response, segments=segments)


@pytest.mark.parametrize("name", ["llama3", "qwen3", "llama2", "smollm2"])
def test_bounded_passages_give_the_same_ids_and_labels_as_whole_ones(name, request):
    import random

    from cings.dataset import bound_contexts
    from cings.render import Dropped

    tokenizer = request.getfixturevalue(name)
    rng = random.Random(f"bound-{name}")
    cut = 0
    for i in range(150):
        options = RenderOptions(mode=rng.choice(["context", "input_context", "no_mask"]),
                                max_length=rng.choice([32, 64, 100, 200]), numbering=rng.choice(["auto", "always", "never"]),
                                system_prompt=rng.choice([None, "Be brief."]))
        renderer = Renderer(tokenizer, options)
        record = _long_record(rng, i, options.max_length)
        bounded = bound_contexts(record, renderer)
        if bounded == record:
            continue
        cut += 1
        whole, short = renderer.render(record), renderer.render(bounded)
        if isinstance(whole, Dropped):
            assert isinstance(short, Dropped) and short.reason == whole.reason, (i, options)
            continue
        assert (short.input_ids, short.labels, short.text) == (whole.input_ids, whole.labels, whole.text), (i, options)
        assert sum(len(c.text) for c in bounded.contexts) < sum(len(c.text) + len(c.title) for c in record.contexts)
    assert cut >= 75  # most cases really were cut


def test_tokenize_keeps_the_whole_record_length_for_batch_order(tiny_bpe):
    from cings.dataset import CHARS_PER_TOKEN, record_chars

    renderer = Renderer(tiny_bpe, RenderOptions(mode="context", max_length=64, system_prompt=None))
    long = Record(id="long", instruction="Who won?", response="Denver",
                  contexts=(Context(title="SB", text="Denver won the game. " * 64 * CHARS_PER_TOKEN),))
    dataset, stats = tokenize_records([long], renderer, progress=False)
    whole = renderer.render(long)
    assert dataset["input_ids"] == [whole.input_ids] and dataset["labels"] == [whole.labels]
    assert dataset["chars"] == [record_chars(long)] and stats.truncated == 1


_PEAK_SCRIPT = """
import json, resource, sys, time
from cings.dataset import tokenize_file
from cings.loading import load_tokenizer
from cings.render import Renderer, RenderOptions

renderer = Renderer(load_tokenizer(sys.argv[2]), RenderOptions(mode="context", max_length=512))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
dataset, stats = tokenize_file(sys.argv[1], renderer, progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "tokens": len(dataset["input_ids"][0]),
                  "growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def test_a_50_mb_passage_tokenizes_in_bounded_memory_and_time(tmp_path, smollm2):
    import os
    import subprocess
    import sys

    block = " ".join(f"word{i % 997} the {i} fox, and" for i in range(40_000))
    text = (block + " ") * (50_000_000 // (len(block) + 1) + 1)
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"id": "big", "instruction": "Who won?", "response": "Denver",
                                "contexts": [{"title": "T", "text": text[:50_000_000]}]}) + "\n", encoding="utf-8")
    del block, text
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path), "smollm2"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tokens"] == 512
    # Unbounded, this record took 7 GB and minutes: tokenizing 50 MB of text before cutting it to 512 tokens.
    assert result["growth_kib"] < 1024 * 1024, result
    assert result["seconds"] < 30, result
