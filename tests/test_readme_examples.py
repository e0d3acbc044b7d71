"""Every example of the README and of docs/ runs as written after `aigvqa demo`.

The documents are read in DOCUMENTS' order (the README first, then docs/, whose lines use
files the README's lines make). Their ```bash blocks are read line by line (``\\``
continuations joined): each `aigvqa ...` line runs in that order, in-process through the
CLI's ``main`` (the `aigvqa` console script calls the same function), in a working folder
laid out like the checkout's root: ``examples/`` copied in, the demo's output in
``aigvqa-demo/``. A line whose comment says ``[needs ...]`` (checkpoints, a GPU, a running
cluster, another dataset) is skipped with that reason; so are `pip install` lines (this
test runs in the installed environment) and `python -m pytest` (the suite itself). The
```python blocks run in order between them, in the same folder; the ```toml blocks must
be what ``examples/`` ships (extractors.toml), tables every named extractor accepts, or
build a head (the stack). Blocks fenced as ```text (or with no language) are output and
signatures, never run.

`aigvqa demo` runs once per session through the real console entry
(``python -m aigvqa.pipeline.cli demo --quick``: the demo's files at a smaller size and
fewer trials; every example reads them the same way), and every README line that runs the
demo is that run. Running the examples is slow (about a minute on an idle 2-core machine);
checking that CI runs the README's own set-up and test commands is not.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# the order the examples run in; every docs/*.md must be listed (a test checks it)
DOCUMENTS = [
    README,
    *(
        REPO / "docs" / name
        for name in (
            "extracting.md",
            "cache-format.md",
            "heads.md",
            "protocols.md",
            "failure-semantics.md",
            "weights.md",
            "benchmarks.md",
            "ARCHITECTURE.md",
        )
    ),
]
NEEDS = re.compile(r"\[needs ([^\]]+)\]")


@dataclass
class Example:
    kind: str  # "bash" or "python" or "toml"
    text: str
    line: int  # line of the document where it starts
    document: str = "README.md"  # relative to the checkout's root

    @property
    def id(self) -> str:
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return f"{self.document}:L{self.line}:{self.kind}:{first[:50]}"


def readme_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, first body line) of every fenced block."""
    blocks, lang, body, start = [], None, [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if lang is None and line.startswith("```"):
            lang, body, start = line[3:].strip(), [], number + 1
        elif lang is not None and line.startswith("```"):
            blocks.append((lang, "\n".join(body), start))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def bash_commands(body: str, start: int) -> list[tuple[str, int]]:
    """(command with its trailing comment, README line) per command of a bash block."""
    commands, pending, first = [], "", 0
    for offset, line in enumerate(body.splitlines()):
        if not pending:
            first = start + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append((command, first))
    return commands


def document_examples(path: Path) -> list[Example]:
    out = []
    name = path.relative_to(REPO).as_posix()
    for lang, body, start in readme_blocks(path.read_text()):
        if lang == "bash":
            out += [Example("bash", cmd, line, name) for cmd, line in bash_commands(body, start)]
        elif lang in ("python", "toml"):
            out.append(Example(lang, body, start, name))
    return out


EXAMPLES = [example for path in DOCUMENTS for example in document_examples(path)]
README_EXAMPLES = [e for e in EXAMPLES if e.document == "README.md"]


def skip_reason(example: Example) -> str | None:
    if example.kind != "bash":
        return None
    needs = NEEDS.search(example.text)
    if needs:
        return f"{example.document} marks it: needs {needs.group(1)}"
    if example.text.startswith("pip install"):
        return "installs the package: this test runs in the installed environment"
    if example.text.startswith("python -m pytest"):
        return "runs the test suite this test belongs to"
    return None


def split_command(command: str) -> list[list[str]]:
    """`a && b  # comment` -> [[a...], [b...]] (shlex drops the comment)."""
    words = shlex.split(command, comments=True)
    parts, current = [], []
    for word in words:
        if word == "&&":
            parts.append(current)
            current = []
        else:
            current.append(word)
    return [p for p in parts + [current] if p]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder laid out like the checkout's root after `aigvqa demo`."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "examples", root / "examples")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    demo = subprocess.run(
        [sys.executable, "-m", "aigvqa.pipeline.cli", "demo", "--quick", "--no-progress"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (root / "aigvqa-demo" / "features.h5").is_file() and (
        root / "aigvqa-demo" / "model"
    ).is_dir()
    assert "Traceback" not in demo.stderr, demo.stderr[-3000:]
    return root


def run_cli(argv: list[str], workdir: Path, capsys) -> None:
    from aigvqa.pipeline.cli import main

    if argv[:2] == ["aigvqa", "demo"]:
        return  # the module's demo run (fixture), through the console entry
    assert argv[0] == "aigvqa", f"not an aigvqa command: {argv}"
    code = main(argv[1:])
    out = capsys.readouterr()
    assert code == 0, f"`{shlex.join(argv)}` exited {code}\n{out.err[-3000:]}\n{out.out[-2000:]}"
    assert_no_noise(out.err, shlex.join(argv))


def assert_no_noise(err: str, what: str) -> None:
    """An example run as written prints no traceback and no warning the user did not cause
    (issue 14); the capture is per file descriptor, so Dask workers' stderr counts too."""
    for word in ("Traceback", "Warning", "ERROR"):
        assert word not in err, f"`{what}` printed {word!r}:\n{err[-3000:]}"


def test_every_document_is_read_and_no_block_goes_unchecked():
    assert set((REPO / "docs").glob("*.md")) == set(DOCUMENTS[1:])
    checked = {"bash", "python", "toml"}
    for path in DOCUMENTS:
        langs = {lang for lang, _, _ in readme_blocks(path.read_text())}
        # a fence's language says whether it runs: "text" (or none) for output and signatures
        assert langs <= checked | {"text", ""}, f"{path.name}: unchecked block language(s) {langs}"


def test_the_readme_has_the_examples_this_test_runs():
    kinds = {e.kind for e in README_EXAMPLES}
    assert kinds == {"bash", "python", "toml"}
    verbs = {
        split_command(e.text)[0][1]
        for e in README_EXAMPLES
        if e.kind == "bash" and e.text.startswith("aigvqa ")
    }
    from aigvqa.pipeline.cli import VERBS

    assert set(VERBS) <= verbs  # every verb has an example
    runnable = [e for e in README_EXAMPLES if e.kind == "bash" and skip_reason(e) is None]
    assert {split_command(e.text)[0][1] for e in runnable if e.text.startswith("aigvqa ")} == set(
        VERBS
    )


@pytest.mark.slow  # the module's demo and every example: about a minute on an idle 2-core machine
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example_runs_as_written(example: Example, workdir: Path, capfd, monkeypatch):
    reason = skip_reason(example)
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(workdir)
    if example.kind == "bash":
        for argv in split_command(example.text):
            run_cli(argv, workdir, capfd)
    elif example.kind == "python":
        code = compile(example.text, f"{example.document}:{example.line}", "exec")
        exec(code, {"__name__": "__main__"})
        assert_no_noise(capfd.readouterr().err, f"{example.document}:{example.line}")
    else:
        check_toml(example.text)


def check_toml(text: str) -> None:
    config = tomllib.loads(text)
    if "head" in config:  # a head config: it builds
        from aigvqa.pipeline.training_data import build_head

        path = Path("readme-head.toml")
        path.write_text(text)
        name, head = build_head(None, path)
        assert name == config["head"] and head.get_params()
    else:  # extractor tables: the file examples/ ships, or tables every extractor accepts
        shipped = tomllib.loads((REPO / "examples" / "extractors.toml").read_text())
        if config == shipped:
            return
        from aigvqa.extractors import create_extractor

        for name, options in config.items():
            create_extractor(name, **options)  # unknown extractor or option: ExtractorConfigError


def test_ci_installs_and_tests_with_the_readmes_commands():
    setup = [
        cmd
        for lang, body, start in readme_blocks(README.read_text())
        if lang == "bash"
        for cmd, _ in bash_commands(body, start)
    ][:2]
    install, test = setup
    assert install.startswith("pip install") and test == "python -m pytest"
    ci = (REPO / ".ci" / "run").read_text()
    ci_lines = [
        line.strip()
        for line in ci.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    ci_installs = [shlex.split(line) for line in ci_lines if " pip install " in f" {line} "]
    for step in install.split(" && "):
        if step.startswith("pip install"):
            # the same packages and pins (pip's -q aside), through the same interpreter's pip
            wanted = [w for w in shlex.split(step)[2:] if w != "-q"]
            assert any(
                [w for w in argv[argv.index("install") + 1 :] if w != "-q"] == wanted
                for argv in ci_installs
            ), step
    assert ci_lines[-1] == test  # the README's test command, last: its status is CI's


def test_the_test_extra_declares_what_the_readme_snippets_import():
    import ast

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = " ".join(
        pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["test"]
    )
    for lang, body, _ in (b for path in DOCUMENTS for b in readme_blocks(path.read_text())):
        if lang != "python":
            continue
        for node in ast.walk(ast.parse(body)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top != "aigvqa" and top not in sys.stdlib_module_names:
                    assert top in declared, (
                        f"README imports {top}, which pyproject does not declare"
                    )
