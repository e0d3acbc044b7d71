"""The extractor registry: names, one-call construction, complete and validated configs."""

from __future__ import annotations

import json

import pytest
import torch

from aigvqa.errors import AigvqaError
from aigvqa.extractors import (
    ExtractorConfigError,
    create_extractor,
    get_extractor_class,
    list_extractors,
    register_extractor,
    registry,
)
from aigvqa.extractors.base import Extractor
from aigvqa.extractors.registry import ConfiguredExtractor, TorchExtractor


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry.EXTRACTORS, "_entries", dict(registry.EXTRACTORS._entries))


def test_importing_the_package_registers_every_family():
    names = list_extractors()
    for name in (
        "clip-frames",
        "clip-text",
        "handcrafted",
        "slowfast",
        "swin-fragments",
        "vit-keyframes",
        "convnext-frames",
    ):
        assert name in names
    assert names == sorted(names)
    assert list_extractors("clip-*") == ["clip-frames", "clip-text"]
    assert list_extractors("nothing-*") == []


def test_unknown_name_lists_the_available_extractors():
    with pytest.raises(AigvqaError) as info:
        create_extractor("clip-frame")
    message = str(info.value)
    assert "unknown extractor 'clip-frame'" in message
    for name in list_extractors():
        assert name in message
    assert "did you mean 'clip-frames'" in message  # the close match is suggested


def test_unknown_option_is_refused_with_the_accepted_ones():
    with pytest.raises(ExtractorConfigError) as info:
        create_extractor("clip-frames", n_frame=8)
    message = str(info.value)
    assert "n_frame" in message and "n_frames" in message and "random_init" in message


def test_config_is_complete_json_and_overridable():
    extractor = create_extractor("clip-frames", n_frames=4)
    config = extractor.config()
    assert config["n_frames"] == 4
    for key in ("weights", "random_init", "device", "batch_size", "dtype", "channels_last", "arch"):
        assert key in config
    assert config["arch"] == "ViT-B-32" and config["random_init"] is False
    assert json.loads(json.dumps(config)) == config
    assert extractor.weights_identity is None  # construction builds nothing


def test_register_decorator_sets_the_name_and_refuses_clashes(scratch_registry):
    @register_extractor("toy-extractor")
    class Toy(ConfiguredExtractor):
        defaults = {"gain": 2.0}

        def output_dims(self):
            return {"values": 1}

        def load(self, device="cpu"):
            self.weights_identity = "none: toy"

    assert Toy.name == "toy-extractor" and get_extractor_class("toy-extractor") is Toy
    toy = create_extractor("toy-extractor", gain=3.0)
    assert toy.config() == {"batch_size": 16, "gain": 3.0}

    with pytest.raises(ValueError, match="already registered"):

        @register_extractor("toy-extractor")
        class Other(ConfiguredExtractor):
            pass

    with pytest.raises(TypeError):
        register_extractor("not-an-extractor")(dict)
    assert issubclass(Toy, Extractor)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"dtype": "int8"}, "dtype"),
        ({"batch_size": 0}, "batch_size"),
        ({"random_init": "yes"}, "random_init"),
        ({"random_init": True, "weights": "x.bin"}, "contradict"),
        ({"weights": object()}, "JSON"),
        ({"backend": "tf"}, "backend"),
        ({"arch": "ViT-Z-99"}, "open_clip arch"),
    ],
)
def test_invalid_values_are_refused(config, fragment):
    with pytest.raises(ExtractorConfigError, match=fragment):
        create_extractor("clip-frames", **config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ExtractorConfigError, match="CUDA is not available"):
        create_extractor("clip-frames", random_init=True, device="cuda").load()


