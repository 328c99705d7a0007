"""Generation: batch size changes no output, a killed run resumes exactly, an adapter alone is enough."""

import json

import pytest
import torch

from cings.generate import GenerationSettings, generate_records, written_ids
from cings.records import Context, Record, RecordError, write_records
from cings.render import RenderOptions
from cings.runs import load_for_generation

from .conftest import build_tiny_bpe

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


def records(n=7):
    return [Record(id=f"r{i}", instruction="Who won the game? " * (1 + i % 3),
                   contexts=(Context(title="Game", text="The Denver Broncos won. " * (1 + i), gold=True),),
                   response="Denver", answers=("Denver",)) for i in range(n)]


def tiny_generation_model():
    """A seeded 2-layer Llama over the tiny BPE tokenizer (the decoding tests share it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_tiny_bpe()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY, "vocab_size": len(tok)}),
                                             attn_implementation="sdpa").eval()
    return model, tok


@pytest.fixture(scope="module")
def tiny():
    return tiny_generation_model()


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model saved as a model folder, for the command line."""
    model, tok = tiny
    folder = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def predictions(path):
    return {json.loads(line)["id"]: json.loads(line) for line in path.read_text().splitlines()}


def test_batched_generation_equals_batch_one(tmp_path, tiny):
    model, tok = tiny
    out = {}
    for batch in (1, 3, 7):
        settings = GenerationSettings(docs="gold", prompt="prefill", max_new_tokens=12, batch_size=batch)
        generate_records(records(), model, tok, RenderOptions(system_prompt=None), settings, tmp_path / f"b{batch}.jsonl",
                         progress=False)
        out[batch] = {k: v["prediction"] for k, v in predictions(tmp_path / f"b{batch}.jsonl").items()}
    assert out[1] == out[3] == out[7] and len(out[1]) == 7
    assert any(out[1].values())  # a random model still says something


def test_killed_run_resumes_writing_every_id_once(tmp_path, tiny):
    model, tok = tiny
    path = tmp_path / "p.jsonl"
    settings = GenerationSettings(max_new_tokens=4, batch_size=2)
    generate_records(records(), model, tok, RenderOptions(system_prompt=None), settings, path, limit=3, progress=False)
    # A kill mid-write leaves a cut line: it must be regenerated, not counted.
    with open(path, "a") as handle:
        handle.write('{"id": "r5", "predic')
    assert written_ids(path) == {"r0", "r1", "r2"}
    report = generate_records(records(), model, tok, RenderOptions(system_prompt=None), settings, path, resume=True,
                              progress=False)
    assert report["already_done"] == 3 and report["generated"] == 4
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]  # every line whole again
    assert sorted(ids) == [f"r{i}" for i in range(7)]


def test_prediction_rows_carry_answers_parametric_answers_and_settings(tmp_path, tiny):
    model, tok = tiny
    conflict = [Record(id="c", instruction="Q?", contexts=(Context(text="It was Blue.", gold=True),), response="Blue",
                       answers=("Blue",), parametric_answers=("Red",), meta={"source": "squad"})]
    generate_records(conflict, model, tok, RenderOptions(), GenerationSettings(max_new_tokens=2, docs="topk", ndocs=2),
                     tmp_path / "c.jsonl", progress=False)
    row = predictions(tmp_path / "c.jsonl")["c"]
    assert row["answers"] == ["Blue"] and row["parametric_answers"] == ["Red"] and row["meta"] == {"source": "squad"}
    assert row["settings"]["docs"] == "topk" and row["settings"]["decoding"] == "greedy"
    assert row["docs"] == [{"title": "", "gold": True}]


def test_rows_of_retrieved_passages_keep_them_so_evaluate_scores_the_retrieval(tmp_path, tiny):
    from cings.evaluate import evaluate_file

    model, tok = tiny

    def ctx(pid, score, gold, text):
        return Context(id=pid, score=score, gold=gold, text=text, title="T")
    # As cings retrieve writes them, but out of order: --docs topk shows the two best by score, best first.
    retrieved = [Record(id="1", instruction="Capital?", response="Paris", answers=("Paris",),
                        contexts=(ctx("a", 0.2, False, "Lyon is in France."), ctx("b", 0.9, True, "Paris is the capital."),
                                  ctx("c", 0.5, False, "Nice is by the sea."))),
                 Record(id="2", instruction="Where?", response="Madrid", answers=("Madrid",),
                        contexts=(ctx("d", 0.8, False, "Rome is old."), ctx("e", 0.7, True, "Berlin is big."),
                                  ctx("f", 0.1, False, "Oslo is cold.")))]
    path = tmp_path / "r.jsonl"
    generate_records(retrieved, model, tok, RenderOptions(), GenerationSettings(max_new_tokens=2, docs="topk", ndocs=2),
                     path, progress=False)
    rows = predictions(path)
    assert rows["1"]["docs"] == [{"title": "T", "gold": True, "id": "b", "score": 0.9, "text": "Paris is the capital."},
                                 {"title": "T", "gold": False, "id": "c", "score": 0.5, "text": "Nice is by the sea."}]
    assert [d["id"] for d in rows["2"]["docs"]] == ["d", "e"]
    # Hand-worked: gold at rank 1 and rank 2; the answer in row 1's first passage, in none of row 2's.
    retrieval = evaluate_file(path, tmp_path / "m.json", bootstrap=0)[0]["retrieval"]
    assert (retrieval["recall@1"], retrieval["recall@2"], retrieval["mrr"]) == (50.0, 100.0, 0.75)
    assert (retrieval["has_answer@1"], retrieval["has_answer@2"]) == (50.0, 50.0)


