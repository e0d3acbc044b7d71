"""The extractor registry (timm-style) and the configured base classes every family uses.

A family module registers its extractors with a class decorator::

    @register_extractor("clip-frames")
    class ClipFrames(TorchExtractor):
        defaults = {"arch": "ViT-B-32", "n_frames": 16, ...}   # family-specific keys
        ...

and users build them with one call, ``create_extractor("clip-frames", arch="ViT-B-16")``.
Importing a family module registers it; ``aigvqa.extractors`` imports all of them, so
``list_extractors()`` sees every family. Family modules import their heavy libraries
(open_clip, transformers, timm, pytorchvideo) inside ``load`` so that listing and
configuring extractors stays cheap (the CLI and the Dask client never build models).

Config conventions (sklearn-like): ``__init__`` stores configuration only, with every
default filled in so ``config()`` is complete and JSON-serialisable; unknown keys are
refused at construction, not ignored. ``load(device)`` builds the model once; learned or
loaded state lives in attributes ending in ``_``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, ClassVar

from aigvqa.errors import AigvqaError
from aigvqa.extractors.base import Extractor
from aigvqa.registry import Registry


class ExtractorConfigError(AigvqaError, ValueError):
    """An extractor was asked for by an unknown name or with an unknown / invalid option."""


EXTRACTORS = Registry("extractor", error=ExtractorConfigError, base=Extractor)
"""The extractors' ``aigvqa.registry.Registry`` (the heads use the same class)."""
_REGISTRY = EXTRACTORS._entries  # the same dict: tests register throw-away extractors in it


def register_extractor(name: str):
    """Class decorator: register ``cls`` under ``name`` and set ``cls.name``.

    Registering a second class under a taken name is an error (two families would
    silently shadow each other otherwise); re-registering the same class is a no-op so
    module reloads in tests keep working.
    """
    return EXTRACTORS.register(name)


def list_extractors(pattern: str = "*") -> list[str]:
    """Registered extractor names matching a shell-style ``pattern``, sorted."""
    return EXTRACTORS.names(pattern)


def get_extractor_class(name: str) -> type[Extractor]:
    """The class registered under ``name``; unknown names get a "did you mean" hint and
    the list of what is available."""
    return EXTRACTORS.get(name)


def create_extractor(name: str, **config: Any) -> Extractor:
    """Build the extractor registered as ``name`` with ``config`` (not loaded yet).

    Call ``extractor.load(device)`` (or let ``runner.extract_video`` do it) to build the
    model. Raises ``ExtractorConfigError`` for unknown names or options.
    """
    return EXTRACTORS.create(name, **config)


class ConfiguredExtractor(Extractor):
    """Extractor whose configuration is ``defaults`` overridden by the caller's keywords.

    Subclasses set ``defaults`` (a dict of every accepted key with its default value);
    keys of base classes' ``defaults`` are inherited. ``validate_config`` may be
    overridden to check values (raise ``ExtractorConfigError``).
    """

    defaults: ClassVar[dict[str, Any]] = {"batch_size": 16}

    def __init__(self, **config: Any) -> None:
        allowed = self.all_defaults()
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise ExtractorConfigError(
                f"extractor {self.name!r} got unknown option(s) {', '.join(unknown)}; "
                f"accepted options: {', '.join(sorted(allowed))}"
            )
        full = {**allowed, **config}
        try:
            json.dumps(full)
        except TypeError as exc:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: options must be JSON-serialisable (str, number, "
                f"bool, list, dict; pass paths as str): {exc}"
            ) from None
        super().__init__(**full)
        self.validate_config()

    @classmethod
    def all_defaults(cls) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "defaults", None) or {})
        return merged

    def validate_config(self) -> None:
        batch_size = self._config.get("batch_size")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: batch_size must be a positive int, got {batch_size!r}"
            )

    def __getitem__(self, key: str) -> Any:
        return self._config[key]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(self._config.items()))
        return f"{type(self).__name__}({params})"


_AUTOCAST_DTYPES = ("bf16", "fp16", "fp32")


def channels_last_format(module):
    """The channels-last memory format that fits ``module``'s weights.

    torch's ``channels_last`` applies to 4-D weights only (a 3-D conv net such as SlowFast
    or Video Swin fails with "required rank 4 tensor"); 5-D weights need ``channels_last_3d``.
    """
    import torch

    has_5d = any(p.dim() == 5 for p in module.parameters())
    return torch.channels_last_3d if has_5d else torch.channels_last


