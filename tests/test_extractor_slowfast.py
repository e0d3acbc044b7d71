"""slowfast: SimpleVQA clips -> [clips, 2304], pytorchvideo .pyth loading, clear errors.

The full SlowFast R50 is built (it takes well under a second), but fast tests feed it
64-pixel clips; the native 224-pixel runs are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors import create_extractor, extract_video
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.slowfast import KINETICS_MEAN, KINETICS_STD, SLOWFAST_R50_FILENAME
from aigvqa.extractors.weights import sha256_of

SMALL = {"size": 64}
pytestmark = pytest.mark.usefixtures("isolated_weight_caches")


@pytest.fixture
def video(video_factory):
    """96 frames at 24 fps (4 s), 48 x 64: SimpleVQA would cut it into 4 one-second clips."""
    return video_factory("clip", n_frames=96, fps=24, size=(48, 64), seed=2)


@pytest.fixture(scope="module")
def clips():
    return np.random.default_rng(1).integers(0, 256, size=(2, 32, 64, 64, 3), dtype=np.uint8)


def loaded(**config):
    extractor = create_extractor("slowfast", **config)
    extractor.load("cpu")
    return extractor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, clips):
    """(a .pyth file in pytorchvideo's model-zoo format, the features its weights give).

    The seeded random model is perturbed before saving, so a loader that ignored the file
    and initialised randomly would give other features.
    """
    reference = loaded(random_init=True, **SMALL)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for tensor in reference.model_.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))
    path = tmp_path_factory.mktemp("ckpt") / SLOWFAST_R50_FILENAME
    torch.save({"model_state": reference.model_.state_dict(), "epoch": 196}, path)
    return path, reference.forward(clips)


def test_random_init_gives_one_2304_row_per_second(video):
    extractor = create_extractor("slowfast", random_init=True, **SMALL)
    assert extractor.output_dims() == {"values": 2304}
    features = extract_video(video, [extractor])["slowfast"]
    assert features.shape == (4, 2304) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert extractor.weights_identity == RANDOM_INIT
    assert not np.allclose(features[0], features[3])


def test_view_is_simplevqa_clips():
    view = create_extractor("slowfast").view()
    assert view.config() == {"clip_len": 32, "size": 224, "resize_mode": "squash"}


def test_features_are_the_pooled_pathways_before_the_head(clips):
    """slow 2048 ++ fast 256 = the global means of the last stage, written out by hand
    from pytorchvideo's model: the slow pathway sees frames 0, 4, 8, 13, 17, 22, 26, 31."""
    extractor = loaded(random_init=True, **SMALL)
    model = extractor.model_
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255.0
    mean = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)
    x = (x - mean) / std
    slow = x[:, :, [0, 4, 8, 13, 17, 22, 26, 31]]
    with torch.no_grad():
        h = [slow, x]
        for index in range(5):
            h = model.blocks[index](h)
        expected = torch.cat([h[0].mean((2, 3, 4)), h[1].mean((2, 3, 4))], 1).numpy()
    np.testing.assert_allclose(extractor.forward(clips), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_native_size_matches_simplevqa_pooling(video):
    """At 32 x 224 x 224 the global mean equals SimpleVQA's route through the model's own
    pooling layers (blocks[5] AvgPool3d (8,7,7)/(32,7,7), then blocks[6].output_pool)."""
    extractor = create_extractor("slowfast", random_init=True)
    features = extract_video(video, [extractor])["slowfast"]
    assert features.shape == (4, 2304)
    clip = np.random.default_rng(3).integers(0, 256, size=(1, 32, 224, 224, 3), dtype=np.uint8)
    fast = extractor.images_to_tensor(clip, KINETICS_MEAN, KINETICS_STD)
    model = extractor.model_
    with torch.no_grad():
        h = [fast[:, :, [0, 4, 8, 13, 17, 22, 26, 31]], fast]
        for index in range(5):
            h = model.blocks[index](h)
        pooled = [model.blocks[6].output_pool(pool(p)) for pool, p in zip(model.blocks[5].pool, h)]
        expected = torch.cat([p.flatten(1) for p in pooled], 1).numpy()
    np.testing.assert_allclose(extractor.forward(clip), expected, rtol=1e-4, atol=1e-5)


# -- weights -------------------------------------------------------------------------------------
def test_pyth_checkpoint_loads_from_every_place(checkpoint, clips, tmp_path, monkeypatch):
    path, expected = checkpoint
    explicit = loaded(weights=str(path), **SMALL)
    np.testing.assert_array_equal(explicit.forward(clips), expected)
    assert explicit.weights_identity == f"sha256:{sha256_of(path)}"
    assert not np.allclose(loaded(random_init=True, **SMALL).forward(clips), expected)

    root = tmp_path / "weights"
    (root / "slowfast").mkdir(parents=True)
    (root / "slowfast" / SLOWFAST_R50_FILENAME).write_bytes(path.read_bytes())
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(root))
    np.testing.assert_array_equal(loaded(**SMALL).forward(clips), expected)
    monkeypatch.delenv("AIGVQA_WEIGHTS")

    hub = tmp_path / "torch-hub" / "checkpoints"  # where torch.hub.load(pretrained=True) puts it
    hub.mkdir(parents=True)
    (hub / SLOWFAST_R50_FILENAME).write_bytes(path.read_bytes())
    np.testing.assert_array_equal(loaded(**SMALL).forward(clips), expected)


def test_missing_weights_error_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError) as info:
        loaded()
    message = str(info.value)
    assert str(tmp_path / "weights" / "slowfast") in message
    assert str(tmp_path / "torch-hub" / "checkpoints") in message
    assert SLOWFAST_R50_FILENAME in message
    assert "dl.fbaipublicfiles.com" in message  # where the real file comes from


@pytest.mark.parametrize("damage", ["missing-key", "wrong-shape", "unexpected-key"])
def test_mismatched_checkpoint_is_an_error(checkpoint, tmp_path, damage):
    path, _ = checkpoint
    state = torch.load(path, weights_only=True)["model_state"]
    if damage == "missing-key":
        del state["blocks.6.proj.weight"]
    elif damage == "wrong-shape":
        state["blocks.6.proj.weight"] = torch.zeros(600, 2304)  # a 600-class head (Kinetics-600)
    else:
        state["blocks.7.extra.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.pyth"
    torch.save({"model_state": state}, bad)
    with pytest.raises(CheckpointMismatchError) as info:
        loaded(weights=str(bad))
    assert str(bad) in str(info.value)


def test_alpha_must_fit_the_clip():
    from aigvqa.extractors import ExtractorConfigError

    with pytest.raises(ExtractorConfigError, match="alpha"):
        create_extractor("slowfast", alpha=64)
