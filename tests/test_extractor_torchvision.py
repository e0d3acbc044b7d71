"""torchvision-frames: headless torchvision classifiers, offline checkpoint loading.

Checkpoints are random models saved the way fine-tuners save them (a state dict with the
task's own classifier) and loaded back through ``weights=`` / ``$AIGVQA_WEIGHTS`` / the
torch hub folder; the real-weight run is in test_real_weights.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors import ExtractorConfigError, create_extractor, extract_video
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.torchvision_frames import (
    build_classifier,
    classifier_name,
    feature_dim,
    headless,
)
from aigvqa.extractors.weights import sha256_of

pytestmark = pytest.mark.usefixtures("isolated_weight_caches")
ARCH = "mobilenet_v3_small"  # 2.5M parameters: the same code path as EfficientNet, faster


@pytest.fixture(scope="module")
def frames():
    """A dark and a bright noisy frame: far apart for any network."""
    noise = np.random.default_rng(1).integers(0, 64, size=(2, 96, 96, 3))
    return (noise + np.array([0, 192]).reshape(2, 1, 1, 1)).astype(np.uint8)


def fine_tuned_checkpoint(path, arch=ARCH, outputs=3, seed=4):
    """(path, the saved model): ``arch`` with a fresh ``outputs``-way classifier and
    perturbed weights, saved as ``torch.save(model.state_dict())``."""
    torch.manual_seed(seed)
    model = build_classifier(arch)
    name = classifier_name(model)
    old = model.get_submodule(name)
    parent, _, attr = name.rpartition(".")
    new = torch.nn.Linear(old.in_features, outputs)
    owner = model.get_submodule(parent) if parent else model
    if attr.isdigit():
        owner[int(attr)] = new
    else:
        setattr(owner, attr, new)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path, model.eval()


def expected_features(model, items, size=96):
    """What the checkpoint's model gives before its classifier, by hand."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(items).permute(0, 3, 1, 2).float() / 255 - mean) / std
    probe = {}

    def keep_input(_module, inputs, _output):
        probe["x"] = inputs[0]

    head = model.get_submodule(classifier_name(model))
    handle = head.register_forward_hook(keep_input)
    with torch.no_grad():
        logits = model(pixels)
    handle.remove()
    return probe["x"].numpy(), logits.numpy()


def test_feature_widths_come_from_the_arch_without_weights():
    assert feature_dim("efficientnet_b0") == 1280
    assert feature_dim("resnet18") == 512
    assert feature_dim("convnext_tiny") == 768
    assert create_extractor("torchvision-frames").output_dims() == {"values": 1280}


def test_headless_replaces_the_last_linear_only():
    model = headless(build_classifier("convnext_tiny"))
    assert isinstance(model.classifier[2], torch.nn.Identity)
    assert isinstance(model.classifier[0], torch.nn.Module)  # the LayerNorm stays
    out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 768)


def test_unknown_arch_and_bad_options_are_refused():
    with pytest.raises(ExtractorConfigError, match="torchvision has no classification model"):
        create_extractor("torchvision-frames", arch="fasterrcnn_resnet50_fpn").output_dims()
    with pytest.raises(ExtractorConfigError, match="mean must be None or three numbers"):
        create_extractor("torchvision-frames", mean=[0.5])
    with pytest.raises(ExtractorConfigError, match="n_frames"):
        create_extractor("torchvision-frames", n_frames=0)


def test_a_fine_tuned_state_dict_loads_through_weights(tmp_path, frames):
    path, model = fine_tuned_checkpoint(tmp_path / "tuned.pth")
    extractor = create_extractor("torchvision-frames", arch=ARCH, weights=str(path), size=96)
    extractor.load("cpu")
    assert extractor.weights_identity == f"sha256:{sha256_of(path)}"
    features = extractor.forward(frames)
    seeded = create_extractor("torchvision-frames", arch=ARCH, random_init=True, size=96)
    seeded.load("cpu")
    assert np.abs(features - seeded.forward(frames)).max() > 1e-3  # the file's weights, used
    want, logits = expected_features(model, frames)
    np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-5)
    # the checkpoint's own classifier on our features gives the fine-tuned model's output
    head = model.get_submodule(classifier_name(model))
    with torch.no_grad():
        np.testing.assert_allclose(head(torch.from_numpy(features)).numpy(), logits, atol=1e-4)


def test_weights_folder_env_and_torch_hub_are_searched(tmp_path, monkeypatch, frames):
    path, model = fine_tuned_checkpoint(tmp_path / "w" / "torchvision-frames" / f"{ARCH}.pth")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "w"))
    extractor = create_extractor("torchvision-frames", arch=ARCH, size=96)
    assert extractor.resolve_weights() == path
    monkeypatch.delenv("AIGVQA_WEIGHTS")
    hub = tmp_path / "torch-hub" / "checkpoints"
    hub.mkdir(parents=True)
    published = hub / "mobilenet_v3_small-047dcff4.pth"  # torchvision's file name
    published.write_bytes(path.read_bytes())
    assert create_extractor("torchvision-frames", arch=ARCH).resolve_weights() == published


def test_nothing_found_names_every_place_and_the_published_file(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        create_extractor("torchvision-frames").resolve_weights()
    message = str(info.value)
    assert "$AIGVQA_WEIGHTS/torchvision-frames/efficientnet_b0.pth" in message
    assert "efficientnet_b0_rwightman-7f5810bc.pth" in message
    assert "torch hub checkpoints" in message
    with pytest.raises(WeightsNotFoundError, match="existing checkpoint file"):
        create_extractor("torchvision-frames", weights=str(tmp_path / "nope.pth")).load("cpu")


def test_a_checkpoint_of_another_arch_is_a_mismatch(tmp_path):
    path, _ = fine_tuned_checkpoint(tmp_path / "resnet.pth", arch="resnet18")
    extractor = create_extractor("torchvision-frames", arch=ARCH, weights=str(path))
    with pytest.raises(CheckpointMismatchError):
        extractor.load("cpu")


def test_random_init_is_stamped_and_deterministic(frames, video_factory):
    a = create_extractor("torchvision-frames", arch=ARCH, random_init=True, size=96)
    b = create_extractor("torchvision-frames", arch=ARCH, random_init=True, size=96)
    a.load("cpu")
    b.load("cpu")
    assert a.weights_identity == RANDOM_INIT
    np.testing.assert_array_equal(a.forward(frames), b.forward(frames))
    features = extract_video(
        video_factory("clip", n_frames=12, size=(48, 64)),
        [create_extractor("torchvision-frames", arch=ARCH, random_init=True, n_frames=4, size=64)],
    )
    assert features["torchvision-frames"].shape == (
        4,
        1024,
    )  # mobilenet_v3_small: the input of its last Linear
