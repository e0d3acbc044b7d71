"""BLIP image-text matching: ``blip-itm``, ``blip-text``; the BLIP backbone ``imagereward`` uses.

Text-video alignment the way the AIGC papers measure it (the NTIRE 2024 AIGC-VQA winner
built its alignment branch on BLIP / ImageReward image-text matching): every sampled frame
is scored *against the video's prompt*. ``blip-itm`` (and ``imagereward``, in
``aigvqa.extractors.imagereward``) are video extractors with ``needs_prompt = True``: the
runner hands ``forward`` one prompt per item.

This module also holds what ImageReward shares with BLIP (``BlipBackbone``: option checks,
the per-process model cache, the text encoder, frames and prompts encoded for a forward
pass; the tokenizers; ``BlipModel``), so a new BLIP-based extractor is one more file.

Models
------
``blip-itm`` / ``blip-text``: transformers' ``BlipForImageTextRetrieval`` (vision ViT,
BERT text encoder with cross-attention, ``vision_proj`` / ``text_proj`` into the joint ITC
space, the binary ``itm_head``). Weights are a ``save_pretrained`` folder (``config.json``
+ ``model.safetensors`` / ``pytorch_model.bin`` + the tokenizer files), e.g. a snapshot of
``Salesforce/blip-itm-base-coco`` (ViT-B/16 at 384) or ``-large-coco``.

Weights (first match wins; see ``weights.resolve_weights``)
-------------------------------------------------------------
``blip-itm``: ``weights=<folder>``; ``$AIGVQA_WEIGHTS/blip-itm/`` holding ``config.json``;
the Hugging Face hub cache snapshot of ``arch`` (default ``Salesforce/blip-itm-base-coco``).
``blip-text`` looks in ``$AIGVQA_WEIGHTS/blip-text/`` then ``blip-itm/`` (one model).
Nothing is downloaded; a miss is an error naming every place searched.

Random weights (``random_init=True``; tests and benchmarks, stamped RANDOM-INIT):
``blip_config`` (a dict of ``BlipConfig`` keyword overrides, e.g. a tiny
``{"vision_config": {...}, "text_config": {...}}``) shapes the model, default the full
size (``BlipConfig()``, i.e. ViT-B/16 at 384 like blip-itm-base-coco). With no tokenizer
files, a stand-in tokenizer hashes words to ids (as meaningless as the weights, but the
compute is the same). A blip-itm folder brings its own config, so ``blip_config`` is
refused there.

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

Prompts are tokenised to ``max_tokens`` (35, as BLIP's ITM does) and padded to that
length. The models are cached per process (``clear_model_cache`` forgets them, ImageReward's
included), so blip-itm and blip-text on one folder share one model.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors.base import RANDOM_INIT, SharedModels
from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.weights import (
    announce_random_init,
    from_pretrained_checked,
    random_init_context,
    resolve_hf_folder,
    weights_identity,
)

DEFAULT_ARCH = "Salesforce/blip-itm-base-coco"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
BERT_REPOS = ("google-bert/bert-base-uncased", "bert-base-uncased")


@dataclass
class BlipModel:
    """A loaded BLIP model with what the extractors need to use it."""

    model: Any  # BlipForImageTextRetrieval, or the reward module (vision_model, text_encoder, mlp)
    identity: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    tokenize: Any  # list[str] -> (ids LongTensor [n, L], mask LongTensor [n, L])


_MODELS = SharedModels()
clear_model_cache = _MODELS.clear


# -- configuration ---------------------------------------------------------------------------
def blip_config(kwargs: dict[str, Any]):
    from transformers import BlipConfig

    try:
        return BlipConfig(**kwargs)
    except Exception as exc:  # noqa: BLE001 - TypeError, ValueError or huggingface_hub's StrictDataclassError
        raise ExtractorConfigError(
            f"blip_config {kwargs!r} is not a valid BlipConfig: {exc}"
        ) from exc


def square_size(size: Any) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ExtractorConfigError(f"non-square BLIP image size {size} is not supported")
        size = size[0]
    return int(size)


# -- tokenizers ------------------------------------------------------------------------------
def has_tokenizer(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in TOKENIZER_FILES)


def file_tokenizer(path: Path, max_tokens: int, vocab_size: int, source: str):
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
        batch = tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    return tokenize


def stand_in_tokenizer(max_tokens: int, vocab_size: int):
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


def prompt_rows(extractor, prompts, n: int) -> tuple[list[str], list[int]]:
    """(distinct prompts, row of each item): each distinct prompt is tokenised once."""
    if prompts is None or len(prompts) != n:
        raise ValueError(
            f"extractor {extractor.name!r} scores frames against prompts: forward(items, prompts) "
            f"needs one prompt per item ({n} items, got "
            f"{None if prompts is None else len(prompts)})"
        )
    unique = list(dict.fromkeys(prompts))
    index = {p: i for i, p in enumerate(unique)}
    return unique, [index[p] for p in prompts]


# -- what every BLIP-based extractor shares ---------------------------------------------------
class BlipBackbone(TorchExtractor):
    """A BLIP vision ViT + cross-attention text encoder behind an extractor (blip-itm,
    blip-text, imagereward): option checks, the per-process model cache, the encoders."""

    blip_: BlipModel

    def validate_config(self) -> None:
        super().validate_config()
        config = self.config()
        if config.get("blip_config") is not None and not isinstance(config["blip_config"], dict):
            raise ExtractorConfigError(
                f"extractor {self.name!r}: blip_config must be a table of BlipConfig options "
                f"(e.g. {{vision_config = {{hidden_size = 64}}}}), got {config['blip_config']!r}"
            )
        max_tokens = config.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 3:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: max_tokens must be an int >= 3, got {max_tokens!r}"
            )
        n_frames = config.get("n_frames", 1)
        if not isinstance(n_frames, int) or n_frames < 1:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: n_frames must be a positive int, got {n_frames!r}"
            )

    def model_config(self):
        """The ``BlipConfig`` of the model (known without building it)."""
        raise NotImplementedError

    def image_size(self) -> int:
        return square_size(self.model_config().vision_config.image_size)

    def load_shared_model(self, key: tuple, build: Callable[[], BlipModel]) -> None:
        """The model cached under ``key`` in this process, built (and moved to the device)
        by ``build`` the first time: extractors whose keys match share one model."""

        def prepared() -> BlipModel:
            blip = build()
            blip.model = self.prepare_module(blip.model)
            return blip

        blip = _MODELS.get(key, prepared)
        if blip.identity == RANDOM_INIT:
            announce_random_init(self.name)
        self.blip_ = blip
        self.weights_identity = blip.identity

    def text_states(self, ids, mask, image_embeds=None):
        """The BLIP text encoder's token states, text-only or attending to ``image_embeds``."""
        import torch

        encoder = self.blip_.model.text_encoder
        if image_embeds is None:
            return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        image_mask = torch.ones(
            image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device
        )
        return encoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state

    def encode_frames_and_prompts(self, items: np.ndarray, prompts: list[str] | None):
        """(image tokens [B, N, D], ids and mask of the distinct prompts [P, L], each item's
        prompt row [B]) on the device; call it inside inference_mode and autocast."""
        import torch

        unique, rows = prompt_rows(self, prompts, len(items))
        blip = self.blip_
        pixels = self.images_to_tensor(items, blip.mean, blip.std)
        image_embeds = blip.model.vision_model(pixel_values=pixels).last_hidden_state
        ids, mask = blip.tokenize(unique)
        rows_t = torch.as_tensor(rows, device=self.device_)
        return image_embeds, ids.to(self.device_), mask.to(self.device_), rows_t


