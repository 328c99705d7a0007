"""Decoding rules: CAD is transformers' own guidance, AdaCAD's weight is the JSD, batching and back-off change
nothing they should not, and the settings reach the command line and every prediction row."""

import itertools
import json
import math

import pytest
import torch

from cings.generate import Contrastive, GenerationSettings, adacad_alpha, decode, generate_records, greedy_decode, jsd
from cings.prompts import PromptBuilder
from cings.records import RecordError, write_records
from cings.render import RenderOptions

from ..test_generate import predictions, records, tiny_generation_model

NEVER = [-5]  # a stop id no model emits: every row runs to max_new_tokens


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 32-wide model gains nothing from threads, and on a busy machine their contention makes it 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return tiny_generation_model()


@pytest.fixture(scope="module")
def pairs(tiny):
    """(with documents, without) token ids of 7 records of different lengths, in the prefill layout."""
    _, tok = tiny
    builder = PromptBuilder(tok, RenderOptions(system_prompt=None))
    return [tuple(p.input_ids for p in builder.build_pair(r)) for r in records(7)]


def left_padded(rows, pad=0):
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def one(ids):
    return torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)


def run(model, rule, pairs, n=8, stop=NEVER):
    """Each pair decoded alone (batch 1)."""
    with torch.no_grad():
        return [decode(model, [one(c), one(q)], rule, n, stop)[0] for c, q in pairs]


def test_cad_equals_transformers_guidance_token_for_token(tiny, pairs):
    model, _ = tiny
    chosen = pairs[::3]
    with torch.no_grad():
        greedy = [greedy_decode(model, *one(c), 8, NEVER)[0] for c, _ in chosen]
    differs = 0
    for alpha in (0.5, 1.0, 2.0):
        for (ctx, noctx), ours, plain in zip(chosen, run(model, Contrastive(alpha=alpha), chosen), greedy):
            ids, mask = one(ctx)
            with torch.no_grad():
                ref = model.generate(input_ids=ids, attention_mask=mask, guidance_scale=1 + alpha,
                                     negative_prompt_ids=torch.tensor([noctx]), do_sample=False, max_new_tokens=8,
                                     eos_token_id=NEVER, pad_token_id=0)[0, len(ctx):].tolist()
            assert ours == ref, (alpha, ours, ref)
            differs += ours != plain
    assert differs >= 3  # the contrast changes answers, so the equality above could fail


def test_alpha_zero_is_greedy_decoding(tiny, pairs):
    model, _ = tiny
    with torch.no_grad():
        greedy = [greedy_decode(model, *one(c), 8, NEVER)[0] for c, _ in pairs[::2]]
    assert run(model, Contrastive(alpha=0.0), pairs[::2]) == greedy


def test_identical_branches_give_adacad_the_offset_and_greedy_tokens(tiny, pairs):
    model, _ = tiny
    logits = torch.randn(3, 50)
    assert torch.equal(adacad_alpha(logits, logits.clone(), 0.25), torch.full((3,), 0.25))
    same = [(c, c) for c, _ in pairs[:3]]
    with torch.no_grad():
        greedy = [greedy_decode(model, *one(c), 8, NEVER)[0] for c, _ in same]
    assert run(model, Contrastive(alpha=None, offset=0.5), same, n=8) == greedy


def test_jsd_by_hand():
    # p = (1/2, 1/2), q = (1/4, 3/4): m = (3/8, 5/8).
    p, q = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.25, 0.75]]).log()
    kl_pm = 0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)
    kl_qm = 0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)
    assert jsd(p, q).item() == pytest.approx(0.5 * (kl_pm + kl_qm), abs=1e-7)
    assert jsd(p + 3.0, q - 1.0).item() == pytest.approx(0.5 * (kl_pm + kl_qm), abs=1e-7)  # logits, not probabilities
    # Disjoint supports reach the bound ln 2 (0 · log 0 counted as 0, no NaN).
    inf = float("inf")
    assert jsd(torch.tensor([[0.0, -inf]]), torch.tensor([[-inf, 0.0]])).item() == pytest.approx(math.log(2), abs=1e-7)


