"""BLIP image-text matching and ImageReward: ``blip-itm``, ``blip-text``, ``imagereward``.

Text-video alignment the way the AIGC papers measure it (the NTIRE 2024 AIGC-VQA winner
built its alignment branch on BLIP / ImageReward image-text matching): every sampled frame
is scored *against the video's prompt*. ``blip-itm`` and ``imagereward`` are video
extractors with ``needs_prompt = True``: the runner hands ``forward`` one prompt per item.

Models
------
``blip-itm`` / ``blip-text``: transformers' ``BlipForImageTextRetrieval`` (vision ViT,
BERT text encoder with cross-attention, ``vision_proj`` / ``text_proj`` into the joint ITC
space, the binary ``itm_head``). Weights are a ``save_pretrained`` folder (``config.json``
+ ``model.safetensors`` / ``pytorch_model.bin`` + the tokenizer files), e.g. a snapshot of
``Salesforce/blip-itm-base-coco`` (ViT-B/16 at 384) or ``-large-coco``.

``imagereward``: the same BLIP backbone (vision ViT + cross-attention text encoder) with
ImageReward's reward MLP on the text encoder's [CLS] state (widths 768 -> 1024 -> 128 ->
64 -> 16 -> 1, no activation between the layers, as published), normalised as
ImageReward does: ``(r - 0.16717362830052426) / 1.0333394966054072``. Weights are
ImageReward's own checkpoint file, ``ImageReward.pt``: a state dict keyed ``blip.*``
(BLIP's original names: ``blip.visual_encoder.blocks.N.attn.qkv.weight``,
``blip.text_encoder.encoder.layer.N.crossattention...``) and ``mlp.layers.{0,2,4,6,7}.*``;
the keys are renamed onto transformers' modules on load (``_imagereward_key``), every
tensor must be used, and only ImageReward's unused ITC projections (``blip.vision_proj``,
``blip.text_proj``) and ``position_ids`` buffers may be left over. The architecture is
ImageReward's (ViT-L/16 at 224 with LayerNorm eps 1e-6, BERT-base with cross-attention
over 1024-wide image tokens), given as data in ``IMAGEREWARD_CONFIG``.

Weights (first match wins; see ``weights.resolve_weights``)
-------------------------------------------------------------
``blip-itm``: ``weights=<folder>``; ``$AIGVQA_WEIGHTS/blip-itm/`` holding ``config.json``;
the Hugging Face hub cache snapshot of ``arch`` (default ``Salesforce/blip-itm-base-coco``).
``blip-text`` looks in ``$AIGVQA_WEIGHTS/blip-text/`` then ``blip-itm/`` (one model).
``imagereward``: ``weights=<ImageReward.pt>`` (or a folder holding it);
``$AIGVQA_WEIGHTS/imagereward/ImageReward.pt``; the HF hub cache of ``THUDM/ImageReward``;
``~/.cache/ImageReward/ImageReward.pt`` (where the ``image-reward`` package downloads it).
Its tokenizer (bert-base-uncased, which the checkpoint does not hold): the ``tokenizer``
option (a folder with ``tokenizer.json`` / ``vocab.txt``, or a ``vocab.txt`` file), else
tokenizer files beside the checkpoint, else the HF hub cache of ``google-bert/bert-base-uncased``.
Nothing is downloaded; a miss is an error naming every place searched.

Random weights (``random_init=True``; tests and benchmarks, stamped RANDOM-INIT):
``blip_config`` (a dict of ``BlipConfig`` keyword overrides, e.g. a tiny
``{"vision_config": {...}, "text_config": {...}}``) shapes the model, default the full
size (blip-itm: ``BlipConfig()``, i.e. ViT-B/16 at 384 like blip-itm-base-coco;
imagereward: ``IMAGEREWARD_CONFIG``). With no tokenizer files, a stand-in tokenizer hashes
words to ids (as meaningless as the weights, but the compute is the same). A blip-itm
folder brings its own config, so ``blip_config`` is refused there; for imagereward it
must describe the checkpoint's architecture (a mismatch is a CheckpointMismatchError).

Outputs
-------
``blip-itm``: view ``UniformFramesView(n=n_frames, size=<model image size>,
resize_mode="squash")`` (BLIP's processor resizes to a square without cropping); one row
per frame of width ``2 + E`` (E = ``image_text_hidden_size``, 256):
column 0 the ITM match probability (softmax of ``itm_head`` on the cross-attention
encoder's [CLS], class 1), column 1 the ITC cosine between the L2-normalised
``vision_proj`` of the image [CLS] and ``text_proj`` of the text-only [CLS], columns 2..
the projected image embedding (``vision_proj``, not normalised). ``output_columns()``
names them ``match`` (0:2) and ``image`` (2:2+E), so stage two sees ``blip-itm-match`` and
``blip-itm-image`` as features of their own.

``blip-text``: ``{"pooled": [n, E], "tokens": [n, L, E], "mask": [n, L]}``: ``text_proj``
of the text-only encoder's [CLS] state (``pooled``, the ITC text embedding, in the space
of ``blip-itm-image``) and of every token state, L = ``max_tokens`` (35, BLIP's). Stored
once per prompt, like clip-text.

``imagereward``: view ``UniformFramesView(n=n_frames, size=224, resize_mode="crop")``
(ImageReward resizes the short side and centre-crops); one row per frame, [1], the
normalised reward.

Prompts are tokenised to ``max_tokens`` (35 for both, as BLIP's ITM and ImageReward do)
and padded to that length. The models are cached per process, so blip-itm and blip-text
on one folder share one model.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.weights import (
    Candidate,
    announce_random_init,
    format_checkpoint_mismatch,
    hf_cache_candidate,
    load_state_dict_file,
    load_state_dict_strict,
    random_init_context,
    resolve_weights,
    weights_identity,
    weights_root,
)

DEFAULT_ARCH = "Salesforce/blip-itm-base-coco"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
BERT_REPOS = ("google-bert/bert-base-uncased", "bert-base-uncased")

IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
IMAGEREWARD_CONFIG: dict[str, Any] = {
    # ImageReward's BLIP: ViT-L/16 at 224 (timm-style blocks, LayerNorm eps 1e-6) and a
    # BERT-base text encoder (BLIP's med_config: vocabulary 30524 with [DEC] and [ENC])
    # whose cross-attention reads the 1024-wide image tokens.
    "vision_config": {
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6,
    },
    "text_config": {
        "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "vocab_size": 30524, "max_position_embeddings": 512,
        "layer_norm_eps": 1e-12,
    },
    "image_text_hidden_size": 256,
}
REWARD_WIDTHS = (1024, 128, 64, 16, 1)
"""ImageReward's MLP after its input (the text width, 768): five Linear layers stored at
``mlp.layers.{0,2,4,6,7}`` (Dropout at 1, 3, 5), no activation between them."""
REWARD_LINEAR_INDICES = (0, 2, 4, 6, 7)
IMAGEREWARD_UNUSED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.")


@dataclass
class BlipModel:
    """A loaded BLIP model with what the extractors need to use it."""

    model: Any  # BlipForImageTextRetrieval, or the reward module (vision_model, text_encoder, mlp)
    identity: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    tokenize: Any  # list[str] -> (ids LongTensor [n, L], mask LongTensor [n, L])


_MODELS: dict[tuple, BlipModel] = {}
_MODELS_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget the per-process models (tests; freeing memory between runs)."""
    with _MODELS_LOCK:
        _MODELS.clear()


