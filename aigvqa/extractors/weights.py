"""Weight resolution and loading: offline, explicit, never silently random.

Resolution order for an extractor ``name`` (``resolve_weights``):

1. the explicit ``weights=`` option: a file, or a folder holding one of the expected
   file names (a folder-format extractor, e.g. an HF CLIPModel, takes the folder itself).
   An explicit path that does not exist is an error at once: we never fall through to
   other weights than the ones the user named.
2. ``$AIGVQA_WEIGHTS/<name>/<expected file name>`` (``<name>`` is the extractor name,
   e.g. ``$AIGVQA_WEIGHTS/slowfast/SLOWFAST_8x8_R50.pyth``). Each family documents its
   expected file names in its module docstring and passes them as ``filenames``.
3. the library's own offline cache, given by the family as ``cache_candidates``
   (``hf_cache_candidate`` for the Hugging Face hub cache, read with offline semantics:
   nothing is downloaded; ``torch_hub_candidate`` for ``torch.hub.get_dir()/checkpoints``).
4. otherwise ``WeightsNotFoundError`` naming every place searched and the exact file to put
   where.

Loading: ``load_state_dict_file`` reads safetensors or ``torch.load(weights_only=True)``
and unwraps the usual containers (``state_dict``, ``model_state`` of pytorchvideo .pyth,
``model``, ``module.`` prefixes); ``load_state_dict_strict`` refuses any key or shape
mismatch with ``CheckpointMismatchError``. The weights' identity recorded in the cache is
``weights_identity(path)`` = ``"sha256:<hex>"`` of the file (of a folder: of its files'
names and hashes), or ``RANDOM_INIT`` after ``announce_random_init``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError, in_words
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.torchscript import (  # noqa: F401  (its home before torchscript.py)
    read_torchscript_state_dict,
)

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "AIGVQA_WEIGHTS"
"""Environment variable naming a folder with one sub-folder of weights per extractor."""

STATE_DICT_CONTAINER_KEYS = ("state_dict", "model_state", "model", "module", "net")
"""Keys under which checkpoints commonly nest the actual state dict (first match wins)."""


@dataclass(frozen=True)
class Candidate:
    """One place a checkpoint may be: ``where`` is shown to users, ``path`` may be None
    when the place cannot even be formed (e.g. an environment variable is unset)."""

    where: str
    path: Path | None

    def exists(self) -> bool:
        return self.path is not None and self.path.exists()


# -- places ----------------------------------------------------------------------------
def weights_root() -> Path | None:
    """``$AIGVQA_WEIGHTS`` as a Path, or None when unset/empty."""
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(value).expanduser() if value else None


def hf_cache_candidate(repo_id: str, filename: str, revision: str | None = None) -> Candidate:
    """A file in the Hugging Face hub cache, looked up offline (no network access).

    Uses ``huggingface_hub.try_to_load_from_cache``, which only reads the local cache
    (``$HF_HUB_CACHE`` / ``$HF_HOME/hub``), the same lookup ``HF_HUB_OFFLINE=1`` does.
    """
    repo_id = repo_id.strip("/")
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return Candidate(
            f"Hugging Face hub cache: {repo_id}/{filename} (huggingface_hub not installed)", None
        )
    where = f"Hugging Face hub cache ({constants.HF_HUB_CACHE}): repo {repo_id}, file {filename}"
    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return Candidate(where, Path(found) if isinstance(found, str) else None)


def torch_hub_candidate(filename: str) -> Candidate:
    """``torch.hub.get_dir()/checkpoints/<filename>``, where torch hub caches downloads."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return Candidate(f"torch hub checkpoints ({path.parent})", path)


