"""Routing between a context-trained and a context-free model: each rule sends a record where it says, the
rows are generate's own, confidence compares log-probabilities transformers agrees with, a killed run resumes."""

import json
import math
from dataclasses import replace

import pytest
import torch

from cings.generate import GenerationSettings, generate_records
from cings.prompts import PromptBuilder
from cings.records import Context, Record, RecordError, write_records
from cings.render import RenderOptions
from cings.route import Endpoint, RouteRule, mean_answer_logprobs, part_path, plan_routes, route_records

from .conftest import build_tiny_bpe

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
OPTS = RenderOptions(system_prompt=None)


def mixed() -> list[Record]:
    """Five records with a gold passage, three without passages, one with passages but none gold."""
    with_docs = [Record(id=f"d{i}", instruction="Who won the game? " * (1 + i % 2), response="Denver", answers=("Denver",),
                        contexts=(Context(title="Game", text="The Denver Broncos won. " * (1 + i), gold=True),))
                 for i in range(5)]
    without = [Record(id=f"n{i}", instruction=f"Name a city number {i}.", response="Paris", answers=("Paris",), contexts=())
               for i in range(3)]
    no_gold = Record(id="g", instruction="Q?", response="A", contexts=(Context(text="Noise.", gold=False),))
    return [with_docs[0], without[0], with_docs[1], no_gold, with_docs[2], without[1], with_docs[3], without[2],
            with_docs[4]]


def tiny_model(seed: int, tok, scale: float = 1.0, uniform: bool = False):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**TINY, "vocab_size": len(tok)}),
                                             attn_implementation="sdpa").eval()
    with torch.no_grad():
        if uniform:  # every logit 0: each token has probability 1/V, whatever came before
            model.lm_head.weight.zero_()
        else:
            model.lm_head.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def pair():
    tok = build_tiny_bpe()
    return (Endpoint(tiny_model(0, tok, scale=4.0), tok, OPTS, spec="ctx-model"),
            Endpoint(tiny_model(1, tok, scale=4.0), tok, OPTS, spec="noctx-model"))


@pytest.fixture(scope="module")
def uniform(pair):
    return Endpoint(tiny_model(2, pair[0].tokenizer, uniform=True), pair[0].tokenizer, OPTS, spec="uniform")


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def plain(row):
    return {k: v for k, v in row.items() if k not in ("settings", "routed_to", "route_evidence")}


SETTINGS = GenerationSettings(max_new_tokens=6, batch_size=3)


def test_has_docs_rows_are_generate_rows_of_the_model_each_record_went_to(tmp_path, pair):
    ctx, noctx = pair
    report = route_records(mixed(), ctx, noctx, SETTINGS, tmp_path / "r.jsonl", progress=False)
    assert report["routed"] == {"ctx": 5, "noctx": 3} and report["dropped"] == {"ctx: no_gold_passage": 1}
    assert report["written"] == 8 and report["already_done"] == 0
    generate_records([r for r in mixed() if r.contexts], ctx.model, ctx.tokenizer, OPTS, SETTINGS, tmp_path / "c.jsonl",
                     progress=False)
    closed = replace(SETTINGS, docs="none")
    generate_records([r for r in mixed() if not r.contexts], noctx.model, noctx.tokenizer, OPTS, closed,
                     tmp_path / "n.jsonl", progress=False)
    expected = {row["id"]: row for row in rows(tmp_path / "c.jsonl") + rows(tmp_path / "n.jsonl")}
    routed = rows(tmp_path / "r.jsonl")
    assert [row["id"] for row in routed] == [r.id for r in mixed() if r.id != "g"]  # input order, the dropped one out
    for row in routed:
        assert plain(row) == plain(expected[row["id"]])
        side = "ctx" if row["id"].startswith("d") else "noctx"
        assert row["routed_to"] == side and row["route_evidence"] == {"contexts": 1 if side == "ctx" else 0}
        assert row["settings"]["model"] == f"{side}-model" and row["settings"]["docs"] == ("gold" if side == "ctx" else "none")
        assert row["settings"]["route"] == {"rule": "has-docs", "ctx": {"model": "ctx-model", "adapter": None},
                                            "noctx": {"model": "noctx-model", "adapter": None}}
    assert not part_path(tmp_path / "r.jsonl", "ctx").exists() and not part_path(tmp_path / "r.jsonl", "noctx").exists()
    # The two models answer differently, so a record sent to the wrong one would show above.
    generate_records([r for r in mixed() if not r.contexts], ctx.model, ctx.tokenizer, OPTS, closed,
                     tmp_path / "x.jsonl", progress=False)
    assert [r["prediction"] for r in rows(tmp_path / "x.jsonl")] != [r["prediction"] for r in rows(tmp_path / "n.jsonl")]


