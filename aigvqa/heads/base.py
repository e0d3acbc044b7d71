"""``TorchHead``: the scikit-learn estimator shell shared by every deep head, and the small
torch building blocks (masked pooling, positions, adapters, MLPs) the heads are made of.

A deep head subclass declares

- ``DEFAULT_FEATURES``: role -> FeatureSet name (e.g. ``{"spatial": "vit-keyframes"}``), or
  a tuple of names of which the first one the feature set holds is taken (branch-sum's
  frames: ``("clip-frames", "blip-itm-image")``); overridable per instance with the
  ``features`` parameter;
- optionally ``OPTIONAL_FEATURES``: roles used only when the feature set holds one of their
  default names, or when ``features`` maps them (branch-sum's per-frame match scores);
- ``PRESETS``: named hyper-parameter sets; any parameter left ``None`` takes its preset value;
- ``_build_module(dims, n_outputs)``: the ``nn.Module``, whose ``forward`` takes
  ``{role: (values [B, T, D] float32, mask [B, T] bool)}`` and returns a dict of tensors with
  at least ``"score"`` [B, k] (or overrides ``_predict_outputs``);
- optionally ``_loss`` (default: the ``loss`` parameter applied to ``"score"``).

``TorchHead`` does the rest: target scaling, batching straight from the FeatureSet's
float16 arrays, Adam + step LR, validation split and early stopping, FGM, seeding, CPU/CUDA,
batched prediction, and export to (JSON config, tensors) for safetensors bundles.

Padded time steps never matter: batches are zeroed beyond each row's length, every
attention gets a key padding mask and every pooling is masked. A feature with length 0 is
read as one zero step (attention over nothing is undefined).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from aigvqa.errors import AigvqaError, CheckpointMismatchError
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.losses import FGM, LOSSES, get_loss
from aigvqa.heads.params import Check, Interval, Options, check_parameters, parameter_error

Batch = dict[str, tuple[torch.Tensor, torch.Tensor]]

STATE_FORMAT = 1
"""Version of the (config, tensors) export layout written by ``TorchHead.get_state``."""


# --------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D], [B, T] bool -> [B, D] mean over the True steps."""
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D] population std over the True steps."""
    w = mask.to(x.dtype)[..., None]
    mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    var = (((x - mean) ** 2) * w).sum(1) / w.sum(1).clamp_min(1.0)
    return (var + 1e-8).sqrt()


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[length, dim] fixed sine/cosine positions (Vaswani et al. 2017): no maximum length,
    so a head fitted on short sequences still predicts on longer (or more padded) ones."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device, dtype=torch.float32)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out.to(dtype)


def make_mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """``layers`` Linear layers with GELU and dropout between them."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class Adapter(nn.Module):
    """Projection of a cached frozen feature into the head's width, then a residual
    bottleneck (Houlsby et al. 2019): the light trainable layer MSA-VQA puts on top of
    frozen CLIP features."""

    def __init__(self, in_dim: int, out_dim: int, bottleneck: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))
        self.down = nn.Linear(out_dim, bottleneck)
        self.up = nn.Linear(bottleneck, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return h + self.up(self.dropout(torch.nn.functional.gelu(self.down(h))))


def key_padding(mask: torch.Tensor) -> torch.Tensor:
    """nn.MultiheadAttention wants True where a key is padding."""
    return ~mask


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention + feed-forward: ``x`` (queries) reads from ``context``,
    whose padded steps are masked out of the attention."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d_model))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(context)
        attended, _ = self.attn(self.norm_q(x), kv, kv, key_padding_mask=key_padding(context_mask), need_weights=False)
        x = x + attended
        return x + self.ffn(self.norm_ffn(x))


# --------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------
# where torch has a fused Adam kernel: CUDA since torch 2.0, CPU since 2.4
FUSED_ADAM_DEVICES = ("cpu", "cuda") if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4) else ("cuda",)


SIZE = [None, Interval(Integral, 1, None)]
"""A width, depth or count; None takes the preset's value."""
RATE = [None, Interval(Real, 0, None, closed="neither")]
DROPOUT = [None, Interval(Real, 0, 1, closed="left")]
LOSS = [Options(*LOSSES)]


