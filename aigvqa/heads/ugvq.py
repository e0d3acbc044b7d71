"""UGVQ head (seed 001: Zhang et al., "Benchmarking AIGC Video Quality Assessment: A Dataset
and Unified Model", 2024 -- the LGVQ dataset's unified model).

    spatial  (key-frame features, e.g. vit-keyframes [8, 768]) -> Transformer encoder
    temporal (motion features, e.g. slowfast [chunks, 2304])  -> projection
    text     (CLIP text tokens [77, 512] or pooled [1, 512])  -> projection
    three SCMA layers: spatial-text, spatial-temporal, temporal-text; each runs multi-head
    cross-attention both ways (A attends to B, B attends to A) and concatenates the pooled
    results -> 6 d; concatenated with the three pooled single-modality features -> 9 d
    -> MLP -> k outputs (LGVQ: spatial, temporal, alignment)
    loss: MAE + margin rank loss; Adam 1e-5, x0.1 every 5 epochs.

``preset="paper"`` has the paper's sizes; ``preset="small"`` suits a few hundred videos.
"""

from __future__ import annotations

import torch
from torch import nn

from aigvqa.heads.base import TorchHead
from aigvqa.heads.deep_params import DROPOUT, LOSS, SIZE, deep_constraints
from aigvqa.heads.device import Batch
from aigvqa.heads.layers import (
    CrossAttentionBlock,
    EncoderLayer,
    TransformerEncoder,
    make_mlp,
    masked_mean,
    sinusoidal_positions,
)
from aigvqa.heads.registry import register_head


class SCMA(nn.Module):
    """One SCMA layer between modalities A and B: A attends to B and B attends to A; the two
    results are pooled over their own valid steps and concatenated -> [B, 2 d]."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.a_reads_b = CrossAttentionBlock(d_model, heads, ffn, dropout)
        self.b_reads_a = CrossAttentionBlock(d_model, heads, ffn, dropout)

    def forward(self, a, mask_a, b, mask_b) -> torch.Tensor:
        a_out = self.a_reads_b(a, b, mask_b)
        b_out = self.b_reads_a(b, a, mask_a)
        return torch.cat([masked_mean(a_out, mask_a), masked_mean(b_out, mask_b)], dim=-1)


class UGVQModule(nn.Module):
    ROLES = ("spatial", "temporal", "text")
    PAIRS = (("spatial", "text"), ("spatial", "temporal"), ("temporal", "text"))

    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        d_model: int,
        encoder_layers: int,
        encoder_heads: int,
        encoder_ffn: int,
        scma_heads: int,
        scma_ffn: int,
        mlp_hidden: int,
        dropout: float,
    ):
        super().__init__()
        self.input_proj = nn.ModuleDict(
            {
                r: nn.Sequential(nn.Linear(dims[r], d_model), nn.LayerNorm(d_model))
                for r in self.ROLES
            }
        )
        # nn.TransformerEncoder's layout and maths (pre-LN, GELU), written out in layers.py so
        # that its dropout is keyed and it runs under vmap (trials trained together)
        self.encoder = TransformerEncoder(
            EncoderLayer(d_model, encoder_heads, encoder_ffn, dropout), encoder_layers
        )
        self.encoder_norm = nn.LayerNorm(d_model)
        self.scma = nn.ModuleDict(
            {f"{a}_{b}": SCMA(d_model, scma_heads, scma_ffn, dropout) for a, b in self.PAIRS}
        )
        self.regressor = make_mlp(9 * d_model, mlp_hidden, n_outputs, layers=2, dropout=dropout)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        tokens, masks = {}, {}
        for role in self.ROLES:
            x, mask = batch[role]
            h = self.input_proj[role](x)
            if role != "text":  # frame / clip order matters; token order is inside CLIP already
                h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device, h.dtype)
            tokens[role], masks[role] = h, mask
        tokens["spatial"] = self.encoder_norm(self.encoder(tokens["spatial"], masks["spatial"]))
        fused = [
            self.scma[f"{a}_{b}"](tokens[a], masks[a], tokens[b], masks[b]) for a, b in self.PAIRS
        ]
        single = [masked_mean(tokens[r], masks[r]) for r in self.ROLES]
        return {"score": self.regressor(torch.cat(fused + single, dim=-1))}


@register_head("ugvq")
class UGVQHead(TorchHead):
    """UGVQ fusion head. Roles: ``spatial`` (key-frame features), ``temporal`` (motion
    features), ``text`` (prompt tokens or pooled prompt feature)."""

    DEFAULT_FEATURES = {"spatial": "vit-keyframes", "temporal": "slowfast", "text": "clip-text"}
    PRESETS = {
        "paper": dict(
            d_model=768,
            encoder_layers=8,
            encoder_heads=2,
            encoder_ffn=2048,
            scma_heads=4,
            scma_ffn=1536,
            mlp_hidden=512,
            dropout=0.1,
            epochs=30,
            batch_size=16,
            lr=1e-5,
            lr_step=5,
            lr_gamma=0.1,
        ),
        "small": dict(
            d_model=64,
            encoder_layers=1,
            encoder_heads=2,
            encoder_ffn=128,
            scma_heads=2,
            scma_ffn=128,
            mlp_hidden=64,
            dropout=0.0,
            epochs=40,
            batch_size=32,
            lr=2e-3,
            lr_step=15,
            lr_gamma=0.3,
        ),
    }
    PARAMETER_CONSTRAINTS = deep_constraints(
        PRESETS,
        DEFAULT_FEATURES,
        d_model=SIZE,
        encoder_layers=SIZE,
        encoder_heads=SIZE,
        encoder_ffn=SIZE,
        scma_heads=SIZE,
        scma_ffn=SIZE,
        mlp_hidden=SIZE,
        dropout=DROPOUT,
        loss=LOSS,
    )

    def __init__(
        self,
        preset="paper",
        features=None,
        d_model=None,
        encoder_layers=None,
        encoder_heads=None,
        encoder_ffn=None,
        scma_heads=None,
        scma_ffn=None,
        mlp_hidden=None,
        dropout=None,
        loss="mae_rank",
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
        self.encoder_layers = encoder_layers
        self.encoder_heads = encoder_heads
        self.encoder_ffn = encoder_ffn
        self.scma_heads = scma_heads
        self.scma_ffn = scma_ffn
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
        return UGVQModule(
            dims,
            n_outputs,
            **{
                k: self._hp(k)
                for k in (
                    "d_model",
                    "encoder_layers",
                    "encoder_heads",
                    "encoder_ffn",
                    "scma_heads",
                    "scma_ffn",
                    "mlp_hidden",
                    "dropout",
                )
            },
        )
