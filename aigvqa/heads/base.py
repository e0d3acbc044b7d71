"""``TorchHead``: the scikit-learn estimator shell shared by every deep head. The small torch
building blocks the heads are made of (masked pooling, positions, adapters, MLPs) live in
``heads.layers`` and are importable from here too.

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

``TorchHead`` does the rest: target scaling, features moved to the device once and batched
there (``heads.device``), Adam + step LR, validation split and early stopping, FGM, seeding,
CPU/CUDA, batched prediction, and export to (JSON config, tensors) for safetensors bundles.
``heads.trials.fit_trials`` trains several fits of one configuration (splits, seeds)
together as one vectorised model, with the same results as fitting them one by one.

Inputs are checked: NaN or inf in a feature's valid steps (``FeatureValueError``) or in the
target (``TargetValueError``) is refused, naming the videos. Padded time steps never matter:
batches are selected to zero beyond each row's length (``torch.where``, so even NaN padding
stays out), every attention gets a key mask and every pooling is masked. A feature with
length 0 is read as one zero step (attention over nothing is undefined).

Dropout is keyed (``heads.layers``): its masks are a function of the fit's seed, epoch,
step and layer, never of torch's global generator, so a fit gives the same result alone
or trained together with other trials.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from aigvqa.errors import AigvqaError, CheckpointMismatchError, TargetValueError
from aigvqa.heads.deep_params import DROPOUT, LOSS, RATE, SIZE, deep_constraints
from aigvqa.heads.device import Batch, DeviceFeatures
from aigvqa.heads.featureset import FeatureSet, check_targets, target_overflow
from aigvqa.heads.layers import (
    Adapter,
    CrossAttentionBlock,
    dropout_key,
    fold_key,
    make_mlp,
    masked_mean,
    masked_std,
    number_dropout_sites,
    sinusoidal_positions,
)
from aigvqa.heads.losses import FGM, get_loss
from aigvqa.heads.params import check_parameters, parameter_error

__all__ = [
    "FUSED_ADAM_DEVICES",
    "STATE_FORMAT",
    "TargetValueError",
    "TorchHead",
    # defined in heads.deep_params, heads.device and heads.layers; importable from here as
    # they were before those modules held them
    "DROPOUT",
    "LOSS",
    "RATE",
    "SIZE",
    "deep_constraints",
    "Batch",
    "Adapter",
    "CrossAttentionBlock",
    "make_mlp",
    "masked_mean",
    "masked_std",
    "sinusoidal_positions",
]

STATE_FORMAT = 1
"""Version of the (config, tensors) export layout written by ``TorchHead.get_state``."""


# --------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------
# where torch has a fused Adam kernel: CUDA since torch 2.0, CPU since 2.4
FUSED_ADAM_DEVICES = (
    ("cpu", "cuda")
    if tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    else ("cuda",)
)


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
    FITTED_ARRAYS: ClassVar[tuple[str, ...]] = (
        "y_mean_",
        "y_std_",
        "output_scale_",
        "output_shift_",
    )
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
                f"{type(self).__name__} needs features {missing} (role: name) but the feature "
                f"set has {X.names}; extract them into the cache or map the roles with "
                "features={role: name}"
            )
        return roles

    def check_config(self, X: FeatureSet | None = None) -> None:
        """Raise what ``fit`` would about the parameters and, given the FeatureSet ``X``,
        about the feature roles, before any fit (``aigvqa.heads.params.check_head``)."""
        check_parameters(self)
        if X is not None:
            self._resolve_features(X)

    # -- hooks for subclasses -------------------------------------------------------------
    def _build_module(self, dims: dict[str, int], n_outputs: int) -> nn.Module:
        raise NotImplementedError

    def _init_from_data(
        self, module: nn.Module, features: DeviceFeatures, rows: np.ndarray
    ) -> None:
        """Data-dependent initialisation (e.g. input standardisation buffers) from the
        training ``rows`` of ``features``. Default: none."""

    def _loss(
        self, outputs: dict[str, torch.Tensor], y: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Training loss of a batch; ``weight`` [B] bool keeps only those rows (the losses
        module's convention; trials trained together pad their batches with masked rows)."""
        return get_loss(self.loss)(outputs["score"], y, weight=weight)

    def _predict_outputs(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, k] prediction in scaled target space, before calibration."""
        return outputs["score"]

    def _fit_target_scaler(self, y: np.ndarray) -> None:
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below
            self.y_mean_ = y.mean(0)
            std = y.std(0)
        if not (np.isfinite(self.y_mean_).all() and np.isfinite(std).all()):
            raise TargetValueError(target_overflow(y) or "the target's mean or std overflows")
        self.y_std_ = np.where(std > 0, std, 1.0)

    def _scale_targets(self, y: np.ndarray) -> np.ndarray:
        return (y - self.y_mean_) / self.y_std_

    def _unscale_targets(self, y: np.ndarray) -> np.ndarray:
        return y * self.y_std_ + self.y_mean_

    def _after_training(
        self, features: DeviceFeatures, y_scaled: np.ndarray, rows: np.ndarray
    ) -> None:
        """Fit post-hoc state on held-out rows (validation, or training rows without one);
        ``rows`` index ``features`` and ``y_scaled``.

        Default: a per-output linear calibration when the loss is scale-free (PLCC), so that
        ``predict`` returns MOS-scale numbers.
        """
        if getattr(self, "loss", None) not in self.SCALE_FREE_LOSSES:
            return
        raw = self._run(features, self._predict_outputs, rows)
        for c in range(raw.shape[1]):
            a, b = (
                np.polyfit(raw[:, c], y_scaled[rows, c], 1)
                if raw[:, c].std() > 0
                else (0.0, y_scaled[rows, c].mean())
            )
            self.output_scale_[c], self.output_shift_[c] = a, b

    # -- device / batches -----------------------------------------------------------------
    def _device(self) -> torch.device:
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AigvqaError(
                f"{type(self).__name__}(device={self.device!r}): torch sees no CUDA device; "
                "pass device='cpu'"
            )
        return device

    def _features(self, X, device: torch.device, rows: np.ndarray | None = None) -> DeviceFeatures:
        """X's features this head reads, on ``device`` (checked for NaN / inf in ``rows``)."""
        if isinstance(X, DeviceFeatures):
            return X
        return DeviceFeatures(X, self.feature_names_.values(), device, rows=rows)

    def _batch(self, features: DeviceFeatures, rows: np.ndarray, rows_t: torch.Tensor) -> Batch:
        """The batch of ``rows`` (host copy, for the step counts) = ``rows_t`` (on the device)."""
        steps = {name: features.steps_for(name, rows) for name in self.feature_names_.values()}
        return features.batch(self.feature_names_, rows_t, steps)

    def _autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(self.amp))

    def _forward(
        self, module: nn.Module, batch: Batch, device: torch.device
    ) -> dict[str, torch.Tensor]:
        with self._autocast(device):
            out = module(batch)
        return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}

    # -- fit ------------------------------------------------------------------------------
    def _prepare(self, X: FeatureSet, y, rows: np.ndarray | None = None) -> np.ndarray:
        """Check X and y, set the fitted shape attributes; returns y as [N, k].

        ``rows``: the fit is on these rows of X only (``y`` holds their targets).
        """
        check_parameters(self)
        if not isinstance(X, FeatureSet):
            raise TypeError(f"{type(self).__name__}.fit takes a FeatureSet, got {type(X).__name__}")
        n, row_ids = (len(X), X.ids) if rows is None else (len(rows), X.ids[rows])
        y = np.asarray(y, dtype=np.float64)
        if y.ndim not in (1, 2) or y.shape[0] != n:
            raise ValueError(f"y must be [N] or [N, k] with N = {n}, got {y.shape}")
        self.single_output_ = y.ndim == 1
        y2 = y[:, None] if self.single_output_ else y
        check_targets(y2, row_ids)  # NaN / inf, or finite labels whose mean / std overflow
        self.n_outputs_ = y2.shape[1]
        self.feature_names_ = self._resolve_features(X)
        self.feature_dims_ = {r: int(X.arrays[n].shape[2]) for r, n in self.feature_names_.items()}
        return y2

    def _plan(
        self, y2: np.ndarray
    ) -> tuple[np.ndarray, np.random.Generator, np.ndarray, np.ndarray]:
        """Target scaling and the validation split of a fit on rows 0..len(y2)-1:
        (scaled targets float32 [n, k], the fit's generator, training rows, validation rows)."""
        n = len(y2)
        self._fit_target_scaler(y2)
        self.output_scale_ = np.ones(self.n_outputs_)
        self.output_shift_ = np.zeros(self.n_outputs_)
        y_scaled = self._scale_targets(y2).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n)
        n_val = int(round(self.val_fraction * n)) if self.val_fraction else 0
        if self.patience is not None and not n_val:
            raise parameter_error(
                self,
                "patience",
                self.patience,
                f"None without a validation split: early stopping needs val_fraction > 0 "
                f"(val_fraction={self.val_fraction} holds out no row of {n})",
            )
        if n_val and (n_val < 2 or n - n_val < 2):
            raise parameter_error(
                self,
                "val_fraction",
                self.val_fraction,
                f"0 or a fraction leaving at least 2 of the {n} rows for training and "
                "2 for validation",
                where=f" (on {n} rows)",
            )
        return y_scaled, rng, order[n_val:], np.sort(order[:n_val])

    def _new_module(
        self, features: DeviceFeatures, train_rows: np.ndarray, device: torch.device
    ) -> nn.Module:
        """The seeded, data-initialised module on ``device`` (call inside ``fork_rng``)."""
        torch.manual_seed(self.seed)
        module = number_dropout_sites(self._build_module(self.feature_dims_, self.n_outputs_))
        self._init_from_data(module, features, train_rows)
        return module.to(device)

    def fit(self, X: FeatureSet, y) -> TorchHead:
        y2 = self._prepare(X, y)
        device = self._device()
        features = self._features(X, device)
        y_scaled, rng, train_rows, val_rows = self._plan(y2)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            module = self._new_module(features, train_rows, device)
            self._train(module, features, y_scaled, train_rows, val_rows, rng, device)
        self.module_ = module.cpu().eval()
        self._after_training(features, y_scaled, val_rows if len(val_rows) else np.sort(train_rows))
        return self

    def _train(self, module, features, y_scaled, train_rows, val_rows, rng, device) -> None:
        """Adam + step LR over shuffled batches of ``train_rows`` (indices of ``features``
        and ``y_scaled``), validation loss and early stopping on ``val_rows``, FGM.

        Nothing leaves the device inside an epoch: batches are gathered there, the loss is
        summed there, and the host reads it once per epoch.
        """
        epochs, batch_size = int(self._hp("epochs")), int(self._hp("batch_size"))
        # fused: one kernel for all parameters; the for-each Adam step was a fifth of a UGVQ
        # paper-preset training step on CPU (79 M parameters, 16 videos per step)
        optimizer = torch.optim.Adam(
            module.parameters(),
            lr=float(self._hp("lr")),
            weight_decay=self.weight_decay,
            fused=device.type in FUSED_ADAM_DEVICES,
        )
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=int(self._hp("lr_step")), gamma=float(self._hp("lr_gamma"))
        )
        fgm = FGM(module, self.fgm_epsilon, self.fgm_params) if self.fgm_epsilon else None
        y_dev = torch.from_numpy(y_scaled).to(device)
        n_batches = max(1, math.ceil(len(train_rows) / batch_size))
        self.history_: list[dict[str, float]] = []
        best_loss, best_state, since_best = math.inf, None, 0
        self.best_epoch_ = epochs - 1
        for epoch in range(epochs):
            started = time.perf_counter()
            module.train()
            # array_split's sizes: batches within one row of each other, no batch of 1 for
            # rank/PLCC terms
            order = rng.permutation(train_rows)
            bounds = np.cumsum([0] + [len(b) for b in np.array_split(order, n_batches)])
            order_t = torch.from_numpy(order).to(device)
            keys = torch.tensor(
                [
                    [fold_key(self.seed, epoch, i, 0), fold_key(self.seed, epoch, i, 1)]
                    for i in range(n_batches)
                ],
                dtype=torch.int64,
            ).to(device)
            total = torch.zeros((), device=device)
            for i in range(n_batches):
                rows = order[bounds[i] : bounds[i + 1]]
                rows_t = order_t[bounds[i] : bounds[i + 1]]
                batch = self._batch(features, rows, rows_t)
                target = y_dev[rows_t]
                optimizer.zero_grad(set_to_none=True)
                with dropout_key(keys[i, 0]):
                    loss = self._loss(self._forward(module, batch, device), target)
                loss.backward()
                if fgm is not None and fgm.attack():
                    with dropout_key(keys[i, 1]):
                        self._loss(self._forward(module, batch, device), target).backward()
                    fgm.restore()
                optimizer.step()
                total += loss.detach() * len(rows)
            scheduler.step()
            record = {
                "epoch": epoch,
                "train_loss": float(total) / len(train_rows),
                "lr": optimizer.param_groups[0]["lr"],
            }
            if len(val_rows):
                record["val_loss"] = self._eval_loss(module, features, y_dev, val_rows, device)
                if record["val_loss"] < best_loss:
                    best_loss, since_best, self.best_epoch_ = record["val_loss"], 0, epoch
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    since_best += 1
            record["seconds"] = time.perf_counter() - started
            self.history_.append(record)
            self._report_epoch(record)
            if self.patience is not None and since_best >= self.patience:
                break
        if best_state is not None:
            module.load_state_dict(best_state)

    def _report_epoch(self, record: dict[str, float]) -> None:
        """``verbose``: one line per epoch on stderr (True), or ``verbose(head, record)``
        when it is a callable (the CLI's progress display)."""
        if callable(self.verbose):
            self.verbose(self, record)
        elif self.verbose:
            print(
                f"{type(self).__name__} " + " ".join(f"{k}={v:.4g}" for k, v in record.items()),
                file=sys.stderr,
            )

    def _eval_rows(self) -> int:
        """Rows per validation-loss chunk. The rank and PLCC terms are computed within a
        chunk, so this is part of what the validation loss means; it does not depend on
        the device."""
        return max(int(self._hp("batch_size")), 256)

    def _predict_rows(self, device: torch.device) -> int:
        """Rows per prediction batch: large on CUDA, where a batch costs its launches."""
        return 4096 if device.type == "cuda" else max(int(self._hp("batch_size")), 256)

    @torch.no_grad()
    def _eval_loss(
        self, module, features: DeviceFeatures, y_dev: torch.Tensor, rows: np.ndarray, device
    ) -> float:
        module.eval()
        total = torch.zeros((), device=device)
        rows_t = torch.from_numpy(np.ascontiguousarray(rows)).to(device)
        start = 0
        for part in np.array_split(rows, max(1, math.ceil(len(rows) / self._eval_rows()))):
            part_t = rows_t[start : start + len(part)]
            start += len(part)
            out = self._forward(module, self._batch(features, part, part_t), device)
            total += self._loss(out, y_dev[part_t]) * len(part)
        return float(total) / len(rows)

    # -- predict --------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, X, take, rows: np.ndarray | None = None) -> np.ndarray:
        """The fitted module over ``rows`` of X (a FeatureSet or DeviceFeatures; default:
        all rows) in eval mode, in large batches; ``take(outputs)`` -> [B, ...] per batch,
        concatenated."""
        device = self._device()
        features = self._features(X, device, rows)
        module = self.module_.to(device).eval()
        rows = np.arange(len(features)) if rows is None else np.asarray(rows, dtype=np.int64)
        if not len(rows):
            raise ValueError(f"{type(self).__name__}.predict got an empty feature set")
        rows_t = torch.from_numpy(rows).to(device)
        chunk = self._predict_rows(device)
        parts = []
        try:
            for start in range(0, len(rows), chunk):
                part = slice(start, start + chunk)
                out = self._forward(module, self._batch(features, rows[part], rows_t[part]), device)
                parts.append(take(out).float())
        finally:
            self.module_ = module.cpu()  # fitted state stays on CPU: picklable anywhere
        return torch.cat(parts).cpu().numpy().astype(np.float64)

    def predict(self, X: FeatureSet) -> np.ndarray:
        self._check_predict_input(X)
        return self._predict(X)

    def _predict(self, X, rows: np.ndarray | None = None) -> np.ndarray:
        """Predictions (MOS scale) for ``rows`` of X, a FeatureSet or DeviceFeatures."""
        raw = self._run(X, self._predict_outputs, rows)
        pred = self._unscale_targets(raw * self.output_scale_ + self.output_shift_)
        return pred[:, 0] if self.single_output_ else pred

    def _check_predict_input(self, X: FeatureSet) -> None:
        check_is_fitted(self, "module_")
        if not isinstance(X, FeatureSet):
            raise TypeError(
                f"{type(self).__name__}.predict takes a FeatureSet, got {type(X).__name__}"
            )
        missing = [n for n in self.feature_names_.values() if n not in X.arrays]
        if missing:
            raise AigvqaError(
                f"{type(self).__name__} was fitted on features {missing}, absent from this "
                f"feature set ({X.names})"
            )
        for role, name in self.feature_names_.items():
            if X.arrays[name].shape[2] != self.feature_dims_[role]:
                raise AigvqaError(
                    f"feature {name!r} has width {X.arrays[name].shape[2]} but the head was "
                    f"fitted on {self.feature_dims_[role]}: the cache was made with a different "
                    "backbone config"
                )

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
            "fitted": _jsonable(
                {
                    "feature_names_": self.feature_names_,
                    "feature_dims_": self.feature_dims_,
                    "n_outputs_": self.n_outputs_,
                    "single_output_": bool(self.single_output_),
                    "best_epoch_": int(self.best_epoch_),
                    "history_": self.history_,
                }
            ),
        }
        tensors = {
            f"module.{k}": v.detach().cpu().contiguous()
            for k, v in self.module_.state_dict().items()
        }
        for attr in self.FITTED_ARRAYS:
            tensors[f"fitted.{attr}"] = torch.from_numpy(
                np.ascontiguousarray(getattr(self, attr), dtype=np.float64)
            )
        return config, tensors

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TorchHead:
        """Rebuild a fitted head from ``get_state``'s output."""
        from aigvqa.heads.registry import get_head_class

        if config.get("format") != STATE_FORMAT:
            raise CheckpointMismatchError(
                f"head state format {config.get('format')!r} is not {STATE_FORMAT}; "
                "re-export the model with this aigvqa version"
            )
        klass = get_head_class(config["head"])
        if not issubclass(klass, cls):
            raise CheckpointMismatchError(
                f"state is for head {config['head']!r} ({klass.__name__}), not a {cls.__name__}"
            )
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
        module = number_dropout_sites(head._build_module(head.feature_dims_, head.n_outputs_))
        weights = {k[len("module.") :]: v for k, v in tensors.items() if k.startswith("module.")}
        try:
            module.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise CheckpointMismatchError(
                f"head weights do not fit {klass.__name__}: {err}"
            ) from err
        head.module_ = module.eval()
        return head