# -- resolution ------------------------------------------------------------------------
def _file_in_folder(folder: Path, filenames: Sequence[str]) -> Path | None:
    for filename in filenames:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def resolve_weights(
    name: str,
    explicit: str | os.PathLike | None = None,
    *,
    filenames: Sequence[str] = (),
    cache_candidates: Iterable[Candidate] = (),
    folder: bool = False,
    how_to_get: str = "",
    env_folders: Sequence[str] | None = None,
) -> Path:
    """Find the checkpoint of extractor ``name``; see the module docstring for the order.

    ``filenames``: accepted file names inside a folder (explicit folder or
    ``$AIGVQA_WEIGHTS/<name>``), best first; the first is the one users are told to use.
    ``folder=True``: the weights are a folder (HF ``save_pretrained`` layout); a folder
    counts when it holds one of ``filenames`` (e.g. ``config.json``) and is returned itself.
    ``how_to_get``: one line on where the real checkpoint comes from, added to the error.
    ``env_folders``: sub-folders of ``$AIGVQA_WEIGHTS`` searched in order (default
    ``(name,)``); clip-text also searches ``clip-frames`` because both use one checkpoint.
    """
    searched: list[str] = []
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if path.is_file() and not folder:
            return path
        if path.is_dir():
            found = _file_in_folder(path, filenames) if filenames else None
            if found is not None:
                return path if folder else found
            if folder and not filenames:
                return path
            searched.append(f"explicit folder {path} (has none of: {', '.join(filenames)})")
        elif path.is_file():  # a file given to a folder-format extractor
            searched.append(f"explicit path {path} (a file; {name} needs a folder)")
        else:
            searched.append(f"explicit path {path} (does not exist)")
        raise WeightsNotFoundError(
            _not_found_message(name, searched, filenames, folder, how_to_get, explicit=True)
        )

    root = weights_root()
    for sub in env_folders or (name,):
        if root is None:
            unset = "is not set" if _SEARCHER.get() is None else "is not set in its environment"
            searched.append(f"${WEIGHTS_ENV}/{sub}/ (${WEIGHTS_ENV} {unset})")
            continue
        env_dir = root / sub
        found = _file_in_folder(env_dir, filenames) if filenames else None
        if found is not None:
            return env_dir if folder else found
        expected = "{" + ", ".join(filenames) + "}" if filenames else "(the checkpoint folder)"
        searched.append(f"{env_dir}/{expected}")

    for candidate in cache_candidates:
        if candidate.exists():
            if folder or candidate.path.is_file():
                return candidate.path
        searched.append(
            candidate.where + ("" if candidate.path is None else f" -> {candidate.path}")
        )

    raise WeightsNotFoundError(_not_found_message(name, searched, filenames, folder, how_to_get))


_SEARCHER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aigvqa_weights_searcher", default=None
)


def resolve_hf_folder(
    name: str,
    explicit: str | os.PathLike | None,
    repo_id: str,
    *,
    how_to_get: str,
    env_folders: Sequence[str] | None = None,
) -> Path:
    """A transformers ``save_pretrained`` folder (one holding ``config.json``) for extractor
    ``name``: the explicit path, ``$AIGVQA_WEIGHTS/<name>/``, then the Hugging Face hub
    cache's snapshot of ``repo_id`` (the folder, not its config file)."""
    snapshot = hf_cache_candidate(repo_id, "config.json")
    folder = Candidate(snapshot.where, snapshot.path.parent if snapshot.path is not None else None)
    return resolve_weights(
        name,
        explicit,
        filenames=("config.json",),
        folder=True,
        cache_candidates=[folder],
        how_to_get=how_to_get,
        env_folders=env_folders,
    )


@contextlib.contextmanager
def searching_on(who: str):
    """Weights looked for inside the block are looked for by ``who`` (e.g. "Dask worker
    tcp://10.0.0.5:4321 on host gpu7"), in its own environment and file system: a
    WeightsNotFoundError says so, rather than reading as if about the caller's shell."""
    token = _SEARCHER.set(who)
    try:
        yield
    finally:
        _SEARCHER.reset(token)


