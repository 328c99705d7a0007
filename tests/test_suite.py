"""`cings eval-suite`: the packaged default reads the repository's examples/, paths resolve against the
suite file, bad suites are refused before a model loads, and a tiny model runs one end to end."""

import json
from pathlib import Path

import pytest

from cings import suite as suite_mod
from cings.cli import main
from cings.records import Context, Record, write_records
from cings.suite import DEFAULT_SUITE, load_suite, spread_sample

from .conftest import ROOT, build_tiny_bpe


def test_the_default_suite_ships_in_the_package_and_reads_examples(tmp_path, monkeypatch):
    tomllib = pytest.importorskip("tomllib")

    assert DEFAULT_SUITE.is_relative_to(Path(suite_mod.__file__).parent)
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cings"]
    assert any(DEFAULT_SUITE.match(g) for g in globs)  # installed with the package
    monkeypatch.chdir(tmp_path)  # not the checkout: the package finds its own examples/
    suite = load_suite(None)
    assert [e.name for e in suite.entries] == ["squad-gold", "nq-gold", "hotpotqa-gold+distractors", "nq-closed-book"]
    assert all(e.data.is_file() and e.data.is_relative_to(ROOT / "examples") for e in suite.entries)
    # configs/eval/default.yaml, which users know, is the same suite.
    copy = load_suite(ROOT / "configs" / "eval" / "default.yaml")
    assert [(e.name, e.data.resolve(), e.format, e.settings) for e in copy.entries] == \
        [(e.name, e.data.resolve(), e.format, e.settings) for e in suite.entries]


def test_without_examples_the_default_suite_asks_for_one(monkeypatch):
    monkeypatch.setattr(suite_mod, "examples_dir", lambda: None)
    with pytest.raises(ValueError, match=r"examples/ folder, and there is none here.*pass --suite"):
        load_suite(None)


def test_relative_data_paths_resolve_against_the_suite_folder(tmp_path, monkeypatch):
    (tmp_path / "suites" / "data").mkdir(parents=True)
    write_records([Record(id="a", instruction="Q", response="A", contexts=(Context(text="A", gold=True),))],
                  tmp_path / "suites" / "data" / "r.jsonl")
    path = tmp_path / "suites" / "s.yaml"
    path.write_text("entries:\n  - {name: one, data: data/r.jsonl}\n")
    monkeypatch.chdir(tmp_path)  # the cwd holds no data/ folder
    assert load_suite(path).entries[0].data == tmp_path / "suites" / "data" / "r.jsonl"


