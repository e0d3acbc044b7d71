"""Training losses of the stage-two heads, as plain functions on tensors, plus FGM.

Conventions: ``pred`` and ``target`` are [B] or [B, k] (k quality dimensions); a [B, k] loss
is the mean of the k per-column losses. Frame-level losses take frame scores [B, T] or
[B, T, k] with a boolean ``mask`` [B, T] (True where a frame holds data) so padded frames
never count.

Every loss also takes ``weight``, a boolean [B] row mask: the loss is then the loss of the
rows where it is True, as if the others were not in the batch (same value up to float
rounding). Trials trained together (``aigvqa.heads.trials``) pad each trial's batch to a
common size with such rows. Masked rows are removed with ``torch.where``, never by
multiplying with 0, so nothing in them (not even inf or NaN) reaches the result, and a
batch with fewer than two valid rows gives 0 like a batch of fewer than two rows.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _as_columns(
    pred: Tensor, target: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """[B] or [B, k] -> [B, k] pair, checked to match; rows outside ``weight`` set to 0 (so
    that neither their values nor their gradients can be NaN)."""
    if pred.dim() == 1:
        pred = pred[:, None]
    if target.dim() == 1:
        target = target[:, None]
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    target = target.to(pred.dtype)
    if weight is not None:
        pred, target = _zero_rows(pred, weight), _zero_rows(target, weight)
    return pred, target


def _zero_rows(x: Tensor, weight: Tensor) -> Tensor:
    """``x`` [B, ...] with the rows where ``weight`` is False replaced by 0."""
    return torch.where(weight.view(-1, *([1] * (x.dim() - 1))), x, 0.0)


def _row_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of [B, k] values over all of them, or over the rows where ``weight`` is True."""
    if weight is None:
        return values.mean()
    keep = weight[:, None].expand_as(values)
    return torch.where(keep, values, 0.0).sum() / keep.sum().clamp_min(1)


def mae_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error."""
    pred, target = _as_columns(pred, target, weight)
    return _row_mean((pred - target).abs(), weight)


def mse_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error."""
    pred, target = _as_columns(pred, target, weight)
    return _row_mean((pred - target) ** 2, weight)


def _pairs(weight: Tensor | None, b: int) -> tuple[Tensor | None, Tensor | int]:
    """[B, B, 1] mask of the ordered pairs of valid rows (None: all), and their row count."""
    if weight is None:
        return None, b
    return (weight[:, None] & weight[None, :])[..., None], weight.sum()


