"""A structural check of a LightGBM text model before LightGBM parses it.

LightGBM's C++ parser trusts the text: a tree whose ``num_leaves`` does not match the
length of its arrays, a child index past the tree, a feature index past
``max_feature_idx`` or a ``tree_sizes`` entry that does not match its tree makes it read
out of bounds and abort the process (SIGSEGV / SIGABRT), and children that form a cycle
would make prediction loop forever. The sha256 recorded in bundle.json catches a file
changed without rewriting bundle.json; this check covers an edited file whose hash was
recomputed too. It accepts exactly what aigvqa's LightGBM heads write -- numerical
splits, no categorical splits (``num_cat=0``), no linear trees -- and checks, per
``Tree=`` block, everything LightGBM indexes by: every array's length against
``num_leaves``, child indices in range and forming one tree rooted at node 0 (each node
reached once), feature indices against ``max_feature_idx``, decision types, numbers that
parse, and each block's byte size against ``tree_sizes``. Anything else is a
``BundleError`` naming the file and the line.
"""

from __future__ import annotations

import math
from pathlib import Path

from aigvqa.pipeline.model.bundle_files import BundleError

MAX_LEAVES = 131072  # LightGBM's own limit on num_leaves
_INTERNAL = ("split_feature", "threshold", "decision_type", "left_child", "right_child")
_INTERNAL_OPTIONAL = ("split_gain", "internal_value", "internal_weight", "internal_count")
_LEAF_OPTIONAL = ("leaf_weight", "leaf_count")
_INTS = frozenset(
    ("split_feature", "decision_type", "left_child", "right_child", "leaf_count", "internal_count")
)
_TREE_KEYS = frozenset(
    ("num_leaves", "num_cat", "leaf_value", "is_linear", "shrinkage")
    + _INTERNAL
    + _INTERNAL_OPTIONAL
    + _LEAF_OPTIONAL
)
_OBJECTIVES = frozenset(
    ("regression", "regression_l1", "huber", "fair", "poisson", "quantile", "mape", "gamma")
    + ("tweedie", "cross_entropy", "cross_entropy_lambda", "binary")
)


def check_model_text(text: str, file: Path) -> None:
    """Raise ``BundleError`` unless ``text`` is a LightGBM model of the shape aigvqa writes
    (module docstring)."""
    lines = text.split("\n")

    def refuse(line: int, what: str) -> BundleError:
        return BundleError(
            f"{file}, line {line + 1}: {what}; this is not a LightGBM model as aigvqa writes "
            "them, and LightGBM's parser could crash on it: refusing to parse it (retrain, or "
            "restore the bundle's original files)"
        )

    starts = [i for i, line in enumerate(lines) if line.startswith("Tree=")]
    ends = [i for i, line in enumerate(lines) if line == "end of trees"]
    if not lines or lines[0] != "tree" or len(ends) != 1 or not starts or starts[-1] > ends[0]:
        raise refuse(0, "no 'tree' header, trees and one 'end of trees' line")
    header = _key_values(lines, 1, starts[0], refuse)
    n_features = _int(header, "max_feature_idx", refuse, 0, 1 << 31) + 1
    per_iteration = _int(header, "num_tree_per_iteration", refuse, 1, 1 << 16)
    _int(header, "num_class", refuse, 1, 1 << 16)
    line, names = header.get("feature_names", (0, ""))
    if len(names.split(" ")) != n_features:
        raise refuse(line, f"feature_names does not name max_feature_idx + 1 = {n_features}")
    line, objective = header.get("objective", (0, ""))
    if objective.split(" ")[0] not in _OBJECTIVES:
        raise refuse(line, f"objective {objective.split(' ')[0]!r} is not a regression objective")
    line, sizes_text = header.get("tree_sizes", (0, ""))
    try:
        sizes = [int(s) for s in sizes_text.split(" ")]
    except ValueError:
        raise refuse(line, "tree_sizes is not a list of integers") from None
    if len(sizes) != len(starts) or len(starts) % per_iteration:
        raise refuse(line, f"tree_sizes lists {len(sizes)} trees, the file has {len(starts)}")
    for k, (start, end) in enumerate(zip(starts, [*starts[1:], ends[0]])):
        if lines[start] != f"Tree={k}":
            raise refuse(start, f"tree {k} is headed {lines[start]!r}")
        size = sum(len(line.encode("utf-8")) + 1 for line in lines[start:end])
        if size != sizes[k]:
            raise refuse(start, f"tree {k} has {size} bytes, tree_sizes says {sizes[k]}")
        _check_tree(_key_values(lines, start + 1, end, refuse), n_features, start, refuse)