def scored(id_, *scores):
    return Record(id=id_, instruction="Q?", response="A", contexts=tuple(Context(text=f"p{s}", score=s) for s in scores))


def test_score_sends_a_record_to_ctx_from_the_threshold_on():
    records = [scored("below", 0.49), scored("at", 0.5), scored("best-of-two", 0.1, 0.9), scored("none")]
    plan = plan_routes(records, RouteRule("score", 0.5), "topk")
    assert plan == {"below": ("noctx", {"contexts": 1, "best_score": 0.49}),
                    "at": ("ctx", {"contexts": 1, "best_score": 0.5}),
                    "best-of-two": ("ctx", {"contexts": 2, "best_score": 0.9}),
                    "none": ("noctx", {"contexts": 0, "best_score": None})}
    # --docs none shows no record its passages: all go closed-book to noctx, scored or not.
    assert {k: v[0] for k, v in plan_routes([*records, scored("x")], RouteRule("score", 0.0), "none").items()} == \
        dict.fromkeys(["below", "at", "best-of-two", "none", "x"], "noctx")
    assert plan_routes(records, RouteRule("has-docs"), "gold")["below"][0] == "ctx"
    assert plan_routes(records, RouteRule("confidence"), "gold")["at"][0] == "both"


@pytest.mark.parametrize("rule, said", [(("score",), "--rule score needs --score-threshold"),
                                        (("has-docs", 0.5), "--score-threshold applies to --rule score"),
                                        (("oracle",), "--rule must be one of has-docs, score, confidence")])
def test_a_rule_without_what_it_needs_is_refused(rule, said):
    with pytest.raises(ValueError, match=said):
        RouteRule(*rule)


def test_score_refuses_records_without_scores_before_touching_the_output(tmp_path, pair):
    from cings.records import read_records

    data, out = tmp_path / "d.jsonl", tmp_path / "p.jsonl"
    write_records([scored("a", 0.7), *mixed()[:1]], data)
    out.write_text("mine\n")
    with pytest.raises(RecordError, match=r"d.jsonl:2: contexts: --rule score routes by the passages' 'score', but 1"
                                          r" of 1 passages have none"):
        route_records(read_records(data), *pair, SETTINGS, out, rule=RouteRule("score", 0.5), overwrite=True,
                      progress=False)
    assert out.read_text() == "mine\n"
    with pytest.raises(RecordError, match="but 1 of 2 passages have none"):  # some scored is no better
        plan_routes([Record(id="s", instruction="Q", response="A", contexts=(Context(text="a", score=1.0),
                                                                              Context(text="b")))],
                    RouteRule("score", 0.5), "gold")


def test_score_runs_each_model_on_its_side_of_the_threshold(tmp_path, pair):
    records = [scored("low", 0.2), scored("high", 0.8), scored("bare")]
    report = route_records(records, *pair, GenerationSettings(docs="topk", max_new_tokens=3), tmp_path / "p.jsonl",
                           rule=RouteRule("score", 0.5), progress=False)
    assert report["routed"] == {"ctx": 1, "noctx": 2}
    got = {row["id"]: (row["routed_to"], row["route_evidence"]["best_score"], row["settings"]["route"]["score_threshold"])
           for row in rows(tmp_path / "p.jsonl")}
    assert got == {"low": ("noctx", 0.2, 0.5), "high": ("ctx", 0.8, 0.5), "bare": ("noctx", None, 0.5)}


def reference_logprob(endpoint, record, answer, layout="prefill", docs="gold"):
    """-loss of transformers on the sequence training renders for ``answer``: the mean log-probability per
    trained token, computed apart from cings.route."""
    builder = PromptBuilder(endpoint.tokenizer, endpoint.options, layout=layout, docs=docs)
    prompt = builder.build(record)
    renderer = builder.with_docs if prompt.docs else builder.closed
    rendered = renderer.render(replace(record, contexts=prompt.docs, response=answer))
    assert rendered.input_ids[:len(prompt.input_ids)] == prompt.input_ids  # the prompt generation saw
    with torch.no_grad():
        loss = endpoint.model(input_ids=torch.tensor([rendered.input_ids]), labels=torch.tensor([rendered.labels])).loss
    return -float(loss)


