"""Branch-sum head (seed 002 style, after DOVER's technical + aesthetic views with an added
text-alignment view): three branches each regress a score, and the scores are summed.

- technical: fragment features (e.g. swin-fragments [clips, 768]), masked mean -> MLP
- aesthetic: resized-frame features (e.g. convnext-frames [N, 768]), masked mean -> MLP
- alignment: prompt x frame features: the mean over frames of the element-wise product of
  projected frame and prompt features, plus mean / max / min over frames of the raw
  frame-prompt cosine when both share one embedding space (CLIP, or BLIP's ITC space:
  ``blip-itm-image`` with ``blip-text-pooled``), plus mean / max / min over frames of each
  per-frame match score the feature set holds (optional roles ``match``: blip-itm's ITM
  probability and ITC cosine, ``blip-itm-match``; ``reward``: ImageReward's reward,
  ``imagereward``) -> MLP. Frames and text default to the CLIP features and fall back to
  the BLIP ones when the feature set has no CLIP features.

Trained with PLCC + rank (FAST-VQA / DOVER); PLCC fixes no scale, so the summed score is
mapped to MOS by a linear fit after training (``output_scale_``, ``output_shift_``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aigvqa.heads.base import TorchHead
from aigvqa.heads.deep_params import DROPOUT, LOSS, SIZE, deep_constraints
from aigvqa.heads.device import Batch
from aigvqa.heads.layers import make_mlp, masked_mean
from aigvqa.heads.registry import register_head

BRANCHES = ("technical", "aesthetic", "alignment")
SCORE_ROLES = ("match", "reward")


def _frame_statistics(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, C] per-frame scores -> [B, 3C]: mean, max and min over the valid frames."""
    big = torch.finfo(values.dtype).max
    valid = mask[..., None]
    return torch.cat(
        [
            masked_mean(values, mask),
            values.masked_fill(~valid, -big).amax(1),
            values.masked_fill(~valid, big).amin(1),
        ],
        dim=-1,
    )


class BranchSumModule(nn.Module):
    def __init__(
        self, dims: dict[str, int], n_outputs: int, d_model: int, mlp_hidden: int, dropout: float
    ):
        super().__init__()
        self.raw_alignment = dims["frames"] == dims["text"]
        self.input_proj = nn.ModuleDict(
            {
                r: nn.Sequential(nn.Linear(dims[r], d_model), nn.LayerNorm(d_model))
                for r in ("technical", "aesthetic", "frames", "text")
            }
        )
        # per-frame scores already computed against the prompt: 3 statistics per column
        self.score_roles = [r for r in SCORE_ROLES if r in dims]
        align_in = (
            d_model + (3 if self.raw_alignment else 0) + sum(3 * dims[r] for r in self.score_roles)
        )
        self.branch_heads = nn.ModuleDict(
            {
                "technical": make_mlp(d_model, mlp_hidden, n_outputs, dropout=dropout),
                "aesthetic": make_mlp(d_model, mlp_hidden, n_outputs, dropout=dropout),
                "alignment": make_mlp(align_in, mlp_hidden, n_outputs, dropout=dropout),
            }
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        scores = []
        for role in ("technical", "aesthetic"):
            x, mask = batch[role]
            scores.append(self.branch_heads[role](masked_mean(self.input_proj[role](x), mask)))
        frames, frame_mask = batch["frames"]
        text, text_mask = batch["text"]
        prompt = masked_mean(self.input_proj["text"](text), text_mask)
        align = [masked_mean(self.input_proj["frames"](frames) * prompt[:, None, :], frame_mask)]
        if self.raw_alignment:
            cos = F.cosine_similarity(
                frames, masked_mean(text, text_mask)[:, None, :], dim=-1, eps=1e-6
            )
            align.append(_frame_statistics(cos[..., None], frame_mask))
        for role in self.score_roles:
            values, mask = batch[role]
            align.append(_frame_statistics(values, mask))
        scores.append(self.branch_heads["alignment"](torch.cat(align, dim=-1)))
        branches = torch.stack(scores, dim=1)  # [B, 3, k]
        return {"score": branches.sum(1), "branches": branches}


@register_head("branchsum")
class BranchSumHead(TorchHead):
    """Technical + aesthetic + alignment branch scores, summed. Roles: ``technical``,
    ``aesthetic``, ``frames`` (CLIP, else BLIP, frame embeddings), ``text`` (CLIP, else BLIP,
    prompt embedding); optional ``match`` / ``reward`` (per-frame prompt-match scores: used
    when the feature set holds blip-itm / imagereward features, or when mapped)."""

    DEFAULT_FEATURES = {
        "technical": "swin-fragments",
        "aesthetic": "convnext-frames",
        "frames": ("clip-frames", "blip-itm-image"),
        "text": ("clip-text-pooled", "blip-text-pooled"),
    }
    OPTIONAL_FEATURES = {"match": ("blip-itm-match",), "reward": ("imagereward",)}
    PRESETS = {
        "default": dict(
            d_model=128,
            mlp_hidden=128,
            dropout=0.1,
            epochs=30,
            batch_size=32,
            lr=1e-3,
            lr_step=10,
            lr_gamma=0.3,
        ),
    }
    PARAMETER_CONSTRAINTS = deep_constraints(
        PRESETS,
        {**DEFAULT_FEATURES, **OPTIONAL_FEATURES},
        d_model=SIZE,
        mlp_hidden=SIZE,
        dropout=DROPOUT,
        loss=LOSS,
    )

    def __init__(
        self,
        preset="default",
        features=None,
        d_model=None,
        mlp_hidden=None,
        dropout=None,
        loss="plcc_rank",
        epochs=None,
        batch_size=None,
        lr=None,
        lr_step=None,
        lr_gamma=None,
        weight_decay=0.0,
        val_fraction=0.0,
        patience=None,
        fgm_epsilon=0.0,
        fgm_params="input_proj.*",
        seed=0,
        device="cpu",
        amp=False,
        verbose=False,
    ):
        self.preset = preset
        self.features = features
        self.d_model = d_model
        self.mlp_hidden = mlp_hidden
        self.dropout = dropout
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.fgm_epsilon = fgm_epsilon
        self.fgm_params = fgm_params
        self.seed = seed
        self.device = device
        self.amp = amp
        self.verbose = verbose

    def _build_module(self, dims, n_outputs):
        return BranchSumModule(
            dims,
            n_outputs,
            int(self._hp("d_model")),
            int(self._hp("mlp_hidden")),
            float(self._hp("dropout")),
        )
