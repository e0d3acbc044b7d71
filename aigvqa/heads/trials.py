"""Trials trained together: the fits of one deep-head configuration on several row sets
(the splits of a protocol) and seeds, run as one vectorised model.

    heads = fit_trials(create_head("msavqa"), X, y, [split.train for split in splits],
                       seeds=[split.seed for split in splits])
    test_predictions = predict_trials(heads, X, [split.test for split in splits])

Each returned head is an ordinary fitted head (``predict``, ``get_state``, ...) equal, up
to float rounding, to ``clone(head).set_params(seed=s).fit(X[rows], y[rows])``: the
trials' parameters are stacked (``[K, ...]``) and one ``torch.func.vmap`` over
``functional_call`` runs every trial's forward pass at once, but everything a fit decides
stays per trial:

- initialisation (seeded exactly as a single fit seeds it) and data-dependent buffers;
- target scaling, the validation split and the shuffled batch order, from the trial's
  own generator over its own rows; trials with more rows run more steps per epoch and the
  others wait (their batches are padded with masked rows, which the losses leave out);
- dropout masks (keyed by the trial's seed, epoch and step: ``heads.layers``);
- Adam moments and step counts, the step LR schedule, FGM's perturbation (per-trial
  gradient norms), the validation loss, the best epoch and early stopping: a trial that
  has stopped is taken out of the stack and no longer changes;
- the post-training fits (MSA-VQA's ensemble, PLCC calibration), run per trial.

Adam here is written out (per-trial step counts and a mask for the waiting trials), so
the updates round differently from torch's fused kernel in the last bits; over a few
epochs predictions agree to about 1e-5 relative (tests/test_trials.py checks this).

Heads that override the training loop (``_train``), ``_forward`` or a ``_loss`` without a
``weight`` argument are fitted one by one.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from fnmatch import fnmatch

import numpy as np
import torch
from sklearn.base import clone
from torch.func import functional_call, vmap

from aigvqa.heads.base import FUSED_ADAM_DEVICES, TorchHead
from aigvqa.heads.device import DeviceFeatures
from aigvqa.heads.featureset import FeatureSet
from aigvqa.heads.layers import dropout_key, fold_key, vectorised

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which TorchHead uses
# copies of the parameters one trial holds while training: weights, gradient, two Adam
# moments, best weights, and about two temporaries of the update
PARAM_COPIES = 7


def can_train_together(head) -> bool:
    """Whether ``fit_trials`` can vectorise ``head``'s trials (else it fits them one by one)."""
    if not isinstance(head, TorchHead):
        return False
    cls = type(head)
    if cls._train is not TorchHead._train or cls._forward is not TorchHead._forward:
        return False
    return "weight" in inspect.signature(head._loss).parameters