def train_tiny_adapter(tmp_path, **recipe) -> str:
    """A LoRA run of the tiny model on 4 records; returns its folder."""
    from cings.config import load_config
    from cings.train import train

    tok_dir = tmp_path / "tok"
    build_tiny_bpe().save_pretrained(tok_dir)
    data = tmp_path / "d.jsonl"
    write_records(records(4), data)
    settings = dict(model_config=TINY, tokenizer=str(tok_dir), data=str(data), output_dir=str(tmp_path / "run"), lora=True,
                    lora_target_modules=["q_proj", "v_proj"], max_steps=1, global_batch_size=2, micro_batch_size=2,
                    save_strategy="no", max_length=256)
    train(load_config(None, {**settings, **recipe}), progress=False)
    return str(tmp_path / "run")


def test_an_adapter_alone_finds_its_base_model(tmp_path):
    model, tok, options, spec = load_for_generation(None, adapter=train_tiny_adapter(tmp_path))
    assert spec == "model_config" and options.mode.value == "context"
    report = generate_records(records(2), model, tok, options, GenerationSettings(max_new_tokens=3), tmp_path / "p.jsonl",
                              progress=False)
    assert report["generated"] == 2


def test_a_merged_adapter_computes_what_the_unmerged_one_does(tmp_path):
    run = train_tiny_adapter(tmp_path, lora_target_modules=["q_proj", "v_proj", "down_proj"], max_steps=3,
                             learning_rate=0.05)
    merged, tok, _, _ = load_for_generation(None, adapter=run)
    apart, _, _, _ = load_for_generation(None, adapter=run, merge=False)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert any("lora" in name for name, _ in apart.named_parameters())
    ids = torch.tensor([tok("The Denver Broncos won the game.")["input_ids"]])
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits, apart(input_ids=ids).logits
        with apart.disable_adapter():
            base = apart(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - base).abs().max() > 1e-3  # the adapter is not a no-op, so the check above can fail