def _role_map(roles: Mapping[str, str]) -> Check:
    return Check(
        lambda v: isinstance(v, dict) and set(v) <= set(roles) and all(isinstance(n, str) for n in v.values()),
        f"a dict {{role: feature name}}; there are no feature roles besides {', '.join(sorted(roles))}",
    )


def deep_constraints(presets: Mapping[str, Any], roles: Mapping[str, str], **own: list) -> dict[str, list]:
    """The ``PARAMETER_CONSTRAINTS`` of a deep head: the parameters every ``TorchHead`` has
    (``preset`` among ``presets``, ``features`` mapping ``roles``), plus the head's ``own``."""
    return {
        "preset": [Options(*presets)],
        "features": [None, _role_map(roles)],
        "epochs": SIZE,
        "batch_size": SIZE,
        "lr": RATE,
        "lr_step": SIZE,
        "lr_gamma": RATE,
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "val_fraction": [Interval(Real, 0, 1, closed="left")],
        "patience": [None, Interval(Integral, 1, None)],
        "fgm_epsilon": [Interval(Real, 0, None, closed="left")],
        "fgm_params": [str, Check(lambda v: isinstance(v, list | tuple) and all(isinstance(p, str) for p in v),
                                  "a list of parameter-name patterns")],
        "seed": [Integral],
        "device": [str],
        "amp": [bool],
        "verbose": [bool],
        **own,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class TorchHead(RegressorMixin, BaseEstimator):
    """Base class of the deep heads (see the module docstring). Not usable on its own.

    Mixins come before BaseEstimator, as scikit-learn requires for its estimator tags.
    """

    DEFAULT_FEATURES: ClassVar[dict[str, str | tuple[str, ...]]] = {}
    OPTIONAL_FEATURES: ClassVar[dict[str, tuple[str, ...]]] = {}
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # what each parameter may be (aigvqa.heads.params), checked at the top of fit
    PARAMETER_CONSTRAINTS: ClassVar[dict[str, list]] = {}
    # learned numpy arrays exported by get_state (subclasses extend)
    FITTED_ARRAYS: ClassVar[tuple[str, ...]] = ("y_mean_", "y_std_", "output_scale_", "output_shift_")
    # losses that fix neither scale nor shift: predictions get a linear calibration after training
    SCALE_FREE_LOSSES: ClassVar[frozenset[str]] = frozenset({"plcc", "plcc_rank"})

    # -- hyper-parameters ---------------------------------------------------------------
    def _hp(self, name: str) -> Any:
        """A parameter's value, or its preset's value when the parameter is None (``fit``
        has checked the preset name)."""
        value = getattr(self, name)
        return self.PRESETS[self.preset][name] if value is None else value

    def _resolve_features(self, X: FeatureSet) -> dict[str, str]:
        """role -> FeatureSet name, checked against X (the roles were checked by ``fit``)."""
        given = dict(self.features or {})
        roles: dict[str, str] = {}
        for role, default in {**self.DEFAULT_FEATURES, **self.OPTIONAL_FEATURES}.items():
            if role in given:
                roles[role] = given[role]
                continue
            candidates = (default,) if isinstance(default, str) else tuple(default)
            present = [name for name in candidates if name in X.arrays]
            if present:
                roles[role] = present[0]
            elif role in self.DEFAULT_FEATURES:  # required: reported below with every choice
                roles[role] = " or ".join(candidates)
        missing = {r: n for r, n in roles.items() if n not in X.arrays}
        if missing:
            raise AigvqaError(
                f"{type(self).__name__} needs features {missing} (role: name) but the feature set has "
                f"{X.names}; extract them into the cache or map the roles with features={{role: name}}"
            )
        return roles

    # -- hooks for subclasses -------------------------------------------------------------
    def _build_module(self, dims: dict[str, int], n_outputs: int) -> nn.Module:
        raise NotImplementedError

    def _init_from_data(self, module: nn.Module, X: FeatureSet, rows: np.ndarray) -> None:
        """Data-dependent initialisation (e.g. input standardisation buffers). Default: none."""

    def _loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return get_loss(self.loss)(outputs["score"], y)

    def _predict_outputs(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, k] prediction in scaled target space, before calibration."""
        return outputs["score"]

    def _fit_target_scaler(self, y: np.ndarray) -> None:
        self.y_mean_ = y.mean(0)
        std = y.std(0)
        self.y_std_ = np.where(std > 0, std, 1.0)

    def _scale_targets(self, y: np.ndarray) -> np.ndarray:
        return (y - self.y_mean_) / self.y_std_

    def _unscale_targets(self, y: np.ndarray) -> np.ndarray:
        return y * self.y_std_ + self.y_mean_

    def _after_training(self, X: FeatureSet, y_scaled: np.ndarray, rows: np.ndarray) -> None:
        """Fit post-hoc state on held-out rows (validation, or training rows without one).

        Default: a per-output linear calibration when the loss is scale-free (PLCC), so that
        ``predict`` returns MOS-scale numbers.
        """
        if getattr(self, "loss", None) not in self.SCALE_FREE_LOSSES:
            return
        raw = self._run(X, self._predict_outputs, rows)
        for c in range(raw.shape[1]):
            a, b = np.polyfit(raw[:, c], y_scaled[rows, c], 1) if raw[:, c].std() > 0 else (0.0, y_scaled[rows, c].mean())
            self.output_scale_[c], self.output_shift_[c] = a, b

    # -- device / batches -----------------------------------------------------------------
    def _device(self) -> torch.device:
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AigvqaError(f"{type(self).__name__}(device={self.device!r}): torch sees no CUDA device; pass device='cpu'")
        return device

    def _make_batch(self, X: FeatureSet, rows: np.ndarray, device: torch.device) -> Batch:
        batch: Batch = {}
        for role, name in self.feature_names_.items():
            lengths = np.maximum(X.lengths[name][rows], 1)
            t = int(lengths.max())
            values = torch.from_numpy(np.ascontiguousarray(X.arrays[name][rows, :t], dtype=np.float32))
            mask = torch.arange(t)[None, :] < torch.from_numpy(lengths)[:, None]
            values = values * mask[..., None]
            batch[role] = (values.to(device, non_blocking=True), mask.to(device, non_blocking=True))
        return batch

    def _autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(self.amp))

    def _forward(self, module: nn.Module, batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
        with self._autocast(device):
            out = module(batch)
        return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}

    # -- fit ------------------------------------------------------------------------------
    def fit(self, X: FeatureSet, y) -> TorchHead:
        check_parameters(self)
        if not isinstance(X, FeatureSet):
            raise TypeError(f"{type(self).__name__}.fit takes a FeatureSet, got {type(X).__name__}")
        y = np.asarray(y, dtype=np.float64)
        if y.ndim not in (1, 2) or y.shape[0] != len(X):
            raise ValueError(f"y must be [N] or [N, k] with N = {len(X)}, got {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError("y holds NaN or inf; drop those rows before fitting")
        self.single_output_ = y.ndim == 1
        y2 = y[:, None] if self.single_output_ else y
        self.n_outputs_ = y2.shape[1]
        self.feature_names_ = self._resolve_features(X)
        self.feature_dims_ = {r: int(X.arrays[n].shape[2]) for r, n in self.feature_names_.items()}
        self._fit_target_scaler(y2)
        self.output_scale_ = np.ones(self.n_outputs_)
        self.output_shift_ = np.zeros(self.n_outputs_)
        y_scaled = self._scale_targets(y2).astype(np.float32)

        device = self._device()
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(X))
        n_val = int(round(self.val_fraction * len(X))) if self.val_fraction else 0
        if self.patience is not None and not n_val:
            raise parameter_error(self, "patience", self.patience,
                                  f"None without a validation split: early stopping needs val_fraction > 0 "
                                  f"(val_fraction={self.val_fraction} holds out no row of {len(X)})")
        if n_val and (n_val < 2 or len(X) - n_val < 2):
            raise parameter_error(self, "val_fraction", self.val_fraction,
                                  f"0 or a fraction leaving at least 2 of the {len(X)} rows for training and "
                                  "2 for validation", where=f" (on {len(X)} rows)")
        val_rows, train_rows = np.sort(order[:n_val]), order[n_val:]

        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(self.seed)
            module = self._build_module(self.feature_dims_, self.n_outputs_)
            self._init_from_data(module, X, train_rows)
            module.to(device)
            self._train(module, X, y_scaled, train_rows, val_rows, rng, device)
        self.module_ = module.cpu().eval()
        self._after_training(X, y_scaled, val_rows if n_val else np.sort(train_rows))
        return self

    def _train(self, module, X, y_scaled, train_rows, val_rows, rng, device) -> None:
        epochs, batch_size = int(self._hp("epochs")), int(self._hp("batch_size"))
        # fused: one kernel for all parameters; the for-each Adam step was a fifth of a UGVQ
        # paper-preset training step on CPU (79 M parameters, 16 videos per step)
        optimizer = torch.optim.Adam(module.parameters(), lr=float(self._hp("lr")), weight_decay=self.weight_decay,
                                     fused=device.type in FUSED_ADAM_DEVICES)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(self._hp("lr_step")), gamma=float(self._hp("lr_gamma")))
        fgm = FGM(module, self.fgm_epsilon, self.fgm_params) if self.fgm_epsilon else None
        n_batches = max(1, math.ceil(len(train_rows) / batch_size))
        self.history_: list[dict[str, float]] = []
        best_loss, best_state, since_best = math.inf, None, 0
        self.best_epoch_ = epochs - 1
        for epoch in range(epochs):
            started = time.perf_counter()
            module.train()
            total, seen = 0.0, 0
            # array_split keeps batches within one row of each other: no batch of 1 for rank/PLCC terms
            for rows in np.array_split(rng.permutation(train_rows), n_batches):
                batch = self._make_batch(X, rows, device)
                target = torch.from_numpy(y_scaled[rows]).to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = self._loss(self._forward(module, batch, device), target)
                loss.backward()
                if fgm is not None and fgm.attack():
                    self._loss(self._forward(module, batch, device), target).backward()
                    fgm.restore()
                optimizer.step()
                total += loss.item() * len(rows)
                seen += len(rows)
            scheduler.step()
            record = {"epoch": epoch, "train_loss": total / seen, "lr": optimizer.param_groups[0]["lr"]}
            if len(val_rows):
                record["val_loss"] = self._eval_loss(module, X, y_scaled, val_rows, device)
                if record["val_loss"] < best_loss:
                    best_loss, since_best, self.best_epoch_ = record["val_loss"], 0, epoch
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    since_best += 1
            record["seconds"] = time.perf_counter() - started
            self.history_.append(record)
            if self.verbose:
                print(f"{type(self).__name__} " + " ".join(f"{k}={v:.4g}" for k, v in record.items()), file=sys.stderr)
            if self.patience is not None and since_best >= self.patience:
                break
        if best_state is not None:
            module.load_state_dict(best_state)

    @torch.no_grad()
    def _eval_loss(self, module, X, y_scaled, rows, device) -> float:
        module.eval()
        total = 0.0
        for part in np.array_split(rows, max(1, math.ceil(len(rows) / self._predict_batch_size()))):
            out = self._forward(module, self._make_batch(X, part, device), device)
            total += self._loss(out, torch.from_numpy(y_scaled[part]).to(device)).item() * len(part)
        return total / len(rows)

    def _predict_batch_size(self) -> int:
        return max(int(self._hp("batch_size")), 256)

    # -- predict --------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, X: FeatureSet, take, rows: np.ndarray | None = None) -> np.ndarray:
        """The fitted module over ``rows`` of X (default: all) in eval mode, batched, without
        copying X; ``take(outputs)`` -> [B, ...] per batch, concatenated."""
        device = self._device()
        module = self.module_.to(device).eval()
        rows = np.arange(len(X)) if rows is None else np.asarray(rows)
        parts = []
        try:
            for part in np.array_split(rows, max(1, math.ceil(len(rows) / self._predict_batch_size()))):
                if len(part):
                    out = self._forward(module, self._make_batch(X, part, device), device)
                    parts.append(take(out).cpu().numpy().astype(np.float64))
        finally:
            self.module_ = module.cpu()  # fitted state stays on CPU: picklable anywhere
        if not parts:
            raise ValueError(f"{type(self).__name__}.predict got an empty feature set")
        return np.concatenate(parts)

    def predict(self, X: FeatureSet) -> np.ndarray:
        check_is_fitted(self, "module_")
        if not isinstance(X, FeatureSet):
            raise TypeError(f"{type(self).__name__}.predict takes a FeatureSet, got {type(X).__name__}")
        missing = [n for n in self.feature_names_.values() if n not in X.arrays]
        if missing:
            raise AigvqaError(f"{type(self).__name__} was fitted on features {missing}, absent from this feature set ({X.names})")
        for role, name in self.feature_names_.items():
            if X.arrays[name].shape[2] != self.feature_dims_[role]:
                raise AigvqaError(
                    f"feature {name!r} has width {X.arrays[name].shape[2]} but the head was fitted on "
                    f"{self.feature_dims_[role]}: the cache was made with a different backbone config"
                )
        raw = self._run(X, self._predict_outputs)
        pred = self._unscale_targets(raw * self.output_scale_ + self.output_shift_)
        return pred[:, 0] if self.single_output_ else pred

    # -- export ---------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-serialisable config, {name: tensor}): everything needed to rebuild the fitted
        head with ``from_state``, without pickle (write the tensors with safetensors)."""
        from aigvqa.heads.registry import head_name

        check_is_fitted(self, "module_")
        config = {
            "format": STATE_FORMAT,
            "head": head_name(type(self)),
            "params": _jsonable(self.get_params(deep=False)),
            "fitted": _jsonable({
                "feature_names_": self.feature_names_,
                "feature_dims_": self.feature_dims_,
                "n_outputs_": self.n_outputs_,
                "single_output_": bool(self.single_output_),
                "best_epoch_": int(self.best_epoch_),
                "history_": self.history_,
            }),
        }
        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in self.module_.state_dict().items()}
        for attr in self.FITTED_ARRAYS:
            tensors[f"fitted.{attr}"] = torch.from_numpy(np.ascontiguousarray(getattr(self, attr), dtype=np.float64))
        return config, tensors

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TorchHead:
        """Rebuild a fitted head from ``get_state``'s output."""
        from aigvqa.heads.registry import get_head_class

        if config.get("format") != STATE_FORMAT:
            raise CheckpointMismatchError(f"head state format {config.get('format')!r} is not {STATE_FORMAT}; re-export the model with this aigvqa version")
        klass = get_head_class(config["head"])
        if not issubclass(klass, cls):
            raise CheckpointMismatchError(f"state is for head {config['head']!r} ({klass.__name__}), not a {cls.__name__}")
        head = klass(**config["params"])
        fitted = config["fitted"]
        head.feature_names_ = dict(fitted["feature_names_"])
        head.feature_dims_ = {k: int(v) for k, v in fitted["feature_dims_"].items()}
        head.n_outputs_ = int(fitted["n_outputs_"])
        head.single_output_ = bool(fitted["single_output_"])
        head.best_epoch_ = int(fitted["best_epoch_"])
        head.history_ = list(fitted["history_"])
        for attr in klass.FITTED_ARRAYS:
            key = f"fitted.{attr}"
            if key not in tensors:
                raise CheckpointMismatchError(f"head state lacks tensor {key!r}")
            setattr(head, attr, tensors[key].numpy().astype(np.float64))
        module = head._build_module(head.feature_dims_, head.n_outputs_)
        weights = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        try:
            module.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise CheckpointMismatchError(f"head weights do not fit {klass.__name__}: {err}") from err
        head.module_ = module.eval()
        return head