def _key_values(lines, start, end, refuse) -> dict[str, tuple[int, str]]:
    """{key: (line index, value)} of the ``key=value`` lines in lines[start:end] (blank
    lines skipped); a repeated key is refused (which one would LightGBM read?)."""
    out: dict[str, tuple[int, str]] = {}
    for i in range(start, end):
        if not lines[i]:
            continue
        key, sep, value = lines[i].partition("=")
        if not sep or key in out:
            raise refuse(i, f"{'repeated key ' + repr(key) if sep else 'not a key=value line'}")
        out[key] = (i, value)
    return out


def _int(values, key, refuse, low, high) -> int:
    line, text = values.get(key, (None, None))
    if text is None:
        raise refuse(0, f"{key} is missing")
    try:
        number = int(text)
    except ValueError:
        raise refuse(line, f"{key}={text!r} is not an integer") from None
    if not low <= number <= high:
        raise refuse(line, f"{key}={number} is out of range [{low}, {high}]")
    return number


def _numbers(values, key, count, refuse, *, required: bool) -> list:
    if key not in values:
        if required and count:
            raise refuse(0, f"{key} is missing")
        return []
    line, text = values[key]
    items = text.split(" ") if text else []
    if len(items) != count:
        raise refuse(line, f"{key} has {len(items)} values, num_leaves implies {count}")
    try:
        return [int(x) if key in _INTS else float(x) for x in items]
    except ValueError:
        raise refuse(line, f"{key} holds something that is not a number") from None


def _check_tree(values, n_features, start, refuse) -> None:
    unknown = sorted(set(values) - _TREE_KEYS)
    if unknown:  # categorical splits, linear trees: aigvqa's heads never write them
        raise refuse(values[unknown[0]][0], f"unexpected tree field {unknown[0]!r}")
    n = _int(values, "num_leaves", refuse, 1, MAX_LEAVES)
    _int(values, "num_cat", refuse, 0, 0)
    if "is_linear" in values:
        _int(values, "is_linear", refuse, 0, 0)
    leaf_value = _numbers(values, "leaf_value", n, refuse, required=True)
    if not all(math.isfinite(v) for v in leaf_value):
        raise refuse(values["leaf_value"][0], "leaf_value holds NaN or inf")
    if n == 1:  # a one-leaf tree: LightGBM reads leaf_value only (the rest is written empty)
        return
    for key in _LEAF_OPTIONAL:
        _numbers(values, key, n, refuse, required=False)
    for key in _INTERNAL_OPTIONAL:
        _numbers(values, key, n - 1, refuse, required=False)
    arrays = {key: _numbers(values, key, n - 1, refuse, required=True) for key in _INTERNAL}
    for j, feature in enumerate(arrays["split_feature"]):
        if not 0 <= feature < n_features:
            raise refuse(
                values["split_feature"][0], f"split_feature[{j}]={feature} is out of range"
            )
    for j, kind in enumerate(arrays["decision_type"]):
        if kind not in (0, 2, 4, 6, 8, 10):  # bit 0 categorical; bits 2-3 missing type 0..2
            raise refuse(values["decision_type"][0], f"decision_type[{j}]={kind} is not numerical")
    # one tree rooted at 0: a walk from the root reaches every node exactly once
    seen_nodes, seen_leaves, todo = {0}, set(), [0]
    while todo:
        node = todo.pop()
        for side in ("left_child", "right_child"):
            child = arrays[side][node]
            where = f"{side}[{node}]={child}"
            if child >= 0:
                if child >= n - 1 or child in seen_nodes:
                    raise refuse(values[side][0], f"{where} is out of range or reached twice")
                seen_nodes.add(child)
                todo.append(child)
            else:
                if ~child >= n or ~child in seen_leaves:
                    raise refuse(values[side][0], f"{where} is out of range or reached twice")
                seen_leaves.add(~child)
    if len(seen_nodes) != n - 1 or len(seen_leaves) != n:
        raise refuse(start, "the children do not form one tree over every node and leaf")