# -- blip-itm / blip-text --------------------------------------------------------------------
class _BlipFamily(BlipBackbone):
    """Options and model loading shared by blip-itm and blip-text (one folder, one model)."""

    defaults: ClassVar[dict[str, Any]] = {
        "arch": DEFAULT_ARCH,  # the HF repo id: only used to find the folder in the HF cache
        "blip_config": None,
        "max_tokens": 35,
    }
    weights_folders: ClassVar[tuple[str, ...]] = ("blip-itm",)

    def validate_config(self) -> None:
        super().validate_config()
        if self["blip_config"] is not None and not self["random_init"]:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: blip_config shapes a random-init model only; a "
                "weights folder brings its own config.json (drop blip_config, or add "
                "random_init=True)"
            )

    def resolve_weights(self) -> Path:
        """The ``save_pretrained`` folder this extractor would load."""
        return resolve_hf_folder(
            self.name,
            self["weights"],
            self["arch"],
            how_to_get=(
                f"Real weights: on a machine with internet, huggingface_hub.snapshot_download("
                f"{self['arch']!r}) and copy the snapshot folder (config.json, model.safetensors, "
                "tokenizer files)."
            ),
            env_folders=self.weights_folders,
        )

    def model_config(self):
        if getattr(self, "blip_", None) is not None:
            return self.blip_.model.config
        if self["random_init"]:
            return blip_config(self["blip_config"] or {})
        from transformers import BlipConfig

        return BlipConfig.from_pretrained(self.resolve_weights(), local_files_only=True)

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
        self.load_shared_model(key, lambda: _build_itm(self, folder))