def _not_found_message(
    name: str,
    searched: list[str],
    filenames: Sequence[str],
    folder: bool,
    how_to_get: str,
    explicit: bool = False,
) -> str:
    who = _SEARCHER.get()
    target = filenames[0] if filenames else "<checkpoint>"
    put = (
        f"${WEIGHTS_ENV}/{name}/ (a save_pretrained folder with {target})"
        if folder
        else f"${WEIGHTS_ENV}/{name}/{target}"
    )
    if who is None:
        lines = [f"no weights found for extractor {name!r}. Searched:"]
    else:
        lines = [
            f"no weights found for extractor {name!r} by {who}, which looks in its own "
            "environment and file system, not the client's. Searched there:"
        ]
    lines += [f"  - {place}" for place in searched]
    if explicit:
        lines.append(
            "Fix: pass weights=<path> pointing at an existing "
            f"{'folder' if folder else 'checkpoint file'}"
            + (" that the workers can read." if who else ".")
        )
    elif who is None:
        lines.append(
            f"Fix: put the checkpoint at {put}, or pass weights=<path>"
            f" (random weights only for tests/benchmarks: random_init=True)."
        )
    else:
        lines.append(
            f"Fix: set ${WEIGHTS_ENV} in the environment the workers start with and put the "
            f"checkpoint at {put} on storage they see, or pass weights=<path> with a path the "
            "workers can read (random weights only for tests/benchmarks: random_init=True)."
        )
    if how_to_get:
        lines.append(how_to_get)
    return "\n".join(lines)


# -- identity --------------------------------------------------------------------------
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (streamed), or of a folder: of its files' relative names and
    hashes, sorted. Cached per process by (path, mtime, size)."""
    path = Path(path).resolve()
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(
            p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
        ):
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(sha256_of(file).encode())
        return digest.hexdigest()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    cached = _SHA_CACHE.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cached = _SHA_CACHE[key] = digest.hexdigest()
    return cached


def weights_identity(path: str | os.PathLike) -> str:
    """What the cache stores as the weights' identity: ``"sha256:<hex>"``."""
    return f"sha256:{sha256_of(path)}"


_ANNOUNCE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aigvqa_announce_random_init", default=True
)


@contextlib.contextmanager
def random_init_said_elsewhere():
    """Models loaded inside the block do not print the RANDOM-INIT banner: whoever runs
    them said it already (a stage-one run says it once per extractor on the client; its
    Dask workers, which would say it once per worker and model, stay quiet). The
    RANDOM_INIT identity, which the cache stamps, is returned all the same."""
    token = _ANNOUNCE.set(False)
    try:
        yield
    finally:
        _ANNOUNCE.reset(token)


def announce_random_init(name: str) -> str:
    """Say loudly (log + stderr) that ``name`` runs on random weights; returns RANDOM_INIT
    (quiet inside ``random_init_said_elsewhere``)."""
    if not _ANNOUNCE.get():
        return RANDOM_INIT
    message = (
        f"*** {RANDOM_INIT}: extractor {name!r} uses RANDOMLY INITIALISED weights "
        "(random_init=True). Its features are meaningless except for tests and "
        f"benchmarks; the cache stamps them {RANDOM_INIT}. ***"
    )
    message = in_words(message)  # "--random-init" when said by the CLI
    # stderr always (a worker may have no logging configured); the log only when it has a
    # handler of its own, so the banner is not printed twice by logging's last resort.
    print(message, file=sys.stderr, flush=True)
    if logger.hasHandlers():
        logger.warning(message)
    return RANDOM_INIT


def build_with_weights(name: str, build, path: str | os.PathLike | None):
    """``build()`` a model and give it weights: the checkpoint ``path`` (found by the
    family's ``resolve_weights``) loaded strictly, or, with ``path=None`` (asked for by
    ``random_init``), seeded random ones, announced.

    Returns ``(model, weights identity)``. For families whose checkpoint is a plain state
    dict of the built module (pytorchvideo .pyth, torchvision .pth).
    """
    if path is None:
        with random_init_context():
            model = build()
        return model, announce_random_init(name)
    model = build()
    load_state_dict_strict(model, load_state_dict_file(path), path)
    return model, weights_identity(path)