def test_generate_and_evaluate_from_the_command_line(tmp_path, capsys):
    from cings.cli import main

    tok_dir = tmp_path / "tok"
    build_tiny_bpe().save_pretrained(tok_dir)
    data = tmp_path / "d.jsonl"
    write_records(records(4), data)
    from cings.config import load_config
    from cings.train import train

    train(load_config(None, dict(model_config=TINY, tokenizer=str(tok_dir), data=str(data), output_dir=str(tmp_path / "run"),
                                 max_steps=1, global_batch_size=2, micro_batch_size=2, save_strategy="no",
                                 max_length=256)), progress=False)
    pred = tmp_path / "pred.jsonl"
    assert main(["generate", "--model", str(tmp_path / "run"), "--input", str(data), "--docs", "gold", "--prompt",
                 "prefill", "--output", str(pred), "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["evaluate", "--predictions", str(pred), "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 4 and {"acc", "em", "f1"} <= set(metrics)
    assert (tmp_path / "m.md").is_file()
    assert main(["compare", f"a={tmp_path / 'm.json'}", f"b={tmp_path / 'm.json'}", "--output", str(tmp_path / "r.md")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.slow
def test_batched_equals_batch_one_on_smollm2(tmp_path, smollm2):
    from cings.loading import smollm2_gguf

    model, tok, options, _ = load_for_generation(str(smollm2_gguf()))
    recs = [Record(id=f"s{i}", instruction=q, contexts=(Context(text=c, gold=True),), response="x")
            for i, (q, c) in enumerate([("Who won?", "The Denver Broncos won Super Bowl 50."),
                                        ("Where is Paris?", "Paris is the capital of France, on the Seine."),
                                        ("What is 2+2?", "Two plus two is four."),
                                        ("Name a color.", "The sky is blue and grass is green.")])]
    outs = []
    for batch in (1, 4):
        path = tmp_path / f"{batch}.jsonl"
        generate_records(recs, model, tok, options, GenerationSettings(max_new_tokens=16, batch_size=batch), path,
                         progress=False)
        outs.append({k: v["prediction"] for k, v in predictions(path).items()})
    assert outs[0] == outs[1]


def test_greedy_decode_equals_transformers_generate(tiny):
    from cings.generate import greedy_decode

    model, tok = tiny
    torch.manual_seed(1)
    for length in (5, 17):
        ids = torch.randint(10, len(tok), (1, length))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=9, do_sample=False,
                                 eos_token_id=[-5], pad_token_id=0)[0, length:].tolist()
            ours = greedy_decode(model, ids, mask, 9, [-5])[0]
        assert ours == ref


@pytest.mark.parametrize("flag, value", [("--batch-size", "-2"), ("--batch-size", "0"), ("--max-new-tokens", "0"),
                                         ("--ndocs", "0")])
def test_a_bad_number_is_refused_before_the_output_is_touched(tmp_path, capsys, flag, value):
    from cings.cli import main

    data, out = tmp_path / "d.jsonl", tmp_path / "p.jsonl"
    write_records(records(2), data)
    out.write_text('{"id": "old"}\n')
    assert main(["generate", "--model", str(tmp_path / "no-model/"), "--input", str(data), "--output", str(out),
                 flag, value, "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"{flag} must be a whole number of at least 1, not {value}" in err and "Traceback" not in err
    assert out.read_text() == '{"id": "old"}\n'
    with pytest.raises(ValueError, match="--batch-size must be"):
        GenerationSettings(batch_size=0)  # library callers are refused too


def _first_rows(tmp_path, tiny, limit):
    """``(model, tok, opts, path)`` with the first ``limit`` records generated into ``path``."""
    model, tok = tiny
    path = tmp_path / "p.jsonl"
    opts = RenderOptions(system_prompt=None)
    generate_records(records(), model, tok, opts, GenerationSettings(max_new_tokens=3, batch_size=2), path, limit=limit,
                     progress=False)
    return model, tok, opts, path


def test_resume_refuses_rows_of_other_settings_naming_each_key(tmp_path, tiny):
    model, tok, opts, path = _first_rows(tmp_path, tiny, 3)
    before = path.read_text()
    with pytest.raises(RecordError, match=r"p.jsonl:1: --resume with other settings.*docs: 'gold' in the file, 'topk' now;"
                                          r" max_new_tokens: 3 in the file, 4 now"):
        generate_records(records(), model, tok, opts, GenerationSettings(docs="topk", max_new_tokens=4), path,
                         resume=True, progress=False)
    with pytest.raises(RecordError, match=r"adapter: None in the file, 'a/' now.*model: None in the file, 'm' now"):
        generate_records(records(), model, tok, opts, GenerationSettings(max_new_tokens=3, model="m", adapter="a/"), path,
                         resume=True, progress=False)
    assert path.read_text() == before
    # The batch size changes speed, not outputs: a resume may change it.
    report = generate_records(records(), model, tok, opts, GenerationSettings(max_new_tokens=3, batch_size=5), path,
                              resume=True, progress=False)
    assert report["already_done"] == 3 and report["generated"] == 4


def test_resuming_a_file_with_a_bad_byte_names_its_line(tmp_path, tiny):
    model, tok, opts, path = _first_rows(tmp_path, tiny, 2)
    path.write_bytes(path.read_bytes() + b'{"id": "x\xff"}\n')
    before = path.read_bytes()
    with pytest.raises(RecordError, match=r"p.jsonl:3: .*UTF-8"):
        generate_records(records(), model, tok, opts, GenerationSettings(max_new_tokens=3, batch_size=2), path,
                         resume=True, progress=False)
    assert path.read_bytes() == before


def test_an_existing_output_needs_resume_or_overwrite(tmp_path, tiny_dir, capsys):
    from cings.cli import main

    data, out = tmp_path / "d.jsonl", tmp_path / "p.jsonl"
    write_records(records(2), data)
    out.write_text('{"id": "mine"}\n')
    base = ["generate", "--model", str(tiny_dir), "--input", str(data), "--output", str(out), "--max-new-tokens", "2",
            "--no-progress"]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "p.jsonl: the file exists; pass --resume" in err and "--overwrite" in err and "Traceback" not in err
    assert out.read_text() == '{"id": "mine"}\n'
    # A failure while reading the input leaves the file too, even with --overwrite.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert main([*base[:4], str(bad), *base[5:], "--overwrite"]) == 1
    assert out.read_text() == '{"id": "mine"}\n'
    assert main([*base, "--overwrite"]) == 0
    assert set(predictions(out)) == {"r0", "r1"}


@pytest.mark.parametrize("flags, said", [(["--adapter", "missing/"], "--adapter missing/: no such folder"),
                                         (["--adapter", "runs/gone"], "--adapter runs/gone: no such folder"),
                                         (["--model", "./nowhere"], "--model ./nowhere: no such folder"),
                                         (["--model", "x.gguf"], "--model x.gguf: no such file")])
def test_a_missing_model_or_adapter_folder_is_named(tmp_path, capsys, monkeypatch, flags, said):
    from cings.cli import main

    monkeypatch.chdir(tmp_path)
    write_records(records(1), tmp_path / "d.jsonl")
    assert main(["generate", *flags, "--input", "d.jsonl", "--output", "p.jsonl"]) == 1
    err = capsys.readouterr().err
    assert said in err and "no base model recorded" not in err and "Traceback" not in err
