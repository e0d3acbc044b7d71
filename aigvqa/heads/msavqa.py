"""MSA-VQA head (seed 000: multi-level semantic-aware quality assessment of AI-generated
videos, built on frozen CLIP): SMA, PSS, three quality levels and their ensemble.

- Adapters over the cached features: per-frame CLIP image embeddings ("frames") and the
  CLIP prompt embedding, pooled or tokens ("text").
- SMA (semantic-mutation-aware module): each frame token carries its adapted embedding,
  the adapted difference to the previous frame and two explicit mutation measures
  (1 - cosine to the previous frame, relative jump norm), so a sudden content change is
  visible in one token; a learnable query, shifted by the prompt feature, cross-attends
  the frame tokens to form the video token.
- PSS (prompt semantic supervision): an adapter + residual MLP over the text feature gives
  a quality-aware prompt feature; it conditions the SMA query and every level head, and
  each frame also gets its raw CLIP frame-prompt cosine when both live in one space.
- Levels: frame (per-frame scores vs MOS, smooth L1, or the Frame Consistency Loss),
  segment (frames split into ``segments`` equal parts, MAE + rank), video (PLCC loss).
- Ensemble: f = w1 sig(z1) + w2 sig(z2) + w3 sig(z3) + b, weights non-negative, fit by NNLS
  on validation predictions: by default the head holds out ``val_fraction=0.1`` of its
  training rows for that, as the paper does; ``val_fraction=0`` fits them on training
  predictions (optimistic: every level looks good on rows it was trained on). When no
  level correlates with the target on those rows, NNLS gives every weight 0 (a constant
  predictor); the ensemble then averages the levels (weights 1/3, bias fitted) instead.

Targets are mapped to [0.1, 0.9] on the training range (sigmoid outputs must reach them).
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import nn

from aigvqa.heads.base import TorchHead
from aigvqa.heads.deep_params import DROPOUT, SIZE, deep_constraints
from aigvqa.heads.device import Batch
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.layers import (
    Adapter,
    CrossAttentionBlock,
    make_mlp,
    masked_mean,
    sinusoidal_positions,
)
from aigvqa.heads.losses import frame_consistency_loss, mae_rank_loss, plcc_loss, smooth_l1_loss
from aigvqa.heads.params import Check, Interval, Options
from aigvqa.heads.registry import register_head

LEVELS = ("frame", "segment", "video")
FRAME_LOSSES = ("smooth_l1", "fcl")
UNIT_LOW, UNIT_HIGH = 0.1, 0.9


def mutation_measures(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame differences [B, T, D] and mutation measures [B, T, 2] (1 - cos to the previous
    frame, |x_t - x_{t-1}| / (|x_t| + |x_{t-1}|)); zero for the first and padded frames."""
    prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    has_prev = mask.clone()
    has_prev[:, 0] = False
    has_prev &= torch.cat([mask[:, :1], mask[:, :-1]], dim=1)
    w = has_prev.to(x.dtype)[..., None]
    diff = (x - prev) * w
    cos = F.cosine_similarity(x, prev, dim=-1, eps=1e-6)[..., None]
    rel = diff.norm(dim=-1, keepdim=True) / (
        x.norm(dim=-1, keepdim=True) + prev.norm(dim=-1, keepdim=True) + 1e-6
    )
    return diff, torch.cat([(1 - cos) * w, rel * w], dim=-1)


def segment_assignment(mask: torch.Tensor, segments: int) -> torch.Tensor:
    """[B, T] mask -> [B, T, S] one-hot: frame t of a video of length L is in segment
    floor(t S / L)."""
    lengths = mask.sum(1, keepdim=True).clamp_min(1)
    t = torch.arange(mask.shape[1], device=mask.device)[None, :]
    seg = torch.div(t * segments, lengths, rounding_mode="floor").clamp_max(segments - 1)
    # a comparison, not F.one_hot: one_hot checks its values on the host (a sync per batch
    # on CUDA, and not vmap-able)
    one_hot = seg[..., None] == torch.arange(segments, device=mask.device)
    return (one_hot & mask[..., None]).to(torch.float32)


