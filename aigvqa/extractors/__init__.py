"""Decoding, views and the frozen backbones of stage one (knows nothing of HDF5).

One-call API::

    from aigvqa.extractors import create_extractor, extract_video, encode_prompts
    frames = create_extractor("clip-frames", arch="ViT-B-32", weights="ViT-B-32.pt")
    text = create_extractor("clip-text", arch="ViT-B-32", weights="ViT-B-32.pt")
    features = extract_video("clip.mp4", [frames])        # {"clip-frames": [16, 512]}
    prompt = encode_prompts(text, ["a cat surfing"])      # pooled / tokens / mask

Importing this package imports every family module, which registers its extractors, so
``list_extractors()`` sees them all. The family modules import their deep-learning
libraries lazily (inside ``load``), so this import stays cheap.
"""

from aigvqa.extractors.registry import (
    ExtractorConfigError,
    create_extractor,
    get_extractor_class,
    list_extractors,
    register_extractor,
)
from aigvqa.extractors.runner import encode_prompts, extract_video, run_stats

# Family modules: importing one registers its extractors (timm-style, one file per family).
from aigvqa.extractors import (  # noqa: E402,F401  isort: skip
    blip,
    clip,
    handcrafted,
    imagereward,
    sentence_text,
    slowfast,
    swin,
    timm_frames,
    torchvision_frames,
)

__all__ = [
    "ExtractorConfigError",
    "create_extractor",
    "encode_prompts",
    "extract_video",
    "get_extractor_class",
    "list_extractors",
    "register_extractor",
    "run_stats",
]
