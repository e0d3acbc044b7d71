"""Weight resolution order, identity hashes, strict loading and the random-init stamp."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings

import pytest
import torch

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.weights import (
    Candidate,
    announce_random_init,
    hf_cache_candidate,
    load_state_dict_file,
    load_state_dict_strict,
    random_init_context,
    read_torchscript_state_dict,
    resolve_weights,
    sha256_of,
    torch_hub_candidate,
    weights_identity,
)

FILES = ("model.pyth", "fallback.bin")


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("AIGVQA_WEIGHTS", raising=False)


def touch(path, content=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# -- resolution ---------------------------------------------------------------------------
def test_explicit_file_and_folder(tmp_path):
    file = touch(tmp_path / "any-name.ckpt")
    assert resolve_weights("toy", str(file), filenames=FILES) == file
    touch(tmp_path / "folder" / "fallback.bin")
    assert (
        resolve_weights("toy", tmp_path / "folder", filenames=FILES)
        == tmp_path / "folder" / "fallback.bin"
    )
    touch(tmp_path / "folder" / "model.pyth")  # the first listed name wins
    assert (
        resolve_weights("toy", tmp_path / "folder", filenames=FILES)
        == tmp_path / "folder" / "model.pyth"
    )


def test_explicit_path_wins_and_never_falls_through(tmp_path, monkeypatch):
    touch(tmp_path / "env" / "toy" / "model.pyth")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "env"))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve_weights("toy", tmp_path / "missing.pyth", filenames=FILES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="has none of: model.pyth, fallback.bin"):
        resolve_weights("toy", tmp_path / "empty", filenames=FILES)


def test_aigvqa_weights_folder_then_library_cache(tmp_path, monkeypatch):
    cached = touch(tmp_path / "hub" / "model.pyth")
    cache = [Candidate("absent cache", None), Candidate("torch hub", cached)]
    assert resolve_weights("toy", filenames=FILES, cache_candidates=cache) == cached
    env_file = touch(tmp_path / "env" / "toy" / "fallback.bin")
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "env"))
    assert resolve_weights("toy", filenames=FILES, cache_candidates=cache) == env_file


def test_env_folders_are_searched_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path))
    shared = touch(tmp_path / "clip-frames" / "model.pyth")
    assert (
        resolve_weights("clip-text", filenames=FILES, env_folders=("clip-text", "clip-frames"))
        == shared
    )
    own = touch(tmp_path / "clip-text" / "model.pyth")
    assert (
        resolve_weights("clip-text", filenames=FILES, env_folders=("clip-text", "clip-frames"))
        == own
    )


def test_folder_format_weights_return_the_folder(tmp_path, monkeypatch):
    touch(tmp_path / "hf" / "config.json", b"{}")
    assert (
        resolve_weights("toy", tmp_path / "hf", filenames=("config.json",), folder=True)
        == tmp_path / "hf"
    )
    with pytest.raises(WeightsNotFoundError, match="needs a folder"):
        resolve_weights(
            "toy", tmp_path / "hf" / "config.json", filenames=("config.json",), folder=True
        )
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "env"))
    touch(tmp_path / "env" / "toy" / "config.json", b"{}")
    assert (
        resolve_weights("toy", filenames=("config.json",), folder=True) == tmp_path / "env" / "toy"
    )


def test_not_found_lists_every_place_and_the_file_to_put(tmp_path, monkeypatch):
    monkeypatch.setenv("AIGVQA_WEIGHTS", str(tmp_path / "env"))
    cache = [
        Candidate("torch hub checkpoints", tmp_path / "hub" / "model.pyth"),
        Candidate("Hugging Face hub cache: repo org/model", None),
    ]
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(
            "toy", filenames=FILES, cache_candidates=cache, how_to_get="Get it from the zoo."
        )
    message = str(info.value)
    assert str(tmp_path / "env" / "toy") in message
    assert str(tmp_path / "hub" / "model.pyth") in message
    assert "Hugging Face hub cache: repo org/model" in message
    assert "$AIGVQA_WEIGHTS/toy/model.pyth" in message and "Get it from the zoo." in message
    assert isinstance(info.value, FileNotFoundError)


def test_not_found_says_when_the_env_variable_is_unset():
    with pytest.raises(WeightsNotFoundError, match=r"\$AIGVQA_WEIGHTS is not set"):
        resolve_weights("toy", filenames=FILES)


def test_hf_cache_candidate_reads_the_local_cache_only(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert hf_cache_candidate("org/model", "model.safetensors").path is None
    repo = tmp_path / "models--org--model"
    touch(repo / "refs" / "main", b"abc123")
    file = touch(repo / "snapshots" / "abc123" / "model.safetensors")
    candidate = hf_cache_candidate("org/model", "model.safetensors")
    assert candidate.exists() and candidate.path == file
    assert "org/model" in candidate.where and "model.safetensors" in candidate.where


def test_torch_hub_candidate_points_into_the_hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        candidate = torch_hub_candidate("SLOWFAST_8x8_R50.pyth")
    finally:
        torch.hub.set_dir(previous)
    assert candidate.path == tmp_path / "checkpoints" / "SLOWFAST_8x8_R50.pyth"
    assert not candidate.exists()


# -- identity ------------------------------------------------------------------------------
def test_sha256_of_files_is_streamed_exact_and_refreshed_on_change(tmp_path):
    payload = os.urandom(3 * (1 << 20) + 17)  # several read blocks
    file = touch(tmp_path / "w.bin", payload)
    assert sha256_of(file) == hashlib.sha256(payload).hexdigest()
    assert weights_identity(file) == "sha256:" + hashlib.sha256(payload).hexdigest()
    touch(file, b"changed")
    assert sha256_of(file) == hashlib.sha256(b"changed").hexdigest()


def test_sha256_of_folders_covers_names_and_contents(tmp_path):
    touch(tmp_path / "a" / "config.json", b"{}")
    touch(tmp_path / "a" / "model.safetensors", b"weights")
    touch(tmp_path / "b" / "config.json", b"{}")
    touch(tmp_path / "b" / "model.safetensors", b"weights")
    assert sha256_of(tmp_path / "a") == sha256_of(tmp_path / "b")
    touch(tmp_path / "b" / "model.safetensors", b"weightz")
    assert sha256_of(tmp_path / "a") != sha256_of(tmp_path / "b")


# -- loading ---------------------------------------------------------------------------------
def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"model_state": s, "epoch": 3},  # pytorchvideo .pyth
        lambda s: {"state_dict": s, "arch": "x"},  # timm / lightning training checkpoints
        lambda s: {"module." + k: v for k, v in s.items()},  # DataParallel
    ],
)
def test_state_dict_files_are_unwrapped(tmp_path, wrap):
    state = small_model().state_dict()
    torch.save(wrap(state), tmp_path / "ckpt.pth")
    loaded = load_state_dict_file(tmp_path / "ckpt.pth")
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_safetensors_files_load(tmp_path):
    from safetensors.torch import save_file

    state = small_model().state_dict()
    save_file(state, tmp_path / "m.safetensors")
    loaded = load_state_dict_file(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_pickled_objects_are_not_executed(tmp_path):
    torch.save(small_model(), tmp_path / "whole-model.pt")  # a pickled module, not a state dict
    with pytest.raises(CheckpointMismatchError, match="weights_only=True"):
        load_state_dict_file(tmp_path / "whole-model.pt")


def test_strict_loading_lists_every_difference(tmp_path):
    reference = small_model().state_dict()
    model = small_model()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    load_state_dict_strict(model, reference, "ok.pth")
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)

    broken = dict(reference)
    del broken["0.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken["1.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_strict(small_model(), broken, tmp_path / "bad.pth")
    message = str(info.value)
    assert str(tmp_path / "bad.pth") in message
    assert "missing keys (1)" in message and "0.bias" in message
    assert "unexpected keys (1)" in message and "extra.weight" in message
    assert "1.weight: checkpoint (5,) vs model (4,)" in message


# -- random init ----------------------------------------------------------------------------
def test_random_init_is_announced_loudly(capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert announce_random_init("toy") == RANDOM_INIT
    assert "RANDOM-INIT" in capsys.readouterr().err
    assert any("RANDOM-INIT" in r.message and "toy" in r.message for r in caplog.records)


def test_random_init_context_is_seeded_and_restores_the_rng():
    torch.manual_seed(5)
    after = torch.rand(3)
    torch.manual_seed(5)
    with random_init_context():
        first = torch.nn.Linear(4, 4).weight.clone()
    assert torch.equal(torch.rand(3), after)
    with random_init_context():
        assert torch.equal(torch.nn.Linear(4, 4).weight, first)


# -- TorchScript archives: tensors read, code never run ----------------------------------------
class _Inner(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n))
        self.plain = torch.ones(n)  # a tensor attribute: not in state_dict()
        self.k = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w.sum() + self.plain.sum()


class _Outer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _Inner(2), _Inner(3)
        self.seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        self.lst = torch.nn.ModuleList([torch.nn.Linear(2, 2).half() for _ in range(2)])
        self.register_buffer("buf", torch.arange(3.0))
        self.register_buffer("ints", torch.arange(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.lst:
            x = m(x.half()).float()
        return self.seq(self.a(x) + self.b(x)) + self.buf.sum() + self.ints.sum()


class _Crafted(torch.nn.Module):
    """A module whose TorchScript __setstate__ runs on torch.jit.load."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("CRAFTED-CODE-RAN")
        self.weight = state[0]
        self.training = state[1]


