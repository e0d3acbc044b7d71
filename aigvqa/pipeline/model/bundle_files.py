"""A bundle folder's files (``pipeline.model.bundle``): the shape of bundle.json, and each
file's bytes, read once and checked against the sha256 recorded for it before any parser
sees them.

Integrity: ``save_bundle`` records the sha256 of every file it wrote in bundle.json;
``load_bundle`` reads each file once, checks its hash *before* any parser sees the bytes,
and refuses a missing, extra or changed file, a symbolic link, anything that resolves
outside the folder and a bundle.json of the wrong shape (``BundleError`` naming the
file). LightGBM's text parser crashes the process on some edited model files (an
out-of-range child index: SIGSEGV), so a file must match its recorded hash before it is
parsed at all. What the hashes catch is damage and edits made without rewriting
bundle.json; a bundle from someone you do not trust is protected by the formats
(``bundle_state``: nothing in it can run code), not by the hashes, which its author can
recompute. The bundle folder itself may be a link (``model -> /models/v3``); its files may
not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aigvqa.errors import AigvqaError

BUNDLE_FORMAT = "aigvqa-bundle"
BUNDLE_VERSION = 3
"""3: ``digest`` holds the sha256 of bundle.json's own canonical content (``meta_digest``),
checked on load. 2: ``files`` holds the sha256 of every file, checked on load; checkpoint
paths reduced to file names. 2 is still read, with a warning that its bundle.json cannot
be checked (re-save it: retrain with this aigvqa); 1 (no checksums) is refused."""
DIGEST_FROM = 3  # the first format whose bundle.json must carry its digest
BUNDLE_JSON = "bundle.json"

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(AigvqaError, ValueError):
    """A model folder is missing, incomplete, or holds something that is not trusted."""


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _mapping_of(kind: type) -> Any:
    return lambda value: (
        isinstance(value, dict)
        and all(isinstance(k, str) and isinstance(v, kind) for k, v in value.items())
    )


_META_FIELDS: dict[str, tuple[Any, str]] = {
    "head": (lambda v: isinstance(v, str) and v != "", "a head name (string)"),
    "params": (lambda v: isinstance(v, dict), "an object of parameters"),
    "feature_names": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of strings"),
    "label_names": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of strings"),
    "provenance": (_mapping_of(dict), "an object {cache group: provenance object}"),
    "versions": (_mapping_of(str), "an object {package: version string}"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
    "state": (lambda v: isinstance(v, dict), "an object"),
    "files": (
        lambda v: _mapping_of(str)(v) and all(_SHA256.fullmatch(h) for h in v.values()),
        "an object {file name: sha256 hex digest}",
    ),
}
_STATE_FIELDS: dict[str, tuple[Any, str]] = {
    "kind": (lambda v: isinstance(v, str), "a string"),
    "class": (lambda v: isinstance(v, str), "a string"),
    "file": (lambda v: isinstance(v, str), "a file name (string)"),
}


def meta_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of bundle.json's content without its ``digest`` field, in a canonical form
    (sorted keys, no whitespace), so that re-indenting the file changes nothing and
    changing any value (swapped label names, another head parameter) does."""
    content = {k: v for k, v in meta.items() if k != "digest"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_digest(meta: Mapping[str, Any], meta_path: Path) -> None:
    """A format-3 bundle.json must match its digest. A format-2 one has none: it is read,
    with a warning -- an editor able to drop the digest and the version could as well
    recompute the digest, so refusing old bundles would protect nothing more."""
    if meta["format_version"] < DIGEST_FROM:
        warnings.warn(
            f"{meta_path}: saved by an older aigvqa, without a digest of bundle.json, so edits "
            "to it (label names, parameters) cannot be detected; retrain with this aigvqa to "
            "get one",
            UserWarning,
            stacklevel=4,
        )
        return
    digest = meta.get("digest")
    if not isinstance(digest, str) or digest != meta_digest(meta):
        raise BundleError(
            f"{meta_path}: bundle.json was edited after it was saved (its content does not match "
            "the digest recorded in it); refusing to load it: restore the original bundle.json, "
            "or retrain"
        )


def _check_fields(
    obj: Mapping[str, Any], fields: Mapping[str, tuple[Any, str]], where: str, meta_path: Path
) -> None:
    for key, (ok, what) in fields.items():
        if key not in obj:
            raise BundleError(
                f"{meta_path}: '{where}{key}' is missing; the bundle is damaged, retrain it"
            )
        if not ok(obj[key]):
            raise BundleError(
                f"{meta_path}: '{where}{key}' must be {what}, got {type(obj[key]).__name__} "
                f"{_short(obj[key])}; the bundle is damaged, retrain it"
            )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_meta(meta: Any, meta_path: Path) -> None:
    """bundle.json has the shape ``save_bundle`` writes: refuse anything else by key."""
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path}: not an aigvqa bundle description")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(
            f"{meta_path}: 'format_version' must be an integer, got {_short(version)}"
        )
    if version > BUNDLE_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format {version} is newer than this aigvqa reads "
            f"({BUNDLE_VERSION}); upgrade aigvqa"
        )
    if version < 2:
        raise BundleError(
            f"{meta_path}: bundle format {version} was written before bundles recorded the sha256 "
            "of their files, so it cannot be checked before loading; retrain it with this aigvqa "
            "(`aigvqa train ... --out` a new folder)"
        )
    _check_fields(meta, _META_FIELDS, "", meta_path)
    state = meta["state"]
    _check_fields(state, _STATE_FIELDS, "state.", meta_path)
    if state["kind"] == "torch" and not isinstance(state.get("config"), dict):
        raise BundleError(
            f"{meta_path}: 'state.config' must be an object; the bundle is damaged, retrain it"
        )
    parts = state.get("parts", [])
    if not isinstance(parts, list):
        raise BundleError(
            f"{meta_path}: 'state.parts' must be a list; the bundle is damaged, retrain it"
        )
    for i, part in enumerate(parts):
        if not isinstance(part, dict):
            raise BundleError(f"{meta_path}: 'state.parts[{i}]' must be an object")
        _check_fields(
            part, {k: _STATE_FIELDS[k] for k in ("kind", "file")}, f"state.parts[{i}].", meta_path
        )
        if part["kind"] == "torch":
            _check_fields(part, {"class": _STATE_FIELDS["class"]}, f"state.parts[{i}].", meta_path)
            if not isinstance(part.get("config"), dict):
                raise BundleError(f"{meta_path}: 'state.parts[{i}].config' must be an object")
    for name in meta["files"]:
        _plain_name(name, meta_path)
    for file in [state["file"], *(p["file"] for p in parts)]:
        _plain_name(file, meta_path)
        if file not in meta["files"]:
            raise BundleError(
                f"{meta_path}: the state names file {file!r}, which has no recorded sha256 in "
                "'files'; the bundle is damaged, retrain it"
            )
    _check_digest(meta, meta_path)  # last: a wrong type is named as such, an edit as an edit


