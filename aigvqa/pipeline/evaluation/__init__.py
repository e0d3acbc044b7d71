"""Evaluation: metrics, splits, repeated-split evaluation, ablation grids and their reports.

Reads training data through ``aigvqa.pipeline.training_data``; never imports
``aigvqa.pipeline.model`` (tests/test_import_rules.py checks it).
"""