def margin_rank_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Pairwise rank loss with the target gap as margin, averaged over ordered pairs i != j:

        max(0, |y_i - y_j| - sign(y_i - y_j) * (p_i - p_j))

    From Li et al., "Unified Quality Assessment of In-the-Wild Videos with Mixed Datasets
    Training" (MDTVSFA, IJCV 2021), the rank term UGVQ (Zhang et al., "Benchmarking AIGC
    Video Quality Assessment: A Dataset and Unified Model", 2024) adds to its MAE. Zero only
    when every predicted gap is at least the true gap in the right direction.
    """
    pred, target = _as_columns(pred, target, weight)
    b = pred.shape[0]
    if b < 2:
        return pred.sum() * 0.0
    dp = pred[:, None, :] - pred[None, :, :]  # [B, B, k]
    dy = target[:, None, :] - target[None, :, :]
    terms = F.relu(dy.abs() - torch.sign(dy) * dp)
    pairs, n = _pairs(weight, b)
    if pairs is None:
        return terms.sum() / (b * (b - 1) * pred.shape[1])
    return torch.where(pairs, terms, 0.0).sum() / (n * (n - 1) * pred.shape[1]).clamp_min(1)


def hinge_rank_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """FAST-VQA / DOVER rank loss (Wu et al., ECCV 2022 / ICCV 2023, ``rank_loss``):

        sum_{i,j} relu((p_i - p_j) * sign(y_j - y_i)) / (B (B - 1)) / (1 + max_ij relu(...))

    the max in the scale is treated as a constant (detached), as in the reference code.
    """
    pred, target = _as_columns(pred, target, weight)
    b = pred.shape[0]
    if b < 2:
        return pred.sum() * 0.0
    pairs, n = _pairs(weight, b)
    losses = []
    for c in range(pred.shape[1]):
        p, y = pred[:, c], target[:, c]
        terms = F.relu((p[:, None] - p[None, :]) * torch.sign(y[None, :] - y[:, None]))
        if pairs is None:
            scale = 1.0 + terms.max().detach()
            losses.append(terms.sum() / (b * (b - 1)) / scale)
        else:  # terms are >= 0, so 0 in the masked pairs leaves the max alone
            terms = torch.where(pairs[..., 0], terms, 0.0)
            scale = 1.0 + terms.max().detach()
            losses.append(terms.sum() / (n * (n - 1)).clamp_min(1) / scale)
    return torch.stack(losses).mean()


def plcc_loss(
    pred: Tensor, target: Tensor, eps: float = 1e-8, weight: Tensor | None = None
) -> Tensor:
    """FAST-VQA / DOVER ``plcc_loss``: with both sides standardised over the batch and
    rho their Pearson correlation, ``(MSE(p, y) / 4 + MSE(rho * p, y) / 4) / 2`` which equals
    ``((1 - rho) / 2 + (1 - rho**2) / 4) / 2``: zero iff rho = 1, scale- and shift-free.
    """
    pred, target = _as_columns(pred, target, weight)
    if pred.shape[0] < 2:
        return pred.sum() * 0.0
    if weight is not None:
        return _weighted_plcc_loss(pred, target, eps, weight)
    p = (pred - pred.mean(0)) / (pred.std(0, unbiased=False) + eps)
    y = (target - target.mean(0)) / (target.std(0, unbiased=False) + eps)
    rho = (p * y).mean(0)  # [k]
    loss0 = ((p - y) ** 2).mean(0) / 4
    loss1 = ((rho * p - y) ** 2).mean(0) / 4
    return ((loss0 + loss1) / 2).mean()


def _weighted_plcc_loss(pred: Tensor, target: Tensor, eps: float, weight: Tensor) -> Tensor:
    keep = weight[:, None].expand_as(pred)
    n = keep.sum(0).clamp_min(1)  # [k]

    def mean(x):
        return torch.where(keep, x, 0.0).sum(0) / n

    def standardised(x):
        centred = x - mean(x)
        return centred / (mean(centred**2).sqrt() + eps)

    p, y = standardised(pred), standardised(target)
    rho = mean(p * y)
    loss0 = mean((p - y) ** 2) / 4
    loss1 = mean((rho * p - y) ** 2) / 4
    return torch.where(weight.sum() >= 2, ((loss0 + loss1) / 2).mean(), 0.0)


def mae_rank_loss(
    pred: Tensor, target: Tensor, rank_weight: float = 1.0, weight: Tensor | None = None
) -> Tensor:
    """UGVQ's objective: MAE + ``rank_weight`` x ``margin_rank_loss``."""
    return mae_loss(pred, target, weight) + rank_weight * margin_rank_loss(pred, target, weight)


def plcc_rank_loss(
    pred: Tensor, target: Tensor, rank_weight: float = 0.3, weight: Tensor | None = None
) -> Tensor:
    """FAST-VQA / DOVER objective: ``plcc_loss`` + 0.3 x ``hinge_rank_loss`` (their default)."""
    return plcc_loss(pred, target, weight=weight) + rank_weight * hinge_rank_loss(
        pred, target, weight
    )


