"""CLIP image and text towers: ``clip-frames`` and ``clip-text``.

Backends
--------
``backend="open_clip"`` (default): ``arch`` is any open_clip model name (default
``"ViT-B-32"``), ``pretrained`` the open_clip tag whose weights are meant (default
``"openai"``). The tag also decides QuickGELU (``quick_gelu=None`` takes it from the tag:
OpenAI weights need QuickGELU, LAION weights do not; a wrong activation would silently
change every feature) and the normalisation mean/std.

``backend="hf"``: a transformers ``CLIPModel`` (e.g. a PickScore-style fine-tune).
``arch`` is the Hugging Face repo id (default ``"openai/clip-vit-base-patch32"``), used
only to look the folder up in the HF cache; weights are a ``save_pretrained`` folder
(``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``), loaded with
``local_files_only=True``; mean/std from its ``preprocessor_config.json`` when present.
The text tokenizer is the folder's own (``tokenizer.json`` / ``vocab.json``) when it has
one, else open_clip's bundled CLIP BPE tokenizer (the same 49,408-token vocabulary).

Weights (first match wins; see ``weights.resolve_weights``)
-------------------------------------------------------------
1. ``weights=<path>``: open_clip: a checkpoint file (state dict as ``.safetensors``,
   ``.bin``/``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or an OpenAI
   TorchScript ``.pt`` such as ``ViT-B-32.pt``) or a folder holding one of the names below;
   hf: the model folder.
2. ``$AIGVQA_WEIGHTS/clip-frames/`` (clip-text looks in ``clip-text/`` then
   ``clip-frames/``: both towers come from one checkpoint). open_clip file names, in order:
   ``<arch>.safetensors``, ``<arch>.bin``, ``<arch>.pt``, ``open_clip_model.safetensors``,
   ``open_clip_pytorch_model.bin`` -- e.g. ``$AIGVQA_WEIGHTS/clip-frames/ViT-B-32.pt``.
   hf: the folder itself holds ``config.json`` and the weights.
3. open_clip's own caches for ``(arch, pretrained)``: the HF hub cache entry of the tag
   (``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``) and the URL
   download cache ``~/.cache/clip/<file>``; hf backend: the HF hub cache snapshot of
   ``arch``. Nothing is downloaded.

Outputs
-------
``clip-frames``: view ``UniformFramesView(n=n_frames, size=<model image size>)``; one row
per frame, the projected image embedding [D] (D = 512 for ViT-B-32), not L2-normalised;
``pre_projection=True`` gives the pooled CLS token after ``ln_post`` / ``post_layernorm``
and before the projection (width of the vision transformer, 768 for ViT-B-32).

``clip-text``: ``{"pooled": [n, D], "tokens": [n, L, D], "mask": [n, L] bool}`` with L the
context length (77). ``pooled`` is the model's own text embedding (EOT token state after
the final layer norm, projected), equal to ``encode_text`` / ``get_text_features``.
``tokens`` are the final-layer states of all L positions after the final layer norm
(``ln_final`` / ``final_layer_norm``) passed through the same text projection, so they
live in the joint space of ``pooled``; ``mask`` is True for real tokens (start, words,
end) and False for padding.

Models are cached per process by (backend, arch, tag, quick_gelu, weights, device), so
clip-frames and clip-text built on the same checkpoint share one model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors.base import RANDOM_INIT, SharedModels
from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.weights import (
    Candidate,
    announce_random_init,
    hf_cache_candidate,
    load_state_dict_file,
    load_state_dict_strict,
    random_init_context,
    read_torchscript_state_dict,
    resolve_hf_folder,
    resolve_weights,
    weights_identity,
)

BACKENDS = ("open_clip", "hf")
DEFAULT_ARCH = {"open_clip": "ViT-B-32", "hf": "openai/clip-vit-base-patch32"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_FOLDER_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
CLIP_BPE_VOCAB_SIZE = 49408


@dataclass
class ClipTowers:
    """A loaded CLIP model with what its two extractors need to use it."""

    backend: str
    model: Any
    identity: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    context_length: int
    tokenize: Any  # list[str] -> (ids LongTensor [n, L], mask BoolTensor [n, L])


_TOWERS = SharedModels()
clear_model_cache = _TOWERS.clear


def _as_square_size(size: Any) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ExtractorConfigError(f"non-square CLIP image size {size} is not supported")
        size = size[0]
    return int(size)


class _ClipFamily(TorchExtractor):
    """Options and model loading shared by clip-frames and clip-text."""

    defaults: ClassVar[dict[str, Any]] = {
        "backend": "open_clip",
        "arch": None,  # None -> DEFAULT_ARCH[backend]; filled in __init__
        "pretrained": "openai",
        "quick_gelu": None,
    }
    weights_folders: ClassVar[tuple[str, ...]] = ("clip-frames",)

    def __init__(self, **config: Any) -> None:
        backend = config.get("backend", "open_clip")
        if config.get("arch") is None and backend in DEFAULT_ARCH:
            config["arch"] = DEFAULT_ARCH[backend]
        super().__init__(**config)

    def validate_config(self) -> None:
        super().validate_config()
        if self["backend"] not in BACKENDS:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: backend must be one of {', '.join(BACKENDS)}, "
                f"got {self['backend']!r}"
            )
        if self["backend"] == "open_clip":
            import open_clip

            if open_clip.get_model_config(self["arch"]) is None:
                raise ExtractorConfigError(
                    f"extractor {self.name!r}: unknown open_clip arch {self['arch']!r}; "
                    f"see open_clip.list_models() (e.g. ViT-B-32, ViT-B-16, ViT-L-14)"
                )

    # -- weights -------------------------------------------------------------------------
    def _tag_cfg(self) -> dict[str, Any]:
        import open_clip

        if not self["pretrained"]:
            return {}
        return dict(open_clip.get_pretrained_cfg(self["arch"], self["pretrained"]) or {})

    def _quick_gelu(self) -> bool:
        if self["quick_gelu"] is not None:
            return bool(self["quick_gelu"])
        return bool(self._tag_cfg().get("quick_gelu", False))

    def _open_clip_cache_candidates(self) -> list[Candidate]:
        cfg = self._tag_cfg()
        candidates = []
        hub = cfg.get("hf_hub", "")
        if hub:
            repo, filename = hub.rstrip("/"), ""
            if not hub.endswith("/"):
                repo, filename = hub.rsplit("/", 1)
            names = [filename] if filename else list(OPEN_CLIP_FOLDER_FILES)
            if filename.endswith((".bin", ".pt", ".pth")):
                names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
            candidates += [hf_cache_candidate(repo, name) for name in names]
        if cfg.get("url"):
            path = Path("~/.cache/clip").expanduser() / Path(cfg["url"]).name
            candidates.append(Candidate(f"open_clip URL download cache ({path.parent})", path))
        return candidates

    def _how_to_get(self) -> str:
        if self["backend"] == "hf":
            return (
                f"Real weights: on a machine with internet, "
                f"huggingface_hub.snapshot_download({self['arch']!r}) and copy the snapshot "
                f"folder (config.json + model.safetensors)."
            )
        cfg = self._tag_cfg()
        source = cfg.get("hf_hub") or cfg.get("url") or "(no such pretrained tag in open_clip)"
        return (
            f"Real weights: open_clip tag {self['pretrained']!r} of {self['arch']} comes from "
            f"{source}; on a machine with internet run open_clip.create_model("
            f"{self['arch']!r}, pretrained={self['pretrained']!r}) and copy the file it caches."
        )

    def resolve_weights(self) -> Path:
        """The checkpoint file (open_clip) or folder (hf) this extractor would load."""
        if self["backend"] == "hf":
            return resolve_hf_folder(
                self.name,
                self["weights"],
                self["arch"],
                how_to_get=self._how_to_get(),
                env_folders=self.weights_folders,
            )
        arch = self["arch"]
        return resolve_weights(
            self.name,
            self["weights"],
            filenames=(f"{arch}.safetensors", f"{arch}.bin", f"{arch}.pt", *OPEN_CLIP_FOLDER_FILES),
            cache_candidates=self._open_clip_cache_candidates(),
            how_to_get=self._how_to_get(),
            env_folders=self.weights_folders,
        )

    # -- loading -------------------------------------------------------------------------
    def load(self, device: str | None = None) -> None:
        device = self._set_device(device)
        weights = None if self["random_init"] else self.resolve_weights()
        key = (
            self["backend"],
            self["arch"],
            self["pretrained"] if self["backend"] == "open_clip" else None,
            self._quick_gelu() if self["backend"] == "open_clip" else None,
            str(weights.resolve()) if weights is not None else RANDOM_INIT,
            device,
        )
        towers = _TOWERS.get(key, lambda: self._build(weights))
        if weights is None:
            announce_random_init(self.name)  # loud every time an extractor uses it
        self.towers_ = towers
        self.weights_identity = towers.identity

    def _build(self, weights: Path | None) -> ClipTowers:
        build = _build_open_clip if self["backend"] == "open_clip" else _build_hf
        towers = build(self, weights)
        towers.model = self.prepare_module(towers.model)
        return towers

    def image_size(self) -> int:
        """The model's input resolution (known without building the model)."""
        if getattr(self, "towers_", None) is not None:
            return self.towers_.image_size
        if self["backend"] == "open_clip":
            import open_clip

            return _as_square_size(
                open_clip.get_model_config(self["arch"])["vision_cfg"]["image_size"]
            )
        if self["random_init"]:
            from transformers import CLIPVisionConfig

            return _as_square_size(CLIPVisionConfig().image_size)
        config = json.loads((self.resolve_weights() / "config.json").read_text())
        return _as_square_size(config.get("vision_config", {}).get("image_size", 224))