# -- configuration ---------------------------------------------------------------------------
def _merged_config(base: dict[str, Any] | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``overrides`` over ``base``, one level deep for the sub-configs."""
    merged = json.loads(json.dumps(base or {}))
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _blip_config(kwargs: dict[str, Any]):
    from transformers import BlipConfig

    try:
        return BlipConfig(**kwargs)
    except Exception as exc:  # noqa: BLE001 - TypeError, ValueError or huggingface_hub's StrictDataclassError
        raise ExtractorConfigError(f"blip_config {kwargs!r} is not a valid BlipConfig: {exc}") from exc


def _square(size: Any) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ExtractorConfigError(f"non-square BLIP image size {size} is not supported")
        size = size[0]
    return int(size)


# -- tokenizers ------------------------------------------------------------------------------
def _has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def _file_tokenizer(path: Path, max_tokens: int, vocab_size: int, source: str):
    """A tokenizer read from a folder (``AutoTokenizer``) or a ``vocab.txt`` (BERT WordPiece)."""
    if path.is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    else:
        from transformers import BertTokenizer

        tokenizer = BertTokenizer(str(path))
    if len(tokenizer) > vocab_size:
        raise CheckpointMismatchError(
            f"tokenizer {path} has {len(tokenizer)} tokens but the {source} text encoder embeds "
            f"only {vocab_size}; Fix: use the tokenizer saved with these weights"
        )

    def tokenize(prompts: list[str]):
        batch = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_tokens,
                          return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    return tokenize


def _stand_in_tokenizer(max_tokens: int, vocab_size: int):
    """For random weights only: words hashed to ids between BERT's [CLS] / [SEP] ids, padded
    with 0, so token counts (and the compute) match a real tokenizer's."""
    import re

    import torch

    cls_id, sep_id = 101 % vocab_size, 102 % vocab_size
    low = 1000 if vocab_size > 2000 else 3
    span = max(1, vocab_size - low)

    def tokenize(prompts: list[str]):
        ids = torch.zeros(len(prompts), max_tokens, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_tokens, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = re.findall(r"\w+|[^\w\s]", prompt.lower())[: max_tokens - 2]
            tokens = [cls_id, *(low + zlib.crc32(w.encode()) % span for w in words), sep_id]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask

    return tokenize


# -- blip-itm / blip-text --------------------------------------------------------------------
class _BlipFamily(TorchExtractor):
    """Options and model loading shared by blip-itm and blip-text (one folder, one model)."""

    defaults: ClassVar[dict[str, Any]] = {
        "arch": DEFAULT_ARCH,  # the HF repo id: only used to find the folder in the HF cache
        "blip_config": None,
        "max_tokens": 35,
    }
    weights_folders: ClassVar[tuple[str, ...]] = ("blip-itm",)

    def validate_config(self) -> None:
        super().validate_config()
        _validate_common(self)
        if self["blip_config"] is not None and not self["random_init"]:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: blip_config shapes a random-init model only; a "
                "weights folder brings its own config.json (drop blip_config, or add random_init=True)"
            )

    def resolve_weights(self) -> Path:
        """The ``save_pretrained`` folder this extractor would load."""
        snapshot = hf_cache_candidate(self["arch"], "config.json")
        folder = Candidate(snapshot.where, snapshot.path.parent if snapshot.path is not None else None)
        return resolve_weights(
            self.name,
            self["weights"],
            filenames=("config.json",),
            folder=True,
            cache_candidates=[folder],
            how_to_get=(
                f"Real weights: on a machine with internet, huggingface_hub.snapshot_download("
                f"{self['arch']!r}) and copy the snapshot folder (config.json, model.safetensors, "
                "tokenizer files)."
            ),
            env_folders=self.weights_folders,
        )

    def model_config(self):
        """The ``BlipConfig`` of the model (known without building it)."""
        if getattr(self, "blip_", None) is not None:
            return self.blip_.model.config
        if self["random_init"]:
            return _blip_config(self["blip_config"] or {})
        from transformers import BlipConfig

        return BlipConfig.from_pretrained(self.resolve_weights(), local_files_only=True)

    def image_size(self) -> int:
        return _square(self.model_config().vision_config.image_size)

    def embed_dim(self) -> int:
        return int(self.model_config().image_text_hidden_size)

    def load(self, device: str | None = None) -> None:
        device = self._set_device(device)
        folder = None if self["random_init"] else self.resolve_weights()
        key = (
            "itm",
            str(folder.resolve()) if folder is not None else RANDOM_INIT,
            json.dumps(self["blip_config"], sort_keys=True),
            int(self["max_tokens"]),
            device,
        )
        with _MODELS_LOCK:
            blip = _MODELS.get(key)
            if blip is None:
                blip = _build_itm(self, folder)
                blip.model = self.prepare_module(blip.model)
                _MODELS[key] = blip
        if folder is None:
            announce_random_init(self.name)
        self.blip_ = blip
        self.weights_identity = blip.identity

    def _text_encoder(self, ids, mask, image_embeds=None):
        """The BLIP text encoder's [CLS] state, text-only or attending to ``image_embeds``."""
        import torch

        encoder = self.blip_.model.text_encoder
        if image_embeds is None:
            return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                       encoder_attention_mask=image_mask).last_hidden_state