def _frame_columns(frame_scores: Tensor, target: Tensor, mask: Tensor | None):
    """frame scores [B, T] or [B, T, k], target [B] or [B, k], mask [B, T]
    -> [B,T,k], [B,k], [B,T,1]."""
    if frame_scores.dim() == 2:
        frame_scores = frame_scores[..., None]
    if target.dim() == 1:
        target = target[:, None]
    if mask is None:
        mask = torch.ones(frame_scores.shape[:2], dtype=torch.bool, device=frame_scores.device)
    if frame_scores.shape[0] != target.shape[0] or frame_scores.shape[2] != target.shape[1]:
        raise ValueError(
            f"frame scores {tuple(frame_scores.shape)} do not match target {tuple(target.shape)}"
        )
    return frame_scores, target.to(frame_scores.dtype), mask[..., None].to(frame_scores.dtype)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = 1.0,
    mask: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Huber-style smooth L1 (Girshick, Fast R-CNN 2015): 0.5 d^2 / beta if |d| < beta else
    |d| - 0.5 beta. Video-level for ``pred`` [B] / [B, k]; frame-level when ``pred`` is
    [B, T] / [B, T, k] with ``mask``: every real frame is compared with its video's target
    (MSA-VQA's frame-level objective) and padded frames are ignored.
    """
    if mask is None and pred.dim() == target.dim():
        pred, target = _as_columns(pred, target, weight)
        if weight is None:
            return F.smooth_l1_loss(pred, target, beta=beta)
        return _row_mean(F.smooth_l1_loss(pred, target, beta=beta, reduction="none"), weight)
    if weight is not None:
        mask = (
            torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
            if mask is None
            else mask
        ) & weight[:, None]
        pred, target = _zero_rows(pred, weight), _zero_rows(target, weight)
    scores, target, weights = _frame_columns(pred, target, mask)
    per_frame = F.smooth_l1_loss(
        scores, target[:, None, :].expand_as(scores), beta=beta, reduction="none"
    )
    if weight is not None:
        per_frame = torch.where(weights > 0, per_frame, 0.0)
    return (per_frame * weights).sum() / (weights.sum() * scores.shape[2]).clamp_min(1.0)


def masked_frame_mean(frame_scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over real frames: [B, T] -> [B], [B, T, k] -> [B, k]."""
    if mask is None:
        return frame_scores.mean(1)
    w = mask.to(frame_scores.dtype)
    if frame_scores.dim() == 3:
        w = w[..., None]
    return (frame_scores * w).sum(1) / w.sum(1).clamp_min(1.0)


def gaussian_bin_label(
    target: Tensor,
    sigma: Tensor | float,
    bins: int = 100,
    score_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """[B] targets -> [B, bins] Gaussian label centred on the target, normalised to sum 1."""
    lo, hi = score_range
    centres = (
        lo + (torch.arange(bins, dtype=target.dtype, device=target.device) + 0.5) * (hi - lo) / bins
    )
    sigma = torch.as_tensor(sigma, dtype=target.dtype, device=target.device).clamp_min(
        (hi - lo) / bins
    )
    if sigma.dim() == 1:
        sigma = sigma[:, None]
    logits = -((centres[None, :] - target[:, None]) ** 2) / (2 * sigma**2)
    return torch.softmax(logits, dim=1)


def soft_score_histogram(
    frame_scores: Tensor,
    mask: Tensor,
    bins: int = 100,
    score_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Differentiable histogram of per-frame scores [B, T] over ``bins`` bins -> [B, bins]:
    each frame spreads a Gaussian kernel one bin wide over the bin centres."""
    lo, hi = score_range
    width = (hi - lo) / bins
    centres = (
        lo
        + (torch.arange(bins, dtype=frame_scores.dtype, device=frame_scores.device) + 0.5) * width
    )
    kernel = torch.softmax(
        -((frame_scores[..., None] - centres) ** 2) / (2 * width**2), dim=-1
    )  # [B,T,bins]
    w = mask.to(frame_scores.dtype)[..., None]
    return (kernel * w).sum(1) / w.sum(1).clamp_min(1.0)


def frame_consistency_loss(
    frame_scores: Tensor,
    target: Tensor,
    target_std: Tensor | float,
    mask: Tensor | None = None,
    bins: int = 100,
    score_range: tuple[float, float] = (0.0, 1.0),
    eps: float = 1e-6,
    weight: Tensor | None = None,
) -> Tensor:
    """Frame Consistency Loss (seed 004, NTIRE 2024 AIGC VQA track): per video,

        FCL = |mean_t s_t - MOS| x BCE(hist(s_1..s_T), N(MOS, sigma = MOS std) over 100 bins)

    the MAE of the mean frame score times the binary cross-entropy between the soft
    histogram of frame scores and a Gaussian label centred on the MOS. The product makes
    the loss exactly zero (with zero gradient) whenever the mean frame score equals the
    MOS, whatever the spread of frame scores: frames are not forced to agree with each
    other when the video-level score is right (the paper's fairness property); when it is
    wrong, frames far from the MOS distribution are penalised most.

    ``frame_scores`` [B, T] (or [B, T, k] with target [B, k]) must lie in ``score_range``;
    ``target_std`` is the per-video MOS standard deviation [B] (or [B, k]) or a constant.
    """
    if weight is not None:
        frame_scores, target = _zero_rows(frame_scores, weight), _zero_rows(target, weight)
    scores, target2, _ = _frame_columns(frame_scores, target, mask)
    if mask is None:
        mask = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
    std = torch.as_tensor(target_std, dtype=scores.dtype, device=scores.device)
    if std.dim() == 1:
        std = std[:, None]
    std = std.expand_as(target2)
    losses = []
    for c in range(scores.shape[2]):
        s = scores[:, :, c]
        mae = (masked_frame_mean(s, mask) - target2[:, c]).abs()  # [B]
        p = soft_score_histogram(s, mask, bins, score_range).clamp(eps, 1 - eps)
        q = gaussian_bin_label(target2[:, c], std[:, c], bins, score_range)
        bce = -(q * p.log() + (1 - q) * (1 - p).log()).mean(1)  # [B]
        losses.append(mae * bce)
    return _row_mean(torch.stack(losses, 1), weight)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "mae_rank": mae_rank_loss,
    "plcc_rank": plcc_rank_loss,
    "plcc": plcc_loss,
    "mae": mae_loss,
    "mse": mse_loss,
    "smooth_l1": smooth_l1_loss,
}
"""Video-level objectives a head's ``loss`` parameter can name."""


def get_loss(name: str) -> Callable[..., Tensor]:
    """The named video-level loss: ``loss(pred, target, weight=None)``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


class FGM:
    """Fast Gradient Method on weights (Miyato et al., "Adversarial Training Methods for
    Semi-Supervised Text Classification", ICLR 2017; the embedding-perturbation trick of
    NTIRE AIGC VQA entries): after ``loss.backward()``, ``attack()`` moves every parameter
    whose name matches ``patterns`` by ``epsilon * g / ||g||``, the caller adds the loss at
    the perturbed weights (backward again, gradients accumulate) and ``restore()`` puts
    the original weights back before the optimiser step.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        epsilon: float = 1.0,
        patterns: str | tuple[str, ...] = "*input_proj*",
    ):
        self.module = module
        self.epsilon = float(epsilon)
        self.patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        self._backup: dict[str, Tensor] = {}

    def parameters(self):
        for name, p in self.module.named_parameters():
            if p.requires_grad and any(fnmatch.fnmatch(name, pat) for pat in self.patterns):
                yield name, p

    def attack(self) -> int:
        """Perturb the matched parameters; returns how many were moved."""
        moved = 0
        with torch.no_grad():
            for name, p in self.parameters():
                if p.grad is None:
                    continue
                norm = p.grad.norm()
                if norm == 0 or not math.isfinite(norm.item()):
                    continue
                self._backup[name] = p.detach().clone()
                p.add_(self.epsilon * p.grad / norm)
                moved += 1
        return moved

    def restore(self) -> None:
        with torch.no_grad():
            for name, p in self.parameters():
                if name in self._backup:
                    p.copy_(self._backup[name])
        self._backup.clear()
