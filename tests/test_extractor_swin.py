"""swin-fragments: Video Swin-T on fragment clips (torchvision) or a timm 2D Swin per frame.

Fast tests use 2 x 2 fragment grids (64-pixel mosaics) and short clips; the documented
default (7 x 7 grid, 32 frames, 224 pixels) is marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors import create_extractor, extract_video
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.swin import SWIN3D_T_FILENAME
from aigvqa.extractors.weights import sha256_of

SMALL = {"grid": 2, "patch": 32, "clip_len": 8}
TIMM_SWIN = "swin_tiny_patch4_window7_224"
pytestmark = pytest.mark.usefixtures("isolated_weight_caches")


@pytest.fixture
def video(video_factory):
    """96 frames at 24 fps (4 s), 48 x 64: SimpleVQA would cut it into 4 one-second clips."""
    return video_factory("clip", n_frames=96, fps=24, size=(48, 64), seed=4)


@pytest.fixture(scope="module")
def clips():
    return np.random.default_rng(2).integers(0, 256, size=(2, 8, 64, 64, 3), dtype=np.uint8)


def loaded(**config):
    extractor = create_extractor("swin-fragments", **config)
    extractor.load("cpu")
    return extractor


def perturb_(module, seed):
    """Shift every float weight by seeded noise: features from a saved copy then differ
    from the seeded RANDOM-INIT ones, so a loader that ignored the file cannot pass."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))


@pytest.fixture(scope="module")
def swin3d_checkpoint(tmp_path_factory, clips):
    """(a torchvision swin3d_t state dict file, the features its weights give on ``clips``)."""
    reference = loaded(random_init=True, **SMALL)
    perturb_(reference.model_, seed=9)
    state = dict(reference.model_.state_dict())
    # the extractor drops the Kinetics classifier; a real torchvision file carries it
    state["head.weight"] = torch.randn(400, 768)
    state["head.bias"] = torch.zeros(400)
    path = tmp_path_factory.mktemp("ckpt") / SWIN3D_T_FILENAME
    torch.save(state, path)
    return path, reference.forward(clips)


# -- shapes ------------------------------------------------------------------------------------
def test_swin3d_random_init_gives_one_row_per_clip(video):
    extractor = create_extractor("swin-fragments", random_init=True, num_clips=2, **SMALL)
    assert extractor.output_dims() == {"values": 768}
    features = extract_video(video, [extractor])["swin-fragments"]
    assert features.shape == (2, 768) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert extractor.weights_identity == RANDOM_INIT
    assert not np.allclose(features[0], features[1])


def test_default_view_is_fast_vqa_fragments():
    view = create_extractor("swin-fragments").view()
    assert (view.grid, view.patch, view.clip_len, view.num_clips) == (7, 32, 32, 1)


def test_timm_2d_gives_one_row_per_frame(video):
    extractor = create_extractor(
        "swin-fragments", backbone="timm-2d", random_init=True, clip_len=3, num_clips=1
    )
    view = extractor.view()
    assert (view.clip_len, view.num_clips, view.output_size) == (1, 3, 224)
    features = extract_video(video, [extractor])["swin-fragments"]
    assert features.shape == (3, 768) == (3, extractor.output_dims()["values"])
    assert np.isfinite(features).all()


def test_unknown_backbone_is_a_config_error():
    from aigvqa.extractors import ExtractorConfigError

    with pytest.raises(ExtractorConfigError, match="backbone"):
        create_extractor("swin-fragments", backbone="swin3d_b")


@pytest.mark.slow
def test_default_config_gives_1_by_768(video):
    features = extract_video(video, [create_extractor("swin-fragments", random_init=True)])
    assert features["swin-fragments"].shape == (1, 768)


# -- weights -------------------------------------------------------------------------------------
def test_torchvision_state_dict_loads_from_every_place(
    swin3d_checkpoint, clips, tmp_path, monkeypatch
):
    path, expected = swin3d_checkpoint
    explicit = loaded(weights=str(path), **SMALL)
    np.testing.assert_array_equal(explicit.forward(clips), expected)
    assert explicit.weights_identity == f"sha256:{sha256_of(path)}"
    assert not np.allclose(loaded(random_init=True, **SMALL).forward(clips), expected)

    root = tmp_path / "weights"
    (root / "swin-fragments").mkdir(parents=True)
    (root / "swin-fragments" / SWIN3D_T_FILENAME).write_bytes(path.read_bytes())
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(root))
    np.testing.assert_array_equal(loaded(**SMALL).forward(clips), expected)
    monkeypatch.delenv("AIGVQA_WEIGHTS")

    hub = tmp_path / "torch-hub" / "checkpoints"  # where torchvision's weights= download goes
    hub.mkdir(parents=True)
    (hub / SWIN3D_T_FILENAME).write_bytes(path.read_bytes())
    np.testing.assert_array_equal(loaded(**SMALL).forward(clips), expected)


def test_timm_2d_checkpoint_loads_from_the_weights_folder(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    frames = np.random.default_rng(4).integers(0, 256, size=(2, 1, 224, 224, 3), dtype=np.uint8)
    reference = loaded(backbone="timm-2d", random_init=True)
    perturb_(reference.model_, seed=3)
    state = {k: v.contiguous() for k, v in reference.model_.state_dict().items()}
    state["head.fc.weight"] = torch.randn(1000, 768)
    state["head.fc.bias"] = torch.zeros(1000)
    root = tmp_path / "weights"
    (root / "swin-fragments").mkdir(parents=True)
    save_file(state, str(root / "swin-fragments" / f"{TIMM_SWIN}.safetensors"))
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(root))
    extractor = loaded(backbone="timm-2d")
    np.testing.assert_array_equal(extractor.forward(frames), reference.forward(frames))
    assert extractor.weights_identity.startswith("sha256:")


@pytest.mark.parametrize("backbone", ["swin3d_t", "timm-2d"])
def test_missing_weights_error_names_every_place(tmp_path, monkeypatch, backbone):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "weights"))
    with pytest.raises(WeightsNotFoundError) as info:
        loaded(backbone=backbone)
    message = str(info.value)
    assert str(tmp_path / "weights" / "swin-fragments") in message
    if backbone == "swin3d_t":
        assert SWIN3D_T_FILENAME in message
        assert str(tmp_path / "torch-hub" / "checkpoints") in message
    else:
        assert "timm/swin_tiny_patch4_window7_224.ms_in1k" in message  # HF cache entry
        assert f"{TIMM_SWIN}.safetensors" in message


@pytest.mark.parametrize("damage", ["missing-head", "wrong-shape"])
def test_mismatched_checkpoint_is_an_error(swin3d_checkpoint, tmp_path, damage):
    path, _ = swin3d_checkpoint
    state = torch.load(path, weights_only=True)
    if damage == "missing-head":
        del state["head.weight"]
    else:
        state["features.0.0.mlp.0.weight"] = torch.zeros(96 * 4, 95)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointMismatchError) as info:
        loaded(weights=str(bad))
    assert str(bad) in str(info.value)
