"""Train / validation / test splits of the field's evaluation protocols, as row-index arrays.

=========================  =============================================================
name                       protocol
=========================  =============================================================
``random-8:2``             repeated random 80/20 train/test (``trials``, seeded)
``random-7:1:2``           repeated random 70/10/20 train/val/test
``prompt-disjoint``        "invisible prompt" (UGVQ): no prompt of val/test is in train;
                           80/20 by rows, ``prompt-disjoint-7:1:2`` adds a val set
``leave-one-generator-out``  one fold per generator, that generator is the test set
``videval``                VIDEVAL's 100 80/20 splits: ``train_test_split(random_state=
                           ceil(8.8*i))``, i = 1..trials; head seed ``ceil(6.6*i)``
=========================  =============================================================

Every split carries the seed its head should use (``Split.seed``): evaluation sets it as the
head's ``random_state`` so a trial is reproducible on its own and VIDEVAL's inner
hyper-parameter split (``random_state=ceil(6.6*i)``) is reproduced exactly.
Cross-dataset evaluation (train on A, test on B) needs no index split: see
``aigvqa.pipeline.evaluation.evaluate.cross_dataset``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from aigvqa.errors import AigvqaError


class SplitError(AigvqaError, ValueError):
    """A split cannot be made from the data given (unknown name, missing group, too few rows)."""


@dataclass(frozen=True)
class Split:
    """Row indices of one trial; ``val`` is None for train/test protocols."""

    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray
    name: str
    seed: int  # random_state for the head fitted on this split

    def __repr__(self) -> str:
        val = "None" if self.val is None else str(len(self.val))
        return (
            f"Split({self.name!r}, train={len(self.train)}, val={val}, test={len(self.test)}, "
            f"seed={self.seed})"
        )


SPLIT_NAMES = (
    "random-8:2",
    "random-7:1:2",
    "prompt-disjoint",
    "prompt-disjoint-7:1:2",
    "leave-one-generator-out",
    "videval",
)


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"8:2"`` -> (0.8, 0.2) train/test; ``"7:1:2"`` -> (0.7, 0.1, 0.2) train/val/test."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or min(parts, default=0) <= 0:
        raise SplitError(
            f"split ratios {text!r} must look like 8:2 (train:test) or 7:1:2 (train:val:test)"
        )
    total = sum(parts)
    return tuple(p / total for p in parts)


def split_text(ratios) -> str:
    return ":".join(f"{10 * r:g}" for r in ratios)


def _head_seed(seed: int, trial: int) -> int:
    return seed * 1000 + trial


def _sizes(n: int, ratios: tuple[float, ...]) -> tuple[int, int]:
    """(n_val, n_test) for ``n`` rows; raises when a part would be empty."""
    n_test = int(round(n * ratios[-1]))
    n_val = int(round(n * ratios[1])) if len(ratios) == 3 else 0
    if n_test < 1 or n - n_test - n_val < 1 or (len(ratios) == 3 and n_val < 1):
        raise SplitError(f"{n} rows are too few for a {split_text(ratios)} split")
    return n_val, n_test


def random_splits(n: int, ratios=(0.8, 0.2), trials: int = 10, seed: int = 0) -> list[Split]:
    """Repeated random train(/val)/test splits; trial t uses ``default_rng([seed, t])``."""
    ratios = tuple(ratios)
    n_val, n_test = _sizes(n, ratios)
    out = []
    for t in range(trials):
        perm = np.random.default_rng([seed, t]).permutation(n)
        test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
        out.append(
            Split(train, val if len(ratios) == 3 else None, test, f"trial {t}", _head_seed(seed, t))
        )
    return out


def videval_splits(n: int, trials: int = 100, test_size: float = 0.2) -> list[Split]:
    """VIDEVAL's splits (demo_eval_BVQA_feats_one_dataset.py): for i = 1..trials,
    ``train_test_split(range(n), test_size=0.2, random_state=ceil(8.8*i))``; the head seed
    ``ceil(6.6*i)`` is VIDEVAL's inner hyper-parameter split seed."""
    out = []
    for i in range(1, trials + 1):
        train, test = train_test_split(
            np.arange(n), test_size=test_size, random_state=math.ceil(8.8 * i)
        )
        out.append(Split(train, None, test, f"split {i}", math.ceil(6.6 * i)))
    return out