class MSAVQAModule(nn.Module):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        d_model: int,
        adapter_dim: int,
        heads: int,
        queries: int,
        segments: int,
        mlp_hidden: int,
        dropout: float,
    ):
        super().__init__()
        d = d_model
        self.segments = segments
        # raw CLIP frame-prompt cosine only when frames and text share an embedding width
        self.raw_alignment = dims["frames"] == dims["text"]
        self.input_proj = nn.ModuleDict(
            {
                "frames": Adapter(dims["frames"], d, adapter_dim, dropout),
                "frame_diff": Adapter(dims["frames"], d, adapter_dim, dropout),
                "text": Adapter(dims["text"], d, adapter_dim, dropout),
            }
        )
        self.mutation_proj = nn.Linear(2, d)
        self.alignment_proj = nn.Linear(1, d)
        self.prompt_mlp = make_mlp(d, mlp_hidden, d, layers=2, dropout=dropout)
        self.query = nn.Parameter(torch.randn(queries, d) * 0.02)
        self.query_from_prompt = nn.Linear(d, d)
        self.sma = CrossAttentionBlock(d, heads, 2 * d, dropout)
        self.frame_head = make_mlp(2 * d, mlp_hidden, n_outputs, dropout=dropout)
        self.segment_head = make_mlp(2 * d, mlp_hidden, n_outputs, dropout=dropout)
        self.video_head = make_mlp(3 * d, mlp_hidden, n_outputs, dropout=dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x, mask = batch["frames"]
        text, text_mask = batch["text"]
        # PSS: quality-aware prompt feature
        p = masked_mean(self.input_proj["text"](text), text_mask)
        p = p + self.prompt_mlp(p)
        # SMA frame tokens
        diff, measures = mutation_measures(x, mask)
        h = (
            self.input_proj["frames"](x)
            + self.input_proj["frame_diff"](diff)
            + self.mutation_proj(measures)
        )
        if self.raw_alignment:
            raw_text = masked_mean(text, text_mask)
            cos = F.cosine_similarity(x, raw_text[:, None, :], dim=-1, eps=1e-6)[..., None]
            h = h + self.alignment_proj(cos)
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device, h.dtype)
        queries = self.query[None] + self.query_from_prompt(p)[:, None, :]
        v = self.sma(queries, h, mask).mean(1)  # [B, d] video token
        # frame level
        p_frames = p[:, None, :].expand(-1, h.shape[1], -1)
        frame_scores = torch.sigmoid(self.frame_head(torch.cat([h, p_frames], -1)))  # [B, T, k]
        u_frame = masked_mean(frame_scores, mask)
        # segment level
        assign = segment_assignment(mask, self.segments).to(h.dtype)  # [B, T, S]
        counts = assign.sum(1)  # [B, S]
        seg_tokens = assign.transpose(1, 2) @ h / counts.clamp_min(1)[..., None]
        seg_mask = counts > 0
        v_segs = v[:, None, :].expand(-1, self.segments, -1)
        seg_scores = torch.sigmoid(self.segment_head(torch.cat([seg_tokens, v_segs], -1)))
        u_segment = masked_mean(seg_scores, seg_mask)
        # video level
        u_video = torch.sigmoid(self.video_head(torch.cat([v, p, v * p], -1)))
        return {
            "levels": torch.stack([u_frame, u_segment, u_video], dim=1),  # [B, 3, k]
            "frame_scores": frame_scores,
            "frame_mask": mask,
        }


