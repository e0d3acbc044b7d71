"""The import graph points one way (docs/ARCHITECTURE.md): read every module's imports with
``ast`` -- function-level (lazy) imports included -- and fail on a forbidden edge."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aigvqa"

# (modules under this folder, module prefixes they must never import, why)
RULES = [
    (
        "pipeline/evaluation",
        ("aigvqa.pipeline.model",),
        "evaluation reaches the model lifecycle only through pipeline.training_data",
    ),
    (
        "pipeline/model",
        ("aigvqa.pipeline.evaluation",),
        "the model lifecycle reaches evaluation only through pipeline.training_data",
    ),
    (
        "pipeline/training_data.py",
        ("aigvqa.pipeline.model", "aigvqa.pipeline.evaluation"),
        "training_data is below both evaluation and model",
    ),
    (
        "pipeline/config.py",
        ("aigvqa.pipeline.model", "aigvqa.pipeline.evaluation", "aigvqa.pipeline.cli"),
        "config files are read below every component",
    ),
    (
        "heads",
        ("aigvqa.pipeline", "aigvqa.cache", "aigvqa.extractors"),
        "heads see numpy arrays (FeatureSet) only",
    ),
    (
        "cache",
        ("aigvqa.pipeline", "aigvqa.heads", "aigvqa.extractors", "torch"),
        "the cache never imports torch or the layers above it",
    ),
    (
        "extractors",
        ("aigvqa.pipeline", "aigvqa.cache", "aigvqa.heads", "h5py"),
        "extractors never import h5py or the layers above them",
    ),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; ``from a import b`` also
    yields ``a.b`` (b may be a submodule), relative imports are made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    target = PACKAGE / folder
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    assert files, f"{target} holds no modules: the rule is stale"
    bad = []
    for path in files:
        for line, name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("folder, forbidden, why", RULES, ids=[r[0] for r in RULES])
def test_import_rule(folder, forbidden, why):
    bad = violations(folder, forbidden)
    assert not bad, f"{why}:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """A rule that cannot fail proves nothing: a function-level import and a relative one
    of a forbidden module are both caught."""
    fake = tmp_path / "aigvqa" / "pipeline" / "evaluation"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "lazy.py").write_text(
        "def f():\n    from aigvqa.pipeline.model.bundle import load_bundle\n"
    )
    (fake / "relative.py").write_text("from ..model import train\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "aigvqa")
    bad = violations("pipeline/evaluation", ("aigvqa.pipeline.model",))
    assert {b.split(":")[0] for b in bad} == {
        "aigvqa/pipeline/evaluation/lazy.py",
        "aigvqa/pipeline/evaluation/relative.py",
    }
