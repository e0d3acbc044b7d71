"""TorchScript archives read for their tensors only, with no code compiled or run.

A TorchScript archive (OpenAI's ViT-B-32.pt) is a zip of pickled module objects, their
TorchScript source and raw tensor storages. ``torch.jit.load`` compiles that source and
runs it (a crafted ``__setstate__`` runs on load), and ``torch.load(weights_only=True)``
refuses such archives. So the tensors are read here with a pickle reader that builds
nothing but tensors: TorchScript classes become inert stand-ins that only keep their
state, every other global is refused, and the TorchScript source is only *read* (as
text) for which attributes are parameters and buffers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigvqa.errors import CheckpointMismatchError

_TORCHSCRIPT_LIST_BUILDERS = frozenset(
    {
        "build_intlist",
        "build_tensorlist",
        "build_doublelist",
        "build_boollist",
        "build_genericlist",
        "restore_type_tag",
    }
)
_STORAGE_DTYPE_NAMES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _ScriptObjectStub:
    """Stands in for a TorchScript class while unpickling: keeps the pickled state, runs nothing."""

    _torchscript_class: tuple[str, str] = ("", "")

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


@dataclass(frozen=True)
class _StorageType:
    dtype: Any


def _class_tensor_names(archive, prefix: str) -> dict[tuple[str, str], set[str]]:
    """``{(module, class): parameter and buffer names}`` from the archive's TorchScript
    source (text parsing: ``__parameters__ = [...]`` / ``__buffers__ = [...]`` lines)."""
    import ast
    import re

    names: dict[tuple[str, str], set[str]] = {}
    code_root = f"{prefix}/code/"
    for member in archive.namelist():
        if not (member.startswith(code_root) and member.endswith(".py")):
            continue
        module = member[len(code_root) : -len(".py")].replace("/", ".")
        current = None
        for line in archive.read(member).decode("utf-8", "replace").splitlines():
            header = re.match(r"class ([\w.]+)\(Module\):", line)
            if header:
                current = (module, header.group(1))
                names[current] = set()
                continue
            listed = re.match(r"  __(parameters|buffers)__ = (\[.*\])\s*$", line)
            if current is not None and listed:
                try:
                    names[current].update(str(n) for n in ast.literal_eval(listed.group(2)))
                except (ValueError, SyntaxError):
                    names.pop(current, None)  # unreadable: fall back to every tensor attribute
                    current = None
    return names


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters and buffers of a TorchScript archive, as ``torch.jit.load(path)
    .state_dict()`` would give them, without compiling or running any of its code.

    Raises CheckpointMismatchError for an archive this reader cannot take apart without
    running code (a module with a custom ``__setstate__``, unknown pickle globals)."""
    import collections
    import io
    import pickle
    import zipfile

    import torch

    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointMismatchError(
                f"{path}: not a TorchScript archive (no single <name>/data.pkl)"
            )
        prefix = pickles[0][: -len("/data.pkl")]
        if f"{prefix}/byteorder" in archive.namelist():
            order = archive.read(f"{prefix}/byteorder").decode("ascii", "replace").strip()
            if order != sys.byteorder:
                raise CheckpointMismatchError(
                    f"{path}: tensors stored {order}-endian; this machine is {sys.byteorder}"
                )
        tensor_names = _class_tensor_names(archive, prefix)
        storages: dict[str, Any] = {}
        stubs: dict[tuple[str, str], type] = {}

        def rebuild_tensor(
            storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None
        ):
            return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()

        def rebuild_parameter(data, requires_grad=False, hooks=None):
            return data

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str):
                if module == "__torch__" or module.startswith("__torch__."):
                    key = (module, name)
                    if key not in stubs:
                        stubs[key] = type(name, (_ScriptObjectStub,), {"_torchscript_class": key})
                    return stubs[key]
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return rebuild_tensor
                if (module, name) == ("torch._utils", "_rebuild_parameter"):
                    return rebuild_parameter
                if (module, name) == ("collections", "OrderedDict"):
                    return collections.OrderedDict
                if module == "torch" and name in _STORAGE_DTYPE_NAMES:
                    return _StorageType(getattr(torch, _STORAGE_DTYPE_NAMES[name]))
                if module == "torch.jit._pickle" and name in _TORCHSCRIPT_LIST_BUILDERS:
                    return lambda value, *rest: value
                raise pickle.UnpicklingError(
                    f"refusing to load {module}.{name} (only tensors are read)"
                )

            def persistent_load(self, pid):
                kind, storage_type, key, _location, numel = pid
                if kind != "storage" or not isinstance(storage_type, _StorageType):
                    raise pickle.UnpicklingError(f"unknown persistent record {pid!r}")
                if key not in storages:
                    raw = bytearray(archive.read(f"{prefix}/data/{key}"))
                    flat = (
                        torch.frombuffer(raw, dtype=storage_type.dtype)
                        if raw
                        else torch.empty(0, dtype=storage_type.dtype)
                    )
                    storages[key] = flat[: int(numel)]
                return storages[key]

        try:
            root = Unpickler(io.BytesIO(archive.read(pickles[0]))).load()
        except (
            pickle.UnpicklingError,
            KeyError,
            ValueError,
            TypeError,
            RuntimeError,
            EOFError,
        ) as err:
            raise CheckpointMismatchError(
                f"{path}: cannot read the tensors of this TorchScript archive without running its "
                f"code ({err}); on a machine you trust, convert it once to a state dict: "
                "torch.save(torch.jit.load(path).state_dict(), 'weights.pt') (or save it as "
                ".safetensors) and point weights= at that file"
            ) from err
    state: dict[str, Any] = {}
    _collect_script_tensors(root, "", tensor_names, state, path)
    return state


def _collect_script_tensors(obj, prefix: str, tensor_names, out: dict, path: Path) -> None:
    import torch

    state = obj.__dict__.get("_state")
    if not isinstance(state, Mapping):
        module, name = obj._torchscript_class
        raise CheckpointMismatchError(
            f"{path}: module {prefix.rstrip('.') or '(root)'} ({module}.{name}) keeps a custom "
            "state (its own __setstate__), which only running its TorchScript code could "
            "interpret; aigvqa never runs code from a checkpoint. On a machine you trust, convert "
            "it once: torch.save(torch.jit.load(path).state_dict(), 'weights.pt') (or "
            ".safetensors) and point weights= at that file"
        )
    known = tensor_names.get(obj._torchscript_class)
    for key, value in state.items():
        if isinstance(value, _ScriptObjectStub):
            _collect_script_tensors(value, f"{prefix}{key}.", tensor_names, out, path)
        elif isinstance(value, torch.Tensor) and (known is None or key in known):
            out[f"{prefix}{key}"] = value
