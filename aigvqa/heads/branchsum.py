"""Branch-sum head (seed 002 style, after DOVER's technical + aesthetic views with an added
text-alignment view): three branches each regress a score, and the scores are summed.

- technical: fragment features (e.g. swin-fragments [clips, 768]), masked mean -> MLP
- aesthetic: resized-frame features (e.g. convnext-frames [N, 768]), masked mean -> MLP
- alignment: prompt x frame features: the mean over frames of the element-wise product of
  projected frame and prompt features, plus mean / max / min over frames of the raw
  frame-prompt cosine when both share one embedding space (CLIP) -> MLP

Trained with PLCC + rank (FAST-VQA / DOVER); PLCC fixes no scale, so the summed score is
mapped to MOS by a linear fit after training (``output_scale_``, ``output_shift_``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aigvqa.heads.base import (
    DROPOUT,
    LOSS,
    SIZE,
    Batch,
    TorchHead,
    deep_constraints,
    make_mlp,
    masked_mean,
)
from aigvqa.heads.registry import register_head

BRANCHES = ("technical", "aesthetic", "alignment")


class BranchSumModule(nn.Module):
    def __init__(self, dims: dict[str, int], n_outputs: int, d_model: int, mlp_hidden: int, dropout: float):
        super().__init__()
        self.raw_alignment = dims["frames"] == dims["text"]
        self.input_proj = nn.ModuleDict(
            {r: nn.Sequential(nn.Linear(dims[r], d_model), nn.LayerNorm(d_model)) for r in ("technical", "aesthetic", "frames", "text")}
        )
        align_in = d_model + (3 if self.raw_alignment else 0)
        self.branch_heads = nn.ModuleDict({
            "technical": make_mlp(d_model, mlp_hidden, n_outputs, dropout=dropout),
            "aesthetic": make_mlp(d_model, mlp_hidden, n_outputs, dropout=dropout),
            "alignment": make_mlp(align_in, mlp_hidden, n_outputs, dropout=dropout),
        })

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
            cos = F.cosine_similarity(frames, masked_mean(text, text_mask)[:, None, :], dim=-1, eps=1e-6)
            big = torch.finfo(cos.dtype).max
            align.append(torch.stack([
                masked_mean(cos[..., None], frame_mask)[:, 0],
                cos.masked_fill(~frame_mask, -big).amax(1),
                cos.masked_fill(~frame_mask, big).amin(1),
            ], dim=-1))
        scores.append(self.branch_heads["alignment"](torch.cat(align, dim=-1)))
        branches = torch.stack(scores, dim=1)  # [B, 3, k]
        return {"score": branches.sum(1), "branches": branches}


@register_head("branchsum")
class BranchSumHead(TorchHead):
    """Technical + aesthetic + alignment branch scores, summed. Roles: ``technical``,
    ``aesthetic``, ``frames`` (CLIP frame embeddings), ``text`` (CLIP prompt embedding)."""

    DEFAULT_FEATURES = {"technical": "swin-fragments", "aesthetic": "convnext-frames", "frames": "clip-frames", "text": "clip-text-pooled"}
    PRESETS = {
        "default": dict(d_model=128, mlp_hidden=128, dropout=0.1, epochs=30, batch_size=32, lr=1e-3, lr_step=10, lr_gamma=0.3),
    }
    PARAMETER_CONSTRAINTS = deep_constraints(PRESETS, DEFAULT_FEATURES, d_model=SIZE, mlp_hidden=SIZE,
                                             dropout=DROPOUT, loss=LOSS)

    def __init__(self, preset="default", features=None, d_model=None, mlp_hidden=None, dropout=None,
                 loss="plcc_rank", epochs=None, batch_size=None, lr=None, lr_step=None, lr_gamma=None,
                 weight_decay=0.0, val_fraction=0.0, patience=None, fgm_epsilon=0.0,
                 fgm_params="input_proj.*", seed=0, device="cpu", amp=False, verbose=False):
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
        return BranchSumModule(dims, n_outputs, int(self._hp("d_model")), int(self._hp("mlp_hidden")), float(self._hp("dropout")))