def _validate_common(extractor: TorchExtractor) -> None:
    config = extractor.config()
    if config.get("blip_config") is not None and not isinstance(config["blip_config"], dict):
        raise ExtractorConfigError(
            f"extractor {extractor.name!r}: blip_config must be a table of BlipConfig options "
            f"(e.g. {{vision_config = {{hidden_size = 64}}}}), got {config['blip_config']!r}"
        )
    max_tokens = config.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 3:
        raise ExtractorConfigError(
            f"extractor {extractor.name!r}: max_tokens must be an int >= 3, got {max_tokens!r}"
        )
    n_frames = config.get("n_frames", 1)
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ExtractorConfigError(
            f"extractor {extractor.name!r}: n_frames must be a positive int, got {n_frames!r}"
        )


def _from_pretrained_checked(cls, folder: Path):
    """``cls.from_pretrained(folder)`` offline, every tensor accounted for."""
    import torch

    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                          output_loading_info=True)
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
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    shapes = [str(m) for m in info.get("mismatched_keys") or []]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(format_checkpoint_mismatch(cls.__name__, folder, missing, unexpected, shapes))
    return model


def _build_itm(extractor: _BlipFamily, folder: Path | None) -> BlipModel:
    from transformers import BlipForImageTextRetrieval

    if folder is None:
        config = _blip_config(extractor["blip_config"] or {})
        with random_init_context():
            model = BlipForImageTextRetrieval(config)
        identity = RANDOM_INIT
    else:
        model = _from_pretrained_checked(BlipForImageTextRetrieval, folder)
        identity = weights_identity(folder)
    config = model.config
    mean, std = OPENAI_MEAN, OPENAI_STD
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
    max_tokens, vocab = int(extractor["max_tokens"]), int(config.text_config.vocab_size)
    if folder is None:
        tokenize = _stand_in_tokenizer(max_tokens, vocab)
    elif _has_tokenizer(folder):
        tokenize = _file_tokenizer(folder, max_tokens, vocab, "BLIP")
    else:
        raise WeightsNotFoundError(
            f"BLIP folder {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}). Fix: "
            "copy them from the model's snapshot (the processor's tokenizer.save_pretrained(folder))."
        )
    return BlipModel(model, identity, mean, std, _square(config.vision_config.image_size), tokenize)