def _script(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        torch.jit.script(module).save(str(path))
    return path


def test_torchscript_tensors_are_what_jit_load_gives_without_compiling_anything(
    tmp_path, monkeypatch
):
    path = _script(_Outer(), tmp_path / "outer.pt")
    trusted = torch.jit.load(str(path)).state_dict()

    def no_jit(*args, **kwargs):
        raise AssertionError("torch.jit.load must not be called")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    state = read_torchscript_state_dict(path)
    assert sorted(state) == sorted(trusted)
    for key, value in trusted.items():
        assert state[key].dtype == value.dtype
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_a_crafted_torchscript_setstate_never_runs(tmp_path, capfd):
    path = _script(_Crafted(), tmp_path / "crafted.pt")
    torch.jit.load(str(path))  # the payload is real: torch.jit.load runs it
    assert "CRAFTED-CODE-RAN" in capfd.readouterr().out
    with pytest.raises(CheckpointMismatchError, match="custom state") as err:
        read_torchscript_state_dict(path)
    assert str(path) in str(err.value) and "state_dict()" in str(err.value)
    assert "CRAFTED-CODE-RAN" not in capfd.readouterr().out


def test_a_torchscript_pickle_asking_for_other_globals_is_refused(tmp_path):
    import pickle
    import zipfile

    path = _script(_Inner(2), tmp_path / "inner.pt")
    patched = tmp_path / "patched.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(patched, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(os.system)  # a global that would run a command
            dst.writestr(item, data)
    with pytest.raises(CheckpointMismatchError, match="refusing to load posix.system"):
        read_torchscript_state_dict(patched)