def test_jsd_equals_adacads_reference_and_stays_within_ln2():
    torch.manual_seed(0)
    a, b = torch.randn(6, 40) * 4, torch.randn(6, 40) * 4
    ours = jsd(a, b)
    # HanNight/AdaCAD get_jsd, one row at a time (its 'batchmean' over a batch of 1).
    F = torch.nn.functional
    for row in range(6):
        p, q = F.softmax(a[row:row + 1], -1), F.softmax(b[row:row + 1], -1)
        m = (0.5 * (p + q)).clamp(min=1e-9)
        ref = 0.5 * (F.kl_div(m.log(), p, reduction="batchmean") + F.kl_div(m.log(), q, reduction="batchmean"))
        assert ours[row].item() == pytest.approx(ref.item(), abs=1e-6)
    assert bool(((ours >= 0) & (ours <= math.log(2))).all())


def test_adacad_step_weighs_each_row_by_its_own_jsd():
    torch.manual_seed(1)
    ctx, noctx = torch.randn(2, 30), torch.randn(2, 30)
    noctx[1] = ctx[1]  # row 1: the documents change nothing, so α_t = offset
    scores = Contrastive(alpha=None, offset=0.1)([ctx, noctx])
    lc, ln = ctx.log_softmax(-1), noctx.log_softmax(-1)
    for row in range(2):
        alpha = jsd(ctx[row:row + 1], noctx[row:row + 1]).item() + 0.1
        assert torch.allclose(scores[row], (1 + alpha) * lc[row] - alpha * ln[row], atol=1e-5)
    assert torch.allclose(scores[1], lc[1], atol=1e-5)


def test_backoff_takes_rows_below_tau_from_the_closed_book_distribution(tiny, pairs):
    torch.manual_seed(2)
    ctx, noctx = torch.randn(2, 30), torch.randn(2, 30)
    noctx[1] = ctx[1] + 0.01 * torch.randn(30)  # row 1 barely differs
    divergence = jsd(ctx, noctx)
    tau = divergence.mean().item()
    assert divergence[1] < tau < divergence[0]
    cad, backed = Contrastive(alpha=1.0)([ctx, noctx]), Contrastive(alpha=1.0, backoff=tau)([ctx, noctx])
    assert torch.equal(backed[0], cad[0]) and torch.allclose(backed[1], noctx[1].log_softmax(-1))
    # The two ends: τ = 0 is CAD, τ = +inf (any τ > ln 2) is closed-book greedy decoding.
    model, _ = tiny
    chosen = pairs[::3]
    with torch.no_grad():
        closed = [greedy_decode(model, *one(q), 8, NEVER)[0] for _, q in chosen]
    cad = run(model, Contrastive(alpha=1.0), chosen)
    assert cad != closed  # so the ends below are told apart
    assert run(model, Contrastive(alpha=1.0, backoff=math.inf), chosen) == closed
    assert run(model, Contrastive(alpha=None, backoff=0.7), chosen) == closed  # any τ > ln 2
    assert run(model, Contrastive(alpha=1.0, backoff=0.0), chosen) == cad