def _prompt_rows(extractor, prompts, n: int) -> tuple[list[str], list[int]]:
    """(distinct prompts, row of each item): each distinct prompt is tokenised once."""
    if prompts is None or len(prompts) != n:
        raise ValueError(
            f"extractor {extractor.name!r} scores frames against prompts: forward(items, prompts) "
            f"needs one prompt per item ({n} items, got {None if prompts is None else len(prompts)})"
        )
    unique = list(dict.fromkeys(prompts))
    index = {p: i for i, p in enumerate(unique)}
    return unique, [index[p] for p in prompts]


@register_extractor("blip-itm")
class BlipItm(_BlipFamily):
    """Per frame: ITM match probability, ITC cosine, projected image embedding (module doc)."""

    needs_prompt = True
    defaults: ClassVar[dict[str, Any]] = {"n_frames": 16}

    def view(self):
        from aigvqa.extractors.views import UniformFramesView

        return UniformFramesView(n=self["n_frames"], size=self.image_size(), resize_mode="squash")

    def output_dims(self) -> dict[str, int]:
        return {"values": 2 + self.embed_dim()}

    def output_columns(self) -> dict[str, tuple[int, int]]:
        width = self.embed_dim()
        return {"match": (0, 2), "image": (2, 2 + width)}

    def forward(self, items: np.ndarray, prompts: list[str] | None = None) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        unique, rows = _prompt_rows(self, prompts, len(items))
        blip = self.blip_
        model = blip.model
        with torch.inference_mode(), self.autocast():
            pixels = self.images_to_tensor(items, blip.mean, blip.std)
            image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
            ids, mask = blip.tokenize(unique)
            ids, mask = ids.to(self.device_), mask.to(self.device_)
            rows_t = torch.as_tensor(rows, device=self.device_)
            text = F.normalize(model.text_proj(self._text_encoder(ids, mask)[:, 0]).float(), dim=-1)
            image = model.vision_proj(image_embeds[:, 0]).float()
            itc = (F.normalize(image, dim=-1) * text[rows_t]).sum(-1)
            joint = self._text_encoder(ids[rows_t], mask[rows_t], image_embeds)
            itm = model.itm_head(joint[:, 0]).float().softmax(dim=-1)[:, 1]
            out = torch.cat([itm[:, None], itc[:, None], image], dim=1)
        return out.float().cpu().numpy()


