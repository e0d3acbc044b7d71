"""One module per CLI verb (see aigvqa.pipeline.cli)."""
