"""Losses of the deep heads against hand-computed values, FCL's fairness property, and FGM."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from aigvqa.heads.losses import (
    FGM,
    frame_consistency_loss,
    get_loss,
    hinge_rank_loss,
    mae_loss,
    mae_rank_loss,
    margin_rank_loss,
    plcc_loss,
    plcc_rank_loss,
    smooth_l1_loss,
)

t = torch.tensor


def test_mae_rank_by_hand():
    pred, target = t([1.0, 2.0, 3.0]), t([3.0, 2.0, 1.0])
    # MAE = (2 + 0 + 2) / 3. Rank terms max(0, |dy| - sign(dy) dp) over ordered pairs:
    # (0,1): 1 + 1 = 2, (0,2): 2 + 2 = 4, (1,2): 1 + 1 = 2, same for the reversed pairs -> 16 / 6
    assert mae_loss(pred, target).item() == pytest.approx(4 / 3)
    assert margin_rank_loss(pred, target).item() == pytest.approx(16 / 6)
    assert mae_rank_loss(pred, target).item() == pytest.approx(4 / 3 + 16 / 6)
    assert mae_rank_loss(pred, target, rank_weight=0.5).item() == pytest.approx(4 / 3 + 8 / 6)


def test_margin_rank_zero_when_gaps_reproduced_and_positive_when_too_small():
    target = t([0.0, 1.0, 3.0])
    assert margin_rank_loss(target + 5, target).item() == 0.0
    # right order but half the gaps: each ordered pair pays half its gap: 2 * (0.5 + 1.5 + 1) / 6
    assert margin_rank_loss(target / 2, target).item() == pytest.approx(2 * (0.5 + 1.5 + 1.0) / 6)


def test_hinge_rank_by_hand():
    pred, target = t([1.0, 2.0, 3.0]), t([3.0, 2.0, 1.0])
    # relu((p_i - p_j) sign(y_j - y_i)): pairs give 1, 2, 1 and again 1, 2, 1 -> sum 8, max 2
    assert hinge_rank_loss(pred, target).item() == pytest.approx(8 / 6 / 3)
    assert hinge_rank_loss(target, target).item() == 0.0


def test_plcc_loss_by_hand():
    pred, target = t([1.0, 2.0, 4.0]), t([1.0, 3.0, 2.0])
    rho = np.corrcoef([1, 2, 4], [1, 3, 2])[0, 1]
    expected = ((1 - rho) / 2 + (1 - rho**2) / 4) / 2
    assert plcc_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
    assert plcc_loss(3 * pred - 7, target).item() == pytest.approx(
        expected, rel=1e-5
    )  # scale/shift-free
    assert plcc_loss(target, target).item() == pytest.approx(0.0, abs=1e-7)
    assert plcc_loss(-target, target).item() == pytest.approx(0.5, rel=1e-5)  # rho = -1
    assert plcc_rank_loss(pred, target).item() == pytest.approx(
        expected + 0.3 * hinge_rank_loss(pred, target).item(), rel=1e-5
    )


def test_smooth_l1_by_hand_video_and_frame_level():
    pred, target = t([0.0, 0.05, 2.0]), t([0.0, 0.0, 0.0])
    # beta 0.1: 0, 0.5 * 0.05^2 / 0.1, 2 - 0.05
    assert smooth_l1_loss(pred, target, beta=0.1).item() == pytest.approx((0.0125 + 1.95) / 3)
    frames = t([[0.5, 0.7, 9.0]])  # third frame is padding
    mask = t([[True, True, False]])
    assert smooth_l1_loss(frames, t([0.5]), beta=1.0, mask=mask).item() == pytest.approx(
        0.5 * 0.2**2 / 2
    )


def test_multi_output_loss_is_mean_of_columns():
    pred = t([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0]])
    target = t([[3.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    for loss in (mae_rank_loss, plcc_rank_loss):
        cols = [loss(pred[:, c], target[:, c]).item() for c in range(2)]
        assert loss(pred, target).item() == pytest.approx(np.mean(cols), rel=1e-6)


def _fcl_reference(scores, target, sigma, bins=100):
    """FCL for one video written out with loops: |mean - target| x BCE(soft histogram,
    Gaussian label)."""
    width = 1.0 / bins
    centres = [(b + 0.5) * width for b in range(bins)]
    hist = [0.0] * bins
    for s in scores:
        k = [math.exp(-((s - c) ** 2) / (2 * width**2)) for c in centres]
        z = sum(k)
        hist = [h + v / z / len(scores) for h, v in zip(hist, k)]
    g = [math.exp(-((c - target) ** 2) / (2 * sigma**2)) for c in centres]
    label = [v / sum(g) for v in g]
    eps = 1e-6
    bce = 0.0
    for p, q in zip(hist, label):
        p = min(max(p, eps), 1 - eps)
        bce -= q * math.log(p) + (1 - q) * math.log(1 - p)
    return abs(sum(scores) / len(scores) - target) * bce / bins


def test_frame_consistency_loss_matches_reference_and_ignores_padding():
    frames = t([[0.2, 0.4, 0.9], [0.7, 0.6, 0.0]])
    mask = t([[True, True, False], [True, True, True]])
    target, sigma = t([0.5, 0.3]), t([0.1, 0.05])
    expected = (
        _fcl_reference([0.2, 0.4], 0.5, 0.1) + _fcl_reference([0.7, 0.6, 0.0], 0.3, 0.05)
    ) / 2
    got = frame_consistency_loss(frames, target, sigma, mask)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    assert got.item() > 0


def test_frame_consistency_loss_is_zero_when_mean_frame_score_equals_target():
    # frames disagree with each other (0.25 vs 0.75) but their mean is the MOS: no penalty,
    # no gradient
    frames = t([[0.25, 0.75], [0.1, 0.3]], requires_grad=True)
    target = t([0.5, 0.2])
    loss = frame_consistency_loss(frames, target, 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(frames.grad).item() == 0
    shifted = frame_consistency_loss(frames.detach() + 0.1, target, 0.1)
    assert shifted.item() > 0


def test_get_loss_rejects_unknown_names():
    assert get_loss("mae_rank") is mae_rank_loss
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("l3")


def test_fgm_moves_matched_parameters_by_epsilon_and_restores_them():
    torch.manual_seed(0)
    module = nn.ModuleDict({"input_proj": nn.Linear(4, 3), "head": nn.Linear(3, 1)})
    x = torch.randn(8, 4)
    loss = module["head"](module["input_proj"](x)).pow(2).mean()
    loss.backward()
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    fgm = FGM(module, epsilon=0.5, patterns="input_proj.*")
    assert fgm.attack() == 2  # weight and bias of input_proj
    for name, p in module.named_parameters():
        delta = p.detach() - before[name]
        if name.startswith("input_proj"):
            assert delta.norm().item() == pytest.approx(0.5, rel=1e-5)
            cos = torch.nn.functional.cosine_similarity(delta.flatten(), p.grad.flatten(), dim=0)
            assert cos.item() == pytest.approx(1.0, abs=1e-5)
        else:
            assert torch.equal(delta, torch.zeros_like(delta))
    adv = module["head"](module["input_proj"](x)).pow(2).mean()
    assert adv.item() > loss.item()  # a step along the gradient raises the loss
    fgm.restore()
    for name, p in module.named_parameters():
        assert torch.equal(p.detach(), before[name])


ROW_WEIGHTED = {
    "mae": lambda p, y, w: mae_loss(p, y, weight=w),
    "mae_rank": lambda p, y, w: mae_rank_loss(p, y, weight=w),
    "margin_rank": lambda p, y, w: margin_rank_loss(p, y, weight=w),
    "hinge_rank": lambda p, y, w: hinge_rank_loss(p, y, weight=w),
    "plcc": lambda p, y, w: plcc_loss(p, y, weight=w),
    "plcc_rank": lambda p, y, w: plcc_rank_loss(p, y, weight=w),
    "smooth_l1": lambda p, y, w: smooth_l1_loss(p, y, beta=0.5, weight=w),
    "mse": lambda p, y, w: get_loss("mse")(p, y, weight=w),
}


@pytest.mark.parametrize("name", sorted(ROW_WEIGHTED))
def test_row_weight_is_the_loss_of_the_kept_rows_and_ignores_the_rest(name):
    """Trials trained together pad their batches with masked rows: a masked row, even one
    holding NaN or inf, must not change the loss or its gradient."""
    loss = ROW_WEIGHTED[name]
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(9, 2, generator=gen), torch.randn(9, 2, generator=gen)
    keep = t([True, False, True, True, False, True, True, False, True])
    pred[1, 0], pred[4, 1], target[7, 0] = math.nan, math.inf, math.nan  # in masked rows only
    pred = pred.requires_grad_(True)
    weighted = loss(pred, target, keep)
    weighted.backward()
    sub = pred.detach()[keep].clone().requires_grad_(True)
    expected = loss(sub, target[keep], None)
    expected.backward()
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert torch.isfinite(pred.grad).all() and (pred.grad[~keep] == 0).all()
    torch.testing.assert_close(pred.grad[keep], sub.grad, rtol=1e-5, atol=1e-7)


def test_row_weight_with_fewer_than_two_rows_is_zero_like_a_tiny_batch():
    pred, target = torch.randn(4), torch.randn(4)
    one = t([False, True, False, False])
    for name in ("plcc", "margin_rank", "hinge_rank"):
        assert ROW_WEIGHTED[name](pred, target, one).item() == 0.0
    assert ROW_WEIGHTED["mae"](pred, target, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_frame_losses_take_a_row_weight_too():
    gen = torch.Generator().manual_seed(1)
    frames, target = torch.rand(5, 6, generator=gen), torch.rand(5, generator=gen)
    mask = torch.rand(5, 6, generator=gen) > 0.3
    mask[:, 0] = True
    keep = t([True, True, False, True, False])
    frames[2] = math.nan
    for loss in (
        lambda f, y, m, w: smooth_l1_loss(f, y, beta=0.1, mask=m, weight=w),
        lambda f, y, m, w: frame_consistency_loss(f, y, 0.05, m, weight=w),
    ):
        assert loss(frames, target, mask, keep).item() == pytest.approx(
            loss(frames[keep], target[keep], mask[keep], None).item(), rel=1e-5
        )