@contextlib.contextmanager
def random_init_context(seed: int = 0):
    """Build random-init models inside this: torch's global RNG is seeded with ``seed``
    and restored afterwards, so every worker process gets the same random weights (and
    the same RANDOM-INIT features) without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# -- loading ---------------------------------------------------------------------------
def load_state_dict_file(
    path: str | os.PathLike,
    *,
    container_keys: Sequence[str] = STATE_DICT_CONTAINER_KEYS,
    strip_prefixes: Sequence[str] = ("module.",),
) -> dict[str, Any]:
    """Read a checkpoint file into a flat ``{key: tensor}`` state dict (on CPU).

    ``.safetensors`` via safetensors; anything else via ``torch.load(weights_only=True)``
    (no pickled code runs). Nested containers (``{"model_state": {...}}`` of pytorchvideo,
    ``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped, and a prefix shared by
    every key (``module.`` from DataParallel) is stripped.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types; re-raise with the file named
            raise CheckpointMismatchError(
                f"cannot read checkpoint {path} with torch.load(weights_only=True): {exc}. "
                "Fix: save it as a plain state dict (torch.save(model.state_dict(), path)) "
                "or as .safetensors."
            ) from exc
    while isinstance(state, Mapping) and not _looks_like_state_dict(state):
        inner = next((state[k] for k in container_keys if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointMismatchError(
                f"checkpoint {path} holds no state dict (top-level keys: "
                f"{', '.join(map(str, list(state)[:10]))}); expected tensors or one of "
                f"{', '.join(container_keys)}"
            )
        state = inner
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(
            f"checkpoint {path} holds a {type(state).__name__}, not a state dict; "
            "Fix: save model.state_dict() instead of the model object"
        )
    state = dict(state)
    for prefix in strip_prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _looks_like_state_dict(mapping: Mapping) -> bool:
    import torch

    return bool(mapping) and all(isinstance(v, torch.Tensor) for v in mapping.values())


def load_state_dict_strict(model, state_dict: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Load ``state_dict`` into ``model``; any missing/unexpected key or shape mismatch is
    a ``CheckpointMismatchError`` naming ``source`` and listing the differences."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(getattr(state_dict[k], "shape", ())) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            format_checkpoint_mismatch(type(model).__name__, source, missing, unexpected, shapes)
        )
    model.load_state_dict(state_dict, strict=True)


def format_checkpoint_mismatch(
    model_name: str, source, missing, unexpected, shapes, limit: int = 12
) -> str:
    def listing(title: str, items: list[str]) -> list[str]:
        if not items:
            return []
        shown = [f"    {item}" for item in items[:limit]]
        if len(items) > limit:
            shown.append(f"    ... and {len(items) - limit} more")
        return [f"  {title} ({len(items)}):", *shown]

    lines = [f"checkpoint {source} does not match the {model_name} architecture:"]
    lines += listing("missing keys", missing)
    lines += listing("unexpected keys", unexpected)
    lines += listing("shape mismatches", shapes)
    lines.append(
        "Fix: use the checkpoint made for this architecture (check the extractor's arch / "
        "model name option) or pick the arch the checkpoint was trained with."
    )
    return "\n".join(lines)


def from_pretrained_checked(cls, folder: Path, unused_prefixes: Sequence[str] = ()):
    """``cls.from_pretrained(folder)`` offline (transformers), every tensor accounted for:
    a missing, unexpected or reshaped tensor is a ``CheckpointMismatchError``, except
    missing or unexpected ones under ``unused_prefixes`` (modules the caller never runs,
    such as BERT's pooler when features are the token states).
    transformers' own "Loading weights" bar and load report are off meanwhile: stage one
    shows one bar for loading every model, and a worker's stderr is no place for a second."""
    import torch
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # its load report: the check below says it in our words
    try:
        model, info = cls.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, output_loading_info=True
        )
    except (RuntimeError, ValueError) as exc:  # transformers refuses size mismatches
        raise CheckpointMismatchError(
            f"checkpoint folder {folder} does not match its {cls.__name__} config: {exc}. Fix: use "
            "the config.json saved with these weights."
        ) from exc
    except OSError as exc:
        raise WeightsNotFoundError(
            f"cannot load a {cls.__name__} from folder {folder}: {exc}. Fix: the folder must hold "
            f"config.json and model.safetensors (or pytorch_model.bin), as written by "
            f"{cls.__name__}.save_pretrained."
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar_was_on:
            hf_logging.enable_progress_bar()

    def used(keys):
        return sorted(k for k in keys or [] if not k.startswith(tuple(unused_prefixes)))

    missing = used(info.get("missing_keys"))
    unexpected = used(info.get("unexpected_keys"))
    shapes = [str(m) for m in info.get("mismatched_keys") or []]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            format_checkpoint_mismatch(cls.__name__, folder, missing, unexpected, shapes)
        )
    return model