@pytest.mark.parametrize("name", ["cad", "adacad", "cad-backoff"])
def test_a_batch_of_mixed_lengths_decodes_as_its_rows_alone(tiny, pairs, name):
    model, _ = tiny
    if name == "cad-backoff":
        # τ at the median JSD of CAD's own steps, so that some steps back off and some do not.
        seen = []

        def recording(logits):
            seen.extend(jsd(*logits).tolist())
            return Contrastive(alpha=2.0)(logits)
        run(model, recording, pairs, n=10)
        tau = sorted(seen)[len(seen) // 2]
    rule = {"cad": Contrastive(alpha=2.0), "adacad": Contrastive(alpha=None, offset=0.5),
            "cad-backoff": Contrastive(alpha=2.0, backoff=tau if name == "cad-backoff" else 0.0)}[name]
    n = 10
    alone = run(model, rule, pairs, n=n)

    def ends(stops):
        return [next((i + 1 for i, t in enumerate(row) if t in stops), n) for row in alone]
    # Two stop tokens chosen so that rows end at different steps (and some never): finished rows must
    # leave both batches without disturbing the others.
    tokens = sorted({t for row in alone for t in row})
    stops = max(itertools.combinations(tokens, 2), key=lambda s: (len(set(ends(s))), n in ends(s)))
    assert len(set(ends(stops))) >= 3 and n in ends(stops)
    with torch.no_grad():
        batched = decode(model, [left_padded([c for c, _ in pairs]), left_padded([q for _, q in pairs])], rule, n,
                         stops)
    assert batched == [row[:end] for row, end in zip(alone, ends(stops))]


def test_generate_records_with_cad_alpha_zero_writes_greedys_predictions(tmp_path, tiny):
    model, tok = tiny
    opts = RenderOptions(system_prompt=None)
    out = {}
    for name, settings in {"greedy": GenerationSettings(max_new_tokens=6, batch_size=3),
                           "cad0": GenerationSettings(max_new_tokens=6, batch_size=3, decoding="cad", cad_alpha=0),
                           "cad2": GenerationSettings(max_new_tokens=6, batch_size=3, decoding="cad", cad_alpha=2),
                           "cad2b1": GenerationSettings(max_new_tokens=6, batch_size=1, decoding="cad", cad_alpha=2)}.items():
        generate_records(records(5), model, tok, opts, settings, tmp_path / f"{name}.jsonl", progress=False)
        out[name] = predictions(tmp_path / f"{name}.jsonl")
    text = {name: {k: v["prediction"] for k, v in rows.items()} for name, rows in out.items()}
    assert text["cad0"] == text["greedy"] and text["cad2"] == text["cad2b1"] and text["cad2"] != text["greedy"]
    assert out["greedy"]["r0"]["settings"]["decoding"] == "greedy" and "cad_alpha" not in out["greedy"]["r0"]["settings"]
    assert {k: out["cad2"]["r0"]["settings"][k] for k in ("decoding", "cad_alpha", "cad_backoff")} == \
        {"decoding": "cad", "cad_alpha": 2, "cad_backoff": 0.0}


def test_cli_cad_flags_record_the_rule_and_resume_refuses_another(tmp_path, tiny, capsys):
    from cings.cli import main

    model, tok = tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = tmp_path / "d.jsonl"
    write_records(records(3), data)
    base = ["generate", "--model", str(folder), "--input", str(data), "--max-new-tokens", "6", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "g.jsonl")]) == 0
    assert main([*base, "--output", str(tmp_path / "c.jsonl"), "--decoding", "cad", "--cad-alpha", "0"]) == 0
    greedy, cad = predictions(tmp_path / "g.jsonl"), predictions(tmp_path / "c.jsonl")
    assert {k: v["prediction"] for k, v in cad.items()} == {k: v["prediction"] for k, v in greedy.items()}
    assert cad["r0"]["settings"]["decoding"] == "cad" and cad["r0"]["settings"]["cad_alpha"] == 0.0
    capsys.readouterr()
    assert main([*base, "--output", str(tmp_path / "c.jsonl"), "--decoding", "cad", "--resume"]) == 1
    assert "cad_alpha: 0.0 in the file, 1.0 now" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "a.jsonl"), "--decoding", "adacad", "--adacad-offset", "0.1",
                 "--cad-backoff", "0.01"]) == 0
    settings = predictions(tmp_path / "a.jsonl")["r0"]["settings"]
    assert (settings["decoding"], settings["adacad_offset"], settings["cad_backoff"]) == ("adacad", 0.1, 0.01)