@pytest.mark.parametrize("body, said", [
    ("entries:\n  - {name: x, data: nowhere.jsonl}\n", "entry 'x': no data file"),
    ("entries:\n  - {name: x, data: r.jsonl, ndocs: 0}\n", "entry 'x': ndocs must be a whole number of at least 1"),
    ("entries:\n  - {name: x, data: r.jsonl, docs: all}\n", "entry 'x': docs must be one of"),
    ("entries:\n  - {name: x, data: r.jsonl, format: sqaud}\n", "entry 'x': format 'sqaud' is not one of"),
    ("entries:\n  - {name: x, data: r.jsonl, doc: gold}\n", "entry 'x': unknown key(s) ['doc']"),
    ("entries:\n  - {name: x, data: r.jsonl}\n  - {name: x, data: r.jsonl}\n", "entry names repeat (x)"),
    ("limit: 0\nentries:\n  - {name: x, data: r.jsonl}\n", "'limit' must be a whole number"),
    ("entries: []\n", "a suite needs 'entries'"),
    ("entries:\n  - {name: x, data: r.jsonl, retrieve: {k: 3}}\n", "'retrieve' needs 'corpus'"),
    ("entries:\n  - {name: x, data: r.jsonl, retrieve: {corpus: nowhere.jsonl}}\n", "no corpus file"),
    ("entries:\n  - {name: x, data: r.jsonl, retrieve: {corpus: r.jsonl, retriever: sparse}}\n",
     "retrieve.retriever must be one of dense, bm25, hybrid"),
    ("entries:\n  - {name: x, data: r.jsonl, retrieve: {corpus: r.jsonl, top: 3}}\n", "unknown key(s) ['top'] in 'retrieve'"),
    ("entries:\n  - {name: x, data: r.jsonl, docs: gold, retrieve: {corpus: r.jsonl}}\n", "docs must be topk"),
    ("entries:\n  - {name: x, data: r.jsonl, ndocs: 3, retrieve: {corpus: r.jsonl, k: 2}}\n",
     "retrieve.k (2) must be at least ndocs (3)"),
    ("entries:\n  - {name: x, data: r.jsonl, retrieve: {index: no-index}}\n", "not a cings index"),
])
def test_a_bad_suite_is_refused_before_a_model_loads(tmp_path, capsys, body, said):
    write_records([Record(id="a", instruction="Q", response="A", contexts=())], tmp_path / "r.jsonl")
    (tmp_path / "s.yaml").write_text(body)
    assert main(["eval-suite", "--suite", str(tmp_path / "s.yaml"), "--model", "./no-model",
                 "--output-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "s.yaml" in err and said in err and "Traceback" not in err


def test_existing_predictions_need_resume_or_overwrite(tmp_path, capsys):
    write_records([Record(id="a", instruction="Q", response="A", contexts=())], tmp_path / "r.jsonl")
    (tmp_path / "s.yaml").write_text("entries:\n  - {name: x, data: r.jsonl}\n")
    (tmp_path / "out" / "x").mkdir(parents=True)
    (tmp_path / "out" / "x" / "predictions.jsonl").write_text('{"id": "a"}\n')
    assert main(["eval-suite", "--suite", str(tmp_path / "s.yaml"), "--model", "./no-model",
                 "--output-dir", str(tmp_path / "out")]) == 1
    assert "predictions of x exist; pass --resume" in capsys.readouterr().err
    assert (tmp_path / "out" / "x" / "predictions.jsonl").read_text() == '{"id": "a"}\n'


def test_spread_sample_is_seeded_and_keeps_file_order():
    picked = spread_sample(list(range(100)), 10, 3)
    assert picked == sorted(picked) and len(picked) == 10 and picked == spread_sample(list(range(100)), 10, 3)
    assert spread_sample([1, 2], 5, 0) == [1, 2] and spread_sample([1, 2], None, 0) == [1, 2]


def test_eval_suite_runs_every_entry_and_writes_report_and_chart(tmp_path, capsys):
    from cings.config import load_config
    from cings.train import train

    tok_dir = tmp_path / "tok"
    build_tiny_bpe().save_pretrained(tok_dir)
    records = [Record(id=f"r{i}", instruction=f"Question {i}?", response="Paris", answers=("Paris",),
                      contexts=(Context(text=f"Paris is it {i}.", gold=True), Context(text="Noise.", gold=False)))
               for i in range(6)]
    data = tmp_path / "records.jsonl"
    write_records(records, data)
    train(load_config(None, dict(model_config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2},
                                 tokenizer=str(tok_dir), data=str(data), output_dir=str(tmp_path / "run"), max_steps=1,
                                 global_batch_size=2, micro_batch_size=2, save_strategy="no", max_length=256)),
          progress=False)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""limit: 4
max_new_tokens: 3
entries:
  - {{name: gold, data: {data}, docs: gold, prompt: prefill}}
  - {{name: distract, data: {data}, docs: gold+distractors, ndocs: 2, prompt: input}}
  - {{name: closed, data: {data}, docs: none, prompt: raw}}
""")
    assert main(["eval-suite", "--suite", str(suite), "--model", str(tmp_path / "run"),
                 "--output-dir", str(tmp_path / "eval")]) == 0
    for name in ("gold", "distract", "closed"):
        metrics = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert metrics["n"] == 4
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| gold" in report or "gold" in report.splitlines()[2]
    assert (tmp_path / "eval" / "report.png").stat().st_size > 1000
    # A rerun adds nothing with --resume; with --overwrite it writes every entry again.
    for flag in ("--resume", "--overwrite"):
        assert main(["eval-suite", "--suite", str(suite), "--model", str(tmp_path / "run"),
                     "--output-dir", str(tmp_path / "eval"), flag]) == 0
        rows = (tmp_path / "eval" / "gold" / "predictions.jsonl").read_text().splitlines()
        assert len(rows) == 4 and json.loads(rows[0])["settings"]["dataset"] == "gold"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_loads_and_opens_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# cings eval-suite --suite configs/eval/" + path.name), first
    if "shared/data" in path.read_text() and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("the shared data folder is not beside the checkout")
    assert all(e.data.is_file() for e in load_suite(path).entries)


def test_entries_that_retrieve_index_the_corpus_once_and_keep_it(tmp_path, capsys):
    from .test_generate import tiny_generation_model

    model, tok = tiny_generation_model()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    facts = {"Paris": "Paris is the capital of France.", "Rome": "Rome is the capital of Italy.",
             "Oslo": "Oslo is the capital of Norway.", "Lima": "Lima is the capital of Peru."}
    corpus = tmp_path / "passages.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "title": city, "text": text}) + "\n"
                              for i, (city, text) in enumerate(facts.items())))
    countries = {"Paris": "France", "Rome": "Italy", "Oslo": "Norway", "Lima": "Peru"}
    write_records([Record(id=city, instruction=f"What is the capital of {country}?", response=city, answers=(city,),
                          contexts=(Context(text=facts[city], gold=True),)) for city, country in countries.items()],
                  tmp_path / "q.jsonl")
    suite = tmp_path / "suite.yaml"
    suite.write_text("max_new_tokens: 2\nentries:\n"
                     "  - {name: top1, data: q.jsonl, retrieve: {corpus: passages.jsonl, retriever: bm25, k: 3}}\n"
                     "  - {name: top2, data: q.jsonl, ndocs: 2, retrieve: {corpus: passages.jsonl, retriever: bm25}}\n")
    args = ["eval-suite", "--suite", str(suite), "--model", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out")]
    assert main(args) == 0
    indexes = list((tmp_path / "out" / "indexes").iterdir())
    assert len(indexes) == 1 and "index" in capsys.readouterr().err  # one index for the two entries
    retrieved = [json.loads(line) for line in (tmp_path / "out" / "top1" / "retrieved.jsonl").read_text().splitlines()]
    # Each question shares its country's name with one passage only: BM25 ranks the gold passage first.
    assert [[c["id"] for c in r["contexts"]][0] for r in retrieved] == ["p0", "p1", "p2", "p3"]
    assert all(r["contexts"][0]["gold"] and not any(c["gold"] for c in r["contexts"][1:]) for r in retrieved)
    summary = json.loads((tmp_path / "out" / "top1" / "retrieval.json").read_text())
    assert summary["k"] == 3 and summary["metrics"]["recall@1"] == 100.0
    assert json.loads((tmp_path / "out" / "top2" / "retrieval.json").read_text())["k"] == 5  # default: max(5, ndocs)
    rows = [json.loads(line) for line in (tmp_path / "out" / "top2" / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["docs"]) == 2 and r["docs"][0]["gold"] and "id" in r["docs"][0] for r in rows)
    assert rows[0]["settings"]["docs"] == "topk" and rows[0]["settings"]["retrieve"]["retriever"] == "bm25"
    metrics = json.loads((tmp_path / "out" / "top2" / "metrics.json").read_text())
    assert metrics["retrieval"]["recall@1"] == 100.0  # scored again on the generation output
    # A second run keeps the index (its manifest records the same corpus and settings) and resumes the rest.
    stamp = (indexes[0] / "manifest.json").stat().st_mtime_ns
    assert main(args + ["--resume"]) == 0
    assert "kept" in capsys.readouterr().err and (indexes[0] / "manifest.json").stat().st_mtime_ns == stamp
    # A changed corpus is indexed again.
    corpus.write_text(corpus.read_text() + json.dumps({"id": "p9", "title": "Bern", "text": "Bern is in Switzerland."}) + "\n")
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((indexes[0] / "manifest.json").read_text())["passages"] == 5
