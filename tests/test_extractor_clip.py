"""clip-frames / clip-text: shapes, documented semantics, offline weight loading.

A tiny open_clip architecture (registered from a JSON config) and a tiny transformers
CLIPConfig keep every test fast; the real-size ViT-B-32 shape test is marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _weights_helpers import drop_tensor

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors import clip, create_extractor, encode_prompts, extract_video
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.extractors.weights import sha256_of

TINY = "aigvqa-tiny-clip"
TINY_WIDE = "aigvqa-tiny-clip-wide"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = [
    "a red fox jumping over a frozen river",
    "a cat",
    "a red fox jumping over a frozen river",
]


@pytest.fixture(scope="module", autouse=True)
def tiny_archs(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    wide = json.loads(json.dumps(TINY_CFG))
    wide["vision_cfg"]["width"] = 96
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    (folder / f"{TINY_WIDE}.json").write_text(json.dumps(wide))
    open_clip.add_model_config(folder)
    yield


@pytest.fixture(autouse=True)
def isolated_caches(isolated_weight_caches, tmp_path, monkeypatch):
    """No real weights or caches leak in: the shared isolation plus an empty home (open_clip
    and HF look there) and a cleared model cache."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    clip.clear_model_cache()
    yield
    clip.clear_model_cache()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, moving_pattern(24, 48, 64, seed=3), fps=8)
    return path


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)


def tiny(name="clip-frames", **config):
    return create_extractor(name, arch=TINY, **config)


def saved_tiny_checkpoint(path, arch=TINY, seed=7):
    """A random tiny open_clip model saved as a real open_clip checkpoint (a state dict)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return model.eval()


def reference_image_features(model, frames, mean=clip.OPENAI_MEAN, std=clip.OPENAI_STD):
    pixels = (frames / 255.0 - np.asarray(mean)) / np.asarray(std)
    with torch.no_grad():
        return model.encode_image(torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float()).numpy()


# -- random init: shapes, provenance ------------------------------------------------------
def test_random_init_frames_shapes_on_a_video_and_loud_provenance(video, capsys):
    extractor = tiny(random_init=True, n_frames=6)
    features = extract_video(video, [extractor])["clip-frames"]
    assert features.shape == (6, 32) and features.dtype == np.float32
    assert np.isfinite(features).all() and features.std() > 0
    provenance = extractor.provenance()
    assert provenance["weights"] == RANDOM_INIT
    assert provenance["view"]["n"] == 6 and provenance["view"]["size"] == 32
    assert RANDOM_INIT in capsys.readouterr().err


def test_random_init_is_reproducible_and_leaves_the_callers_rng_alone(frames):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = tiny(random_init=True)
    first.load()
    assert torch.equal(torch.rand(1), expected_next)
    features = first.forward(frames)
    clip.clear_model_cache()
    second = tiny(random_init=True)
    second.load()
    np.testing.assert_array_equal(second.forward(frames), features)


def test_text_shapes_mask_and_documented_token_semantics():
    text = tiny("clip-text", random_init=True)
    out = encode_prompts(text, PROMPTS)
    assert out["pooled"].shape == (3, 32)
    assert out["tokens"].shape == (3, 77, 32)
    assert out["mask"].shape == (3, 77) and out["mask"].dtype == bool
    np.testing.assert_array_equal(out["pooled"][0], out["pooled"][2])  # duplicate prompt
    ids, _ = text.towers_.tokenize(PROMPTS[:2])
    # mask: start token, the words, end token; the rest is padding
    np.testing.assert_array_equal(out["mask"][:2].sum(1), (ids != 0).sum(1).numpy())
    with torch.no_grad():
        expected = text.towers_.model.encode_text(ids).numpy()
    np.testing.assert_allclose(out["pooled"][:2], expected, rtol=1e-5, atol=1e-5)
    # pooled is the projected end-of-text token state: the same row of `tokens`
    eot = ids.argmax(dim=1).numpy()
    np.testing.assert_allclose(out["tokens"][[0, 1], eot], out["pooled"][:2], rtol=1e-5, atol=1e-5)
    assert text.output_dims() == {"pooled": 32, "tokens": 32}


def test_pre_projection_is_the_cls_before_the_projection(frames):
    projected = tiny(random_init=True)
    projected.load()
    pre = tiny(random_init=True, pre_projection=True)
    pre.load()
    raw = pre.forward(frames)
    assert raw.shape == (5, 64) and pre.output_dims() == {"values": 64}
    proj = pre.towers_.model.visual.proj.detach().numpy()
    np.testing.assert_allclose(raw @ proj, projected.forward(frames), rtol=1e-4, atol=1e-5)


def test_frames_and_text_share_one_model_per_checkpoint(tmp_path):
    saved_tiny_checkpoint(tmp_path / "tiny.bin")
    frames_ex = tiny(weights=str(tmp_path / "tiny.bin"))
    text_ex = tiny("clip-text", weights=str(tmp_path / "tiny.bin"))
    other = tiny(random_init=True)
    for extractor in (frames_ex, text_ex, other):
        extractor.load()
    assert frames_ex.towers_.model is text_ex.towers_.model
    assert other.towers_.model is not frames_ex.towers_.model


def test_releasing_a_workers_models_clears_every_familys_shared_models():
    """``clear_shared_models`` (what a stage-one worker runs when a run on a shared cluster
    ends) frees the models of every family's cache, not of a list of module names."""
    from aigvqa.extractors.base import clear_shared_models

    first = tiny(random_init=True)
    first.load()
    assert clear_shared_models() >= 1
    again = tiny(random_init=True)
    again.load()
    assert again.towers_.model is not first.towers_.model  # built afresh
    assert clear_shared_models() >= 1 and clear_shared_models() == 0