@register_head("msavqa")
class MSAVQAHead(TorchHead):
    """MSA-VQA head. Roles: ``frames`` (per-frame CLIP image embeddings) and ``text`` (CLIP
    prompt embedding, pooled [1, D] or tokens [L, D])."""

    DEFAULT_FEATURES = {"frames": "clip-frames", "text": "clip-text-pooled"}
    PRESETS = {
        "default": dict(
            d_model=256,
            adapter_dim=64,
            heads=4,
            queries=1,
            segments=4,
            mlp_hidden=256,
            dropout=0.1,
            epochs=30,
            batch_size=32,
            lr=1e-4,
            lr_step=10,
            lr_gamma=0.3,
        ),
        "small": dict(
            d_model=64,
            adapter_dim=16,
            heads=2,
            queries=1,
            segments=4,
            mlp_hidden=64,
            dropout=0.0,
            epochs=30,
            batch_size=32,
            lr=2e-3,
            lr_step=15,
            lr_gamma=0.3,
        ),
    }
    FITTED_ARRAYS = TorchHead.FITTED_ARRAYS + (
        "y_min_",
        "y_max_",
        "ensemble_weights_",
        "ensemble_bias_",
    )
    PARAMETER_CONSTRAINTS = deep_constraints(
        PRESETS,
        DEFAULT_FEATURES,
        d_model=SIZE,
        adapter_dim=SIZE,
        heads=SIZE,
        queries=SIZE,
        segments=SIZE,
        mlp_hidden=SIZE,
        dropout=DROPOUT,
        frame_loss=[Options(*FRAME_LOSSES)],
        frame_beta=[Interval(Real, 0, None, closed="neither")],
        fcl_sigma=[Interval(Real, 0, None, closed="neither")],
        level_weights=[
            Check(
                lambda v: (
                    isinstance(v, list | tuple)
                    and len(v) == 3
                    and all(isinstance(w, Real) and not isinstance(w, bool) and w >= 0 for w in v)
                ),
                "3 non-negative weights (frame, segment, video level)",
            )
        ],
    )

    def __init__(
        self,
        preset="default",
        features=None,
        d_model=None,
        adapter_dim=None,
        heads=None,
        queries=None,
        segments=None,
        mlp_hidden=None,
        dropout=None,
        frame_loss="smooth_l1",
        frame_beta=0.1,
        fcl_sigma=0.05,
        level_weights=(1.0, 1.0, 1.0),
        epochs=None,
        batch_size=None,
        lr=None,
        lr_step=None,
        lr_gamma=None,
        weight_decay=0.0,
        val_fraction=0.1,
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
        self.adapter_dim = adapter_dim
        self.heads = heads
        self.queries = queries
        self.segments = segments
        self.mlp_hidden = mlp_hidden
        self.dropout = dropout
        self.frame_loss = frame_loss
        self.frame_beta = frame_beta
        self.fcl_sigma = fcl_sigma
        self.level_weights = level_weights
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
        return MSAVQAModule(
            dims,
            n_outputs,
            **{
                k: self._hp(k)
                for k in (
                    "d_model",
                    "adapter_dim",
                    "heads",
                    "queries",
                    "segments",
                    "mlp_hidden",
                    "dropout",
                )
            },
        )

    # targets live in [0.1, 0.9] so the sigmoid levels can reach them
    def _fit_target_scaler(self, y: np.ndarray) -> None:
        super()._fit_target_scaler(y)
        self.y_min_, self.y_max_ = y.min(0), y.max(0)
        self.y_max_ = np.where(self.y_max_ > self.y_min_, self.y_max_, self.y_min_ + 1.0)

    def _scale_targets(self, y: np.ndarray) -> np.ndarray:
        return UNIT_LOW + (UNIT_HIGH - UNIT_LOW) * (y - self.y_min_) / (self.y_max_ - self.y_min_)

    def _unscale_targets(self, y: np.ndarray) -> np.ndarray:
        return self.y_min_ + (y - UNIT_LOW) * (self.y_max_ - self.y_min_) / (UNIT_HIGH - UNIT_LOW)

    def _loss(self, outputs, y, weight=None):
        levels, frames, mask = outputs["levels"], outputs["frame_scores"], outputs["frame_mask"]
        if self.frame_loss == "fcl":
            frame = frame_consistency_loss(frames, y, self.fcl_sigma, mask, weight=weight)
        else:
            frame = smooth_l1_loss(frames, y, beta=self.frame_beta, mask=mask, weight=weight)
        w = self.level_weights
        return (
            w[0] * frame
            + w[1] * mae_rank_loss(levels[:, 1], y, weight=weight)
            + w[2] * plcc_loss(levels[:, 2], y, weight=weight)
        )

    def _predict_outputs(self, outputs):
        w = torch.as_tensor(
            self.ensemble_weights_.T, dtype=outputs["levels"].dtype, device=outputs["levels"].device
        )
        b = torch.as_tensor(self.ensemble_bias_, dtype=w.dtype, device=w.device)
        return (outputs["levels"] * w[None]).sum(1) + b  # [B, k]

    def level_predictions(self, X: FeatureSet, rows: np.ndarray | None = None) -> np.ndarray:
        """[N, 3, k] sigmoid outputs of the frame, segment and video levels (scaled space)."""
        return self._run(X, lambda out: out["levels"], rows)

    def _after_training(self, features, y_scaled, rows):
        levels = self.level_predictions(features, rows)  # [n, 3, k]
        k = y_scaled.shape[1]
        self.ensemble_weights_ = np.zeros((k, len(LEVELS)))
        self.ensemble_bias_ = np.zeros(k)
        for c in range(k):
            target = y_scaled[rows, c].astype(np.float64)
            design = np.column_stack([levels[:, :, c], np.ones(len(rows)), -np.ones(len(rows))])
            coef, _ = nnls(design, target)
            if not (coef[:3] > 0).any():
                # No level correlates with the target on these rows (a few held-out rows, or an
                # early epoch): NNLS's best is a constant, which would make every prediction the
                # same number. Average the levels instead; only the bias is fitted.
                coef[:3] = 1.0 / len(LEVELS)
                coef[3], coef[4] = float(np.mean(target - levels[:, :, c].mean(1))), 0.0
            self.ensemble_weights_[c] = coef[:3]
            self.ensemble_bias_[c] = coef[3] - coef[4]