@register_extractor("blip-text")
class BlipText(_BlipFamily):
    """BLIP's ITC text embedding: pooled [E], tokens [L, E], mask [L] per prompt."""

    modality = "text"
    defaults: ClassVar[dict[str, Any]] = {"batch_size": 64}
    weights_folders = ("blip-text", "blip-itm")

    def output_dims(self) -> dict[str, int]:
        width = self.embed_dim()
        return {"pooled": width, "tokens": width}

    def encode_text(self, prompts: list[str]) -> dict[str, np.ndarray]:
        import torch

        blip = self.blip_
        ids, mask = blip.tokenize(list(prompts))
        with torch.inference_mode(), self.autocast():
            states = self._text_encoder(ids.to(self.device_), mask.to(self.device_))
            tokens = blip.model.text_proj(states)
        return {
            "pooled": tokens[:, 0].float().cpu().numpy(),
            "tokens": tokens.float().cpu().numpy(),
            "mask": mask.cpu().numpy().astype(bool),
        }


# -- imagereward -----------------------------------------------------------------------------
_VISION_RENAMES = (
    # BLIP's timm-style ViT names -> transformers' BlipVisionModel names
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
    ("visual_encoder.norm.", "vision_model.post_layernorm."),
    ("visual_encoder.blocks.", "vision_model.encoder.layers."),
)
_BLOCK_RENAMES = (
    (".norm1.", ".layer_norm1."),
    (".norm2.", ".layer_norm2."),
    (".attn.qkv.", ".self_attn.qkv."),
    (".attn.proj.", ".self_attn.projection."),
)


def _imagereward_key(key: str) -> str | None:
    """The reward module's name for an ImageReward.pt key; None for a key it does not use."""
    if key.endswith("position_ids") or key.startswith(IMAGEREWARD_UNUSED_PREFIXES):
        return None
    if key.startswith("mlp.layers."):
        return "mlp." + key[len("mlp.layers."):]
    if not key.startswith("blip."):
        return key  # left as is: the strict load reports it as unexpected
    name = key[len("blip."):]
    if name.startswith("text_encoder."):
        return name  # BLIP's med.py BERT and transformers' BlipTextModel share the names
    for old, new in _VISION_RENAMES:
        if name.startswith(old):
            name = new + name[len(old):]
            break
    if name.startswith("vision_model.encoder.layers."):
        for old, new in _BLOCK_RENAMES:
            name = name.replace(old, new)
    return name