@pytest.mark.parametrize("kwargs, said", [
    (dict(decoding="beam"), "--decoding must be one of greedy, cad, adacad"),
    (dict(cad_alpha=2.0), "--cad-alpha is CAD's weight: it needs --decoding cad"),
    (dict(decoding="adacad", cad_alpha=2.0), "--cad-alpha is CAD's weight"),
    (dict(decoding="cad", adacad_offset=0.1), "--adacad-offset needs --decoding adacad"),
    (dict(cad_backoff=0.1), "--cad-backoff needs --decoding cad or adacad"),
    (dict(decoding="cad", cad_alpha=-1.0), "must be at least 0"),
    (dict(decoding="cad", cad_backoff=math.inf), "--cad-backoff must be a finite number"),
    (dict(decoding="cad", docs="none"), "with --docs none both are the same prompt"),
    (dict(decoding="adacad", greedy=False), "sampling goes with --decoding greedy"),
])
def test_settings_that_do_nothing_or_make_no_sense_are_refused(kwargs, said):
    with pytest.raises(ValueError, match=said.replace("(", r"\(")):
        GenerationSettings(**kwargs)


def test_an_old_greedy_file_still_resumes(tmp_path, tiny):
    """Rows written before CAD existed carry no cad_* keys: greedy settings must still match them."""
    model, tok = tiny
    path = tmp_path / "p.jsonl"
    old = {"docs": "gold", "ndocs": 1, "prompt": "prefill", "max_new_tokens": 3, "batch_size": 8,
           "decoding": "greedy", "model": None, "adapter": None}
    path.write_text(json.dumps({"id": "r0", "prediction": "x", "answers": ["Denver"], "settings": old}) + "\n")
    report = generate_records(records(2), model, tok, RenderOptions(system_prompt=None),
                              GenerationSettings(max_new_tokens=3), path, resume=True, progress=False)
    assert report == {**report, "already_done": 1, "generated": 1}
    with pytest.raises(RecordError, match="decoding: 'greedy' in the file, 'cad' now"):
        generate_records(records(2), model, tok, RenderOptions(system_prompt=None),
                         GenerationSettings(max_new_tokens=3, decoding="cad"), path, resume=True, progress=False)


@pytest.mark.slow
def test_cad_and_batching_on_smollm2(tmp_path, smollm2):
    """The real model: CAD equals transformers' guidance at batch 1, and a batch equals its rows alone."""
    from cings.loading import smollm2_gguf
    from cings.records import Context, Record
    from cings.runs import load_for_generation

    model, tok, options, _ = load_for_generation(str(smollm2_gguf()))
    recs = [Record(id=f"s{i}", instruction=q, contexts=(Context(text=c, gold=True),), response="x")
            for i, (q, c) in enumerate([("Who won Super Bowl 50?", "The Carolina Panthers won Super Bowl 50."),
                                        ("What is the capital of France?", "The capital of France is Lyon."),
                                        ("Name a color.", "The sky is blue and grass is green.")])]
    builder = PromptBuilder(tok, options)
    stop = builder.stop_token_ids()
    for record in recs:
        with_docs, without = builder.build_pair(record)
        ids, mask = one(with_docs.input_ids)
        for alpha in (0.5, 1.0, 2.0):
            with torch.no_grad():
                ours = decode(model, [(ids, mask), one(without.input_ids)], Contrastive(alpha=alpha), 12, stop)[0]
                ref = model.generate(input_ids=ids, attention_mask=mask, guidance_scale=1 + alpha,
                                     negative_prompt_ids=torch.tensor([without.input_ids]), do_sample=False,
                                     max_new_tokens=12, eos_token_id=stop, pad_token_id=0)[0, ids.shape[1]:].tolist()
            assert ours == ref, (record.id, alpha, ours, ref)
    outs = []
    for batch in (1, 3):
        path = tmp_path / f"{batch}.jsonl"
        generate_records(recs, model, tok, options, GenerationSettings(max_new_tokens=16, batch_size=batch,
                                                                       decoding="adacad"), path, progress=False)
        outs.append({k: v["prediction"] for k, v in predictions(path).items()})
    assert outs[0] == outs[1]
