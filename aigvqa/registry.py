"""One small name -> class registry, instantiated once per family of plug-ins.

``aigvqa.extractors.registry`` holds the extractors' instance and ``aigvqa.heads.registry``
the heads'; their ``register_*`` / ``list_*`` / ``create_*`` functions are thin wrappers::

    HEADS = Registry("head", error=UnknownHeadError,
                     builtins={"svr": "aigvqa.heads.classical:SVRHead"})

    @HEADS.register("svr")
    class SVRHead: ...                # HEADS.get("svr") is SVRHead; SVRHead.name == "svr"

Rules, the same for every family:

- registering sets ``cls.name`` to the registered name;
- a name belongs to one class: registering another class under a taken name raises
  ``ValueError`` (re-registering the same class, e.g. on a module reload, is allowed);
- ``builtins`` maps names to ``"module:Class"``: they are listed without importing
  anything and their module is imported on first use, so heavy dependencies (torch) load
  only when a class that needs them is asked for;
- ``names(pattern)`` matches shell-style patterns with ``fnmatch.fnmatchcase``;
- an unknown name raises the family's error class with a "did you mean" hint
  (``difflib``) and the list of known names.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Mapping
from typing import Any


class Registry:
    """Classes of one family by registered name (module docstring)."""

    def __init__(
        self,
        kind: str,
        *,
        error: type[Exception] = KeyError,
        base: type | None = None,
        builtins: Mapping[str, str] | None = None,
        fix: str = "",
    ) -> None:
        self.kind = kind  # "head", "extractor": used in messages
        self.error = error  # raised for an unknown name
        self.base = base  # registered classes must subclass it (when given)
        self.fix = fix  # appended to the unknown-name message: where names are used
        self._entries: dict[str, type] = {}
        self._builtins: dict[str, str] = dict(builtins or {})

    # -- registration -----------------------------------------------------------------------
    def register(self, name: str):
        """Class decorator: file ``cls`` under ``name`` and set ``cls.name = name``."""

        def decorate(cls: type) -> type:
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(
                    f"@register_{self.kind}({name!r}) must decorate a {self.base.__name__} subclass"
                )
            owner = self._owner(name)
            if owner is not None and owner != _path(cls):
                raise ValueError(f"{self.kind} name {name!r} is already registered by {owner}")
            cls.name = name
            self._entries[name] = cls
            return cls

        return decorate

    def _owner(self, name: str) -> str | None:
        """``module:Class`` of whatever holds ``name``: a registered class or a built-in."""
        if name in self._entries:
            return _path(self._entries[name])
        return self._builtins.get(name)

    # -- look-up ----------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names (registered and built-in, none imported) matching a shell pattern."""
        return sorted(
            n for n in {*self._entries, *self._builtins} if fnmatch.fnmatchcase(n, pattern)
        )

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._builtins

    def get(self, name: str) -> type:
        """The class registered as ``name``, importing a built-in's module on first use."""
        if name not in self._entries and name in self._builtins:
            module = self._builtins[name].partition(":")[0]
            importlib.import_module(module)
            if name not in self._entries:  # a packaging bug, not the user's
                raise RuntimeError(f"{module} did not register the built-in {self.kind} {name!r}")
        if name not in self._entries:
            raise self.error(self.unknown_message(name))
        return self._entries[name]

    def create(self, name: str, /, **params: Any) -> Any:
        """An instance of the class registered as ``name``, built with ``params``."""
        return self.get(name)(**params)

    def name_of(self, cls: type) -> str:
        """The name ``cls`` itself was registered under (a subclass does not inherit it)."""
        name = vars(cls).get("name")
        if isinstance(name, str) and self._entries.get(name) is cls:
            return name
        raise self.error(
            f"{cls.__module__}.{cls.__qualname__} is not a registered {self.kind}; "
            f"decorate it with @register_{self.kind}(name)"
        )

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        listed = ", ".join(known) or "(none registered)"
        return f"unknown {self.kind} {name!r}{hint}; available {self.kind}s: {listed}." + (
            f" {self.fix}" if self.fix else ""
        )


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
