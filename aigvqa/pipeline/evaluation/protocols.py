"""Published evaluation protocols, each under one name (``aigvqa evaluate --protocol NAME``).

A protocol fixes what a paper's table fixed: the splits and their number, the order of the
rows the splits index, and how the classical heads choose their hyper-parameters inside
each training split. Parameters the user gives (``--config``, ``params``) win over the
protocol's; for a stack, each base gets the protocol's defaults unless its own table (or a
top-level ``<base>__<param>`` key) sets them.

=========  ====================================================================================
name       what it means
=========  ====================================================================================
videval    VIDEVAL (Tu et al., "UGC-VQA", IEEE TIP 2021; ``demo_eval_BVQA_feats_one_dataset.py``):
           100 random 80/20 splits ``train_test_split(range(n), test_size=0.2,
           random_state=ceil(8.8 * i))``, i = 1..100, over the rows in the metadata file's
           order (the cache's ``source_order`` from import-features, or ``--order-from``);
           default head ``svr`` with MinMax scaling; every classical head searches its
           standard grid (SVR: C in 2^1..2^10 x gamma in 2^-8..2^1) on one inner 80/20 split
           of the training rows (``random_state=ceil(6.6 * i)``) and keeps the candidate
           with the lowest RMSE after the 4-parameter logistic fit of its predictions to the
           held-out MOS (``search_scoring="logistic-rmse"``); SRCC on raw predictions, PLCC
           after the logistic; median over the splits.
=========  ====================================================================================

Without a protocol, a classical head searches only when its ``search`` is set, and ranks
candidates by the RMSE of the raw predictions (``search_scoring="rmse"``, its default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aigvqa.errors import AigvqaError


class ProtocolError(AigvqaError, ValueError):
    """An unknown protocol name, or a protocol that cannot apply to the data given."""


@dataclass(frozen=True)
class Protocol:
    name: str
    split: str
    trials: int
    default_head: str
    classical: Mapping[str, Any]  # defaults for every classical head (and classical stack bases)
    per_head: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict
    )  # extra defaults by head name
    source_order: bool = False  # splits index the rows in their source (metadata file) order
    summary: str = ""


VIDEVAL = Protocol(
    name="videval",
    split="videval",
    trials=100,
    default_head="svr",
    classical={"search": "standard", "inner_split": 0.2, "search_scoring": "logistic-rmse"},
    per_head={"svr": {"scaler": "minmax"}},
    source_order=True,
    summary="VIDEVAL's 80/20 splits (random_state=ceil(8.8*i)) over the metadata's row order, each "
    "head's search on an inner 80/20 split (random_state=ceil(6.6*i))",
)

PROTOCOLS = {p.name: p for p in (VIDEVAL,)}


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def _is_classical(head_name: str) -> bool:
    from aigvqa.heads.classical import PooledHead
    from aigvqa.heads.registry import get_head_class

    return issubclass(get_head_class(head_name), PooledHead)


def _defaults(protocol: Protocol, head_name: str) -> dict[str, Any]:
    if not _is_classical(head_name):
        return {}
    return {**protocol.classical, **protocol.per_head.get(head_name, {})}


def protocol_params(
    protocol: str | Protocol, head_name: str, params: Mapping[str, Any]
) -> dict[str, Any]:
    """``params`` of head ``head_name`` with the protocol's defaults filled in where absent."""
    protocol = get_protocol(protocol)
    params = dict(params)
    if head_name != "stack":
        return {**_defaults(protocol, head_name), **params}
    from aigvqa.heads.blend import stack_base_tables

    nested = {k for k in params if "__" in k}
    tables = []
    for name, table in stack_base_tables(params.get("estimators")):
        if isinstance(table, Mapping):
            filled = {
                key: value
                for key, value in _defaults(protocol, table["head"]).items()
                if key not in table and f"{name}__{key}" not in nested
            }
            table = {**table, **filled}
        tables.append((name, table))
    params["estimators"] = {name: table for name, table in tables}
    return params