@pytest.mark.parametrize("layout", ["prefill", "input"])
def test_answer_logprobs_are_transformers_loss_in_any_batch(pair, layout):
    ctx = pair[0]
    records = [r for r in mixed() if r.id != "g"][:6]
    answers = ["Denver", "", "The Denver Broncos won the game in 2016.", "Paris", "x", "Denver Broncos"]
    items = list(zip(records, answers))
    settings = GenerationSettings(prompt=layout, docs="topk")  # topk: a record without passages is asked closed-book
    one = mean_answer_logprobs(ctx, items, settings, batch_size=1)
    many = mean_answer_logprobs(ctx, items, settings, batch_size=4)
    want = [reference_logprob(ctx, r, a, layout, "topk") for r, a in items]
    assert one == pytest.approx(want, abs=1e-5) and many == pytest.approx(want, abs=1e-5)
    assert len(set(round(v, 4) for v in want)) == len(want)  # distinct values: a mix-up between rows would show


def constant_model(tok, eot_logprob: float):
    """A model that puts the same distribution at every position: the end-of-turn token with log-probability
    ``eot_logprob`` (so it answers '' and scores exactly that), the rest of the vocabulary uniform."""
    model = tiny_model(3, tok)
    vocab = model.config.vocab_size
    head = torch.nn.Linear(model.config.hidden_size, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        # softmax: p = e^b / (e^b + V - 1)  =>  b = L + ln(V - 1) - ln(1 - e^L)
        head.bias[tok.convert_tokens_to_ids("<|im_end|>")] = (eot_logprob + math.log(vocab - 1)
                                                             - math.log(1 - math.exp(eot_logprob)))
    model.lm_head = head
    return Endpoint(model, tok, OPTS, spec="constant")


def confidence_rows(tmp_path, name, ctx, noctx):
    report = route_records(mixed(), ctx, noctx, SETTINGS, tmp_path / name, rule=RouteRule("confidence"), progress=False)
    assert report["answered_by_both"] == 5 and report["dropped"] == {"ctx: no_gold_passage": 1}
    assert report["routed"]["ctx"] + report["routed"]["noctx"] == 8
    return {row["id"]: row for row in rows(tmp_path / name)}


def test_confidence_keeps_the_answer_its_model_is_surer_of(tmp_path, pair, uniform):
    ctx = pair[0]
    by_id = {r.id: r for r in mixed()}
    # Against a uniform model, whose every token has probability 1/V: its mean is -ln V exactly.
    first = confidence_rows(tmp_path, "u.jsonl", ctx, uniform)
    ctx_answers, ctx_scores = {}, {}
    for rid, row in first.items():
        evidence = row["route_evidence"]
        if not by_id[rid].contexts:
            assert row["routed_to"] == "noctx" and evidence == {"contexts": 0}
            continue
        assert evidence["noctx_logprob"] == pytest.approx(-math.log(ctx.model.config.vocab_size), abs=1e-5)
        ctx_answers[rid] = row["prediction"] if row["routed_to"] == "ctx" else evidence["other_prediction"]
        ctx_scores[rid] = evidence["ctx_logprob"]
        assert ctx_scores[rid] == pytest.approx(reference_logprob(ctx, by_id[rid], ctx_answers[rid]), abs=1e-5)
        assert row["routed_to"] == ("ctx" if ctx_scores[rid] >= evidence["noctx_logprob"] else "noctx")
    # Against a model as sure of its answer as the middle of ctx's scores: the surer half goes to ctx.
    ranked = sorted(ctx_scores.values())
    level = (ranked[1] + ranked[2]) / 2
    second = confidence_rows(tmp_path, "c.jsonl", ctx, constant_model(ctx.tokenizer, level))
    for rid, score in ctx_scores.items():
        row = second[rid]
        assert row["route_evidence"]["noctx_logprob"] == pytest.approx(level, abs=1e-5)
        assert row["route_evidence"]["ctx_logprob"] == pytest.approx(score, abs=1e-6)
        side = "ctx" if score > level else "noctx"
        assert row["routed_to"] == side
        assert (row["prediction"], row["route_evidence"]["other_prediction"]) == \
            ((ctx_answers[rid], "") if side == "ctx" else ("", ctx_answers[rid]))
    assert sum(row["routed_to"] == "ctx" for row in second.values()) == 3  # of 5 with documents, 3 above the level
    # Two equally sure models: a tie goes to the model that reads the documents.
    tie = confidence_rows(tmp_path, "t.jsonl", uniform, uniform)
    assert {rid: row["routed_to"] for rid, row in tie.items()} == {rid: "ctx" if by_id[rid].contexts else "noctx"
                                                                   for rid in tie}


def test_a_killed_run_resumes_without_generating_again(tmp_path, pair, monkeypatch):
    ctx, noctx = pair
    route_records(mixed(), ctx, noctx, SETTINGS, tmp_path / "ref.jsonl", progress=False)
    out = tmp_path / "p.jsonl"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(noctx.model, "forward", killed)  # ctx has answered; noctx is killed at its first step
        with pytest.raises(KeyboardInterrupt):
            route_records(mixed(), ctx, noctx, SETTINGS, out, progress=False)
    assert not out.exists() and part_path(out, "ctx").is_file()
    with pytest.raises(ValueError, match=r"a stopped run left p.jsonl.ctx.part beside it; pass --resume"):
        route_records(mixed(), ctx, noctx, SETTINGS, out, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(ctx.model, "forward", killed)  # what ctx wrote before the kill is not generated again
        report = route_records(mixed(), ctx, noctx, replace(SETTINGS, batch_size=2), out, resume=True, progress=False)
    assert report["routed"] == {"ctx": 5, "noctx": 3}
    assert [plain(r) for r in rows(out)] == [plain(r) for r in rows(tmp_path / "ref.jsonl")]
    assert not part_path(out, "ctx").exists()
    # A limited run, then the rest: every id once.
    route_records(mixed(), ctx, noctx, SETTINGS, tmp_path / "l.jsonl", limit=3, progress=False)
    report = route_records(mixed(), ctx, noctx, SETTINGS, tmp_path / "l.jsonl", resume=True, progress=False)
    assert report["already_done"] == 3 and report["written"] == 5
    assert [r["id"] for r in rows(tmp_path / "l.jsonl")] == [r["id"] for r in rows(tmp_path / "ref.jsonl")]


def test_resume_refuses_another_route_and_an_existing_output_needs_a_flag(tmp_path, pair):
    ctx, noctx = pair
    out = tmp_path / "p.jsonl"
    route_records(mixed(), ctx, noctx, SETTINGS, out, limit=2, progress=False)
    before = out.read_text()
    with pytest.raises(ValueError, match="p.jsonl: the file exists; pass --resume"):
        route_records(mixed(), ctx, noctx, SETTINGS, out, progress=False)
    with pytest.raises(RecordError, match=r"p.jsonl:1: --resume with other settings .*route: \{'rule': 'has-docs'.*"
                                          r" in the file, \{'rule': 'confidence'"):
        route_records(mixed(), ctx, noctx, SETTINGS, out, rule=RouteRule("confidence"), resume=True, progress=False)
    # Every row records both models: a ctx row too refuses another noctx model.
    with pytest.raises(RecordError, match=r"p.jsonl:1: --resume .*'noctx': \{'model': 'noctx-model'.* in the file,"
                                          r" .*'noctx': \{'model': 'other'.* now"):
        route_records(mixed(), ctx, replace(noctx, spec="other"), SETTINGS, out, resume=True, progress=False)
    assert out.read_text() == before
    (tmp_path / "g.jsonl").write_text('{"id": "d0", "prediction": "x", "answers": []}\n')
    with pytest.raises(RecordError, match="g.jsonl:1: the row has no 'routed_to'"):
        route_records(mixed(), ctx, noctx, SETTINGS, tmp_path / "g.jsonl", resume=True, progress=False)


@pytest.fixture(scope="module")
def model_dirs(pair, tmp_path_factory):
    folders = []
    for endpoint in pair:
        folder = tmp_path_factory.mktemp("model")
        endpoint.model.save_pretrained(folder)
        endpoint.tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def test_route_from_the_command_line_counts_each_side(tmp_path, model_dirs, capsys):
    from cings.cli import main

    data = tmp_path / "d.jsonl"
    write_records(mixed(), data)
    ctx_dir, noctx_dir = model_dirs
    assert main(["route", "--ctx-model", ctx_dir, "--noctx-model", noctx_dir, "--input", str(data), "--output",
                 str(tmp_path / "p.jsonl"), "--max-new-tokens", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert (f"cings route: has-docs: 5 routed to ctx ({ctx_dir}), 3 to noctx ({noctx_dir}); dropped ctx: no_gold_passage 1;"
            " 0 already written;") in err
    assert {r["settings"]["dtype"] for r in rows(tmp_path / "p.jsonl")} == {"float32"}


@pytest.mark.parametrize("flags, said", [
    (["--noctx-model", "M"], "give --ctx-model, or --ctx-adapter with a cings run folder"),
    (["--ctx-model", "M"], "give --noctx-model, or --noctx-adapter"),
    (["--ctx-adapter", "missing/", "--noctx-model", "M"], "--ctx-adapter missing/: no such folder"),
    (["--ctx-model", "./nowhere", "--noctx-model", "M"], "--ctx-model ./nowhere: no such folder"),
    (["--ctx-model", "M", "--noctx-model", "M", "--rule", "score"], "--rule score needs --score-threshold T"),
    (["--ctx-model", "M", "--noctx-model", "M", "--score-threshold", "1"], "--score-threshold applies to --rule score"),
])
def test_route_refuses_a_missing_model_or_rule_setting_before_loading(tmp_path, capsys, monkeypatch, flags, said):
    from cings.cli import main

    monkeypatch.chdir(tmp_path)
    write_records(mixed(), tmp_path / "d.jsonl")
    assert main(["route", *flags, "--input", "d.jsonl", "--output", "p.jsonl"]) == 1
    err = capsys.readouterr().err
    assert f"cings route: error: {said}" in err and "Traceback" not in err
    assert not (tmp_path / "p.jsonl").exists()


def test_eval_suite_routes_each_entry_between_an_adapter_run_and_a_model(tmp_path, model_dirs, capsys):
    from cings.cli import main
    from cings.config import load_config
    from cings.train import train

    data, tok_dir, run = tmp_path / "r.jsonl", tmp_path / "tok", str(tmp_path / "run")
    write_records([r for r in mixed() if r.contexts], tmp_path / "train.jsonl")
    write_records(mixed(), data)
    build_tiny_bpe().save_pretrained(tok_dir)
    # a LoRA run of one step: --ctx-adapter alone names its base model
    train(load_config(None, dict(model_config=TINY, tokenizer=str(tok_dir), data=str(tmp_path / "train.jsonl"),
                                 output_dir=run, lora=True,
                                 lora_target_modules=["q_proj", "v_proj"], max_steps=1, global_batch_size=2,
                                 micro_batch_size=2, save_strategy="no", max_length=256)), progress=False)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"max_new_tokens: 2\nentries:\n  - {{name: gold, data: {data}}}\n"
                     f"  - {{name: closed, data: {data}, docs: none}}\n")
    base = ["eval-suite", "--suite", str(suite), "--output-dir", str(tmp_path / "eval")]
    assert main([*base, "--router", "has-docs", "--ctx-adapter", run, "--noctx-model", model_dirs[1]]) == 0
    gold = rows(tmp_path / "eval" / "gold" / "predictions.jsonl")
    assert {r["routed_to"] for r in gold if r["id"].startswith("d")} == {"ctx"} and len(gold) == 8
    assert gold[0]["settings"]["route"]["ctx"] == {"model": "model_config", "adapter": run}
    assert gold[0]["settings"]["dataset"] == "gold"
    assert {r["routed_to"] for r in rows(tmp_path / "eval" / "closed" / "predictions.jsonl")} == {"noctx"}
    assert "has-docs router: ctx model_config + " in (tmp_path / "eval" / "report.md").read_text()
    for flags, said in ((["--router", "has-docs", "--model", "M", "--ctx-model", "M", "--noctx-model", "M"],
                         "--router answers with --ctx-model"),
                        (["--model", "M", "--noctx-model", "M"], "--noctx-model: give --router too")):
        assert main([*base, *flags, "--overwrite"]) == 1
        assert said in capsys.readouterr().err
