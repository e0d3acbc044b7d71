"""Per-frame image backbones from timm: ``vit-keyframes`` and ``convnext-frames``.

Both run a timm image model with its classifier removed (``num_classes=0``), so each
frame gives the model's pre-logits feature (ViT: the normalised CLS token; ConvNeXt: the
pooled, normalised last stage), 768-d for the defaults:

| name            | default arch          | view                         | output   |
|-----------------|-----------------------|------------------------------|----------|
| vit-keyframes   | vit_base_patch16_224  | KeyFramesView(n=8, 224)      | [8, 768] |
| convnext-frames | convnext_tiny         | UniformFramesView(n=16, 224) | [16, 768]|

``arch`` takes any timm model name, with or without a pretrained tag
(``vit_base_patch16_224.augreg2_in21k_ft_in1k``); the tag picks the offline-cache entry
and the input normalisation. Pixels are normalised with the arch's own pretrained
``mean``/``std`` (0.5 for the AugReg ViTs, ImageNet for ConvNeXt) unless ``mean``/``std``
are given, e.g. for a fine-tuned checkpoint trained with other statistics.

Weights (``weights.resolve_weights``), first hit wins:

1. ``weights=``: a checkpoint file (``.safetensors``, ``.pth``, ``.bin``; a timm training
   checkpoint ``{"state_dict": ...}`` works too) or a folder holding one of the names below
   (e.g. a Pick-a-Pic-tuned ViT saved by timm);
2. ``$AIGVQA_WEIGHTS/<name>/`` with ``<arch>.safetensors``, ``<arch>.pth``,
   ``model.safetensors`` or ``pytorch_model.bin`` (arch-named files first, so one folder
   can hold several archs);
3. timm's own offline caches: the Hugging Face hub cache entry of the arch's pretrained
   tag (``timm/<arch>.<tag>``: ``model.safetensors``, ``pytorch_model.bin``), then the
   torch hub checkpoints folder for tags that timm downloads from a plain URL.

Checkpoints go through the arch module's ``checkpoint_filter_fn`` (what timm itself
applies to pretrained weights: it converts original-repo layouts such as FB ConvNeXt or
Microsoft Swin files to timm's, and is a no-op on timm-format files), then the classifier
weights are dropped (features are taken before the head, so any head size loads), then
the rest must match the architecture exactly (``CheckpointMismatchError`` otherwise).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.views import KeyFramesView, UniformFramesView
from aigvqa.extractors.weights import (
    announce_random_init,
    hf_cache_candidate,
    load_state_dict_file,
    load_state_dict_strict,
    random_init_context,
    resolve_weights,
    torch_hub_candidate,
    weights_identity,
)

HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")
"""File names timm publishes on the Hugging Face hub (and writes with ``save_for_hf``)."""


def timm_pretrained_cfg(arch: str):
    """timm's pretrained config of ``arch`` (its default tag when none is given), or an
    ``ExtractorConfigError`` when timm has no such model."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    base, _tag = split_model_name_tag(arch)
    if not timm.is_model(base):
        raise ExtractorConfigError(
            f"timm has no model {base!r}; pick one of timm.list_models(), e.g. "
            "vit_base_patch16_224, convnext_tiny, swin_tiny_patch4_window7_224"
        )
    return get_pretrained_cfg(arch)


def timm_checkpoint_filenames(arch: str) -> tuple[str, ...]:
    """Accepted file names in a weights folder, best first."""
    base = arch.split(".")[0]
    names = [f"{arch}.safetensors", f"{arch}.pth"]
    if base != arch:
        names += [f"{base}.safetensors", f"{base}.pth"]
    return (*names, *HF_FILENAMES)


def timm_cache_candidates(arch: str):
    """timm's offline caches for ``arch``: the HF hub entry, then the torch hub folder."""
    cfg = timm_pretrained_cfg(arch)
    if cfg is None:
        return []
    candidates = []
    if cfg.hf_hub_id:
        filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILENAMES
        candidates += [hf_cache_candidate(cfg.hf_hub_id, f) for f in filenames]
    if cfg.url:
        candidates.append(torch_hub_candidate(Path(cfg.url.split("?")[0]).name))
    return candidates


def _classifier_keys(model) -> tuple[str, ...]:
    """Names of the classifier modules of a timm model (``head``, ``head.fc``, ...)."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def adapt_timm_state_dict(model, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state dict in the layout of the headless timm ``model``.

    Applies the arch module's ``checkpoint_filter_fn`` when it has one (original-repo
    layouts -> timm's), then removes classifier weights the headless model has no
    parameter for. Everything else is left for the strict load to judge.
    """
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(dict(state_dict), model)
    own = set(model.state_dict())
    classifiers = _classifier_keys(model)
    return {
        key: value
        for key, value in state_dict.items()
        if key in own or not any(key.startswith(f"{c}.") for c in classifiers)
    }


