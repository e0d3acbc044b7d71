"""The model lifecycle: train a head on a cache, save / load it as a bundle, score videos.

Reads training data through ``aigvqa.pipeline.training_data``; never imports
``aigvqa.pipeline.evaluation`` (tests/test_import_rules.py checks it).
"""
