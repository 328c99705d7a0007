"""--engine vllm, with a stand-in ``vllm`` module that records what it is handed and answers with the tiny model:
vLLM gets the default engine's prompt token ids and greedy parameters, the rows are the default engine's, and
what it cannot honour, or where it cannot run, is refused with the extra to install."""

import json
import sys
import types

import pytest
import torch

from cings.generate import GenerationSettings, generate_records, greedy_decode
from cings.generate.vllm_engine import DEFAULT_BATCH, VllmEngine
from cings.loading import LoadError
from cings.prompts import PromptBuilder
from cings.records import RecordError, write_records
from cings.render import RenderOptions

from ..test_generate import predictions, records, tiny_generation_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_generation_model()


@pytest.fixture
def fake_vllm(monkeypatch, tiny):
    """A ``vllm`` module whose LLM decodes greedily with the tiny model, as vLLM would: up to ``max_tokens``,
    stopping at (and keeping) a ``stop_token_ids`` token. Its ``calls`` record every constructor and request."""
    model, _ = tiny
    calls = {"llm": [], "generate": [], "params": []}

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["params"].append(kwargs)
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"].append(kwargs)

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"].append([p["prompt_token_ids"] for p in prompts])
            p = params.kwargs
            assert p["temperature"] == 0.0 and not use_tqdm
            out = []
            for prompt in prompts:
                ids = torch.tensor([prompt["prompt_token_ids"]])
                with torch.no_grad():
                    tokens = greedy_decode(model, ids, torch.ones_like(ids), p["max_tokens"], p["stop_token_ids"])[0]
                out.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tuple(tokens))]))
            return out

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.__version__ = LLM, SamplingParams, "0.30.0"
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # What cings asks a GPU (the precision report), answered for this CPU-only torch.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "a stand-in GPU")
    return calls


def test_vllm_gets_the_default_engines_prompt_ids_and_greedy_parameters(tmp_path, tiny, fake_vllm):
    model, tok = tiny
    options = RenderOptions()
    engine = VllmEngine("some/model", dtype="bfloat16")
    settings = GenerationSettings(engine="vllm", max_new_tokens=9, batch_size=4)
    generate_records(records(7), engine, tok, options, settings, tmp_path / "v.jsonl", progress=False)
    assert fake_vllm["llm"] == [{"model": "some/model", "dtype": "bfloat16", "seed": 0, "skip_tokenizer_init": True,
                                 "enable_prefix_caching": True}]
    builder = PromptBuilder(tok, options)
    expected = sorted(builder.build(r).input_ids for r in records(7))
    sent = fake_vllm["generate"]
    assert [len(batch) for batch in sent] == [4, 3]  # --batch-size records per llm.generate call
    assert sorted(ids for batch in sent for ids in batch) == expected  # the rendered token ids, not text
    assert fake_vllm["params"] == [{"temperature": 0.0, "max_tokens": 9, "stop_token_ids": builder.stop_token_ids(),
                                    "ignore_eos": True, "detokenize": False}] * 2


def test_vllm_rows_are_the_default_engines_rows(tmp_path, tiny, fake_vllm):
    """The stand-in answers with the tiny model: every field of every row matches the default engine's, the
    engine (and batch size) aside; so prompts, cutting at the stop token and decoding are shared."""
    model, tok = tiny
    for engine, m in (("hf", model), ("vllm", VllmEngine("m"))):
        generate_records(records(7), m, tok, RenderOptions(), GenerationSettings(engine=engine, max_new_tokens=12,
                                                                                 batch_size=3),
                         tmp_path / f"{engine}.jsonl", progress=False)
    hf, vllm = predictions(tmp_path / "hf.jsonl"), predictions(tmp_path / "vllm.jsonl")
    assert set(hf) == set(vllm) and len(hf) == 7 and any(row["prediction"] for row in hf.values())
    for key in hf:
        assert vllm[key]["settings"].pop("engine") == "vllm" and hf[key]["settings"].pop("engine") == "hf"
        assert vllm[key] == hf[key]


