"""``swin-fragments``: Swin Transformer features of FAST-VQA-style fragments.

View: ``FragmentsView`` -- a 7 x 7 grid of 32 x 32 patches spliced into 224 x 224 frames,
the patches at the same place in every frame of a clip (see its docstring). Pixels are
normalised with the ImageNet statistics both backbones were trained with.

Backbones (option ``backbone``):

- ``"swin3d_t"`` (default): torchvision's Video Swin-T on each fragment clip of
  ``clip_len`` = 32 frames ``frame_interval`` = 2 apart -> [clips, 768]: the output of the
  last stage after its LayerNorm, averaged over time and space (the model's own
  ``avgpool``), i.e. everything but the Kinetics classifier ``head``.
- ``"timm-2d"``: a timm image Swin (``arch_2d``, default swin_tiny_patch4_window7_224)
  on single fragment frames -> [frames, 768] pre-logits features. The view then takes
  ``clip_len * num_clips`` frames spread evenly over the video (segment centres), each a
  fragment mosaic of its own: a 2D model sees one frame at a time, so the temporal
  alignment of patches that Video Swin needs buys nothing.

Weights, first hit wins:

- swin3d_t: ``weights=`` (file or folder)
  -> ``$AIGVQA_WEIGHTS/swin-fragments/swin3d_t-7615ae03.pth``
  -> ``torch.hub.get_dir()/checkpoints/swin3d_t-7615ae03.pth`` (where torchvision's
  ``swin3d_t(weights="KINETICS400_V1")`` stores it). A torchvision state dict; it must
  match in full (the classifier included, though it is never run).
- timm-2d: as ``aigvqa.extractors.timm_frames`` (timm checkpoint file, the same
  ``$AIGVQA_WEIGHTS/swin-fragments/`` folder with ``<arch_2d>.safetensors`` etc., timm's
  offline caches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.timm_frames import (
    create_timm_backbone,
    timm_feature_dim,
    timm_normalisation,
    timm_weights_path,
)
from aigvqa.extractors.views import FragmentsView
from aigvqa.extractors.weights import build_with_weights, resolve_weights, torch_hub_candidate

BACKBONES = ("swin3d_t", "timm-2d")
SWIN3D_T_FILENAME = "swin3d_t-7615ae03.pth"
SWIN3D_T_URL = "https://download.pytorch.org/models/" + SWIN3D_T_FILENAME
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWIN3D_T_DIM = 768


def build_swin3d_t():
    """torchvision's Video Swin-T (Kinetics-400 architecture, random weights)."""
    from torchvision.models.video import swin3d_t

    return swin3d_t(weights=None)


@register_extractor("swin-fragments")
class SwinFragments(TorchExtractor):
    """Swin on fragments -> [clips, 768] (``swin3d_t``) or [frames, 768] (``timm-2d``).

    Options (plus the common ones of ``TorchExtractor``): ``backbone``, ``arch_2d``,
    and the fragment sampling ``grid``, ``patch``, ``clip_len``, ``num_clips``,
    ``frame_interval``, ``seed`` (see ``views.FragmentsView``).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "backbone": "swin3d_t",
        "arch_2d": "swin_tiny_patch4_window7_224",
        "batch_size": 8,
        # Video Swin's patch embedding is a Conv3d: torch's channels_last is 2-D only, and
        # channels_last_3d measured no faster on an H100 (4 clips, bf16: 34.5 vs 32.8 ms)
        "channels_last": False,
        "grid": 7,
        "patch": 32,
        "clip_len": 32,
        "num_clips": 1,
        "frame_interval": 2,
        "seed": 0,
    }

    def validate_config(self) -> None:
        super().validate_config()
        if self["backbone"] not in BACKBONES:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: backbone must be one of {', '.join(BACKBONES)}, "
                f"got {self['backbone']!r}"
            )

    @property
    def is_3d(self) -> bool:
        return self["backbone"] == "swin3d_t"

    def output_dims(self) -> dict[str, int]:
        return {"values": SWIN3D_T_DIM if self.is_3d else timm_feature_dim(self["arch_2d"])}

    def view(self) -> FragmentsView:
        if self.is_3d:
            return FragmentsView(
                grid=self["grid"],
                patch=self["patch"],
                clip_len=self["clip_len"],
                num_clips=self["num_clips"],
                frame_interval=self["frame_interval"],
                seed=self["seed"],
            )
        return FragmentsView(
            grid=self["grid"],
            patch=self["patch"],
            clip_len=1,
            num_clips=self["clip_len"] * self["num_clips"],
            frame_interval=1,
            seed=self["seed"],
        )

    def resolve_weights(self) -> Path:
        """The checkpoint this extractor would load: Video Swin-T's, or the 2-D timm arch's."""
        if not self.is_3d:
            return timm_weights_path(self.name, self["arch_2d"], self["weights"])
        return resolve_weights(
            self.name,
            self["weights"],
            filenames=(SWIN3D_T_FILENAME,),
            cache_candidates=[torch_hub_candidate(SWIN3D_T_FILENAME)],
            how_to_get=f"The Kinetics-400 checkpoint is torchvision's {SWIN3D_T_URL}",
        )

    def load(self, device: str | None = None) -> None:
        import torch

        self._set_device(device)
        path = None if self["random_init"] else self.resolve_weights()
        if self.is_3d:
            model, self.weights_identity = build_with_weights(self.name, build_swin3d_t, path)
            model.head = torch.nn.Identity()  # features = the pooled input of the classifier
            self.mean_, self.std_ = IMAGENET_MEAN, IMAGENET_STD
        else:
            model, self.weights_identity = create_timm_backbone(self.name, self["arch_2d"], path)
            self.mean_, self.std_ = timm_normalisation(model)
        self.model_ = self.prepare_module(model)

    def forward(self, items: np.ndarray) -> np.ndarray:
        """items [B, T, S, S, 3] uint8 -> [B, 768] float32 (2D: T = 1, one frame per item)."""
        import torch

        if not self.is_3d:
            items = items[:, 0]  # [B, 1, S, S, 3] single-frame clips -> [B, S, S, 3]
        with torch.inference_mode(), self.autocast():
            features = self.model_(self.images_to_tensor(items, self.mean_, self.std_))
        return features.float().cpu().numpy()
