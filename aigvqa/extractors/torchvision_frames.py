"""Per-frame torchvision image classifiers: ``torchvision-frames``.

Any classification model of ``torchvision.models`` (``arch``: ``efficientnet_b0`` by
default; ``resnet50``, ``convnext_tiny``, ``mobilenet_v3_large``, ``vit_b_16``, ...) run on
N uniformly spaced frames, with its last ``nn.Linear`` (the classifier) replaced by the
identity, so each frame gives the pooled feature the classifier reads: 1280-d for
EfficientNet-B0, 2048-d for ResNet-50.

| name               | default arch    | view                         | output     |
|--------------------|-----------------|------------------------------|------------|
| torchvision-frames | efficientnet_b0 | UniformFramesView(n=16, 224) | [16, 1280] |

This family exists because many fine-tuned checkpoints are plain torchvision state dicts
(``torch.save(model.state_dict())`` after swapping the classifier for the task's own), which
timm's key layout does not take. Any head size loads: the classifier's weights are dropped
before the strict load, so a 1-output fine-tune and an ImageNet-1k checkpoint both work.

Weights (``weights.resolve_weights``), first hit wins:

1. ``weights=``: a checkpoint file (``.pth`` / ``.pt`` / ``.bin`` through
   ``torch.load(weights_only=True)``, or ``.safetensors``; a ``{"state_dict": ...}``
   training checkpoint works too) or a folder holding one of the names below;
2. ``$AIGVQA_WEIGHTS/torchvision-frames/`` with ``<arch>.pth``, ``<arch>.safetensors``,
   ``model.safetensors`` or ``pytorch_model.bin``;
3. torchvision's own offline cache: ``torch.hub.get_dir()/checkpoints/`` holding the file
   of one of the arch's published weights (``efficientnet_b0_rwightman-7f5810bc.pth``).

Pixels are normalised with ImageNet's mean/std (what every torchvision classification
weight uses) unless ``mean``/``std`` are given. ``resize_mode="squash"`` resizes without
cropping, as a checkpoint trained with ``Resize((224, 224))`` expects; ``"crop"`` (the
default) takes the short side and a centre crop.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.views import UniformFramesView
from aigvqa.extractors.weights import (
    announce_random_init,
    load_state_dict_file,
    load_state_dict_strict,
    random_init_context,
    resolve_weights,
    torch_hub_candidate,
    weights_identity,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER_FILENAMES = ("model.safetensors", "pytorch_model.bin")


def classification_archs() -> list[str]:
    """The names ``torchvision.models`` builds classifiers under (no detection/video nets)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def check_arch(arch: str) -> None:
    """An ``ExtractorConfigError`` when torchvision has no classifier called ``arch``."""
    archs = classification_archs()
    if arch not in archs:
        raise ExtractorConfigError(
            f"torchvision has no classification model {arch!r}; pick one of "
            "torchvision.models.list_models(module=torchvision.models), e.g. "
            "efficientnet_b0, resnet50, convnext_tiny"
        )


def classifier_name(model) -> str:
    """Dotted name of ``model``'s last ``nn.Linear``: the classifier whose input is the
    feature (``classifier.1`` in EfficientNet, ``fc`` in ResNet, ``heads.head`` in ViT)."""
    import torch

    names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not names:
        raise ExtractorConfigError(
            f"{type(model).__name__} has no nn.Linear classifier to take features before"
        )
    return names[-1]


def headless(model):
    """``model`` with its classifier replaced by the identity (in place); returns it."""
    import torch

    parent_name, _, attr = classifier_name(model).rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, torch.nn.Sequential) and attr.isdigit():
        parent[int(attr)] = torch.nn.Identity()
    else:
        setattr(parent, attr, torch.nn.Identity())
    return model


def build_classifier(arch: str):
    """torchvision's ``arch`` with no weights (the caller loads them)."""
    import torchvision

    return torchvision.models.get_model(arch, weights=None)


@functools.cache
def feature_dim(arch: str) -> int:
    """The classifier's input width, read off a weightless build on the meta device."""
    import torch

    check_arch(arch)
    with torch.device("meta"):
        model = build_classifier(arch)
    return int(model.get_submodule(classifier_name(model)).in_features)