def _plain_name(name: str, meta_path: Path) -> str:
    """A file directly inside the bundle: names with path parts would escape the folder."""
    if (
        not name
        or name in (".", "..", BUNDLE_JSON)
        or Path(name).name != name
        or "\\" in name
        or "\0" in name
    ):
        raise BundleError(
            f"{meta_path}: file name {name!r} points outside the bundle (or at bundle.json)"
        )
    return name


def _read_member(root: Path, name: str, shown: Path) -> bytes:
    """The bytes of ``root/name``: a regular file, not a link, not resolving elsewhere.

    The type is checked with ``lstat`` *before* opening: opening a FIFO put in place of a
    file would block until something writes to it (load_bundle would hang), and a device
    could be read forever. The open itself (O_NOFOLLOW | O_NONBLOCK) cannot block or
    follow a link swapped in after the check, and ``fstat`` confirms what was opened."""
    file = root / name
    where = shown / name
    try:
        mode = os.lstat(file).st_mode
    except FileNotFoundError:
        raise BundleError(
            f"{where}: bundle file is missing; the bundle is incomplete, retrain it"
        ) from None
    except OSError as err:
        raise BundleError(f"{where}: cannot be read ({err.strerror})") from err
    if stat.S_ISLNK(mode):
        raise BundleError(
            f"{where}: is a symbolic link (to {os.readlink(file)}); bundle files must be plain "
            "files"
        )
    if not stat.S_ISREG(mode):
        raise BundleError(
            f"{where}: is not a regular file (a named pipe, a device or a folder); bundle files "
            "are plain files: restore the bundle, or retrain it"
        )
    if file.resolve().parent != root:
        raise BundleError(f"{where}: resolves outside the bundle folder ({file.resolve()})")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(file, flags)
    except OSError as err:
        raise BundleError(f"{where}: cannot be opened ({err.strerror})") from err
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BundleError(f"{where}: is not a regular file")
        return fh.read()


def _verified_files(root: Path, shown: Path, files: Mapping[str, str]) -> dict[str, bytes]:
    """{name: bytes} of every recorded file, after checking the folder holds exactly them
    and each matches its sha256. Nothing is parsed before this returns."""
    present = set(os.listdir(root)) - {BUNDLE_JSON}
    extra = sorted(present - set(files))
    if extra:
        raise BundleError(
            f"{shown}: holds {', '.join(extra)}, which bundle.json does not list; a bundle folder "
            "holds only what `aigvqa train` wrote (remove the extra files, or retrain into a new "
            "folder)"
        )
    blobs = {}
    for name, expected in files.items():
        data = _read_member(root, name, shown)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise BundleError(
                f"{shown / name}: sha256 {actual[:16]}... does not match the {expected[:16]}... "
                f"recorded in {BUNDLE_JSON}: the file was changed or damaged after the bundle was "
                "saved; refusing to parse it (retrain, or restore the original file)"
            )
        blobs[name] = data
    return blobs
