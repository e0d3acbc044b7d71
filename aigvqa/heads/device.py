"""Features resident on a head's device: the FeatureSet arrays a deep head reads, moved to
its device once, in their stored dtype (float16 for a cache), and batches built there by
indexing.

A training step then costs one gather per feature on the device and a dtype conversion of
that batch, never a NumPy gather, a float32 copy on the host or a host-to-device copy of
features. On CPU nothing is copied at all: the tensors share the FeatureSet's memory.

Padding is selected away here: a batch's values are ``torch.where(step < length, x, 0)``,
so whatever the padded steps of the arrays hold (zeros as the cache writes them, or NaN
and inf) never reaches the arithmetic. A row of length 0 is read as one zero step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from aigvqa.heads.featureset import FeatureSet, nonfinite_message

Batch = dict[str, tuple[torch.Tensor, torch.Tensor]]

# On CUDA a batch's time axis is padded up to a multiple of this (never past the array's
# T): bf16 tensor-core matmuls want aligned sizes, and a handful of shapes instead of one
# per distinct prompt length keeps every shape-keyed kernel cache warm.
CUDA_STEP_MULTIPLE = 8
FINITE_CHECK_ROWS = 1024


class DeviceFeatures:
    """Named [N, T, D] arrays (and lengths) of a FeatureSet on ``device``.

    ``names``: the FeatureSet names to move (a head's ``feature_names_.values()``).
    ``rows``: check only these rows for non-finite values (default: all).
    """

    def __init__(
        self,
        X: FeatureSet,
        names: Iterable[str],
        device: torch.device,
        *,
        check: bool = True,
        rows: np.ndarray | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.ids = X.ids
        self.n = len(X)
        self.values: dict[str, torch.Tensor] = {}
        self.lengths: dict[str, np.ndarray] = {}
        self.lengths_t: dict[str, torch.Tensor] = {}
        for name in dict.fromkeys(names):
            array = X.arrays[name]
            if array.dtype.kind != "f":
                array = array.astype(np.float32)
            with warnings.catch_warnings():  # read-only arrays (memmaps) are only ever read here
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                tensor = torch.from_numpy(np.ascontiguousarray(array))
            self.values[name] = tensor.to(self.device)
            self.lengths[name] = np.asarray(X.lengths[name], dtype=np.int64)
            self.lengths_t[name] = torch.from_numpy(self.lengths[name]).to(self.device)
        if check:
            self.check_finite(rows)

    def __len__(self) -> int:
        return self.n

    # -- checks -----------------------------------------------------------------------------
    def nonfinite_rows(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """name -> rows (of ``rows``, default all) whose valid steps hold NaN or inf."""
        rows = np.arange(self.n) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        found = {}
        for name, values in self.values.items():
            bad = []
            for start in range(0, len(rows), FINITE_CHECK_ROWS):
                part = torch.from_numpy(rows[start : start + FINITE_CHECK_ROWS]).to(self.device)
                chunk = values.index_select(0, part)
                steps = torch.arange(chunk.shape[1], device=self.device)
                valid = steps[None, :] < self.lengths_t[name][part][:, None]
                hit = (~torch.isfinite(chunk)).any(-1) & valid
                bad.append(part[hit.any(1)].cpu().numpy())
            bad = np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)
            if bad.size:
                found[name] = bad
        return found

    def check_finite(self, rows: np.ndarray | None = None) -> None:
        """Raise ``FeatureValueError`` naming the videos whose features hold NaN or inf."""
        from aigvqa.heads.classical import FeatureValueError

        found = self.nonfinite_rows(rows)
        if found:
            raise FeatureValueError(
                nonfinite_message(
                    found,
                    self.ids,
                    "A deep head cannot use them: drop those videos (or re-extract them), or "
                    "replace the values when importing the features",
                )
            )

    # -- batches ----------------------------------------------------------------------------
    def steps_for(self, name: str, rows: np.ndarray) -> int:
        """Time steps a batch of ``rows`` needs: the longest row (at least 1), on CUDA
        rounded up to a multiple of ``CUDA_STEP_MULTIPLE``."""
        t = max(int(self.lengths[name][rows].max()) if len(rows) else 1, 1)
        if self.device.type == "cuda":
            t = min(-(-t // CUDA_STEP_MULTIPLE) * CUDA_STEP_MULTIPLE, self.values[name].shape[1])
        return t

    def batch(
        self, roles: Mapping[str, str], rows: torch.Tensor, steps: Mapping[str, int]
    ) -> Batch:
        """{role: (values [*rows.shape, t, D] float32, mask [*rows.shape, t] bool)}.

        ``rows``: device int64 indices of any shape ([B], or [K, B] for K trials);
        ``steps``: name -> t (``steps_for``).
        """
        batch: Batch = {}
        flat = rows.reshape(-1)
        for role, name in roles.items():
            t = steps[name]
            values = self.values[name][:, :t].index_select(0, flat)
            values = values.view(*rows.shape, t, values.shape[-1]).to(torch.float32)
            length = self.lengths_t[name][rows]
            step = torch.arange(t, device=self.device)
            holds_data = step < length[..., None]
            mask = step < length.clamp_min(1)[..., None]
            batch[role] = (torch.where(holds_data[..., None], values, 0.0), mask)
        return batch