def fit_trials(
    head: TorchHead,
    X: FeatureSet,
    y,
    train_rows: Sequence[np.ndarray],
    seeds: Sequence[int] | None = None,
    *,
    together: bool = True,
    max_together: int | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> list[TorchHead]:
    """Fit one clone of ``head`` per trial: seed ``seeds[i]`` (default: the head's own)
    on rows ``train_rows[i]`` of ``X`` / ``y``; returns the fitted heads in trial order.

    ``together=False`` fits them one by one (``clone(head).set_params(seed=s).fit(...)``).
    ``max_together``: at most this many trials per vectorised model (default: as many as
    fit in a quarter of the device's memory). ``on_epoch(epoch, epochs)`` is called after
    each epoch of a vectorised group.
    """
    rows_list = [np.asarray(r, dtype=np.int64).ravel() for r in train_rows]
    seeds = [head.seed] * len(rows_list) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(rows_list):
        raise ValueError(f"{len(seeds)} seeds for {len(rows_list)} trials")
    heads = [clone(head).set_params(seed=s) for s in seeds]
    y = np.asarray(y, dtype=np.float64)
    if not together or len(heads) < 2 or not can_train_together(head):
        return [h.fit(X[rows], y[rows]) for h, rows in zip(heads, rows_list)]
    if not isinstance(X, FeatureSet):
        raise TypeError(f"fit_trials takes a FeatureSet, got {type(X).__name__}")
    if y.shape[0] != len(X):
        raise ValueError(f"X has {len(X)} rows, y {y.shape[0]}")

    device = heads[0]._device()
    prepared = [h._prepare(X, y[rows], rows) for h, rows in zip(heads, rows_list)]
    features = DeviceFeatures(
        X, heads[0].feature_names_.values(), device, rows=np.concatenate(rows_list)
    )
    plans = []
    for h, rows, y2 in zip(heads, rows_list, prepared):
        y_scaled, rng, train_local, val_local = h._plan(y2)
        y_full = np.zeros((len(X), y_scaled.shape[1]), dtype=np.float32)
        y_full[rows] = y_scaled  # indexed by X's rows, like the features
        held_out = rows[val_local] if len(val_local) else rows[np.sort(train_local)]
        plans.append((y_full, rng, rows[train_local], rows[val_local], held_out))

    modules = []
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        for h, (_, _, train, _, _) in zip(heads, plans):
            modules.append(h._new_module(features, train, device))
    group = max_together or _group_size(modules[0], device)
    for start in range(0, len(heads), group):
        part = slice(start, start + group)
        _train_together(heads[part], modules[part], features, plans[part], device, on_epoch)
    for h, module, (y_full, _, _, _, held_out) in zip(heads, modules, plans):
        h.module_ = module.cpu().eval()
        h._after_training(features, y_full, held_out)
    return heads


def predict_trials(
    heads: Sequence[TorchHead], X: FeatureSet, rows: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """``heads[i].predict(X[rows[i]])`` for every i, with X's features moved to the device
    once for all of them (the heads read the same features: trials of one configuration)."""
    if not heads:
        return []
    rows = [np.asarray(r, dtype=np.int64).ravel() for r in rows]
    for h in heads:
        h._check_predict_input(X)
    names = {n for h in heads for n in h.feature_names_.values()}
    features = DeviceFeatures(X, sorted(names), heads[0]._device(), rows=np.concatenate(rows))
    return [h._predict(features, r) for h, r in zip(heads, rows)]


def _group_size(module: torch.nn.Module, device: torch.device) -> int:
    """Trials per vectorised model so that their parameter copies fill at most a quarter of
    the device's memory (activations are per trial as they would be one by one)."""
    per_trial = PARAM_COPIES * 4 * sum(p.numel() for p in module.parameters())
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free / 4
    else:
        try:
            budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume 16 GiB of RAM
            budget = 4 * 2**30
    return max(1, int(budget // max(per_trial, 1)))


class _Stack:
    """The trainable parameters of K modules as one [K, P] tensor, their buffers stacked
    [K, ...], and a written-out Adam over the stack.

    The autograd leaves are one [K, ...] view of ``flat`` per parameter, whose ``.grad`` is
    the matching view of ``grad``: backward accumulates into the flat gradient in place, and
    the optimiser works on two [K, P] tensors instead of a hundred small ones. (Leaves made
    by slicing one flat leaf would cost each parameter's backward a [K, P] zero-fill.)
    """

    def __init__(self, modules: list[torch.nn.Module], device: torch.device, weight_decay: float):
        first = modules[0]
        self.names = [n for n, _ in first.named_parameters()]
        self.shapes = [p.shape for _, p in first.named_parameters()]
        sizes = [p.numel() for _, p in first.named_parameters()]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.flat = torch.stack(
            [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in modules]
        ).to(device)
        self._make_leaves()
        self.buffers = {
            n: torch.stack([dict(m.named_buffers())[n] for m in modules]).to(device)
            for n, _ in first.named_buffers()
        }
        self.m = torch.zeros_like(self.flat)
        self.v = torch.zeros_like(self.flat)
        # Adam's step counts, one per trial (float32 scalars, as torch.optim.Adam keeps them)
        self.steps = [torch.zeros((), dtype=torch.float32, device=device) for _ in modules]
        self.best: torch.Tensor | None = None
        self.weight_decay = float(weight_decay)
        self.fused = device.type in FUSED_ADAM_DEVICES

    def _make_leaves(self) -> None:
        k = self.flat.shape[0]
        self.grad = torch.zeros_like(self.flat)
        self.leaves = {}
        for n, shape, a, b in zip(self.names, self.shapes, self.offsets[:-1], self.offsets[1:]):
            leaf = self.flat[:, a:b].view(k, *shape).detach().requires_grad_(True)
            leaf.grad = self.grad[:, a:b].view(k, *shape)
            self.leaves[n] = leaf

    def params(self) -> dict[str, torch.Tensor]:
        return self.leaves

    def zero_grad(self) -> None:
        self.grad.zero_()

    def slice_of(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    @torch.no_grad()
    def adam_step(self, active: np.ndarray, lr: float) -> None:
        """One Adam step for the ``active`` trials (bool [K], known on the host); the others
        keep weights, moments and step count. Where torch has a fused Adam kernel for the
        device it is the very kernel a single fit's ``torch.optim.Adam(fused=True)`` runs,
        given one [P] row per trial instead of one tensor per parameter (the update is
        elementwise, so the grouping changes nothing)."""
        idx = [int(i) for i in np.flatnonzero(active)]
        if not idx:
            return
        steps = [self.steps[i] for i in idx]
        torch._foreach_add_(steps, 1)
        b1, b2 = ADAM_BETAS
        if self.fused:
            torch._fused_adam_(
                [self.flat[i] for i in idx],
                [self.grad[i] for i in idx],
                [self.m[i] for i in idx],
                [self.v[i] for i in idx],
                [],
                steps,
                lr=lr,
                beta1=b1,
                beta2=b2,
                weight_decay=self.weight_decay,
                eps=ADAM_EPS,
                amsgrad=False,
                maximize=False,
            )
            return
        for i, step in zip(idx, steps):  # torch.optim.Adam's single-tensor update
            p, g, m, v = self.flat[i], self.grad[i], self.m[i], self.v[i]
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            n = float(step)
            denom = (v.sqrt() / math.sqrt(1 - b2**n)).add_(ADAM_EPS)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**n))

    def keep(self, alive: list[int]) -> None:
        """Drop the trials not at positions ``alive``."""
        idx = torch.tensor(alive, dtype=torch.long, device=self.flat.device)
        self.flat = self.flat.index_select(0, idx)
        self._make_leaves()
        self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}
        self.m, self.v = self.m.index_select(0, idx), self.v.index_select(0, idx)
        self.steps = [self.steps[i] for i in alive]
        if self.best is not None:
            self.best = self.best.index_select(0, idx)


def _padded(
    parts_per_trial: list[list[np.ndarray]], filler: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per trial a list of row arrays (its batches, or chunks) -> rows [S, K, B] and a
    row mask [S, K, B]; missing batches and short ones are padded with the trial's
    ``filler`` row, masked out."""
    steps = max(len(parts) for parts in parts_per_trial)
    width = max(len(p) for parts in parts_per_trial for p in parts)
    rows = np.empty((steps, len(parts_per_trial), width), dtype=np.int64)
    valid = np.zeros(rows.shape, dtype=bool)
    for k, parts in enumerate(parts_per_trial):
        rows[:, k, :] = filler[k]
        for s, p in enumerate(parts):
            rows[s, k, : len(p)] = p
            valid[s, k, : len(p)] = True
    return rows, valid


def _train_together(
    heads: list[TorchHead],
    modules: list[torch.nn.Module],
    features: DeviceFeatures,
    plans: list[tuple],
    device: torch.device,
    on_epoch,
) -> None:
    """``TorchHead._train`` for K trials at once (module docstring); loads each trial's
    final (best-epoch) weights into its module and sets its ``history_`` / ``best_epoch_``."""
    h0 = heads[0]
    epochs, batch_size = int(h0._hp("epochs")), int(h0._hp("batch_size"))
    lr_step, gamma = int(h0._hp("lr_step")), float(h0._hp("lr_gamma"))
    eval_rows = h0._eval_rows()
    roles = h0.feature_names_
    stack = _Stack(modules, device, h0.weight_decay)
    base = copy.deepcopy(modules[0]).to("meta")
    y_all = torch.from_numpy(np.stack([p[0] for p in plans])).to(device)  # [K, N, k]
    train = [p[2] for p in plans]
    val = [p[3] for p in plans]
    rngs = [p[1] for p in plans]
    n_batches = [max(1, math.ceil(len(t) / batch_size)) for t in train]
    fgm_slices = []
    if h0.fgm_epsilon:
        patterns = (h0.fgm_params,) if isinstance(h0.fgm_params, str) else tuple(h0.fgm_params)
        fgm_slices = [
            stack.slice_of(n)
            for n, p in modules[0].named_parameters()
            if p.requires_grad and any(fnmatch(n, pat) for pat in patterns)
        ]

    def trial_loss(params, buffers, batch, target, weight, key):
        with dropout_key(key), vectorised(), h0._autocast(device):
            out = functional_call(base, (params, buffers), (batch,))
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        return h0._loss(out, target, weight)

    losses_of = vmap(trial_loss)
    alive = list(range(len(heads)))  # trial index of each position in the stack
    lr = float(h0._hp("lr"))  # epochs run in lockstep: one learning rate for every trial
    best_loss = [math.inf] * len(heads)
    since_best = [0] * len(heads)
    final: dict[int, torch.Tensor] = {}
    for h in heads:
        h.history_, h.best_epoch_ = [], epochs - 1

    for epoch in range(epochs):
        started = time.perf_counter()
        base.train()
        batches = []
        for k in alive:
            order = rngs[k].permutation(train[k])
            batches.append(np.array_split(order, n_batches[k]))
        rows, valid = _padded(batches, [train[k][0] for k in alive])
        active = np.array([[s < n_batches[k] for k in alive] for s in range(rows.shape[0])])
        keys = np.array(
            [
                [[fold_key(heads[k].seed, epoch, s, f) for f in (0, 1)] for k in alive]
                for s in range(rows.shape[0])
            ],
            dtype=np.int64,
        )
        rows_t, valid_t = torch.from_numpy(rows).to(device), torch.from_numpy(valid).to(device)
        keys_t = torch.from_numpy(keys).to(device)
        positions = torch.arange(len(alive), device=device)[:, None]
        y_alive = y_all.index_select(0, torch.tensor(alive, device=device))
        total = torch.zeros(len(alive), device=device)
        for s in range(rows.shape[0]):
            steps = {name: features.steps_for(name, rows[s].ravel()) for name in roles.values()}
            batch = features.batch(roles, rows_t[s], steps)
            target = y_alive[positions, rows_t[s]]
            stack.zero_grad()
            losses = losses_of(
                stack.params(), stack.buffers, batch, target, valid_t[s], keys_t[s, :, 0]
            )
            _backward(losses.sum())
            if fgm_slices:
                moved, backup = _fgm_attack(stack, fgm_slices, float(h0.fgm_epsilon))
                again = losses_of(
                    stack.params(), stack.buffers, batch, target, valid_t[s], keys_t[s, :, 1]
                )
                _backward((again * moved).sum())
                with torch.no_grad():
                    for sl, saved in backup:
                        stack.flat[:, sl] = saved
            stack.adam_step(active[s], lr)
            total += losses.detach() * valid_t[s].sum(1)
        if (epoch + 1) % lr_step == 0:  # torch's StepLR: times gamma every lr_step epochs
            lr *= gamma
        totals = total.cpu().numpy()
        records = [
            {"epoch": epoch, "train_loss": float(totals[i]) / len(train[k]), "lr": lr}
            for i, k in enumerate(alive)
        ]
        if any(len(val[k]) for k in alive):
            val_losses = _validation_losses(
                losses_of,
                stack,
                base,
                features,
                roles,
                y_alive,
                [val[k] for k in alive],
                eval_rows,
                device,
            )
            improved = np.zeros(len(alive), dtype=bool)
            for i, k in enumerate(alive):
                if not len(val[k]):
                    continue
                records[i]["val_loss"] = val_losses[i]
                if val_losses[i] < best_loss[k]:
                    best_loss[k], since_best[k], heads[k].best_epoch_ = val_losses[i], 0, epoch
                    improved[i] = True
                else:
                    since_best[k] += 1
            if improved.any():
                with torch.no_grad():
                    if stack.best is None:
                        stack.best = stack.flat.clone()
                    keep = torch.from_numpy(improved).to(device)[:, None]
                    stack.best = torch.where(keep, stack.flat, stack.best)
        seconds = time.perf_counter() - started
        stopped = []
        for i, k in enumerate(alive):
            records[i]["seconds"] = seconds
            heads[k].history_.append(records[i])
            heads[k]._report_epoch(records[i])
            h = heads[k]
            if h.patience is not None and since_best[k] >= h.patience:
                stopped.append(i)
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs)
        for i in stopped:
            final[alive[i]] = _final_weights(stack, i, best_loss[alive[i]])
        if stopped:
            left = [i for i in range(len(alive)) if i not in stopped]
            alive = [alive[i] for i in left]
            if not alive:
                break
            stack.keep(left)
    for i, k in enumerate(alive):
        final[k] = _final_weights(stack, i, best_loss[k])
    with torch.no_grad():
        for k, module in enumerate(modules):
            vector = final[k]
            for p, a, b in zip(module.parameters(), stack.offsets[:-1], stack.offsets[1:]):
                p.copy_(vector[a:b].view_as(p))


def _backward(loss: torch.Tensor) -> None:
    with warnings.catch_warnings():
        # the leaves are strided views of one [K, P] tensor by design (_Stack); torch notes
        # that such a gradient layout "may impair performance"
        warnings.filterwarnings(
            "ignore", message="grad and param do not obey the gradient layout contract"
        )
        loss.backward()


def _final_weights(stack: _Stack, i: int, best_loss: float) -> torch.Tensor:
    """Trial ``i``'s weights to keep: its best epoch's when it had a validation loss."""
    if stack.best is not None and math.isfinite(best_loss):
        return stack.best[i].clone()
    return stack.flat[i].clone()


@torch.no_grad()
def _fgm_attack(stack: _Stack, slices: list[slice], epsilon: float):
    """FGM per trial: move each matched parameter by epsilon * g / ||g|| (skipping a zero or
    non-finite norm, as ``losses.FGM`` does); returns which trials moved (float [K]) and the
    saved weights to restore."""
    moved = torch.zeros(stack.flat.shape[0], dtype=torch.bool, device=stack.flat.device)
    backup = []
    for sl in slices:
        g = stack.grad[:, sl]
        norm = g.norm(dim=1)
        ok = (norm > 0) & torch.isfinite(norm)
        backup.append((sl, stack.flat[:, sl].clone()))
        step = epsilon * g / torch.where(ok, norm, 1.0)[:, None]
        stack.flat[:, sl] += torch.where(ok[:, None], step, 0.0)
        moved |= ok
    return moved.to(stack.flat.dtype), backup


@torch.no_grad()
def _validation_losses(
    losses_of,
    stack: _Stack,
    base,
    features: DeviceFeatures,
    roles,
    y_alive,
    val_rows,
    eval_rows: int,
    device,
) -> list[float]:
    """Each trial's validation loss, chunked exactly as ``TorchHead._eval_loss`` chunks it."""
    base.eval()
    chunks = [
        np.array_split(v, max(1, math.ceil(len(v) / eval_rows))) if len(v) else [v[:1]]
        for v in val_rows
    ]
    filler = [int(v[0]) if len(v) else 0 for v in val_rows]
    rows, valid = _padded(chunks, filler)
    rows_t, valid_t = torch.from_numpy(rows).to(device), torch.from_numpy(valid).to(device)
    positions = torch.arange(len(val_rows), device=device)[:, None]
    no_key = torch.zeros(len(val_rows), dtype=torch.int64, device=device)
    total = torch.zeros(len(val_rows), device=device)
    for c in range(rows.shape[0]):
        steps = {name: features.steps_for(name, rows[c].ravel()) for name in roles.values()}
        batch = features.batch(roles, rows_t[c], steps)
        losses = losses_of(
            stack.params(), stack.buffers, batch, y_alive[positions, rows_t[c]], valid_t[c], no_key
        )
        total += losses * valid_t[c].sum(1)
    totals = total.cpu().numpy()
    return [float(totals[i]) / len(v) if len(v) else math.nan for i, v in enumerate(val_rows)]