def test_torch_base_runtime_helpers_on_cpu(scratch_registry):
    import numpy as np

    @register_extractor("toy-torch")
    class ToyTorch(TorchExtractor):
        def output_dims(self):
            return {"values": 3}

        def load(self, device=None):
            self._set_device(device)
            self.module_ = self.prepare_module(torch.nn.Linear(3, 3))
            self.weights_identity = "none: toy"

    toy = create_extractor("toy-torch")
    toy.load()
    assert toy.device_ == "cpu" and not toy.on_cuda
    assert not toy.module_.training and not any(p.requires_grad for p in toy.module_.parameters())
    images = np.full((2, 4, 5, 3), 255, dtype=np.uint8)
    tensor = toy.images_to_tensor(images, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert tuple(tensor.shape) == (2, 3, 4, 5) and tensor.is_contiguous()
    assert torch.allclose(tensor[:, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    clips = toy.images_to_tensor(np.zeros((1, 6, 4, 5, 3), np.uint8), (0, 0, 0), (1, 1, 1))
    assert tuple(clips.shape) == (1, 3, 6, 4, 5)
    with toy.autocast():  # a no-op on CPU: fp32 stays fp32
        assert toy.module_(torch.ones(1, 3)).dtype == torch.float32


def test_channels_last_format_fits_2d_and_3d_nets():
    import torch

    from aigvqa.extractors.registry import channels_last_format

    net2d = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    net3d = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.Linear(4, 2))
    assert channels_last_format(net2d) is torch.channels_last
    assert channels_last_format(net3d) is torch.channels_last_3d
    # the chosen format converts the weights without the rank error torch raises otherwise
    converted = net3d.to(memory_format=channels_last_format(net3d))
    assert converted[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    with pytest.raises(RuntimeError):
        net3d.to(memory_format=torch.channels_last)


# -- the one Registry class both families use -------------------------------------------------


def test_both_families_are_instances_of_one_registry_class():
    from aigvqa.heads.registry import HEADS
    from aigvqa.registry import Registry

    assert type(HEADS) is Registry and type(registry.EXTRACTORS) is Registry
    assert get_extractor_class("clip-frames").name == "clip-frames"
    from aigvqa.heads.registry import get_head_class

    assert get_head_class("svr").name == "svr"  # heads get their name set the same way


def test_generic_registry_rules(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "toy_base.py").write_text(
        "from aigvqa.errors import AigvqaError\nfrom aigvqa.registry import Registry\n\n"
        "class Missing(AigvqaError, ValueError):\n    pass\n\n"
        "TOYS = Registry('toy', error=Missing, builtins={'lazy-one': 'toy_plugins:Lazy'})\n"
    )
    (tmp_path / "toy_plugins.py").write_text(
        "from toy_base import TOYS\n\n@TOYS.register('lazy-one')\nclass Lazy:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in ("toy_base", "toy_plugins"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    toy_base = importlib.import_module("toy_base")
    toys, Missing = toy_base.TOYS, toy_base.Missing

    @toys.register("Alpha")
    class Alpha:
        pass

    class Child(Alpha):  # inherits the class attribute, not the registration
        pass

    assert Alpha.name == "Alpha" and toys.name_of(Alpha) == "Alpha"
    with pytest.raises(Missing, match="not a registered toy"):
        toys.name_of(Child)
    # built-ins are listed before their module is imported; patterns are case-sensitive
    assert toys.names() == ["Alpha", "lazy-one"] and "toy_plugins" not in sys.modules
    assert toys.names("alpha") == [] and toys.names("A*") == ["Alpha"] and "lazy-one" in toys
    assert (
        toys.get("lazy-one").__module__ == "toy_plugins"
        and toys.name_of(toys.get("lazy-one")) == "lazy-one"
    )
    with pytest.raises(ValueError, match="'Alpha' is already registered by .*Alpha"):
        toys.register("Alpha")(Child)
    with pytest.raises(ValueError, match="already registered by toy_plugins:Lazy"):

        @toys.register("lazy-one")
        class Impostor:
            pass

    with pytest.raises(
        Missing,
        match=r"unknown toy 'alpah' \(did you mean 'Alpha'\?\); available toys: Alpha, lazy-one",
    ):
        toys.create("alpah")
    with pytest.raises(Missing) as caught:
        toys.get("zzz")
    assert "did you mean" not in str(caught.value)


def test_a_builtin_whose_module_does_not_register_it_is_a_packaging_error(tmp_path, monkeypatch):
    from aigvqa.registry import Registry

    (tmp_path / "toy_silent.py").write_text("class Quiet:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    toys = Registry("toy", builtins={"quiet": "toy_silent:Quiet"})
    with pytest.raises(RuntimeError, match="toy_silent did not register the built-in toy 'quiet'"):
        toys.get("quiet")


def test_listing_heads_and_building_a_classical_one_never_import_torch():
    """Deep heads are registered lazily: `aigvqa.list_heads()` names them without importing
    their modules, and a classical head needs no torch (issue 14)."""
    import subprocess
    import sys

    code = (
        "import sys, aigvqa\n"
        "names = aigvqa.list_heads()\n"
        "aigvqa.create_head('svr'); aigvqa.create_head('stack', estimators=[('s', 'svr')])\n"
        "print(','.join(names)); print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(out[0].split(",")) >= {
        "ugvq",
        "msavqa",
        "branchsum",
        "mlp",
        "svr",
        "elasticnet",
        "lightgbm",
        "stack",
    }
    assert out[1] == "False"
