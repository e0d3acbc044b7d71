"""vit-keyframes / convnext-frames: shapes, normalisation, offline timm weight loading.

Fast tests use vit_tiny_patch16_224 (5M parameters) and ConvNeXt-T on 64-pixel frames;
the documented default configurations (ViT-B/16 and ConvNeXt-T at 224) are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors import create_extractor, extract_video
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.weights import sha256_of

TINY_VIT = "vit_tiny_patch16_224"
pytestmark = pytest.mark.usefixtures("isolated_weight_caches")


@pytest.fixture
def video(video_factory):
    """96 frames at 24 fps (4 s), 48 x 64: SimpleVQA would cut it into 4 one-second clips."""
    return video_factory("clip", n_frames=96, fps=24, size=(48, 64), seed=5)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)


def loaded(name, **config):
    extractor = create_extractor(name, **config)
    extractor.load("cpu")
    return extractor


def save_timm_checkpoint(extractor, path, fmt="safetensors", seed=11):
    """Save ``extractor``'s model as timm publishes checkpoints, after perturbing its weights.

    The headless model gets a 1000-class classifier back (real timm files carry one) and
    every float tensor is shifted by seeded noise, so features from the saved file differ
    from the seeded RANDOM-INIT ones: a loader that ignored the file could not pass. The
    extractor keeps the perturbed weights, so its features are the expected ones.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in extractor.model_.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))
    state = {k: v.clone().contiguous() for k, v in extractor.model_.state_dict().items()}
    classifier = extractor.model_.pretrained_cfg["classifier"]
    state[f"{classifier}.weight"] = torch.randn(
        1000, extractor.model_.num_features, generator=generator
    )
    state[f"{classifier}.bias"] = torch.zeros(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif fmt == "train-checkpoint":  # what timm's train.py writes
        torch.save({"epoch": 3, "arch": extractor["arch"], "state_dict": state}, path)
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tiny_vit_checkpoint(tmp_path_factory, frames):
    """(checkpoint path, features its weights give on ``frames``)."""
    reference = loaded("vit-keyframes", arch=TINY_VIT, random_init=True)
    path = save_timm_checkpoint(reference, tmp_path_factory.mktemp("ckpt") / "vit.safetensors")
    return path, reference.forward(frames)


# -- shapes and semantics ----------------------------------------------------------------------
def test_vit_keyframes_random_init_gives_8_frames(video):
    extractor = create_extractor("vit-keyframes", arch=TINY_VIT, random_init=True)
    assert extractor.output_dims() == {"values": 192}
    features = extract_video(video, [extractor])["vit-keyframes"]
    assert features.shape == (8, 192) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert extractor.weights_identity == RANDOM_INIT
    assert not np.allclose(features[0], features[4])  # different key frames, different rows


def test_convnext_frames_random_init_gives_n_frames(video):
    extractor = create_extractor("convnext-frames", random_init=True, size=64, n_frames=5)
    features = extract_video(video, [extractor])["convnext-frames"]
    assert features.shape == (5, 768) == (5, extractor.output_dims()["values"])
    assert np.isfinite(features).all()


def test_random_init_is_reproducible_across_instances(frames):
    first = loaded("vit-keyframes", arch=TINY_VIT, random_init=True).forward(frames)
    second = loaded("vit-keyframes", arch=TINY_VIT, random_init=True).forward(frames)
    np.testing.assert_array_equal(first, second)


def test_normalisation_follows_the_arch_unless_overridden(frames):
    vit = loaded("vit-keyframes", arch=TINY_VIT, random_init=True)
    assert vit.mean_ == (0.5, 0.5, 0.5) and vit.std_ == (0.5, 0.5, 0.5)  # AugReg ViT
    convnext = loaded("convnext-frames", random_init=True)
    assert convnext.mean_ == pytest.approx((0.485, 0.456, 0.406))  # ImageNet
    custom = loaded(
        "vit-keyframes", arch=TINY_VIT, random_init=True, mean=[0.4, 0.4, 0.4], std=[0.2] * 3
    )
    assert custom.mean_ == (0.4, 0.4, 0.4)
    assert not np.allclose(custom.forward(frames), vit.forward(frames))


def test_views_follow_the_config():
    vit = create_extractor("vit-keyframes", n_frames=4, size=160)
    assert (vit.view().n, vit.view().size) == (4, 160)
    convnext = create_extractor("convnext-frames")
    assert (convnext.view().n, convnext.view().size) == (16, 224)


def test_unknown_arch_is_a_config_error():
    from aigvqa.extractors import ExtractorConfigError

    with pytest.raises(ExtractorConfigError, match="no_such_net"):
        create_extractor("vit-keyframes", arch="no_such_net", random_init=True).load("cpu")


@pytest.mark.slow
def test_default_vit_b16_gives_8_by_768(video):
    features = extract_video(video, [create_extractor("vit-keyframes", random_init=True)])
    assert features["vit-keyframes"].shape == (8, 768)


@pytest.mark.slow
def test_default_convnext_tiny_gives_16_by_768(video):
    features = extract_video(video, [create_extractor("convnext-frames", random_init=True)])
    assert features["convnext-frames"].shape == (16, 768)


# -- weights -------------------------------------------------------------------------------------
def test_explicit_safetensors_gives_the_saved_models_features(tiny_vit_checkpoint, frames):
    path, expected = tiny_vit_checkpoint
    extractor = loaded("vit-keyframes", arch=TINY_VIT, weights=str(path))
    np.testing.assert_array_equal(extractor.forward(frames), expected)
    assert extractor.weights_identity == f"sha256:{sha256_of(path)}"
    random = loaded("vit-keyframes", arch=TINY_VIT, random_init=True).forward(frames)
    assert not np.allclose(random, expected)


@pytest.mark.parametrize("fmt", ["train-checkpoint", "state-dict"])
def test_torch_checkpoints_load_too(tmp_path, fmt):
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    reference = loaded("convnext-frames", random_init=True, size=64)
    path = save_timm_checkpoint(reference, tmp_path / "convnext.pth", fmt=fmt)
    extractor = loaded("convnext-frames", weights=str(path), size=64)
    np.testing.assert_array_equal(extractor.forward(frames), reference.forward(frames))


def test_weights_folder_env_and_hf_cache_are_searched(
    tiny_vit_checkpoint, frames, tmp_path, monkeypatch
):
    path, expected = tiny_vit_checkpoint
    data = path.read_bytes()

    folder = tmp_path / "explicit"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(data)
    np.testing.assert_array_equal(
        loaded("vit-keyframes", arch=TINY_VIT, weights=str(folder)).forward(frames), expected
    )

    root = tmp_path / "weights"
    (root / "vit-keyframes").mkdir(parents=True)
    (root / "vit-keyframes" / f"{TINY_VIT}.safetensors").write_bytes(data)
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(root))
    from_env = loaded("vit-keyframes", arch=TINY_VIT)
    np.testing.assert_array_equal(from_env.forward(frames), expected)
    assert from_env.weights_identity == f"sha256:{sha256_of(path)}"
    monkeypatch.delenv("AIGVQA_WEIGHTS")

    # timm's own offline cache: the HF hub entry of the arch's default pretrained tag
    import huggingface_hub.constants

    repo = (
        Path(huggingface_hub.constants.HF_HUB_CACHE)
        / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    )
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "model.safetensors").write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    np.testing.assert_array_equal(loaded("vit-keyframes", arch=TINY_VIT).forward(frames), expected)


def test_missing_weights_error_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError) as info:
        loaded("convnext-frames")
    message = str(info.value)
    assert str(tmp_path / "weights" / "convnext-frames") in message
    assert "timm/convnext_tiny.in12k_ft_in1k" in message  # the HF cache entry looked for
    assert "convnext_tiny.safetensors" in message  # the file a user should put there
    assert "random_init=True" in message


def test_explicit_path_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        loaded("vit-keyframes", arch=TINY_VIT, weights=str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize("damage", ["missing-key", "wrong-shape", "wrong-arch"])
def test_mismatched_checkpoint_is_an_error(tiny_vit_checkpoint, tmp_path, damage):
    from safetensors.torch import load_file, save_file

    path, _ = tiny_vit_checkpoint
    state = load_file(str(path))
    arch = TINY_VIT
    if damage == "missing-key":
        del state["blocks.3.mlp.fc1.weight"]
    elif damage == "wrong-shape":
        state["blocks.0.attn.proj.weight"] = torch.zeros(192, 100)
    else:
        arch = "vit_small_patch16_224"  # 384-wide: every block is the wrong shape
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(CheckpointMismatchError) as info:
        loaded("vit-keyframes", arch=arch, weights=str(bad))
    assert str(bad) in str(info.value)
