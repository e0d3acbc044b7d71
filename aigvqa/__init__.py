"""aigvqa: offline quality assessment of AI-generated videos.

Stage one (`aigvqa.pipeline.extract`) decodes each video once, runs frozen backbones
(`aigvqa.extractors`) and caches features in HDF5 (`aigvqa.cache`). Stage two fits heads
(`aigvqa.heads`) on the cached arrays and evaluates them (`aigvqa.pipeline.evaluate`).
"""

__version__ = "0.1.0"