def hub_candidates(arch: str):
    """torch hub's checkpoints folder, once per published weight of ``arch``."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        return []
    return [torch_hub_candidate(Path(w.url).name) for w in enum]


def torchvision_weights_path(extractor_name: str, arch: str, weights: str | None) -> Path:
    """The checkpoint of torchvision ``arch`` (resolved as the module docstring says)."""
    check_arch(arch)
    candidates = hub_candidates(arch)
    published = candidates[0].path.name if candidates else f"{arch}.pth"
    return resolve_weights(
        extractor_name,
        weights,
        filenames=(f"{arch}.pth", f"{arch}.safetensors", *FOLDER_FILENAMES),
        cache_candidates=candidates,
        how_to_get=(
            f"torchvision publishes the ImageNet weights of {arch} as {published} "
            "(download.pytorch.org/models); any fine-tuned torchvision state dict of "
            f"{arch} works too."
        ),
    )


def load_headless(extractor_name: str, arch: str, path: Path | None):
    """(headless ``arch`` with checkpoint ``path`` loaded strictly, weights identity);
    ``path=None`` builds seeded random weights, announced under ``extractor_name``."""
    check_arch(arch)
    if path is None:
        with random_init_context():
            model = headless(build_classifier(arch))
        return model, announce_random_init(extractor_name)
    model = build_classifier(arch)
    head = classifier_name(model)
    headless(model)
    state = {
        key: value
        for key, value in load_state_dict_file(path).items()
        if not key.startswith(f"{head}.")
    }
    load_state_dict_strict(model, state, path)
    return model, weights_identity(path)


@register_extractor("torchvision-frames")
class TorchvisionFrames(TorchExtractor):
    """A torchvision classifier's pooled feature on N uniform frames -> [N, D].

    Options (plus the common ones of ``TorchExtractor``): ``arch``, ``n_frames``, ``size``,
    ``resize_mode`` ("crop" or "squash"), ``mean``/``std`` (None: ImageNet's).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "arch": "efficientnet_b0",
        "n_frames": 16,
        "size": 224,
        "resize_mode": "crop",
        "mean": None,
        "std": None,
        "batch_size": 16,
    }

    def validate_config(self) -> None:
        super().validate_config()
        if not isinstance(self["arch"], str) or not self["arch"]:
            raise ExtractorConfigError(f"extractor {self.name!r}: arch must be a model name")
        for key in ("mean", "std"):
            value = self[key]
            if value is not None and (not isinstance(value, list | tuple) or len(value) != 3):
                raise ExtractorConfigError(
                    f"extractor {self.name!r}: {key} must be None or three numbers, got {value!r}"
                )
        n, size = self["n_frames"], self["size"]
        if not isinstance(n, int) or n < 1 or not isinstance(size, int) or size < 32:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: n_frames must be a positive int and size an int "
                f">= 32, got n_frames={n!r}, size={size!r}"
            )

    def view(self) -> UniformFramesView:
        return UniformFramesView(
            n=self["n_frames"], size=self["size"], resize_mode=self["resize_mode"]
        )

    def output_dims(self) -> dict[str, int]:
        return {"values": feature_dim(self["arch"])}

    def resolve_weights(self) -> Path:
        """The checkpoint this extractor would load (see the module docstring)."""
        return torchvision_weights_path(self.name, self["arch"], self["weights"])

    def load(self, device: str | None = None) -> None:
        self._set_device(device)
        path = None if self["random_init"] else self.resolve_weights()
        model, self.weights_identity = load_headless(self.name, self["arch"], path)
        self.mean_ = tuple(self["mean"]) if self["mean"] is not None else IMAGENET_MEAN
        self.std_ = tuple(self["std"]) if self["std"] is not None else IMAGENET_STD
        self.model_ = self.prepare_module(model)

    def forward(self, items: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), self.autocast():
            features = self.model_(self.images_to_tensor(items, self.mean_, self.std_))
        return features.float().cpu().numpy()
