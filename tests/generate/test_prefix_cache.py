"""The shared prompt head, prefilled once: the same logits and the same tokens as the whole prompts, with the
suffixes left-padded after it (pads in the middle of each row), for greedy and for CAD's two branches."""

import json

import pytest
import torch

from cings.generate import Contrastive, GenerationSettings, PrefixCache, decode, generate_records, shared_prefix_length
from cings.records import Context, Record
from cings.render import RenderOptions

from ..test_generate import TINY, predictions, records, tiny_generation_model
from .test_decoding import NEVER, left_padded


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("prompts, expected", [
    ([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]], 2),  # the shortest keeps its last token: 2, not 3
    ([[1, 2, 3], [1, 2, 3]], 2),  # identical prompts still leave one token each to prefill
    ([[1, 2], [3, 2]], 0),
    ([[7]], 0),
    ([[5, 6, 7, 8]], 3),  # alone: all but the last token
    ([], 0),
])
def test_shared_prefix_length_by_hand(prompts, expected):
    assert shared_prefix_length(prompts) == expected


def tiny_model(model_type="llama", attn="sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = {**TINY, "vocab_size": 300}
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{k: v for k, v in config.items()
                                                                                 if k != "model_type"}),
                                            attn_implementation=attn).eval()


def prompts_with_a_head(n=5, head=9, seed=1):
    """``n`` prompts that share ``head`` tokens, then suffixes of 1 to 13 tokens (mixed, so rows need padding)."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randint(3, 300, (head,), generator=g).tolist()
    return [shared + torch.randint(3, 300, (1 + (5 * i) % 13,), generator=g).tolist() for i in range(n)]


def first_logits(model, rows, prefix):
    from cings.generate.decoding import _Branch

    suffixes = [prefix.suffix(r) for r in rows] if prefix else rows
    with torch.no_grad():
        return _Branch(model, *left_padded(suffixes), prefix).logits


@pytest.mark.parametrize("model_type, attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_a_batch_after_the_shared_head_gives_the_logits_and_tokens_of_the_whole_prompts(model_type, attn):
    model = tiny_model(model_type, attn)
    rows = prompts_with_a_head()
    n = shared_prefix_length(rows)
    assert n == 9
    with torch.no_grad():
        prefix = PrefixCache.build(model, rows[0][:n])
    whole, headed = first_logits(model, rows, None), first_logits(model, rows, prefix)
    assert torch.allclose(whole, headed, atol=1e-5), (whole - headed).abs().max()
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([r])).logits[:, -1] for r in rows])
    assert torch.allclose(alone, headed, atol=1e-5)
    # Many steps, rows leaving the batch as they finish: each row's tokens equal those of its prompt alone.
    with torch.no_grad():
        ref = [decode(model, [left_padded([r])], lambda x: x[0], 10, NEVER)[0] for r in rows]
        ours = decode(model, [left_padded([prefix.suffix(r) for r in rows])], lambda x: x[0], 10, NEVER, [prefix])
    assert ours == ref
    assert len({tuple(r) for r in ref}) > 1  # the rows answer differently, so a mix-up would show


def test_cads_two_branches_each_start_from_their_own_head():
    model = tiny_model()
    ctx, noctx = prompts_with_a_head(4, head=11, seed=2), prompts_with_a_head(4, head=6, seed=3)
    with torch.no_grad():
        heads = [PrefixCache.build(model, b[0][:shared_prefix_length(b)]) for b in (ctx, noctx)]
        batches = [left_padded([h.suffix(r) for r in b]) for h, b in zip(heads, (ctx, noctx))]
        ours = decode(model, batches, Contrastive(alpha=1.0), 8, NEVER, heads)
        ref = [decode(model, [left_padded([c]), left_padded([q])], Contrastive(alpha=1.0), 8, NEVER)[0]
               for c, q in zip(ctx, noctx)]
    assert ours == ref


def test_the_stored_head_is_never_written_to():
    model = tiny_model()
    rows = prompts_with_a_head(3)
    with torch.no_grad():
        prefix = PrefixCache.build(model, rows[0][:shared_prefix_length(rows)])
        before = [(k.clone(), v.clone()) for k, v in prefix.layers]
        for _ in range(2):  # two batches from the same head: the second must not see the first's tokens
            decode(model, [left_padded([prefix.suffix(r) for r in rows])], lambda x: x[0], 4, NEVER, [prefix])
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(prefix.layers, before))
    with pytest.raises(ValueError, match="does not extend the shared prefix"):
        prefix.suffix([1, 2, 3])


@pytest.mark.parametrize("decoding", ["greedy", "cad"])
def test_generate_writes_the_same_predictions_with_and_without_the_prefix_cache(tmp_path, decoding):
    model, tok = tiny_generation_model()
    options = RenderOptions()  # a system prompt: a head of a few dozen tokens shared by every record
    out = {}
    for cached in (True, False):
        path = tmp_path / f"{cached}.jsonl"
        settings = GenerationSettings(max_new_tokens=10, batch_size=3, decoding=decoding, prefix_cache=cached)
        generate_records(records(7), model, tok, options, settings, path, progress=False)
        out[cached] = {k: v["prediction"] for k, v in predictions(path).items()}
        assert json.loads(path.read_text().splitlines()[0])["settings"]["prefix_cache"] is cached
    assert out[True] == out[False] and len(out[True]) == 7 and len(set(out[True].values())) > 1


def test_a_resume_may_switch_the_prefix_cache(tmp_path):
    model, tok = tiny_generation_model()
    path = tmp_path / "p.jsonl"
    generate_records(records(4), model, tok, RenderOptions(), GenerationSettings(max_new_tokens=3, prefix_cache=False),
                     path, limit=2, progress=False)
    report = generate_records(records(4), model, tok, RenderOptions(), GenerationSettings(max_new_tokens=3), path,
                              resume=True, progress=False)
    assert report["already_done"] == 2 and report["generated"] == 2


def test_a_record_with_nothing_after_the_head_is_still_answered(tmp_path):
    """Two records with the same prompt: the head stops one token short, so both still get logits."""
    model, tok = tiny_generation_model()
    same = [Record(id=i, instruction="Who won?", contexts=(Context(text="Denver won.", gold=True),), response="x")
            for i in ("a", "b")]
    path = tmp_path / "p.jsonl"
    generate_records(same, model, tok, RenderOptions(), GenerationSettings(max_new_tokens=4), path, progress=False)
    rows = predictions(path)
    assert rows["a"]["prediction"] == rows["b"]["prediction"]


@pytest.mark.slow
def test_smollm2_answers_the_same_with_and_without_the_prefix_cache(tmp_path, smollm2):
    """The real model and template (a 41-token head with cings' system prompt), greedy and AdaCAD, batched."""
    from cings.loading import smollm2_gguf
    from cings.runs import load_for_generation

    model, tok, options, _ = load_for_generation(str(smollm2_gguf()))
    recs = [Record(id=f"s{i}", instruction=q, contexts=(Context(text=c, gold=True),), response="x")
            for i, (q, c) in enumerate([("Who won Super Bowl 50?", "The Denver Broncos won Super Bowl 50, 24-10."),
                                        ("What is the capital of France?", "The capital of France is Lyon."),
                                        ("Name a color.", "The sky is blue and grass is green."),
                                        ("Where is the Eiffel Tower?", "The Eiffel Tower stands in Paris, France.")])]
    for decoding in ("greedy", "adacad"):
        out = {}
        for cached in (True, False):
            path = tmp_path / f"{decoding}_{cached}.jsonl"
            generate_records(recs, model, tok, options, GenerationSettings(max_new_tokens=16, batch_size=3,
                                                                           decoding=decoding, prefix_cache=cached),
                             path, progress=False)
            out[cached] = {k: v["prediction"] for k, v in predictions(path).items()}
        assert out[True] == out[False], decoding