def test_building_an_open_clip_model_leaves_the_root_logger_unconfigured():
    """open_clip logs with ``logging.info(...)``, which runs ``logging.basicConfig()`` on a
    root logger without handlers; the root kept that handler, so distributed, imported
    later (the stage-one bench), added none of its own and every local cluster printed
    its INFO records ("INFO:distributed.scheduler:...") through it."""
    import logging

    root = logging.getLogger()
    saved = root.handlers[:]  # pytest's own capture handlers: a fresh process has none
    for handler in saved:
        root.removeHandler(handler)
    try:
        tiny("clip-frames", random_init=True).load()
        tiny("clip-text", random_init=True).load()
        left = root.handlers[:]
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
    assert left == []
    assert not any(isinstance(f, clip._DropOpenClipRandomNotice) for f in root.filters)


@pytest.mark.slow
def test_default_vit_b_32_random_init_shapes(video):
    frames_ex = create_extractor("clip-frames", random_init=True, n_frames=4)
    assert frames_ex.config()["arch"] == "ViT-B-32" and frames_ex.view().config()["size"] == 224
    text = create_extractor("clip-text", random_init=True)
    assert extract_video(video, [frames_ex])["clip-frames"].shape == (4, 512)
    out = encode_prompts(text, PROMPTS[:2])
    assert out["pooled"].shape == (2, 512) and out["tokens"].shape == (2, 77, 512)
    assert frames_ex.towers_.model is text.towers_.model


@pytest.mark.slow
def test_hf_random_init_builds_the_default_clip_config(video):
    frames_ex = create_extractor("clip-frames", backend="hf", random_init=True, n_frames=2)
    assert frames_ex.view().config()["size"] == 224 and frames_ex.output_dims() == {"values": 512}
    assert extract_video(video, [frames_ex])["clip-frames"].shape == (2, 512)
    assert frames_ex.provenance()["weights"] == RANDOM_INIT
    out = encode_prompts(create_extractor("clip-text", backend="hf", random_init=True), PROMPTS[:1])
    assert out["tokens"].shape == (1, 77, 512) and out["mask"][0].sum() == 10


# -- open_clip checkpoints through the public resolution path ------------------------------
@pytest.mark.parametrize("filename", [f"{TINY}.bin", f"{TINY}.safetensors"])
def test_open_clip_checkpoint_explicit_path_gives_the_saved_models_features(
    tmp_path, frames, filename
):
    model = saved_tiny_checkpoint(tmp_path / filename)
    extractor = tiny(weights=str(tmp_path / filename))
    extractor.load()
    np.testing.assert_allclose(
        extractor.forward(frames), reference_image_features(model, frames), rtol=1e-5, atol=1e-5
    )
    assert extractor.weights_identity == f"sha256:{sha256_of(tmp_path / filename)}"
    assert extractor.provenance()["weights"] != RANDOM_INIT