@pytest.mark.parametrize("kwargs, said", [
    (dict(decoding="cad"), "--decoding cad combines the logits of two prompts"),
    (dict(decoding="adacad"), "--decoding adacad combines"),
    (dict(greedy=False), "sampling goes with --engine hf"),
    (dict(adapter="runs/lora"), "`cings export runs/lora --output DIR` merges it"),
    (dict(engine="tgi"), "--engine must be one of hf, vllm, not 'tgi'"),
])
def test_what_vllm_cannot_honour_is_refused(kwargs, said):
    with pytest.raises(ValueError, match=said.replace("(", r"\(")):
        GenerationSettings(**{"engine": "vllm", **kwargs})


def test_without_vllm_or_a_gpu_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    from cings.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LoadError, match=r"vLLM is not installed .*pip install 'cings\[vllm\]'; it runs on a CUDA GPU"):
        VllmEngine("m")
    data, out = tmp_path / "d.jsonl", tmp_path / "p.jsonl"
    write_records(records(2), data)
    out.write_text('{"id": "old"}\n')
    assert main(["generate", "--engine", "vllm", "--model", str(tmp_path), "--input", str(data), "--output", str(out),
                 "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "cings generate: error: --engine vllm: vLLM is not installed" in err and "pip install 'cings[vllm]'" in err
    assert "Traceback" not in err and out.read_text() == '{"id": "old"}\n'


def test_a_resume_with_the_other_engine_is_refused(tmp_path, tiny, fake_vllm):
    model, tok = tiny
    path = tmp_path / "p.jsonl"
    generate_records(records(4), model, tok, RenderOptions(), GenerationSettings(max_new_tokens=3), path, limit=2,
                     progress=False)
    with pytest.raises(RecordError, match="engine: 'hf' in the file, 'vllm' now"):
        generate_records(records(4), VllmEngine("m"), tok, RenderOptions(),
                         GenerationSettings(engine="vllm", max_new_tokens=3), path, resume=True, progress=False)
    with pytest.raises(ValueError, match="engine is 'hf' but the model handed in is a VllmEngine"):
        generate_records(records(4), VllmEngine("m"), tok, RenderOptions(), GenerationSettings(), tmp_path / "x.jsonl",
                         progress=False)


def test_cings_generate_engine_vllm_from_the_command_line(tmp_path, tiny, fake_vllm, capsys):
    from cings.cli import main

    model, tok = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data, out = tmp_path / "d.jsonl", tmp_path / "p.jsonl"
    write_records(records(3), data)
    assert main(["generate", "--engine", "vllm", "--model", str(folder), "--input", str(data), "--output", str(out),
                 "--max-new-tokens", "4", "--no-prefix-cache", "--no-progress"]) == 0
    assert fake_vllm["llm"] == [{"model": str(folder), "dtype": "float32", "seed": 0, "skip_tokenizer_init": True,
                                 "enable_prefix_caching": False}]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and {r["settings"]["engine"] for r in rows} == {"vllm"}
    assert rows[0]["settings"]["batch_size"] == DEFAULT_BATCH and rows[0]["settings"]["prefix_cache"] is False
    assert main(["generate", "--engine", "vllm", "--adapter", str(folder), "--input", str(data), "--output",
                 str(tmp_path / "q.jsonl")]) == 1
    assert "reads merged weights, not a LoRA adapter" in capsys.readouterr().err


@pytest.fixture
def lora_run(tmp_path):
    """A LoRA run of the tiny model, trained before the stand-in GPU appears (the Trainer would use it)."""
    from ..test_generate import train_tiny_adapter

    return train_tiny_adapter(tmp_path)


def test_a_lora_run_given_as_the_model_is_refused_with_the_export_command(tmp_path, lora_run, fake_vllm, capsys):
    from cings.cli import main

    data = tmp_path / "d.jsonl"
    write_records(records(1), data)
    assert main(["generate", "--engine", "vllm", "--model", lora_run, "--input", str(data), "--output",
                 str(tmp_path / "p.jsonl")]) == 1
    err = capsys.readouterr().err
    assert f"a LoRA run; --engine vllm reads merged weights: `cings export {lora_run} --output DIR`" in err
    assert fake_vllm["llm"] == []  # refused before vLLM was started
