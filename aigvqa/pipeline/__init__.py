"""Manifests, stage-one orchestration on Dask, evaluation, ablation, scoring, the CLI."""