def test_open_clip_checkpoint_from_aigvqa_weights_for_frames_and_text(
    tmp_path, frames, monkeypatch
):
    folder = tmp_path / "weights" / "clip-frames"
    folder.mkdir(parents=True)
    model = saved_tiny_checkpoint(folder / f"{TINY}.bin")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    extractor = tiny()
    extractor.load()
    np.testing.assert_allclose(
        extractor.forward(frames), reference_image_features(model, frames), rtol=1e-5, atol=1e-5
    )
    text = tiny("clip-text")  # clip-text falls back to the clip-frames folder
    assert text.resolve_weights() == folder / f"{TINY}.bin"
    out = encode_prompts(text, PROMPTS[:1])
    ids, _ = text.towers_.tokenize(PROMPTS[:1])
    with torch.no_grad():
        np.testing.assert_allclose(
            out["pooled"], model.encode_text(ids).numpy(), rtol=1e-5, atol=1e-5
        )


def test_open_clip_pretrained_tag_is_found_in_the_offline_hf_cache(tmp_path, frames, monkeypatch):
    import huggingface_hub.constants
    import open_clip.pretrained

    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED, TINY, {"testtag": {"hf_hub": "aigvqa-test/tiny-clip/"}}
    )
    snapshot = tmp_path / "hf-cache" / "models--aigvqa-test--tiny-clip" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    model = saved_tiny_checkpoint(snapshot / "open_clip_pytorch_model.bin")
    assert huggingface_hub.constants.HF_HUB_CACHE == str(tmp_path / "hf-cache")
    extractor = tiny(pretrained="testtag")
    assert extractor.resolve_weights() == snapshot / "open_clip_pytorch_model.bin"
    extractor.load()
    np.testing.assert_allclose(
        extractor.forward(frames), reference_image_features(model, frames), rtol=1e-5, atol=1e-5
    )


class _Node(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    """Save tensors the way OpenAI's ViT-B-32.pt holds them: a TorchScript archive."""
    root = _Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, _Node())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


def test_openai_torchscript_checkpoint_is_read_without_unpickling_code(tmp_path, frames):
    model = saved_tiny_checkpoint(tmp_path / "plain.bin")
    state = dict(model.state_dict())
    state["input_resolution"] = torch.tensor(32)  # the OpenAI archive's extra entries
    state["context_length"] = torch.tensor(77)
    state["vocab_size"] = torch.tensor(49408)
    _torchscript_archive(
        {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
        tmp_path / f"{TINY}.pt",
    )
    extractor = tiny(weights=str(tmp_path / f"{TINY}.pt"))
    extractor.load()
    np.testing.assert_allclose(
        extractor.forward(frames), reference_image_features(model, frames), rtol=2e-2, atol=2e-2
    )


def test_torchscript_weights_with_code_that_runs_on_load_are_refused_before_it_runs(
    tmp_path, capfd
):
    """OpenAI's archive format can carry a __setstate__ that torch.jit.load executes; the
    extractor reads tensors only and refuses a module it cannot read without running code."""
    import warnings

    class Crafted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.proj

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, bool]:
            return (self.proj, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
            print("CRAFTED-CODE-RAN")
            self.proj = state[0]
            self.training = state[1]

    path = tmp_path / f"{TINY}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(Crafted()).save(str(path))
    with pytest.raises(CheckpointMismatchError, match="never runs code|custom state"):
        tiny(weights=str(path)).load()
    assert "CRAFTED-CODE-RAN" not in capfd.readouterr().out


# -- failures ----------------------------------------------------------------------------------
def test_missing_weights_name_every_place_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    extractor = create_extractor("clip-frames")  # ViT-B-32, tag openai; nothing is built
    with pytest.raises(WeightsNotFoundError) as info:
        extractor.load()
    message = str(info.value)
    assert str(tmp_path / "weights" / "clip-frames") in message
    assert "ViT-B-32.pt" in message and "open_clip_pytorch_model.bin" in message
    assert "timm/vit_base_patch32_clip_224.openai" in message  # open_clip's HF cache entry
    assert str(tmp_path / "home" / ".cache" / "clip" / "ViT-B-32.pt") in message  # URL cache
    assert "$AIGVQA_WEIGHTS/clip-frames/ViT-B-32.safetensors" in message  # what to put where
    assert "random_init=True" in message


def test_missing_explicit_path_does_not_fall_through(tmp_path, monkeypatch):
    folder = tmp_path / "weights" / "clip-frames"
    folder.mkdir(parents=True)
    saved_tiny_checkpoint(folder / f"{TINY}.bin")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        tiny(weights=str(tmp_path / "typo.bin")).load()


def test_checkpoint_missing_a_key_is_refused(tmp_path):
    saved_tiny_checkpoint(tmp_path / "full.bin")
    state = torch.load(tmp_path / "full.bin", weights_only=True)
    del state["visual.ln_post.weight"]
    torch.save(state, tmp_path / "broken.bin")
    with pytest.raises(
        CheckpointMismatchError, match=r"missing keys \(1\)[\s\S]*visual.ln_post.weight"
    ):
        tiny(weights=str(tmp_path / "broken.bin")).load()


def test_checkpoint_of_another_arch_is_refused(tmp_path):
    saved_tiny_checkpoint(tmp_path / "wide.bin", arch=TINY_WIDE)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as info:
        tiny(weights=str(tmp_path / "wide.bin")).load()
    assert str(tmp_path / "wide.bin") in str(info.value)


# -- transformers CLIPModel folders --------------------------------------------------------
def _tiny_hf_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )


def _saved_hf_clip(folder):
    from transformers import CLIPModel

    torch.manual_seed(11)
    model = CLIPModel(_tiny_hf_config()).eval()
    model.save_pretrained(folder)
    return model


def _hf_reference(model, frames, prompts):
    from open_clip import SimpleTokenizer

    pixels = (frames / 255.0 - np.asarray(clip.OPENAI_MEAN)) / np.asarray(clip.OPENAI_STD)
    ids = SimpleTokenizer()(prompts)
    with torch.no_grad():
        vision = model.vision_model(
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float()
        )
        image = model.visual_projection(vision.pooler_output).numpy()
        text = model.text_model(input_ids=ids, attention_mask=(ids != 0).long())
        pooled = model.text_projection(text.pooler_output).numpy()
    return image, pooled


def test_hf_clip_folder_explicit_and_from_aigvqa_weights(tmp_path, frames, monkeypatch):
    model = _saved_hf_clip(tmp_path / "pickscore-like")
    image_ref, text_ref = _hf_reference(model, frames, PROMPTS[:2])

    explicit = create_extractor(
        "clip-frames", backend="hf", weights=str(tmp_path / "pickscore-like")
    )
    assert explicit.view().config()["size"] == 32 and explicit.output_dims() == {"values": 24}
    explicit.load()
    np.testing.assert_allclose(explicit.forward(frames), image_ref, rtol=1e-5, atol=1e-5)
    assert explicit.weights_identity == f"sha256:{sha256_of(tmp_path / 'pickscore-like')}"

    clip.clear_model_cache()
    (tmp_path / "weights").mkdir()
    (tmp_path / "pickscore-like").rename(tmp_path / "weights" / "clip-frames")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    text = create_extractor("clip-text", backend="hf")
    out = encode_prompts(text, PROMPTS[:2])
    np.testing.assert_allclose(out["pooled"], text_ref, rtol=1e-5, atol=1e-5)
    assert out["tokens"].shape == (2, 77, 24)


def test_hf_clip_folder_with_a_missing_tensor_is_refused(tmp_path):
    _saved_hf_clip(tmp_path / "hf")
    drop_tensor(tmp_path / "hf" / "model.safetensors", "visual_projection.weight")
    with pytest.raises(CheckpointMismatchError, match="visual_projection.weight"):
        create_extractor("clip-frames", backend="hf", weights=str(tmp_path / "hf")).load()


def test_hf_clip_missing_folder_names_the_hf_cache(tmp_path):
    extractor = create_extractor("clip-frames", backend="hf")
    with pytest.raises(WeightsNotFoundError, match="openai/clip-vit-base-patch32"):
        extractor.load()