def _reward_module(config):
    """BLIP vision + cross-attention text encoder + ImageReward's MLP, as one module whose
    names are transformers' (``vision_model.*``, ``text_encoder.*``) and ``mlp.{0,2,4,6,7}``."""
    from torch import nn
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    module = nn.Module()
    module.vision_model = BlipVisionModel(config.vision_config)
    module.text_encoder = BlipTextModel(config.text_config, add_pooling_layer=False)
    layers: list[nn.Module] = []
    width = int(config.text_config.hidden_size)
    for i, out in enumerate(REWARD_WIDTHS):
        layers.append(nn.Linear(width, out))
        width = out
        if i < 3:
            layers.append(nn.Identity())  # where ImageReward has Dropout: keeps its indices
    module.mlp = nn.Sequential(*layers)
    return module


@register_extractor("imagereward")
class ImageRewardFrames(TorchExtractor):
    """ImageReward's normalised reward of every sampled frame for the video's prompt: [1]."""

    needs_prompt = True
    defaults: ClassVar[dict[str, Any]] = {
        "n_frames": 16,
        "tokenizer": None,
        "blip_config": None,  # overrides of IMAGEREWARD_CONFIG (tests: a tiny model)
        "max_tokens": 35,
    }

    def validate_config(self) -> None:
        super().validate_config()
        _validate_common(self)

    def model_config(self):
        if getattr(self, "blip_", None) is not None:
            return self.blip_.model.config
        return _blip_config(_merged_config(IMAGEREWARD_CONFIG, self["blip_config"]))

    def image_size(self) -> int:
        return _square(self.model_config().vision_config.image_size)

    def view(self):
        from aigvqa.extractors.views import UniformFramesView

        return UniformFramesView(n=self["n_frames"], size=self.image_size(), resize_mode="crop")

    def output_dims(self) -> dict[str, int]:
        return {"values": 1}

    # -- weights ---------------------------------------------------------------------------
    def resolve_weights(self) -> Path:
        """The ImageReward checkpoint file this extractor would load."""
        download_cache = Path("~/.cache/ImageReward").expanduser() / IMAGEREWARD_FILE
        return resolve_weights(
            self.name,
            self["weights"],
            filenames=(IMAGEREWARD_FILE,),
            cache_candidates=[
                hf_cache_candidate(IMAGEREWARD_REPO, IMAGEREWARD_FILE),
                Candidate(f"image-reward package download cache ({download_cache.parent})", download_cache),
            ],
            how_to_get=(
                f"Real weights: {IMAGEREWARD_FILE} from the Hugging Face repo {IMAGEREWARD_REPO} "
                "(huggingface_hub.hf_hub_download on a machine with internet)."
            ),
        )

    def resolve_tokenizer(self, checkpoint: Path) -> Path:
        """The tokenizer folder or vocab.txt (the ``tokenizer`` option, else beside the
        checkpoint, else bert-base-uncased in the HF hub cache)."""
        searched = []
        explicit = self["tokenizer"]
        if explicit:
            path = Path(explicit).expanduser()
            if path.is_file() or _has_tokenizer(path):
                return path
            raise WeightsNotFoundError(
                f"tokenizer={explicit!r} for extractor {self.name!r} is neither a vocab.txt file nor "
                f"a folder holding {' or '.join(TOKENIZER_FILES)}. Fix: point it at "
                "bert-base-uncased's tokenizer files."
            )
        places = [checkpoint.parent]
        root = weights_root()
        if root is not None:
            places.append(root / self.name)
        for folder in dict.fromkeys(places):
            if _has_tokenizer(folder):
                return folder
            searched.append(f"{folder}/{{{', '.join(TOKENIZER_FILES)}}}")
        for repo in BERT_REPOS:
            candidate = hf_cache_candidate(repo, "vocab.txt")
            if candidate.exists():
                return candidate.path.parent
            searched.append(candidate.where)
        raise WeightsNotFoundError(
            f"no tokenizer found for extractor {self.name!r} (ImageReward uses bert-base-uncased's, "
            "which ImageReward.pt does not hold). Searched:\n"
            + "\n".join(f"  - {place}" for place in searched)
            + f"\nFix: put bert-base-uncased's vocab.txt (or tokenizer.json) beside {checkpoint.name}, "
            "or pass tokenizer=<folder or vocab.txt>."
        )

    def load(self, device: str | None = None) -> None:
        device = self._set_device(device)
        checkpoint = None if self["random_init"] else self.resolve_weights()
        tokenizer = None if checkpoint is None else self.resolve_tokenizer(checkpoint)
        config_json = json.dumps(self["blip_config"], sort_keys=True)
        key = (
            "reward",
            str(checkpoint.resolve()) if checkpoint is not None else RANDOM_INIT,
            str(tokenizer.resolve()) if tokenizer is not None else None,
            config_json,
            int(self["max_tokens"]),
            device,
        )
        with _MODELS_LOCK:
            blip = _MODELS.get(key)
            if blip is None:
                blip = self._build(checkpoint, tokenizer)
                blip.model = self.prepare_module(blip.model)
                _MODELS[key] = blip
        if checkpoint is None:
            announce_random_init(self.name)
        self.blip_ = blip
        self.weights_identity = blip.identity

    def _build(self, checkpoint: Path | None, tokenizer: Path | None) -> BlipModel:
        config = self.model_config()
        if checkpoint is None:
            with random_init_context():
                model = _reward_module(config)
            identity = RANDOM_INIT
        else:
            model = _reward_module(config)
            load_imagereward_checkpoint(model, checkpoint)
            identity = weights_identity(checkpoint)
        model.config = config  # a plain module: give it the config BlipForImageTextRetrieval has
        max_tokens, vocab = int(self["max_tokens"]), int(config.text_config.vocab_size)
        tokenize = (_stand_in_tokenizer(max_tokens, vocab) if tokenizer is None
                    else _file_tokenizer(tokenizer, max_tokens, vocab, "ImageReward"))
        return BlipModel(model, identity, OPENAI_MEAN, OPENAI_STD,
                         _square(config.vision_config.image_size), tokenize)

    def forward(self, items: np.ndarray, prompts: list[str] | None = None) -> np.ndarray:
        import torch

        unique, rows = _prompt_rows(self, prompts, len(items))
        blip = self.blip_
        model = blip.model
        with torch.inference_mode(), self.autocast():
            pixels = self.images_to_tensor(items, blip.mean, blip.std)
            image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
            ids, mask = blip.tokenize(unique)
            rows_t = torch.as_tensor(rows, device=self.device_)
            ids, mask = ids.to(self.device_)[rows_t], mask.to(self.device_)[rows_t]
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            states = model.text_encoder(input_ids=ids, attention_mask=mask,
                                        encoder_hidden_states=image_embeds,
                                        encoder_attention_mask=image_mask).last_hidden_state
        with torch.inference_mode():  # the small reward MLP in float32, outside autocast
            reward = model.mlp(states[:, 0].float())
        return ((reward - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).cpu().numpy()


def load_imagereward_checkpoint(model, path: str | os.PathLike) -> None:
    """Load an ``ImageReward.pt`` state dict into ``_reward_module``'s module, strictly: every
    module tensor must come from the file, and only the keys ImageReward keeps but the reward
    does not use (``blip.vision_proj`` / ``blip.text_proj``, ``position_ids``) may be left."""
    state = load_state_dict_file(path)
    renamed: dict[str, Any] = {}
    original: dict[str, str] = {}
    for key, value in state.items():
        name = _imagereward_key(key)
        if name is None:
            continue
        if name in renamed:
            raise CheckpointMismatchError(
                f"checkpoint {path}: keys {original[name]!r} and {key!r} both map onto {name!r}"
            )
        renamed[name], original[name] = value, key
    expected = model.state_dict()
    # name what is wrong in the checkpoint's own (ImageReward) terms
    unexpected = sorted(original[k] for k in set(renamed) - set(expected))
    missing = sorted(set(expected) - set(renamed))
    shapes = sorted(
        f"{original[k]}: checkpoint {tuple(renamed[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(renamed)
        if tuple(renamed[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            format_checkpoint_mismatch("ImageReward", path, missing, unexpected, shapes)
            + f"\nImageReward.pt keys are blip.visual_encoder.*, blip.text_encoder.* and "
            f"mlp.layers.*; a tiny or custom model needs blip_config to match ({path})."
        )
    load_state_dict_strict(model, renamed, path)
