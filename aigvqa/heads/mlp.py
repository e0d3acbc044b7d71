"""Pooled MLP baseline: masked mean and std over time of each selected feature, concatenated,
standardised with training-set statistics, then an MLP. The reference the fusion heads
(SCMA, SMA) must beat: it sees every feature but no correspondence between time steps or
modalities.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from aigvqa.errors import AigvqaError
from aigvqa.heads.base import TorchHead
from aigvqa.heads.deep_params import DROPOUT, LOSS, SIZE, deep_constraints
from aigvqa.heads.device import Batch, DeviceFeatures
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.layers import make_mlp, masked_mean, masked_std
from aigvqa.heads.params import Options, sequence_of
from aigvqa.heads.registry import register_head

POOLINGS = ("mean", "mean_std")


class PooledMLPModule(nn.Module):
    def __init__(
        self,
        dims: dict[str, int],
        n_outputs: int,
        pooling: str,
        hidden: int,
        layers: int,
        dropout: float,
    ):
        super().__init__()
        self.roles = sorted(dims)
        self.pooling = pooling
        width = sum(dims[r] for r in self.roles) * (2 if pooling == "mean_std" else 1)
        # input standardisation learned from the training rows (buffers: exported with the weights)
        self.register_buffer("input_mean", torch.zeros(width))
        self.register_buffer("input_std", torch.ones(width))
        self.regressor = make_mlp(width, hidden, n_outputs, layers=layers, dropout=dropout)

    def pool(self, batch: Batch) -> torch.Tensor:
        parts = []
        for role in self.roles:
            x, mask = batch[role]
            parts.append(masked_mean(x, mask))
            if self.pooling == "mean_std":
                parts.append(masked_std(x, mask))
        return torch.cat(parts, dim=-1)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        z = (self.pool(batch) - self.input_mean) / self.input_std
        return {"score": self.regressor(z)}


@register_head("mlp")
class PooledMLPHead(TorchHead):
    """MLP on temporally pooled features. ``features``: list of FeatureSet names (None: all)."""

    PRESETS = {
        "default": dict(
            hidden=256,
            layers=2,
            dropout=0.1,
            epochs=60,
            batch_size=32,
            lr=1e-3,
            lr_step=20,
            lr_gamma=0.3,
        )
    }
    PARAMETER_CONSTRAINTS = deep_constraints(
        PRESETS,
        {},
        features=[None, sequence_of(str, "a list of feature names", empty=False)],
        pooling=[Options(*POOLINGS)],
        hidden=SIZE,
        layers=SIZE,
        dropout=DROPOUT,
        loss=LOSS,
    )

    def __init__(
        self,
        preset="default",
        features=None,
        pooling="mean_std",
        hidden=None,
        layers=None,
        dropout=None,
        loss="mae_rank",
        epochs=None,
        batch_size=None,
        lr=None,
        lr_step=None,
        lr_gamma=None,
        weight_decay=1e-4,
        val_fraction=0.0,
        patience=None,
        fgm_epsilon=0.0,
        fgm_params="regressor.0.*",
        seed=0,
        device="cpu",
        amp=False,
        verbose=False,
    ):
        self.preset = preset
        self.features = features
        self.pooling = pooling
        self.hidden = hidden
        self.layers = layers
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

    def _resolve_features(self, X: FeatureSet) -> dict[str, str]:
        names = X.names if self.features is None else list(self.features)
        missing = [n for n in names if n not in X.arrays]
        if missing:
            raise AigvqaError(
                f"PooledMLPHead features {missing} are not in the feature set ({X.names}); "
                "extract them into the cache or name others with features=[...]"
            )
        return {n: n for n in names}

    def _build_module(self, dims, n_outputs):
        return PooledMLPModule(
            dims,
            n_outputs,
            self.pooling,
            int(self._hp("hidden")),
            int(self._hp("layers")),
            float(self._hp("dropout")),
        )

    @torch.no_grad()
    def _init_from_data(
        self, module: PooledMLPModule, features: DeviceFeatures, rows: np.ndarray
    ) -> None:
        parts = []
        for part in np.array_split(rows, max(1, len(rows) // 1024)):
            batch = self._batch(
                features, part, torch.from_numpy(np.ascontiguousarray(part)).to(features.device)
            )
            parts.append(module.pool(batch))
        pooled = torch.cat(parts)
        module.input_mean.copy_(pooled.mean(0))
        module.input_std.copy_(pooled.std(0).clamp_min(1e-6))
