"""ImageReward: ``imagereward``, the reward of every sampled frame for the video's prompt.

The same BLIP backbone as ``blip-itm`` (``aigvqa.extractors.blip``: vision ViT +
cross-attention text encoder; the model cache, tokenizers and per-frame prompt encoding
are shared from there) with ImageReward's reward MLP on the text encoder's [CLS] state
(widths 768 -> 1024 -> 128 -> 64 -> 16 -> 1, no activation between the layers, as
published), normalised as ImageReward does: ``(r - 0.16717362830052426) / 1.0333394966054072``.
``needs_prompt = True``: the runner hands ``forward`` one prompt per item.

Weights are ImageReward's own checkpoint file, ``ImageReward.pt``: a state dict keyed ``blip.*``
(BLIP's original names: ``blip.visual_encoder.blocks.N.attn.qkv.weight``,
``blip.text_encoder.encoder.layer.N.crossattention...``) and ``mlp.layers.{0,2,4,6,7}.*``;
the keys are renamed onto transformers' modules on load (``_imagereward_key``), every
tensor must be used, and only ImageReward's unused ITC projections (``blip.vision_proj``,
``blip.text_proj``) and ``position_ids`` buffers may be left over. The architecture is
ImageReward's (ViT-L/16 at 224 with LayerNorm eps 1e-6, BERT-base with cross-attention
over 1024-wide image tokens), given as data in ``IMAGEREWARD_CONFIG``.

Weights (first match wins; see ``weights.resolve_weights``): ``weights=<ImageReward.pt>``
(or a folder holding it); ``$AIGVQA_WEIGHTS/imagereward/ImageReward.pt``; the HF hub cache
of ``THUDM/ImageReward``; ``~/.cache/ImageReward/ImageReward.pt`` (where the
``image-reward`` package downloads it). Its tokenizer (bert-base-uncased, which the
checkpoint does not hold): the ``tokenizer`` option (a folder with ``tokenizer.json`` /
``vocab.txt``, or a ``vocab.txt`` file), else tokenizer files beside the checkpoint, else
the HF hub cache of ``google-bert/bert-base-uncased``. Nothing is downloaded; a miss is an
error naming every place searched.

Random weights (``random_init=True``; tests and benchmarks, stamped RANDOM-INIT):
``blip_config`` (a dict of ``BlipConfig`` keyword overrides of ``IMAGEREWARD_CONFIG``, e.g.
a tiny ``{"vision_config": {...}, "text_config": {...}}``) shapes the model; with no
tokenizer files, a stand-in tokenizer hashes words to ids. With real weights it must
describe the checkpoint's architecture (a mismatch is a CheckpointMismatchError).

Output: view ``UniformFramesView(n=n_frames, size=224, resize_mode="crop")`` (ImageReward
resizes the short side and centre-crops); one row per frame, [1], the normalised reward.
Prompts are tokenised to ``max_tokens`` (35, as ImageReward does) and padded to that length.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors.base import RANDOM_INIT
from aigvqa.extractors.blip import (
    BERT_REPOS,
    OPENAI_MEAN,
    OPENAI_STD,
    TOKENIZER_FILES,
    BlipBackbone,
    BlipModel,
    blip_config,
    file_tokenizer,
    has_tokenizer,
    square_size,
    stand_in_tokenizer,
)
from aigvqa.extractors.registry import register_extractor
from aigvqa.extractors.weights import (
    Candidate,
    format_checkpoint_mismatch,
    hf_cache_candidate,
    load_state_dict_file,
    load_state_dict_strict,
    random_init_context,
    resolve_weights,
    weights_identity,
    weights_root,
)

IMAGEREWARD_FILE = "ImageReward.pt"
IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
IMAGEREWARD_CONFIG: dict[str, Any] = {
    # ImageReward's BLIP: ViT-L/16 at 224 (timm-style blocks, LayerNorm eps 1e-6) and a
    # BERT-base text encoder (BLIP's med_config: vocabulary 30524 with [DEC] and [ENC])
    # whose cross-attention reads the 1024-wide image tokens.
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 16,
        "layer_norm_eps": 1e-6,
    },
    "text_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "vocab_size": 30524,
        "max_position_embeddings": 512,
        "layer_norm_eps": 1e-12,
    },
    "image_text_hidden_size": 256,
}
REWARD_WIDTHS = (1024, 128, 64, 16, 1)
"""ImageReward's MLP after its input (the text width, 768): five Linear layers stored at
``mlp.layers.{0,2,4,6,7}`` (Dropout at 1, 3, 5), no activation between them."""
REWARD_LINEAR_INDICES = (0, 2, 4, 6, 7)
IMAGEREWARD_UNUSED_PREFIXES = ("blip.vision_proj.", "blip.text_proj.")


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


# -- ImageReward.pt onto transformers' modules ------------------------------------------------
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
        return "mlp." + key[len("mlp.layers.") :]
    if not key.startswith("blip."):
        return key  # left as is: the strict load reports it as unexpected
    name = key[len("blip.") :]
    if name.startswith("text_encoder."):
        return name  # BLIP's med.py BERT and transformers' BlipTextModel share the names
    for old, new in _VISION_RENAMES:
        if name.startswith(old):
            name = new + name[len(old) :]
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
class ImageRewardFrames(BlipBackbone):
    """ImageReward's normalised reward of every sampled frame for the video's prompt: [1]."""

    needs_prompt = True
    defaults: ClassVar[dict[str, Any]] = {
        "n_frames": 16,
        "tokenizer": None,
        "blip_config": None,  # overrides of IMAGEREWARD_CONFIG (tests: a tiny model)
        "max_tokens": 35,
    }

    def model_config(self):
        if getattr(self, "blip_", None) is not None:
            return self.blip_.model.config
        return blip_config(_merged_config(IMAGEREWARD_CONFIG, self["blip_config"]))

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
                Candidate(
                    f"image-reward package download cache ({download_cache.parent})", download_cache
                ),
            ],
            how_to_get=(
                f"Real weights: {IMAGEREWARD_FILE} from the Hugging Face repo {IMAGEREWARD_REPO} "
                "(huggingface_hub.hf_hub_download on a machine with internet)."
            ),
        )

    def find_weights(self) -> list[Path]:
        if self["random_init"]:
            return []
        checkpoint = self.resolve_weights()
        return [checkpoint, self.resolve_tokenizer(checkpoint)]

    def resolve_tokenizer(self, checkpoint: Path) -> Path:
        """The tokenizer folder or vocab.txt (the ``tokenizer`` option, else beside the
        checkpoint, else bert-base-uncased in the HF hub cache)."""
        searched = []
        explicit = self["tokenizer"]
        if explicit:
            path = Path(explicit).expanduser()
            if path.is_file() or has_tokenizer(path):
                return path
            raise WeightsNotFoundError(
                f"tokenizer={explicit!r} for extractor {self.name!r} is neither a vocab.txt file "
                "nor "
                f"a folder holding {' or '.join(TOKENIZER_FILES)}. Fix: point it at "
                "bert-base-uncased's tokenizer files."
            )
        places = [checkpoint.parent]
        root = weights_root()
        if root is not None:
            places.append(root / self.name)
        for folder in dict.fromkeys(places):
            if has_tokenizer(folder):
                return folder
            searched.append(f"{folder}/{{{', '.join(TOKENIZER_FILES)}}}")
        for repo in BERT_REPOS:
            candidate = hf_cache_candidate(repo, "vocab.txt")
            if candidate.exists():
                return candidate.path.parent
            searched.append(candidate.where)
        raise WeightsNotFoundError(
            f"no tokenizer found for extractor {self.name!r} (ImageReward uses "
            "bert-base-uncased's, "
            "which ImageReward.pt does not hold). Searched:\n"
            + "\n".join(f"  - {place}" for place in searched)
            + "\nFix: put bert-base-uncased's vocab.txt (or tokenizer.json) beside "
            f"{checkpoint.name}, "
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
        self.load_shared_model(key, lambda: self._build(checkpoint, tokenizer))

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
        tokenize = (
            stand_in_tokenizer(max_tokens, vocab)
            if tokenizer is None
            else file_tokenizer(tokenizer, max_tokens, vocab, "ImageReward")
        )
        return BlipModel(
            model,
            identity,
            OPENAI_MEAN,
            OPENAI_STD,
            square_size(config.vision_config.image_size),
            tokenize,
        )

    def forward(self, items: np.ndarray, prompts: list[str] | None = None) -> np.ndarray:
        import torch

        with torch.inference_mode(), self.autocast():
            image_embeds, ids, mask, rows = self.encode_frames_and_prompts(items, prompts)
            states = self.text_states(ids[rows], mask[rows], image_embeds)
        with torch.inference_mode():  # the small reward MLP in float32, outside autocast
            reward = self.blip_.model.mlp(states[:, 0].float())
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
