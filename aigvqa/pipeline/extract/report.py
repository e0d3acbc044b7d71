"""What a stage-one run did: ``ExtractReport`` (client side)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExtractReport:
    """What a run did, per video (a video counts once, whatever the number of extractors).

    ``succeeded``: videos computed by this run with no failure; ``failed``: videos with at
    least one failure row from this run; ``skipped``: videos the cache already held for
    every requested group; ``resumed``: videos recovered from shards an interrupted run
    left behind (merged, not recomputed). ``decode_workers``: decode processes beside each
    model worker (0: decoding ran in the model workers).
    """

    cache: Path
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0
    prompts_encoded: int = 0
    prompts_skipped: int = 0
    shards_written: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    cluster: str = ""
    decode_workers: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed + self.skipped + self.resumed

    def summary(self) -> str:
        lines = [
            f"{self.total} videos: {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.skipped} skipped (already cached)"
            + (f", {self.resumed} resumed from an interrupted run" if self.resumed else ""),
        ]
        if self.prompts_encoded or self.prompts_skipped:
            lines.append(
                f"prompts: {self.prompts_encoded} encoded, {self.prompts_skipped} already cached"
            )
        decoders = (
            f", {self.decode_workers} decode process(es) per worker" if self.decode_workers else ""
        )
        lines.append(f"cache: {self.cache} ({self.seconds:.1f} s on {self.cluster}{decoders})")
        shown = self.failures[:10]
        for video_id, extractor, error in shown:
            lines.append(f"  failed {video_id} [{extractor}]: {first_line(error)}")
        if len(self.failures) > len(shown):
            lines.append(
                f"  ... {len(self.failures) - len(shown)} more failure rows: "
                f"`aigvqa info {self.cache}` lists them"
            )
        return "\n".join(lines)


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
