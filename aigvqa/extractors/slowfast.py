"""``slowfast``: SlowFast R50 motion features, SimpleVQA's protocol.

View: ``SlowFastClipsView`` -- one clip of 32 consecutive frames per second of video,
squashed to 224 x 224 (a 96-frame 24 fps video gives 4 clips). Each clip feeds the fast
pathway whole (32 frames) and the slow pathway with T // alpha = 8 of them
(``views.slow_fast_split``: linspace picks, first and last frame included). Pixels are
scaled to 0..1 and normalised with the Kinetics statistics the pytorchvideo model was
trained with (mean 0.45, std 0.225 per channel).

Features, per clip [2304] = slow 2048 ++ fast 256: the network runs up to its last
residual stage (``model.blocks[:5]``, i.e. stem + res2..res5 with the fast->slow fusions)
and each pathway's map ([B, 2048, 8, 7, 7] and [B, 256, 32, 7, 7] at 224) is averaged
over time and space. This is what SimpleVQA computes with the model's own pooling
(``blocks[5]``'s AvgPool3d (8, 7, 7) / (32, 7, 7) then ``blocks[6].output_pool``) at the
native 32 x 224 x 224 input, written as a global mean so that other clip sizes work too.
The Kinetics classifier (``blocks[6].proj``) is loaded (the checkpoint must match in
full) but never run.

Weights, first hit wins: ``weights=`` (a file, or a folder with the file below) ->
``$AIGVQA_WEIGHTS/slowfast/SLOWFAST_8x8_R50.pyth`` -> torch hub's checkpoints folder
(``torch.hub.get_dir()/checkpoints/SLOWFAST_8x8_R50.pyth``, where
``torch.hub.load("facebookresearch/pytorchvideo", "slowfast_r50", pretrained=True)``
stores it). The file is pytorchvideo's model-zoo checkpoint, ``{"model_state": state_dict}``
for ``pytorchvideo.models.hub.slowfast_r50``; a bare state dict loads too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.views import SlowFastClipsView, slow_fast_split
from aigvqa.extractors.weights import build_with_weights, resolve_weights, torch_hub_candidate

SLOWFAST_R50_FILENAME = "SLOWFAST_8x8_R50.pyth"
SLOWFAST_R50_URL = (
    "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/" + SLOWFAST_R50_FILENAME
)
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
SLOW_DIM, FAST_DIM = 2048, 256
FEATURE_BLOCKS = 5
"""``model.blocks[:5]``: stem and the four residual stages; blocks 5-6 are pool and head."""


def build_slowfast_r50():
    """The SlowFast R50 8x8 architecture of pytorchvideo's model zoo (random weights).

    Imported from ``pytorchvideo.models.hub.slowfast`` only: ``pytorchvideo.transforms``
    does not import with current torchvision and is not needed.
    """
    import warnings

    with warnings.catch_warnings():
        # pytorchvideo imports fvcore, whose focal-loss module calls torch.jit.script at
        # import time (fvcore/nn/focal_loss.py); torch >= 2.10 deprecates that with a
        # FutureWarning the user can do nothing about, printed once per worker. SlowFast
        # never uses the scripted function; only that one warning is silenced.
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
        )
        from pytorchvideo.models.hub.slowfast import slowfast_r50

    return slowfast_r50(pretrained=False)


@register_extractor("slowfast")
class SlowFastFeatures(TorchExtractor):
    """SlowFast R50 on per-second 32-frame clips -> [clips, 2304] (slow 2048 ++ fast 256).

    Options (plus the common ones of ``TorchExtractor``): ``clip_len`` (frames per clip,
    fast pathway), ``alpha`` (slow pathway keeps clip_len // alpha frames), ``size`` (frame
    side), ``resize_mode`` ("squash" as SimpleVQA, or "crop").
    """

    defaults: ClassVar[dict[str, Any]] = {
        "batch_size": 4,
        # 3D convs: torch's channels_last is 2-D only, and channels_last_3d measured no
        # faster on an H100 (4 clips, bf16: 25.3 ms with it, 18.4 ms without)
        "channels_last": False,
        "clip_len": 32,
        "alpha": 4,
        "size": 224,
        "resize_mode": "squash",
    }

    def validate_config(self) -> None:
        super().validate_config()
        clip_len, alpha = self["clip_len"], self["alpha"]
        if not (isinstance(alpha, int) and isinstance(clip_len, int) and 1 <= alpha <= clip_len):
            raise ExtractorConfigError(
                f"extractor {self.name!r}: need integers 1 <= alpha <= clip_len, got "
                f"alpha={alpha!r}, clip_len={clip_len!r}"
            )

    def output_dims(self) -> dict[str, int]:
        return {"values": SLOW_DIM + FAST_DIM}

    def view(self) -> SlowFastClipsView:
        return SlowFastClipsView(
            clip_len=self["clip_len"], size=self["size"], resize_mode=self["resize_mode"]
        )

    def resolve_weights(self) -> Path:
        """The checkpoint this extractor would load (see the module docstring)."""
        return resolve_weights(
            self.name,
            self["weights"],
            filenames=(SLOWFAST_R50_FILENAME,),
            cache_candidates=[torch_hub_candidate(SLOWFAST_R50_FILENAME)],
            how_to_get=f"The Kinetics-400 checkpoint is pytorchvideo's {SLOWFAST_R50_URL}",
        )

    def load(self, device: str | None = None) -> None:
        import torch

        self._set_device(device)
        path = None if self["random_init"] else self.resolve_weights()
        model, self.weights_identity = build_with_weights(self.name, build_slowfast_r50, path)
        self.model_ = self.prepare_module(model)
        slow_picks, _ = slow_fast_split(np.arange(self["clip_len"]), self["alpha"])
        self.slow_picks_ = torch.from_numpy(slow_picks).to(self.device_)

    def forward(self, items: np.ndarray) -> np.ndarray:
        """items [B, clip_len, S, S, 3] uint8 -> [B, 2304] float32."""
        import torch

        with torch.inference_mode(), self.autocast():
            fast = self.images_to_tensor(items, KINETICS_MEAN, KINETICS_STD)  # [B, 3, T, S, S]
            pathways = [fast.index_select(2, self.slow_picks_), fast]
            for block in self.model_.blocks[:FEATURE_BLOCKS]:
                pathways = block(pathways)
            features = torch.cat([p.float().mean(dim=(2, 3, 4)) for p in pathways], dim=1)
        return features.cpu().numpy()
