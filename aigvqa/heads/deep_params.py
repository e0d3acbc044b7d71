"""What the parameters every deep head (``TorchHead``) has may be, as a
``PARAMETER_CONSTRAINTS`` table (``aigvqa.heads.params``): ``deep_constraints(presets,
roles, **own)`` gives a head's table, and ``SIZE`` / ``RATE`` / ``DROPOUT`` / ``LOSS`` are the
entries the heads reuse for their own parameters (``heads.base`` re-exports them all).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from aigvqa.heads.losses import LOSSES
from aigvqa.heads.params import Check, Interval, Options

SIZE = [None, Interval(Integral, 1, None)]
"""A width, depth or count; None takes the preset's value."""
RATE = [None, Interval(Real, 0, None, closed="neither")]
DROPOUT = [None, Interval(Real, 0, 1, closed="left")]
LOSS = [Options(*LOSSES)]


def _role_map(roles: Mapping[str, str]) -> Check:
    return Check(
        lambda v: (
            isinstance(v, dict)
            and set(v) <= set(roles)
            and all(isinstance(n, str) for n in v.values())
        ),
        "a dict {role: feature name}; there are no feature roles besides "
        f"{', '.join(sorted(roles))}",
    )


def deep_constraints(
    presets: Mapping[str, Any], roles: Mapping[str, str], **own: list
) -> dict[str, list]:
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
        "fgm_params": [
            str,
            Check(
                lambda v: isinstance(v, list | tuple) and all(isinstance(p, str) for p in v),
                "a list of parameter-name patterns",
            ),
        ],
        "seed": [Integral],
        "device": [str],
        "amp": [bool],
        "verbose": [
            bool,
            Check(callable, "a callable(head, epoch record), called after every epoch"),
        ],
        **own,
    }
