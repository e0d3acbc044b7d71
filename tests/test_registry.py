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
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_importing_the_package_registers_every_family():
    names = list_extractors()
    for name in ("clip-frames", "clip-text", "handcrafted", "slowfast", "swin-fragments",
                 "vit-keyframes", "convnext-frames"):
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
    assert "clip-frames" in message.split("Available")[0]  # the close match is suggested


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
