"""blip-itm / blip-text / imagereward: per-frame outputs, offline loading, refusals.

Tiny random BLIP models keep every test fast: a ``BlipConfig`` saved with
``save_pretrained`` (+ a small WordPiece tokenizer) for blip-itm, and a random state dict
written in ImageReward's own key layout (``blip.visual_encoder.*``, ``blip.text_encoder.*``,
``mlp.layers.*``; the layout is spelled out below, independently of the extractor's
renaming) for imagereward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _weights_helpers import drop_tensor

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors import blip, create_extractor, encode_prompts, extract_video
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.registry import ExtractorConfigError
from aigvqa.extractors.runner import MissingPromptError
from aigvqa.extractors.weights import sha256_of

VISION = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "vocab_size": 120,
    "max_position_embeddings": 64,
    "bos_token_id": 1,
    "sep_token_id": 102,
    "pad_token_id": 0,
}
TINY = {"vision_config": VISION, "text_config": TEXT, "image_text_hidden_size": 24}
WORDS = ["a", "red", "fox", "cat", "jumping", "over", "frozen", "river", "dog", "runs"]
PROMPTS = ["a red fox jumping over a frozen river", "a cat", "a dog runs"]


@pytest.fixture(autouse=True)
def isolated(isolated_weight_caches, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    blip.clear_model_cache()
    yield
    blip.clear_model_cache()


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)


def save_tokenizer(folder):
    """A real BERT WordPiece tokenizer over a tiny vocabulary ([CLS] = 101, [SEP] = 102)."""
    from transformers import BertTokenizerFast

    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += WORDS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def saved_blip(folder, seed=5):
    from transformers import BlipConfig, BlipForImageTextRetrieval

    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(BlipConfig(**TINY)).eval()
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return model


def pixels(frames):
    mean, std = np.asarray(blip.OPENAI_MEAN), np.asarray(blip.OPENAI_STD)
    return torch.from_numpy(((frames / 255.0 - mean) / std).transpose(0, 3, 1, 2)).float()


def hf_reference(model, folder, frames, prompt):
    """ITM probability, ITC cosine and projected image embedding from transformers' own
    ``BlipForImageTextRetrieval.forward`` (both heads) for one prompt."""
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(folder)(
        [prompt] * len(frames), padding="max_length", max_length=35, return_tensors="pt"
    )
    with torch.no_grad():
        itm = model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            pixel_values=pixels(frames),
            use_itm_head=True,
        ).itm_score.softmax(-1)[:, 1]
        itc = model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            pixel_values=pixels(frames),
            use_itm_head=False,
        ).itm_score.diagonal()
        image = model.vision_proj(
            model.vision_model(pixel_values=pixels(frames)).last_hidden_state[:, 0]
        )
    return itm.numpy(), itc.numpy(), image.numpy()


# -- blip-itm: random init -------------------------------------------------------------------
def test_random_init_per_frame_outputs_columns_and_stamp(video_factory, capsys):
    path = video_factory("clip", n_frames=12, size=(48, 64))
    extractor = create_extractor("blip-itm", random_init=True, blip_config=TINY, n_frames=4)
    assert extractor.view().config() == {
        "n": 4,
        "size": 32,
        "fps": None,
        "resize_mode": "squash",
        "as_clip": False,
    }
    features = extract_video(path, [extractor], prompt=PROMPTS[0])["blip-itm"]
    assert features.shape == (4, 2 + 24) and features.dtype == np.float32
    assert ((features[:, 0] >= 0) & (features[:, 0] <= 1)).all()  # ITM probability
    assert (np.abs(features[:, 1]) <= 1 + 1e-5).all()  # ITC cosine
    image = features[:, 2:]
    assert np.isfinite(image).all() and image.std() > 0
    provenance = extractor.provenance()
    assert provenance["weights"] == RANDOM_INIT
    assert provenance["columns"] == {"match": [0, 2], "image": [2, 26]}
    assert extractor.output_dims() == {"values": 26}
    assert RANDOM_INIT in capsys.readouterr().err


def test_a_video_without_a_prompt_is_refused(video_factory):
    extractor = create_extractor("blip-itm", random_init=True, blip_config=TINY, n_frames=2)
    with pytest.raises(MissingPromptError, match="blip-itm"):
        extract_video(video_factory(), [extractor])


def test_each_item_is_scored_against_its_own_prompt(frames):
    extractor = create_extractor("blip-itm", random_init=True, blip_config=TINY)
    extractor.load()
    mixed = extractor.forward(frames[:3], prompts=[PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    first = extractor.forward(frames[:3], prompts=[PROMPTS[0]] * 3)
    second = extractor.forward(frames[:3], prompts=[PROMPTS[1]] * 3)
    np.testing.assert_allclose(mixed[[0, 2]], first[[0, 2]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[1], second[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(first[1, :2], second[1, :2])  # the prompt matters
    np.testing.assert_array_equal(first[:, 2:], second[:, 2:])  # the image embedding does not
    with pytest.raises(ValueError, match="one prompt per item"):
        extractor.forward(frames[:3], prompts=[PROMPTS[0]])


def test_blip_config_shapes_random_init_only(tmp_path):
    with pytest.raises(ExtractorConfigError, match="random-init model only"):
        create_extractor("blip-itm", blip_config=TINY)
    with pytest.raises(ExtractorConfigError, match="not a valid BlipConfig"):
        create_extractor("blip-itm", random_init=True, blip_config={"vision_config": 3}).load()


def test_default_random_init_is_blip_itm_base_size():
    extractor = create_extractor("blip-itm", random_init=True)
    assert extractor.view().config()["size"] == 384 and extractor.output_dims() == {"values": 258}
    text = create_extractor("blip-text", random_init=True)
    assert text.output_dims() == {"pooled": 256, "tokens": 256}


# -- blip-itm / blip-text: a save_pretrained folder -------------------------------------------
def test_folder_gives_transformers_itm_itc_and_embedding(tmp_path, frames):
    model = saved_blip(tmp_path / "blip")
    extractor = create_extractor("blip-itm", weights=str(tmp_path / "blip"))
    assert extractor.view().config()["size"] == 32 and extractor.output_dims() == {"values": 26}
    extractor.load()
    out = extractor.forward(frames, prompts=[PROMPTS[0]] * len(frames))
    itm, itc, image = hf_reference(model, tmp_path / "blip", frames, PROMPTS[0])
    np.testing.assert_allclose(out[:, 0], itm, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[:, 1], itc, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[:, 2:], image, rtol=1e-4, atol=1e-5)
    assert extractor.weights_identity == f"sha256:{sha256_of(tmp_path / 'blip')}"


def test_blip_text_from_the_blip_itm_folder_is_the_itc_text_side(tmp_path, frames, monkeypatch):
    saved_blip(tmp_path / "weights" / "blip-itm")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    frames_ex = create_extractor("blip-itm")
    text = create_extractor("blip-text")  # looks in blip-text/, then blip-itm/
    assert text.resolve_weights() == tmp_path / "weights" / "blip-itm"
    out = encode_prompts(text, [PROMPTS[1], PROMPTS[0], PROMPTS[1]])
    assert out["pooled"].shape == (3, 24) and out["tokens"].shape == (3, 35, 24)
    np.testing.assert_array_equal(out["mask"][0].sum(), 4)  # [CLS] a cat [SEP]
    np.testing.assert_array_equal(out["pooled"][0], out["pooled"][2])
    np.testing.assert_allclose(out["tokens"][:, 0], out["pooled"], rtol=1e-6)
    frames_ex.load()
    assert frames_ex.blip_.model is text.blip_.model  # one model for both
    scored = frames_ex.forward(frames, prompts=[PROMPTS[0]] * len(frames))
    image = scored[:, 2:] / np.linalg.norm(scored[:, 2:], axis=1, keepdims=True)
    prompt = out["pooled"][1] / np.linalg.norm(out["pooled"][1])
    np.testing.assert_allclose(image @ prompt, scored[:, 1], rtol=1e-4, atol=1e-5)


def test_folder_with_a_missing_tensor_is_refused(tmp_path):
    saved_blip(tmp_path / "blip")
    drop_tensor(tmp_path / "blip" / "model.safetensors", "itm_head.weight")
    with pytest.raises(CheckpointMismatchError, match="itm_head.weight"):
        create_extractor("blip-itm", weights=str(tmp_path / "blip")).load()


def test_folder_without_tokenizer_files_is_refused(tmp_path):
    saved_blip(tmp_path / "blip")
    for name in ("vocab.txt", "tokenizer.json"):
        (tmp_path / "blip" / name).unlink()
    with pytest.raises(WeightsNotFoundError, match="no tokenizer files"):
        create_extractor("blip-itm", weights=str(tmp_path / "blip")).load()


def test_missing_blip_weights_name_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError) as info:
        create_extractor("blip-text").load()
    message = str(info.value)
    assert str(tmp_path / "weights" / "blip-text") in message
    assert str(tmp_path / "weights" / "blip-itm") in message
    assert "Salesforce/blip-itm-base-coco" in message and "random_init=True" in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_extractor("blip-itm", weights=str(tmp_path / "typo")).load()


# -- imagereward ---------------------------------------------------------------------------------
def imagereward_layout(vision=VISION, text=TEXT, embed=24):
    """{key: shape} of an ImageReward.pt for the given sizes, in ImageReward's own names."""
    d, layers, inter = (
        vision["hidden_size"],
        vision["num_hidden_layers"],
        vision["intermediate_size"],
    )
    patch = vision["patch_size"]
    tokens = (vision["image_size"] // patch) ** 2 + 1
    shapes = {
        "blip.visual_encoder.cls_token": (1, 1, d),
        "blip.visual_encoder.pos_embed": (1, tokens, d),
        "blip.visual_encoder.patch_embed.proj.weight": (d, 3, patch, patch),
        "blip.visual_encoder.patch_embed.proj.bias": (d,),
        "blip.visual_encoder.norm.weight": (d,),
        "blip.visual_encoder.norm.bias": (d,),
    }
    for i in range(layers):
        block = f"blip.visual_encoder.blocks.{i}."
        shapes.update(
            {
                block + "norm1.weight": (d,),
                block + "norm1.bias": (d,),
                block + "attn.qkv.weight": (3 * d, d),
                block + "attn.qkv.bias": (3 * d,),
                block + "attn.proj.weight": (d, d),
                block + "attn.proj.bias": (d,),
                block + "norm2.weight": (d,),
                block + "norm2.bias": (d,),
                block + "mlp.fc1.weight": (inter, d),
                block + "mlp.fc1.bias": (inter,),
                block + "mlp.fc2.weight": (d, inter),
                block + "mlp.fc2.bias": (d,),
            }
        )
    t, t_inter = text["hidden_size"], text["intermediate_size"]
    shapes.update(
        {
            "blip.text_encoder.embeddings.word_embeddings.weight": (text["vocab_size"], t),
            "blip.text_encoder.embeddings.position_embeddings.weight": (
                text["max_position_embeddings"],
                t,
            ),
            "blip.text_encoder.embeddings.LayerNorm.weight": (t,),
            "blip.text_encoder.embeddings.LayerNorm.bias": (t,),
        }
    )
    for i in range(text["num_hidden_layers"]):
        layer = f"blip.text_encoder.encoder.layer.{i}."
        for part, width in (("attention", t), ("crossattention", d)):
            shapes.update(
                {
                    f"{layer}{part}.self.query.weight": (t, t),
                    f"{layer}{part}.self.query.bias": (t,),
                    f"{layer}{part}.self.key.weight": (t, width),
                    f"{layer}{part}.self.key.bias": (t,),
                    f"{layer}{part}.self.value.weight": (t, width),
                    f"{layer}{part}.self.value.bias": (t,),
                    f"{layer}{part}.output.dense.weight": (t, t),
                    f"{layer}{part}.output.dense.bias": (t,),
                    f"{layer}{part}.output.LayerNorm.weight": (t,),
                    f"{layer}{part}.output.LayerNorm.bias": (t,),
                }
            )
        shapes.update(
            {
                layer + "intermediate.dense.weight": (t_inter, t),
                layer + "intermediate.dense.bias": (t_inter,),
                layer + "output.dense.weight": (t, t_inter),
                layer + "output.dense.bias": (t,),
                layer + "output.LayerNorm.weight": (t,),
                layer + "output.LayerNorm.bias": (t,),
            }
        )
    shapes.update(
        {
            "blip.vision_proj.weight": (embed, d),
            "blip.vision_proj.bias": (embed,),
            "blip.text_proj.weight": (embed, t),
            "blip.text_proj.bias": (embed,),
        }
    )
    width = t
    for index, out in zip((0, 2, 4, 6, 7), (1024, 128, 64, 16, 1)):
        shapes[f"mlp.layers.{index}.weight"] = (out, width)
        shapes[f"mlp.layers.{index}.bias"] = (out,)
        width = out
    return shapes


def saved_imagereward(path, seed=3, drop=(), extra=None):
    """A random ImageReward.pt (the published format: a plain state dict, saved by torch.save)."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        k: torch.randn(shape, generator=generator) * 0.2
        for k, shape in imagereward_layout().items()
        if k not in drop
    }
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(
        TEXT["max_position_embeddings"]
    )[None]
    state.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def reward_of(extractor, **kw):
    return create_extractor("imagereward", blip_config=TINY, **kw)


def test_imagereward_checkpoint_file_gives_the_published_reward(tmp_path, frames):
    state = saved_imagereward(tmp_path / "ir" / "ImageReward.pt")
    save_tokenizer(tmp_path / "bert")
    extractor = create_extractor(
        "imagereward",
        blip_config=TINY,
        weights=str(tmp_path / "ir" / "ImageReward.pt"),
        tokenizer=str(tmp_path / "bert"),
    )
    assert extractor.view().config()["resize_mode"] == "crop" and extractor.output_dims() == {
        "values": 1
    }
    extractor.load()
    assert extractor.weights_identity == f"sha256:{sha256_of(tmp_path / 'ir' / 'ImageReward.pt')}"
    module = extractor.blip_.model.state_dict()
    # the renaming, rule by rule (BLIP's ViT names -> transformers' BlipVisionModel names)
    for ours, theirs in [
        ("vision_model.embeddings.class_embedding", "blip.visual_encoder.cls_token"),
        ("vision_model.embeddings.position_embedding", "blip.visual_encoder.pos_embed"),
        (
            "vision_model.embeddings.patch_embedding.weight",
            "blip.visual_encoder.patch_embed.proj.weight",
        ),
        (
            "vision_model.encoder.layers.1.layer_norm1.weight",
            "blip.visual_encoder.blocks.1.norm1.weight",
        ),
        (
            "vision_model.encoder.layers.1.layer_norm2.bias",
            "blip.visual_encoder.blocks.1.norm2.bias",
        ),
        (
            "vision_model.encoder.layers.0.self_attn.qkv.weight",
            "blip.visual_encoder.blocks.0.attn.qkv.weight",
        ),
        (
            "vision_model.encoder.layers.0.self_attn.projection.bias",
            "blip.visual_encoder.blocks.0.attn.proj.bias",
        ),
        (
            "vision_model.encoder.layers.0.mlp.fc2.weight",
            "blip.visual_encoder.blocks.0.mlp.fc2.weight",
        ),
        ("vision_model.post_layernorm.weight", "blip.visual_encoder.norm.weight"),
        (
            "text_encoder.encoder.layer.1.crossattention.self.key.weight",
            "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight",
        ),
        ("mlp.7.weight", "mlp.layers.7.weight"),
    ]:
        torch.testing.assert_close(module[ours], state[theirs])

    rewards = extractor.forward(frames, prompts=[PROMPTS[0]] * 3 + [PROMPTS[1]] * 2)
    assert rewards.shape == (5, 1) and rewards.dtype == np.float32
    # the reward: ImageReward's linear MLP on the [CLS] state, then its mean / std
    model = extractor.blip_.model
    ids, mask = extractor.blip_.tokenize([PROMPTS[0]] * 3 + [PROMPTS[1]] * 2)
    with torch.no_grad():
        image = model.vision_model(pixel_values=pixels(frames)).last_hidden_state
        cls = model.text_encoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image,
            encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long),
        ).last_hidden_state[:, 0]
        x = cls
        for index in (0, 2, 4, 6, 7):
            x = x @ state[f"mlp.layers.{index}.weight"].T + state[f"mlp.layers.{index}.bias"]
    expected = (x.numpy() - 0.16717362830052426) / 1.0333394966054072
    np.testing.assert_allclose(rewards, expected, rtol=1e-4, atol=1e-5)


def test_imagereward_from_aigvqa_weights_with_the_tokenizer_beside_it(
    tmp_path, frames, monkeypatch
):
    saved_imagereward(tmp_path / "weights" / "imagereward" / "ImageReward.pt")
    save_tokenizer(tmp_path / "weights" / "imagereward")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    extractor = reward_of(None)
    assert extractor.resolve_weights() == tmp_path / "weights" / "imagereward" / "ImageReward.pt"
    extractor.load()
    assert extractor.forward(frames[:2], prompts=PROMPTS[:2]).shape == (2, 1)


def test_imagereward_checkpoint_missing_a_tensor_names_it(tmp_path):
    saved_imagereward(
        tmp_path / "ImageReward.pt", drop=("blip.visual_encoder.blocks.1.norm2.weight",)
    )
    save_tokenizer(tmp_path)
    with pytest.raises(
        CheckpointMismatchError, match=r"missing keys \(1\)[\s\S]*layers.1.layer_norm2.weight"
    ):
        reward_of(None, weights=str(tmp_path / "ImageReward.pt")).load()


def test_imagereward_checkpoint_with_a_foreign_tensor_is_refused(tmp_path):
    saved_imagereward(
        tmp_path / "ImageReward.pt", extra={"blip.itm_head.weight": torch.zeros(2, 32)}
    )
    save_tokenizer(tmp_path)
    with pytest.raises(
        CheckpointMismatchError, match=r"unexpected keys \(1\)[\s\S]*blip.itm_head.weight"
    ):
        reward_of(None, weights=str(tmp_path / "ImageReward.pt")).load()


def test_imagereward_checkpoint_of_another_size_is_refused(tmp_path):
    saved_imagereward(tmp_path / "ImageReward.pt")
    save_tokenizer(tmp_path)
    wider = {**TINY, "text_config": {**TEXT, "intermediate_size": 80}}
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        create_extractor(
            "imagereward", blip_config=wider, weights=str(tmp_path / "ImageReward.pt")
        ).load()


def test_imagereward_missing_checkpoint_and_missing_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError) as info:
        reward_of(None).load()
    message = str(info.value)
    assert "$AIGVQA_WEIGHTS/imagereward/ImageReward.pt" in message
    assert "THUDM/ImageReward" in message
    assert str(tmp_path / "home" / ".cache" / "ImageReward" / "ImageReward.pt") in message
    saved_imagereward(tmp_path / "ckpt" / "ImageReward.pt")  # no tokenizer anywhere
    with pytest.raises(WeightsNotFoundError, match="bert-base-uncased") as info:
        reward_of(None, weights=str(tmp_path / "ckpt" / "ImageReward.pt")).load()
    assert str(tmp_path / "ckpt") in str(info.value)


def test_imagereward_random_init_per_frame_reward(video_factory, capsys):
    extractor = reward_of(None, random_init=True, n_frames=3)
    out = extract_video(video_factory(n_frames=10), [extractor], prompt=PROMPTS[2])["imagereward"]
    assert out.shape == (3, 1) and np.isfinite(out).all()
    assert (
        extractor.provenance()["weights"] == RANDOM_INIT and "columns" not in extractor.provenance()
    )
    assert RANDOM_INIT in capsys.readouterr().err


# -- end to end: extract on Dask, then evaluate and train ---------------------------------------
def test_extract_and_evaluate_with_random_init_blip(video_factory, tmp_path, capsys):
    from distributed import Client

    from aigvqa.cache.store import FeatureCache
    from aigvqa.pipeline.evaluation.evaluate import evaluate_cache
    from aigvqa.pipeline.extract import extract
    from aigvqa.pipeline.model.bundle import load_bundle
    from aigvqa.pipeline.model.train import train
    from aigvqa.pipeline.records import VideoRecord

    rng = np.random.default_rng(0)
    records = []
    for p, prompt in enumerate(PROMPTS):
        for g in range(3):
            vid = f"p{p}-g{g}"
            path = video_factory(vid, n_frames=8, size=(32, 48), seed=3 * p + g)
            records.append(
                VideoRecord(
                    vid,
                    path,
                    prompt,
                    labels={"mos": float(g + rng.normal(0, 0.3))},
                    groups={"prompt": f"p{p}", "generator": f"g{g}"},
                )
            )
    records.append(
        VideoRecord(
            "no-prompt",
            video_factory("no-prompt", n_frames=8, size=(32, 48)),
            None,
            labels={"mos": 1.0},
            groups={"generator": "g0"},
        )
    )
    tiny_blip = {"random_init": True, "blip_config": TINY}
    extractors = {
        "handcrafted": {"max_frames": 4, "size": 32},
        "blip-itm": {**tiny_blip, "n_frames": 3},
        "blip-text": tiny_blip,
        "imagereward": {**tiny_blip, "n_frames": 3},
    }
    cache = tmp_path / "feats.h5"
    with Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0"
    ) as client:
        report = extract(records, extractors, cache, client=client, progress=False)
    assert RANDOM_INIT in capsys.readouterr().err
    assert (report.succeeded, report.failed) == (9, 1)
    store = FeatureCache(cache)
    assert {f.extractor for f in store.failures()} == {"blip-itm", "blip-text", "imagereward"}
    assert len(store.ids("handcrafted")) == 10  # the prompt-less video keeps its other features
    for group in ("blip-itm", "blip-text", "imagereward"):
        assert store.group_info(group).random_init
    assert store.group_info("blip-itm").provenance["columns"] == {"match": [0, 2], "image": [2, 26]}
    data = store.read(["blip-itm", "imagereward"])
    assert data.arrays["blip-itm"].shape == (9, 3, 26) and data.arrays["imagereward"].shape == (
        9,
        3,
        1,
    )

    params = {
        "features": {"technical": "handcrafted", "aesthetic": "handcrafted"},
        "epochs": 3,
        "d_model": 8,
        "mlp_hidden": 8,
        "batch_size": 4,
    }
    result = evaluate_cache(
        cache,
        "branchsum",
        params=params,
        split="prompt-disjoint",
        trials=2,
        features=["handcrafted", "blip-itm", "blip-text", "imagereward"],
        progress=False,
    )
    assert {"pair_acc", "prompt_srcc", "model_pair_acc"} <= set(result.metric_names())
    assert all(0.0 <= v <= 1.0 for v in result.values("pair_acc"))

    bundle_path, _ = train(
        cache,
        "branchsum",
        tmp_path / "model",
        params=params,
        features=["handcrafted", "blip-itm", "blip-text", "imagereward"],
    )
    bundle = load_bundle(bundle_path)
    assert {"blip-itm-match", "blip-itm-image", "blip-text-pooled", "imagereward"} <= set(
        bundle.feature_names
    )
    assert bundle.head.feature_names_["match"] == "blip-itm-match"
    assert bundle.head.feature_names_["frames"] == "blip-itm-image"
    # scoring from the cache derives the column features the same way
    from aigvqa.pipeline.model.score import score

    scored = score(records[:9], bundle_path, tmp_path / "scores.csv", cache=cache, progress=False)
    assert (scored.scored, scored.failed, scored.from_cache) == (9, 0, 9)