# -- open_clip -------------------------------------------------------------------------------
def _read_open_clip_state_dict(path: Path) -> dict[str, Any]:
    """A plain state dict, or the weights of an OpenAI TorchScript archive (``ViT-B-32.pt``,
    which ``torch.load(weights_only=True)`` cannot read). The archive's TorchScript is
    never compiled or run (``torch.jit.load`` would run a crafted ``__setstate__``): only
    its tensors are read (``weights.read_torchscript_state_dict``)."""
    if path.suffix != ".safetensors" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_torchscript = any(n.endswith("/constants.pkl") for n in archive.namelist())
        if is_torchscript:
            state = read_torchscript_state_dict(path)
            for key in ("input_resolution", "context_length", "vocab_size"):
                state.pop(key, None)
            return {k: v.float() for k, v in state.items()}
    return load_state_dict_file(path)


class _DropOpenClipRandomNotice(logging.Filter):
    """open_clip logs "Model initialized randomly" whenever it builds without weights; we
    load the weights ourselves right after (and announce real random init loudly), so
    that notice would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded for model")


_ROOT_LOGGER_LOCK = threading.Lock()


@contextlib.contextmanager
def _open_clip_logging():
    """Run open_clip without letting it configure the process's logging.

    open_clip logs with the root logger's module functions (``logging.info(...)``), and the
    first such call on a root logger without handlers runs ``logging.basicConfig()``. The
    root then keeps a handler for the rest of the process: distributed, imported after (a
    bench, a notebook), installs no handler of its own, its INFO records reach that one and
    every local cluster prints "INFO:distributed.scheduler:..." lines and, at shutdown,
    CommClosedError tracebacks. So while open_clip runs, a root without handlers gets
    Python's last-resort handler (warnings to stderr, as with no handler at all), removed
    after; the misleading random-init notice is dropped."""
    root = logging.getLogger()
    notice = _DropOpenClipRandomNotice()
    with _ROOT_LOGGER_LOCK:  # one open_clip call at a time touches the root's handlers
        stand_in = None
        if not root.handlers:
            stand_in = logging.lastResort or logging.NullHandler()
            root.addHandler(stand_in)
        root.addFilter(notice)
        try:
            yield
        finally:
            root.removeFilter(notice)
            if stand_in is not None:
                root.removeHandler(stand_in)


def _create_open_clip(arch: str, quick_gelu: bool):
    import open_clip

    return open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)


def _build_open_clip(extractor: _ClipFamily, weights: Path | None) -> ClipTowers:
    with _open_clip_logging():
        return _build_open_clip_quietly(extractor, weights)


def _build_open_clip_quietly(extractor: _ClipFamily, weights: Path | None) -> ClipTowers:
    import open_clip
    from open_clip.factory import convert_state_dict, convert_to_custom_text_state_dict

    arch = extractor["arch"]
    quick_gelu = extractor._quick_gelu()
    if weights is None:
        with random_init_context():
            model = _create_open_clip(arch, quick_gelu)
        identity = RANDOM_INIT
    else:
        model = _create_open_clip(arch, quick_gelu)
        state = _read_open_clip_state_dict(weights)
        state = convert_state_dict(model, state)
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        for name in ("logit_scale", "logit_bias"):
            param = getattr(model, name, None)
            if name in state and param is not None and param.ndim != state[name].ndim:
                state[name] = state[name].reshape(param.shape)
        load_state_dict_strict(model, state, weights)
        identity = weights_identity(weights)

    tag_cfg = extractor._tag_cfg()
    preprocess = (open_clip.get_model_config(arch) or {}).get("preprocess_cfg", {})
    mean = tuple(tag_cfg.get("mean") or preprocess.get("mean") or OPENAI_MEAN)
    std = tuple(tag_cfg.get("std") or preprocess.get("std") or OPENAI_STD)
    tokenizer = open_clip.get_tokenizer(arch)
    context_length = int(getattr(model, "context_length", None) or tokenizer.context_length)
    pad_id = int(getattr(tokenizer, "pad_id", None) or 0)

    def tokenize(prompts: list[str]):
        ids = tokenizer(prompts, context_length=context_length)
        return ids, ids != pad_id

    return ClipTowers(
        backend="open_clip",
        model=model,
        identity=identity,
        mean=mean,
        std=std,
        image_size=extractor.image_size(),
        context_length=context_length,
        tokenize=tokenize,
    )


def _open_clip_image(model, images, pre_projection: bool):
    if not pre_projection:
        return model.encode_image(images)
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise ExtractorConfigError(
            f"pre_projection=True needs an open_clip VisionTransformer image tower, "
            f"this model has {type(visual).__name__}; use pre_projection=False"
        )
    x = visual._embeds(images)
    x = visual.transformer(x)
    pooled, _tokens = visual._pool(x)
    return pooled


def _open_clip_text(model, ids):
    """(pooled [n, D], token states [n, L, D]) of an open_clip text tower; see module doc."""
    from open_clip.transformer import TextTransformer, text_global_pool

    if hasattr(model, "text"):  # CustomTextCLIP: the tower is a sub-module
        tower = model.text
        if not isinstance(tower, TextTransformer) or tower.cls_emb is not None:
            raise ExtractorConfigError(
                f"clip-text supports open_clip TextTransformer towers without a CLS "
                f"embedding; this model has {type(tower).__name__}"
            )
        x, attn_mask = tower._embeds(ids)
        pool_type, eos_id = tower.pool_type, getattr(tower, "eos_id", None)
    else:  # CLIP: the text tower's modules live on the model itself (as in encode_text)
        tower = model
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding.to(cast_dtype)
        attn_mask = model.attn_mask
        pool_type, eos_id = model.text_pool_type, getattr(model, "text_eos_id", None)
    x = tower.transformer(x, attn_mask=attn_mask)
    x = tower.ln_final(x)
    pooled = text_global_pool(x, ids, pool_type, eos_token_id=eos_id)
    projection = tower.text_projection
    if projection is None:
        return pooled, x
    if callable(projection) and not hasattr(projection, "ndim"):  # nn.Linear
        return projection(pooled), projection(x)
    return pooled @ projection, x @ projection


# -- transformers CLIPModel ------------------------------------------------------------------
def _build_hf(extractor: _ClipFamily, folder: Path | None) -> ClipTowers:
    import torch
    from transformers import CLIPConfig, CLIPModel

    if folder is None:
        with random_init_context():
            model = CLIPModel(CLIPConfig())
        identity = RANDOM_INIT
    else:
        try:
            model, info = CLIPModel.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32, output_loading_info=True
            )
        except (RuntimeError, ValueError) as exc:  # transformers refuses size mismatches
            raise CheckpointMismatchError(
                f"checkpoint folder {folder} does not match its CLIPModel config: {exc}. Fix: "
                "use the config.json saved with these weights."
            ) from exc
        except OSError as exc:
            raise WeightsNotFoundError(
                f"cannot load a CLIPModel from folder {folder}: {exc}. Fix: the folder must "
                "hold config.json and model.safetensors (or pytorch_model.bin), as written "
                "by CLIPModel.save_pretrained."
            ) from exc
        missing = sorted(info.get("missing_keys") or [])
        unexpected = sorted(info.get("unexpected_keys") or [])
        shapes = [str(m) for m in info.get("mismatched_keys") or []]
        if missing or unexpected or shapes:
            from aigvqa.extractors.weights import format_checkpoint_mismatch

            raise CheckpointMismatchError(
                format_checkpoint_mismatch("CLIPModel", folder, missing, unexpected, shapes)
            )
        identity = weights_identity(folder)

    mean, std = OPENAI_MEAN, OPENAI_STD
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
    context_length = int(model.config.text_config.max_position_embeddings)
    image_size = _as_square_size(model.config.vision_config.image_size)
    tokenize = _hf_tokenizer(folder, context_length, int(model.config.text_config.vocab_size))
    return ClipTowers("hf", model, identity, mean, std, image_size, context_length, tokenize)


def _hf_tokenizer(folder: Path | None, context_length: int, vocab_size: int):
    if folder is not None and any((folder / name).is_file() for name in HF_TOKENIZER_FILES):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

        def tokenize(prompts: list[str]):
            batch = tokenizer(
                prompts,
                padding="max_length",
                truncation=True,
                max_length=context_length,
                return_tensors="pt",
            )
            return batch["input_ids"], batch["attention_mask"].bool()

        return tokenize

    if vocab_size != CLIP_BPE_VOCAB_SIZE:
        raise WeightsNotFoundError(
            f"CLIP folder {folder} has no tokenizer files ({', '.join(HF_TOKENIZER_FILES)}) and "
            f"its vocabulary ({vocab_size}) is not CLIP's BPE ({CLIP_BPE_VOCAB_SIZE}). Fix: save "
            "the matching tokenizer into the folder (tokenizer.save_pretrained(folder))."
        )
    import open_clip

    simple = open_clip.SimpleTokenizer(context_length=context_length)

    def tokenize(prompts: list[str]):
        ids = simple(prompts, context_length=context_length)
        return ids, ids != 0

    return tokenize


# -- the extractors --------------------------------------------------------------------------
@register_extractor("clip-frames")
class ClipFrames(_ClipFamily):
    """CLIP image embedding of ``n_frames`` uniformly spread frames: [n_frames, D]."""

    defaults: ClassVar[dict[str, Any]] = {"n_frames": 16, "pre_projection": False}

    def view(self):
        from aigvqa.extractors.views import UniformFramesView

        return UniformFramesView(n=self["n_frames"], size=self.image_size())

    def output_dims(self) -> dict[str, int]:
        return {"values": _image_width(self)}

    def forward(self, items: np.ndarray) -> np.ndarray:
        import torch

        towers = self.towers_
        with torch.inference_mode(), self.autocast():
            images = self.images_to_tensor(items, towers.mean, towers.std)
            if towers.backend == "open_clip":
                features = _open_clip_image(towers.model, images, self["pre_projection"])
            else:
                pooled = towers.model.vision_model(pixel_values=images).pooler_output
                features = (
                    pooled if self["pre_projection"] else towers.model.visual_projection(pooled)
                )
        return features.float().cpu().numpy()


@register_extractor("clip-text")
class ClipText(_ClipFamily):
    """CLIP text tower: pooled [D], tokens [L, D] and mask [L] per prompt (module doc)."""

    modality = "text"
    defaults: ClassVar[dict[str, Any]] = {"batch_size": 64}
    weights_folders = ("clip-text", "clip-frames")

    def output_dims(self) -> dict[str, int]:
        width = _embed_dim(self)
        return {"pooled": width, "tokens": width}

    def encode_text(self, prompts: list[str]) -> dict[str, np.ndarray]:
        import torch

        towers = self.towers_
        ids, mask = towers.tokenize(list(prompts))
        with torch.inference_mode(), self.autocast():
            ids = ids.to(self.device_)
            if towers.backend == "open_clip":
                pooled, tokens = _open_clip_text(towers.model, ids)
            else:
                out = towers.model.text_model(
                    input_ids=ids, attention_mask=mask.to(self.device_).long()
                )
                pooled = towers.model.text_projection(out.pooler_output)
                tokens = towers.model.text_projection(out.last_hidden_state)
        return {
            "pooled": pooled.float().cpu().numpy(),
            "tokens": tokens.float().cpu().numpy(),
            "mask": mask.cpu().numpy().astype(bool),
        }


def _embed_dim(extractor: _ClipFamily) -> int:
    if extractor["backend"] == "open_clip":
        import open_clip

        return int(open_clip.get_model_config(extractor["arch"])["embed_dim"])
    if getattr(extractor, "towers_", None) is not None:
        return int(extractor.towers_.model.config.projection_dim)
    if extractor["random_init"]:
        from transformers import CLIPConfig

        return int(CLIPConfig().projection_dim)
    config = json.loads((extractor.resolve_weights() / "config.json").read_text())
    return int(config.get("projection_dim", 512))


def _image_width(extractor: ClipFrames) -> int:
    if not extractor["pre_projection"]:
        return _embed_dim(extractor)
    if extractor["backend"] == "open_clip":
        import open_clip

        return int(open_clip.get_model_config(extractor["arch"])["vision_cfg"]["width"])
    if getattr(extractor, "towers_", None) is not None:
        return int(extractor.towers_.model.config.vision_config.hidden_size)
    if extractor["random_init"]:
        from transformers import CLIPVisionConfig

        return int(CLIPVisionConfig().hidden_size)
    config = json.loads((extractor.resolve_weights() / "config.json").read_text())
    return int(config.get("vision_config", {}).get("hidden_size", 768))