def _build_itm(extractor: _BlipFamily, folder: Path | None) -> BlipModel:
    from transformers import BlipForImageTextRetrieval

    if folder is None:
        config = blip_config(extractor["blip_config"] or {})
        with random_init_context():
            model = BlipForImageTextRetrieval(config)
        identity = RANDOM_INIT
    else:
        model = from_pretrained_checked(BlipForImageTextRetrieval, folder)
        identity = weights_identity(folder)
    config = model.config
    mean, std = OPENAI_MEAN, OPENAI_STD
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
    max_tokens, vocab = int(extractor["max_tokens"]), int(config.text_config.vocab_size)
    if folder is None:
        tokenize = stand_in_tokenizer(max_tokens, vocab)
    elif has_tokenizer(folder):
        tokenize = file_tokenizer(folder, max_tokens, vocab, "BLIP")
    else:
        raise WeightsNotFoundError(
            f"BLIP folder {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}). Fix: "
            "copy them from the model's snapshot (the processor's "
            "tokenizer.save_pretrained(folder))."
        )
    return BlipModel(
        model, identity, mean, std, square_size(config.vision_config.image_size), tokenize
    )


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

        with torch.inference_mode(), self.autocast():
            image_embeds, ids, mask, rows = self.encode_frames_and_prompts(items, prompts)
            model = self.blip_.model
            text = F.normalize(model.text_proj(self.text_states(ids, mask)[:, 0]).float(), dim=-1)
            image = model.vision_proj(image_embeds[:, 0]).float()
            itc = (F.normalize(image, dim=-1) * text[rows]).sum(-1)
            joint = self.text_states(ids[rows], mask[rows], image_embeds)
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
            states = self.text_states(ids.to(self.device_), mask.to(self.device_))
            tokens = blip.model.text_proj(states)
        return {
            "pooled": tokens[:, 0].float().cpu().numpy(),
            "tokens": tokens.float().cpu().numpy(),
            "mask": mask.cpu().numpy().astype(bool),
        }


# ImageReward moved to its own family module; its names stay importable from here.
_MOVED_TO_IMAGEREWARD = frozenset(
    {
        "IMAGEREWARD_CONFIG",
        "IMAGEREWARD_FILE",
        "IMAGEREWARD_MEAN",
        "IMAGEREWARD_REPO",
        "IMAGEREWARD_STD",
        "IMAGEREWARD_UNUSED_PREFIXES",
        "REWARD_LINEAR_INDICES",
        "REWARD_WIDTHS",
        "ImageRewardFrames",
        "load_imagereward_checkpoint",
    }
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_IMAGEREWARD:
        from aigvqa.extractors import imagereward

        return getattr(imagereward, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
