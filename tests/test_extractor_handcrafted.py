"""handcrafted: documented width, and each statistic moves the right way on synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest

from aigvqa.extractors import create_extractor, extract_video, handcrafted
from aigvqa.extractors.decode import write_video
from aigvqa.extractors.handcrafted import FEATURE_NAMES, pair_features
from aigvqa.extractors.registry import ExtractorConfigError
from aigvqa.extractors.synthetic import moving_pattern

INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def feature(row, name):
    return float(row[INDEX[name]])


@pytest.fixture(scope="module")
def texture():
    """A sharp, colourful 96 x 128 frame (blocky random texture)."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(30, 226, size=(12, 16, 3))
    return np.kron(blocks, np.ones((8, 8, 1))).astype(np.uint8)


def blur(frame, k=7):
    import cv2

    return cv2.GaussianBlur(frame, (k, k), 0)


def test_output_width_matches_feature_names_on_a_video(tmp_path):
    write_video(tmp_path / "v.mp4", moving_pattern(12, 64, 80), fps=6)
    extractor = create_extractor("handcrafted", max_frames=5)
    features = extract_video(tmp_path / "v.mp4", [extractor])["handcrafted"]
    assert features.shape == (5, len(FEATURE_NAMES)) == (5, 14)
    assert extractor.output_dims() == {"values": 14}
    assert np.isfinite(features).all()
    assert extractor.provenance()["weights"] == "none: handcrafted"
    assert extractor.provenance()["view"] == {"max_frames": 5, "size": 256}


def test_blur_lowers_sharpness(texture):
    sharp = pair_features(texture, texture)
    blurred = pair_features(blur(texture), blur(texture))
    assert feature(blurred, "sharpness_laplacian_var") < 0.5 * feature(
        sharp, "sharpness_laplacian_var"
    )


def test_noise_raises_the_noise_estimate_and_breaks_mscn_structure(texture):
    smooth = blur(texture, 9)
    rng = np.random.default_rng(1)
    noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    clean_row, noisy_row = pair_features(smooth, smooth), pair_features(noisy, noisy)
    assert feature(noisy_row, "noise_sigma_immerkaer") > 3 * feature(
        clean_row, "noise_sigma_immerkaer"
    )
    assert feature(noisy_row, "noise_sigma_immerkaer") == pytest.approx(12, rel=0.35)
    assert feature(noisy_row, "mscn_pair_h_mean") < feature(clean_row, "mscn_pair_h_mean")


def test_flicker_raises_frame_difference_and_luminance_change(texture):
    steady = pair_features(texture, texture)
    brighter = np.clip(texture.astype(int) + 40, 0, 255).astype(np.uint8)
    flicker = pair_features(texture, brighter)
    assert feature(steady, "flicker_mean_abs_diff") == 0 == feature(steady, "luminance_change")
    assert feature(flicker, "flicker_mean_abs_diff") > 0.1
    assert feature(flicker, "luminance_change") > 0.1


@pytest.mark.parametrize("method", ["farneback", "numpy-bm"])
def test_motion_raises_flow_magnitude(method):
    rng = np.random.default_rng(2)
    scene = blur(np.kron(rng.integers(0, 256, (40, 40, 3)), np.ones((4, 4, 1))).astype(np.uint8), 5)
    base = scene[20:116, 20:148]
    small_shift = scene[22:118, 22:150]
    large_shift = scene[26:122, 26:154]
    still = feature(pair_features(base, base, method), "flow_mag_mean")
    small = feature(pair_features(base, small_shift, method), "flow_mag_mean")
    large = feature(pair_features(base, large_shift, method), "flow_mag_mean")
    assert still < 0.05 < small < large


def test_colourfulness_contrast_and_brightness(texture):
    grey = np.repeat(texture.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    flat = np.full_like(texture, 128)
    colour_row, grey_row, flat_row = (pair_features(f, f) for f in (texture, grey, flat))
    assert feature(grey_row, "colourfulness") < 1.0 < feature(colour_row, "colourfulness")
    assert feature(flat_row, "contrast_rms") == 0 < feature(grey_row, "contrast_rms")
    assert feature(flat_row, "brightness_mean") == pytest.approx(128 / 255, abs=1e-3)


def test_scipy_path_matches_opencv_on_spatial_statistics(texture, monkeypatch):
    with_cv2 = pair_features(texture, blur(texture), "numpy-bm")
    monkeypatch.setattr(handcrafted, "cv2", None)
    without_cv2 = pair_features(texture, blur(texture), "numpy-bm")
    np.testing.assert_allclose(without_cv2, with_cv2, rtol=1e-3, atol=1e-4)
    assert create_extractor("handcrafted").config()["flow_method"] == "numpy-bm"
    with pytest.raises(ExtractorConfigError, match="needs OpenCV"):
        create_extractor("handcrafted", flow_method="farneback")


def test_flow_method_is_resolved_and_validated():
    assert create_extractor("handcrafted").config()["flow_method"] == "farneback"
    with pytest.raises(ExtractorConfigError, match="flow_method"):
        create_extractor("handcrafted", flow_method="raft")


def test_forward_refuses_non_pairs():
    extractor = create_extractor("handcrafted")
    extractor.load()
    with pytest.raises(ValueError, match="frame pairs"):
        extractor.forward(np.zeros((2, 8, 8, 3), np.uint8))