def prompt_disjoint_splits(
    prompts, ratios=(0.8, 0.2), trials: int = 10, seed: int = 0
) -> list[Split]:
    """Random splits over prompts: every prompt's rows land in exactly one part, so no prompt
    of val/test appears in train. Parts get whole prompts until they reach their row share."""
    prompts = np.asarray(prompts).ravel()
    ratios = tuple(ratios)
    n = prompts.size
    n_val, n_test = _sizes(n, ratios)
    names, inverse = np.unique(prompts, return_inverse=True)
    if names.size < len(ratios):
        raise SplitError(
            f"a prompt-disjoint split needs at least {len(ratios)} distinct prompts, got "
            f"{names.size}"
        )
    counts = np.bincount(inverse)
    out = []
    for t in range(trials):
        order = np.random.default_rng([seed, t]).permutation(names.size)
        part = np.zeros(names.size, dtype=np.int8)  # 0 train, 1 val, 2 test
        filled = {1: 0, 2: 0}
        wanted = {1: n_val, 2: n_test}
        for p in order:
            for which in (2, 1):
                if filled[which] < wanted[which]:
                    part[p] = which
                    filled[which] += counts[p]
                    break
        if not (part == 0).any():  # greedy filling took every prompt: give the last one back
            part[order[-1]] = 0
        if len(ratios) == 3 and not (part == 1).any():
            raise SplitError(
                f"{names.size} prompts of very unequal sizes cannot fill a {split_text(ratios)} "
                "prompt-disjoint split; use an 8:2 split or more prompts"
            )
        row_part = part[inverse]
        val = np.flatnonzero(row_part == 1)
        out.append(
            Split(
                np.flatnonzero(row_part == 0),
                val if len(ratios) == 3 else None,
                np.flatnonzero(row_part == 2),
                f"trial {t}",
                _head_seed(seed, t),
            )
        )
    return out


def leave_one_group_out(groups, seed: int = 0, label: str = "generator") -> list[Split]:
    """One fold per distinct group value (sorted); that group's rows are the test set."""
    groups = np.asarray(groups).ravel()
    names = np.unique(groups)
    if names.size < 2:
        raise SplitError(
            f"leave-one-{label}-out needs at least 2 distinct {label}s, got {names.size}"
        )
    return [
        Split(
            np.flatnonzero(groups != g),
            None,
            np.flatnonzero(groups == g),
            f"{label}={g}",
            _head_seed(seed, k),
        )
        for k, g in enumerate(names)
    ]


def _group(groups: Mapping | None, key: str, split: str, n: int) -> np.ndarray:
    if not groups or key not in groups:
        have = sorted(groups) if groups else []
        raise SplitError(
            f"split {split!r} needs a {key!r} group per row, but the groups given are {have}; pass "
            f"groups={{'{key}': [...]}} (from the manifest's {key} column) or pick another split"
        )
    values = np.asarray(groups[key]).ravel()
    if values.size != n:
        raise SplitError(f"group {key!r} has {values.size} values for {n} rows")
    return values


def make_splits(
    split: str, n: int, groups: Mapping | None = None, trials: int = 10, seed: int = 0
) -> list[Split]:
    """The splits a protocol name stands for (see the module docstring)."""
    if split.startswith("random-"):
        return random_splits(n, parse_ratios(split[len("random-") :]), trials, seed)
    if split == "videval":
        return videval_splits(n, trials)
    if split.startswith("prompt-disjoint"):
        ratios = (
            parse_ratios(split[len("prompt-disjoint-") :])
            if split != "prompt-disjoint"
            else (0.8, 0.2)
        )
        return prompt_disjoint_splits(_group(groups, "prompt", split, n), ratios, trials, seed)
    if split in ("leave-one-generator-out", "logo"):
        return leave_one_group_out(_group(groups, "generator", split, n), seed)
    raise SplitError(
        f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)} (or random-A:B[:C])"
    )