@functools.cache
def timm_feature_dim(arch: str) -> int:
    """Pre-logits width of ``arch``, read off a weightless build on the meta device (cheap:
    no memory, no weights), so ``output_dims`` works before ``load``."""
    import timm
    import torch

    timm_pretrained_cfg(arch)  # a clear error for unknown names
    with torch.device("meta"):
        return int(timm.create_model(arch, pretrained=False, num_classes=0).num_features)


def timm_weights_path(extractor_name: str, arch: str, weights: str | None) -> Path:
    """The checkpoint of timm ``arch`` (resolved as the module docstring says);
    ``extractor_name`` names the ``$AIGVQA_WEIGHTS`` sub-folder and the error messages."""
    cfg = timm_pretrained_cfg(arch)
    hub_id = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{arch}"
    return resolve_weights(
        extractor_name,
        weights,
        filenames=timm_checkpoint_filenames(arch),
        cache_candidates=timm_cache_candidates(arch),
        how_to_get=(
            f"The timm weights of {arch} are on the Hugging Face hub as {hub_id} "
            f"({HF_FILENAMES[0]}); download them on a connected machine."
        ),
    )


def create_timm_backbone(
    extractor_name: str, arch: str, path: str | os.PathLike | None
) -> tuple[Any, str]:
    """(headless timm ``arch`` with the checkpoint ``path`` loaded, weights identity).

    ``path=None`` (random_init) builds seeded random weights (identical in every process)
    and announces it under ``extractor_name``.
    """
    import timm

    timm_pretrained_cfg(arch)  # a clear error for unknown names
    if path is None:
        with random_init_context():
            model = timm.create_model(arch, pretrained=False, num_classes=0)
        return model, announce_random_init(extractor_name)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    state_dict = adapt_timm_state_dict(model, load_state_dict_file(path))
    load_state_dict_strict(model, state_dict, path)
    return model, weights_identity(path)


def timm_normalisation(model, mean=None, std=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean/std (0..1 scale) the model was trained with, unless overridden."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(mean) if mean is not None else tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(std) if std is not None else tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return mean, std


class TimmFrames(TorchExtractor):
    """A timm image model run on single frames; item [S, S, 3] uint8 -> [D] pre-logits.

    Subclasses choose the default ``arch`` and the view. Options (plus the common ones of
    ``TorchExtractor``): ``arch`` (timm name, optional tag), ``n_frames``, ``size``
    (frame side fed to the model; must equal the arch's input size for ViTs),
    ``resize_mode`` ("crop": short side + centre crop; "squash"), ``mean``/``std``
    (None: the arch's pretrained values).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "arch": "",
        "n_frames": 8,
        "size": 224,
        "resize_mode": "crop",
        "mean": None,
        "std": None,
    }

    def validate_config(self) -> None:
        super().validate_config()
        for key in ("mean", "std"):
            value = self._config[key]
            if value is not None and (not isinstance(value, list | tuple) or len(value) != 3):
                raise ExtractorConfigError(
                    f"extractor {self.name!r}: {key} must be None or three numbers, got {value!r}"
                )

    def output_dims(self) -> dict[str, int]:
        return {"values": timm_feature_dim(self["arch"])}

    def resolve_weights(self) -> Path:
        """The checkpoint this extractor would load (see the module docstring)."""
        return timm_weights_path(self.name, self["arch"], self["weights"])

    def load(self, device: str | None = None) -> None:
        self._set_device(device)
        path = None if self["random_init"] else self.resolve_weights()
        model, self.weights_identity = create_timm_backbone(self.name, self["arch"], path)
        self.mean_, self.std_ = timm_normalisation(model, self["mean"], self["std"])
        self.model_ = self.prepare_module(model)

    def forward(self, items: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), self.autocast():
            pixels = self.images_to_tensor(items, self.mean_, self.std_)
            features = self.model_(pixels)
        return features.float().cpu().numpy()


@register_extractor("vit-keyframes")
class ViTKeyFrames(TimmFrames):
    """UGVQ's key-frame features: a timm ViT on 8 frames at floor(N / 8 * i) -> [8, 768]."""

    defaults: ClassVar[dict[str, Any]] = {
        "arch": "vit_base_patch16_224",
        "n_frames": 8,
        "batch_size": 8,
    }

    def view(self) -> KeyFramesView:
        return KeyFramesView(n=self["n_frames"], size=self["size"], resize_mode=self["resize_mode"])


@register_extractor("convnext-frames")
class ConvNeXtFrames(TimmFrames):
    """ConvNeXt-T on N uniformly spaced frames (segment centres) -> [N, 768]."""

    defaults: ClassVar[dict[str, Any]] = {
        "arch": "convnext_tiny",
        "n_frames": 16,
        "batch_size": 16,
    }

    def view(self) -> UniformFramesView:
        return UniformFramesView(
            n=self["n_frames"], size=self["size"], resize_mode=self["resize_mode"]
        )