class TorchExtractor(ConfiguredExtractor):
    """Base of the torch backbones: common options and the CUDA/CPU runtime.

    Common options:
      ``weights``        path to a checkpoint file or folder (str) or None -> see weights.py
      ``random_init``    build with random weights (tests / benchmarks only; stamped RANDOM-INIT)
      ``device``         "cpu" (default) or "cuda" / "cuda:N"; ``load(device)`` overrides it
      ``batch_size``     view items per forward pass
      ``dtype``          autocast dtype on CUDA: "bf16" (default), "fp16" or "fp32" (off).
                         CPU always runs fp32: CPU autocast is slow and changes features.
      ``channels_last``  use channels-last memory format for conv nets on CUDA

    Subclasses implement ``build_model()`` (returns the nn.Module with weights loaded and
    sets ``weights_identity``) and ``forward``; they call ``self.run_model`` style helpers
    below inside ``forward`` to get ``inference_mode`` + autocast.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "weights": None,
        "random_init": False,
        "device": "cpu",
        "batch_size": 16,
        "dtype": "bf16",
        "channels_last": True,
    }

    def validate_config(self) -> None:
        super().validate_config()
        if self._config["dtype"] not in _AUTOCAST_DTYPES:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: dtype must be one of {', '.join(_AUTOCAST_DTYPES)}, "
                f"got {self._config['dtype']!r}"
            )
        if not isinstance(self._config["random_init"], bool):
            raise ExtractorConfigError(
                f"extractor {self.name!r}: random_init must be True or False"
            )
        if self._config["random_init"] and self._config["weights"] is not None:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: weights={self._config['weights']!r} and "
                "random_init=True contradict each other; pass one of them"
            )

    # -- runtime helpers ------------------------------------------------------------
    @property
    def device_(self) -> str:
        """The device the model lives on (after ``load``)."""
        return getattr(self, "_device", self._config["device"])

    def _set_device(self, device: str | None) -> str:
        import torch

        device = str(device or self._config["device"])
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ExtractorConfigError(
                f"extractor {self.name!r}: device {device!r} requested but CUDA is not "
                "available in this process; use device='cpu'"
            )
        self._device = device
        return device

    @property
    def on_cuda(self) -> bool:
        return self.device_.startswith("cuda")

    def autocast(self):
        """Autocast context on CUDA (bf16/fp16 per ``dtype``); a no-op on CPU."""
        import torch

        if not self.on_cuda or self._config["dtype"] == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self._config["dtype"] == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def prepare_module(self, module):
        """Move a built module to the device, eval mode, frozen; channels-last on CUDA."""

        module = module.eval().requires_grad_(False).to(self.device_)
        if self.on_cuda and self._config["channels_last"]:
            module = module.to(memory_format=channels_last_format(module))
        return module

    def images_to_tensor(self, items, mean, std):
        """uint8 view items, channels last -> normalised float32 tensor on the device.

        [B, H, W, 3] -> [B, 3, H, W]; [B, T, H, W, 3] -> [B, 3, T, H, W] (video nets).
        ``mean``/``std`` are per-channel on the 0..1 scale (the model's own values). The
        permute keeps the channels-last memory layout, which is what conv nets want on
        CUDA; with ``channels_last=False`` (or on CPU) the tensor is made contiguous.
        """
        import torch

        tensor = torch.from_numpy(items)
        if self.on_cuda:
            tensor = tensor.pin_memory().to(self.device_, non_blocking=True)
        if tensor.ndim == 4:
            tensor = tensor.permute(0, 3, 1, 2)
            shape = (1, 3, 1, 1)
        elif tensor.ndim == 5:
            tensor = tensor.permute(0, 4, 1, 2, 3)
            shape = (1, 3, 1, 1, 1)
        else:
            raise ValueError(f"expected [B,H,W,3] or [B,T,H,W,3] items, got {tuple(tensor.shape)}")
        if not (self.on_cuda and self._config["channels_last"]):
            tensor = tensor.contiguous()  # reorder the 1-byte values, not the float ones
        # (x / 255 - mean) / std  ==  x * (1 / (255 std)) - mean / std: one fused pass
        std_t = torch.as_tensor(std, dtype=torch.float32, device=tensor.device).view(shape)
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device=tensor.device).view(shape)
        return torch.addcmul(-mean_t / std_t, tensor.float(), 1.0 / (255.0 * std_t))
