"""Attention shares: exact on a model whose attention is known by hand, equal to transformers'
``output_attentions`` path, causal, batch-size independent, and the command writes and compares."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from cings.analysis import attention
from cings.analysis.attention import (
    ANSWER,
    CONTEXT,
    FIRST,
    GROUPS,
    MARKERS,
    PROMPT,
    TEMPLATE,
    AttentionSettings,
    Probe,
    build_probes,
    measure,
    measure_records,
    summarize,
    token_groups,
)
from cings.cli import main
from cings.records import Context, Record, write_records
from cings.render import RenderOptions

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "initializer_range": 0.3}


def tiny_model(model_type: str, vocab: int, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **TINY, vocab_size=vocab)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def records(n: int = 5) -> list[Record]:
    return [Record(id=f"r{i}", instruction="Who won the game?" + " Tell me." * (i % 2),
                   contexts=(Context(title="Game", text="The Denver Broncos won the game. " * (1 + i % 3), gold=True),),
                   response="Denver Broncos" if i % 2 else "Denver") for i in range(n)]


def shares(result: dict) -> torch.Tensor:
    return torch.tensor([result["per_layer_groups"][g] for g in GROUPS])  # (G, L)


# ---------------------------------------------------------------- (a) attention known by hand

def uniform_model(vocab: int = 50):
    """Zero query weights: every score is 0, so a query at q attends uniformly to keys 0..q."""
    model = tiny_model("llama", vocab)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    return model


def hand_probes() -> list[Probe]:
    # positions:        0      1         2       3       4        5        6        7        8        9       10      11
    a = [FIRST, TEMPLATE, PROMPT, PROMPT, MARKERS, CONTEXT, CONTEXT, CONTEXT, MARKERS, ANSWER, ANSWER, TEMPLATE]
    b = [FIRST, PROMPT, CONTEXT, CONTEXT, MARKERS, ANSWER, TEMPLATE]
    return [Probe("a", list(range(1, 13)), a, [9, 10]), Probe("b", list(range(1, 8)), b, [5])]


# Query 9 sees keys 0..9 (10 of them), query 10 sees 0..10 (11); probe b's query 5 sees 0..5 (6).
EXPECTED_A = {"context": (Fraction(3, 10) + Fraction(3, 11)) / 2, "answer": (Fraction(1, 10) + Fraction(2, 11)) / 2,
              "prompt": (Fraction(2, 10) + Fraction(2, 11)) / 2, "markers": (Fraction(2, 10) + Fraction(2, 11)) / 2,
              "template": (Fraction(1, 10) + Fraction(1, 11)) / 2, "first_token": (Fraction(1, 10) + Fraction(1, 11)) / 2}
EXPECTED_B = {"context": Fraction(2, 6), "answer": Fraction(1, 6), "prompt": Fraction(1, 6), "markers": Fraction(1, 6),
              "template": Fraction(0), "first_token": Fraction(1, 6)}


@pytest.mark.parametrize("method", ["reduce", "eager"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_uniform_causal_attention_gives_the_shares_worked_by_hand(method, batch_size):
    sums = measure(uniform_model(), hand_probes(), AttentionSettings(method=method, batch_size=batch_size))
    by_id = dict(zip([p.id for p in sorted(hand_probes(), key=lambda p: -len(p.input_ids))], sums.records))
    for rid, expected in (("a", EXPECTED_A), ("b", EXPECTED_B)):
        for g, name in enumerate(GROUPS):
            # the same in every layer: the attention pattern does not depend on the hidden states
            assert by_id[rid][:, g].tolist() == pytest.approx([float(expected[name])] * 3, abs=1e-6), (rid, name)
    result = summarize(sums, hand_probes(), {}, AttentionSettings())
    assert result["per_layer"] == pytest.approx([float((EXPECTED_A["context"] + EXPECTED_B["context"]) / 2)] * 3,
                                                abs=1e-6)


def test_the_model_is_given_back_with_its_attention_implementation_and_mode():
    model = uniform_model()
    model.train()
    measure(model, hand_probes(), AttentionSettings())
    assert model.config._attn_implementation == "sdpa" and model.training


# ---------------------------------------------------------------- (d) the causal mask is kept

def test_without_the_mask_registration_the_measurement_refuses_instead_of_looking_ahead(monkeypatch):
    from transformers import AttentionInterface

    # What the reduction would be without AttentionMaskInterface.register: transformers then builds no mask.
    name = attention.ATTENTION_NAME + "_nomask"
    monkeypatch.setattr(attention, "_register", lambda: AttentionInterface.register(name, attention._reducing_attention))
    monkeypatch.setattr(attention, "ATTENTION_NAME", name)
    model = uniform_model()
    with pytest.raises(RuntimeError, match="no attention mask"):
        measure(model, hand_probes(), AttentionSettings())
    assert model.config._attn_implementation == "sdpa"  # restored after the failure too


def test_no_query_puts_mass_on_a_later_token():
    # The last template token (end of turn) follows every query: any mass on it means a non-causal mask.
    sums = measure(tiny_model("llama", 50), hand_probes()[:1], AttentionSettings())
    assert sums.records[0].sum(1).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    probe = hand_probes()[0]
    late = Probe("late", probe.input_ids, probe.groups[:-1] + [CONTEXT], probe.queries)  # position 11 -> context
    again = measure(tiny_model("llama", 50), [late], AttentionSettings())
    assert again.records[0][:, CONTEXT].tolist() == pytest.approx(sums.records[0][:, CONTEXT].tolist(), abs=1e-7)


# ---------------------------------------------------------------- (b, c) on-the-fly = output_attentions

@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_the_reduction_equals_eager_output_attentions_and_sums_to_one(model_type, tiny_bpe):
    model = tiny_model(model_type, len(tiny_bpe))
    options = RenderOptions(system_prompt="Be brief.")
    out = {}
    for method, batch in (("reduce", 1), ("reduce", 3), ("eager", 1)):
        settings = AttentionSettings(method=method, batch_size=batch, per_head=True)
        out[method, batch] = measure_records(model, tiny_bpe, options, records(), settings)
    reference = out["eager", 1]
    for key in (("reduce", 1), ("reduce", 3)):
        assert torch.allclose(shares(out[key]), shares(reference), atol=1e-5), key
        assert torch.allclose(torch.tensor(out[key]["per_head"]), torch.tensor(reference["per_head"]), atol=1e-5)
    assert torch.allclose(shares(reference).sum(0), torch.ones(3), atol=1e-5)  # (c)
    assert torch.tensor(reference["per_head"]).mean(1).tolist() == pytest.approx(reference["per_layer"], abs=1e-5)
    # a random model's heads do differ: the comparison above is not between constants
    assert torch.tensor(reference["per_head"]).std(1).max() > 0.01
    assert model.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------- records -> token groups

@pytest.mark.parametrize("layout", ["prefill", "input"])
def test_context_and_answer_tokens_are_the_passage_and_the_response(layout, tiny_bpe):
    record = records(1)[0]
    settings = AttentionSettings(layout=layout)
    (probe,), skipped = build_probes([record], tiny_bpe, RenderOptions(), settings)
    decode = lambda group: tiny_bpe.decode([i for i, g in zip(probe.input_ids, probe.groups) if g == group])  # noqa: E731
    assert decode(CONTEXT).strip() == "Game The Denver Broncos won the game."
    assert decode(ANSWER).strip() == "Denver"
    assert probe.queries == [t for t, g in enumerate(probe.groups) if g == ANSWER]
    assert probe.groups[0] == FIRST and not skipped
    # the passage sits in the assistant turn (after the question) or in the user turn (before the answer marker)
    first_context = probe.groups.index(CONTEXT)
    assert (first_context > probe.groups.index(PROMPT)) and (
        MARKERS in probe.groups[first_context:] if layout == "prefill" else True)
    (shifted,), _ = build_probes([record], tiny_bpe, RenderOptions(), AttentionSettings(layout=layout, queries="predicting"))
    assert shifted.queries == [t - 1 for t in probe.queries]


def test_token_groups_count_a_straddling_token_as_context():
    spans = [(0, 4, attention.Kind.FRAME), (4, 8, attention.Kind.MARKER), (8, 12, attention.Kind.CONTEXT),
             (12, 16, attention.Kind.ANSWER)]
    offsets = [(0, 4), (4, 6), (6, 9), (9, 12), (11, 14), (14, 16)]
    assert token_groups(spans, offsets) == [FIRST, MARKERS, CONTEXT, CONTEXT, CONTEXT, ANSWER]


def test_records_that_cannot_be_measured_are_counted_and_limit_counts_measured_ones(tiny_bpe):
    no_gold = Record(id="x", instruction="Q?", contexts=(Context(text="Some passage.", gold=False),), response="A")
    closed = Record(id="y", instruction="Q?", contexts=(), response="A")
    probes, skipped = build_probes([no_gold, closed] + records(4), tiny_bpe, RenderOptions(), AttentionSettings(limit=3))
    assert [p.id for p in probes] == ["r0", "r1", "r2"]
    assert skipped == {"no_gold_passage": 2}
    probes, skipped = build_probes([closed], tiny_bpe, RenderOptions(), AttentionSettings(docs="topk"))
    assert not probes and skipped == {"no_passage": 1}


def test_settings_refuse_what_cannot_be_measured():
    with pytest.raises(ValueError, match="needs a passage"):
        AttentionSettings(docs="none")
    with pytest.raises(ValueError, match="--layout"):
        AttentionSettings(layout="raw")


# ---------------------------------------------------------------- (e, f) the command

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_bpe):
    tok = tiny_bpe
    folder = tmp_path_factory.mktemp("tiny_model")
    tiny_model("llama", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_the_command_writes_json_and_chart_and_compares(tmp_path, tiny_dir, capsys):
    data = tmp_path / "records.jsonl"
    no_gold = Record(id="x", instruction="Q?", contexts=(Context(text="Other.", gold=False),), response="A")
    write_records([no_gold] + records(5), data)
    outs = {}
    for layout in ("prefill", "input"):
        outs[layout] = tmp_path / layout
        argv = ["analyze", "attention", "--model", str(tiny_dir), "--input", str(data), "--output", str(outs[layout]),
                "--layout", layout, "--limit", "4", "--per-head", "--label", f"tiny-{layout}", "--no-progress"]
        assert main(argv) == 0
    result = json.loads((outs["prefill"] / "attention.json").read_text())
    assert result["n"] == 4 and result["skipped"] == {"no_gold_passage": 1} and result["layout"] == "prefill"
    assert result["label"] == "tiny-prefill" and result["model"] == str(tiny_dir) and result["num_layers"] == 3
    assert len(result["per_layer"]) == 3 and all(0 <= v <= 1 for v in result["per_layer"])
    assert len(result["per_head"]) == 3 and len(result["per_head"][0]) == 4
    assert set(result["per_layer_groups"]) == set(GROUPS) and result["seconds_per_record"] > 0
    assert (outs["prefill"] / "attention.png").stat().st_size > 1000
    assert "context share by layer" in capsys.readouterr().err

    # an earlier result is not replaced silently
    assert main(["analyze", "attention", "--model", str(tiny_dir), "--input", str(data), "--output",
                 str(outs["prefill"])]) == 1
    assert "--overwrite" in capsys.readouterr().err

    chart = tmp_path / "compare.png"
    assert main(["analyze", "attention-compare", str(outs["prefill"]), f"input={outs['input']}",
                 "--output", str(chart)]) == 0
    printed = capsys.readouterr().out
    assert "tiny-prefill: context share mean" in printed and "input: context share mean" in printed
    assert chart.stat().st_size > 1000
    assert main(["analyze", "attention-compare", str(tmp_path / "nowhere"), "--output", str(chart)]) == 1
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("line, problem", [('{"id": "b", "instruction": "Q?"', "2"),
                                           ('{"id": "b", "instruction": "Q?", "contexts": []}', "2: field 'response'")])
def test_bad_input_is_refused_naming_file_and_line(tmp_path, tiny_dir, capsys, line, problem):
    data = tmp_path / "bad.jsonl"
    write_records(records(1), data)
    with open(data, "a") as handle:
        handle.write(line + "\n")
    assert main(["analyze", "attention", "--model", str(tiny_dir), "--input", str(data), "--output",
                 str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"cings analyze: error: {data}:{problem}" in err
    assert not (tmp_path / "out" / "attention.json").exists()
