"""``handcrafted``: classical per-frame quality statistics, no weights.

View: ``FramePairsView(max_frames, size)``: up to ``max_frames`` consecutive pairs
(t, t+1) spread over the video, shrunk (never enlarged) to a short side of ``size``
pixels. Each pair gives one row of ``FEATURE_NAMES`` (d = 14) computed on the luma
(BT.601, 0..255 float) of frame t+1 (spatial) and of both frames (temporal):

==========================  =================================================================
sharpness_laplacian_var     variance of the 4-neighbour Laplacian (blur lowers it)
noise_sigma_immerkaer       Immerkaer (1996) fast noise sigma: sqrt(pi/2) / (6 (W-2)(H-2)) *
                            sum |I * [[1,-2,1],[-2,4,-2],[1,-2,1]]|  (grey levels)
colourfulness               Hasler & Suesstrunk (2003) on RGB: sigma_rgyb + 0.3 mu_rgyb
contrast_rms                standard deviation of luma / 255
brightness_mean             mean luma / 255
mscn_mean, mscn_var,        BRISQUE mean-subtracted contrast-normalised coefficients
mscn_kurtosis               (I - mu) / (sigma + 1), mu/sigma by a 7x7 Gaussian (sigma 7/6);
                            kurtosis is E[x^4] / var^2 (3 for a Gaussian)
mscn_pair_h_mean,           mean of the products of horizontally / vertically adjacent
mscn_pair_v_mean            MSCN coefficients (structure; noise drives them to 0)
flicker_mean_abs_diff       mean |luma(t+1) - luma(t)| / 255
luminance_change            |mean luma(t+1) - mean luma(t)| / 255 (global flicker)
flow_mag_mean, flow_mag_std dense optical flow t -> t+1 magnitude on the lumas averaged
                            over 2x2 blocks, in pixels of that half resolution: OpenCV
                            Farneback, or numpy block matching (8x8 blocks, +-4 pixels)
                            when OpenCV is missing
==========================  =================================================================

The flow method is part of the configuration (``flow_method``: "auto" resolves to
"farneback" when OpenCV imports, else "numpy-bm", and ``config()`` records the resolved
name), so caches made with different methods are never mixed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from aigvqa.extractors.registry import (
    ConfiguredExtractor,
    ExtractorConfigError,
    register_extractor,
)

try:
    import cv2
except ImportError:  # the numpy/scipy paths below take over; flow_method records it
    cv2 = None

FEATURE_NAMES: tuple[str, ...] = (
    "sharpness_laplacian_var",
    "noise_sigma_immerkaer",
    "colourfulness",
    "contrast_rms",
    "brightness_mean",
    "mscn_mean",
    "mscn_var",
    "mscn_kurtosis",
    "mscn_pair_h_mean",
    "mscn_pair_v_mean",
    "flicker_mean_abs_diff",
    "luminance_change",
    "flow_mag_mean",
    "flow_mag_std",
)
WEIGHTS_IDENTITY = "none: handcrafted"
FLOW_METHODS = ("farneback", "numpy-bm")

_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float32)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _gaussian_kernel(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


_GAUSS = _gaussian_kernel()


# -- image operations (OpenCV, or scipy with the same kernels and reflect-101 borders) ------
def _correlate(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    if cv2 is not None:
        return cv2.filter2D(image, cv2.CV_32F, kernel, borderType=cv2.BORDER_REFLECT_101)
    from scipy.ndimage import correlate

    return correlate(image, kernel, mode="mirror")


def _gaussian_blur(image: np.ndarray) -> np.ndarray:
    if cv2 is not None:
        return cv2.sepFilter2D(image, cv2.CV_32F, _GAUSS, _GAUSS, borderType=cv2.BORDER_REFLECT_101)
    from scipy.ndimage import correlate1d

    return correlate1d(
        correlate1d(image, _GAUSS, axis=0, mode="mirror"), _GAUSS, axis=1, mode="mirror"
    )


def luma(frame: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 frame as float32 in 0..255."""
    return frame.astype(np.float32) @ _LUMA


# -- spatial statistics ---------------------------------------------------------------------
def laplacian_variance(gray: np.ndarray) -> float:
    return float(_correlate(gray, _LAPLACIAN).var())


def immerkaer_noise_sigma(gray: np.ndarray) -> float:
    height, width = gray.shape
    if height < 3 or width < 3:
        return 0.0
    response = _correlate(gray, _IMMERKAER)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(response).sum() / (6.0 * (width - 2) * (height - 2)))


def colourfulness(frame: np.ndarray) -> float:
    rgb = frame.astype(np.float32)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def mscn_statistics(gray: np.ndarray) -> tuple[float, float, float, float, float]:
    """(mean, var, kurtosis, horizontal pair mean, vertical pair mean) of MSCN coefficients."""
    mu = _gaussian_blur(gray)
    sigma = np.sqrt(np.abs(_gaussian_blur(gray * gray) - mu * mu))
    mscn = (gray - mu) / (sigma + 1.0)
    mean = float(mscn.mean())
    centred_sq = np.square(mscn - mean)
    var = float(centred_sq.mean())
    kurtosis = float(np.square(centred_sq).mean() / var**2) if var > 1e-12 else 0.0
    pair_h = float((mscn[:, :-1] * mscn[:, 1:]).mean()) if mscn.shape[1] > 1 else 0.0
    pair_v = float((mscn[:-1, :] * mscn[1:, :]).mean()) if mscn.shape[0] > 1 else 0.0
    return mean, var, kurtosis, pair_h, pair_v


# -- optical flow ---------------------------------------------------------------------------
def farneback_flow(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Dense flow [H, W, 2] from ``prev`` to ``cur`` (grey float32 0..255), OpenCV Farneback."""
    return cv2.calcOpticalFlowFarneback(
        prev.astype(np.uint8),
        cur.astype(np.uint8),
        None,
        pyr_scale=0.5,
        levels=3,
        winsize=15,
        iterations=3,
        poly_n=5,
        poly_sigma=1.2,
        flags=0,
    )


def block_matching_flow(
    prev: np.ndarray, cur: np.ndarray, block: int = 8, radius: int = 4
) -> np.ndarray:
    """Integer motion of each ``block`` x ``block`` block of ``prev`` found in ``cur`` by
    exhaustive search within +-``radius`` pixels (sum of absolute differences; a tiny
    penalty on the displacement makes flat blocks report 0): [H//block, W//block, 2].
    Coarser than Farneback but dependency-free and monotone in motion up to ``radius``.
    """
    prev = prev.astype(np.float32)
    cur = cur.astype(np.float32)
    rows, cols = prev.shape[0] // block, prev.shape[1] // block
    if rows == 0 or cols == 0:
        return np.zeros((1, 1, 2), dtype=np.float32)
    height, width = rows * block, cols * block
    padded = np.pad(cur, radius, mode="edge")
    shifts = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    costs = np.empty((len(shifts), rows, cols), dtype=np.float32)
    for k, (dy, dx) in enumerate(shifts):
        moved = padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        sad = (
            np.abs(moved - prev[:height, :width]).reshape(rows, block, cols, block).sum(axis=(1, 3))
        )
        costs[k] = sad * (1.0 + 1e-3 * np.hypot(dy, dx))
    best = costs.argmin(axis=0)
    table = np.asarray(shifts, dtype=np.float32)[:, ::-1]  # (dx, dy) like OpenCV's flow
    return table[best]


def half_size(gray: np.ndarray) -> np.ndarray:
    """2 x 2 block average (flow runs at half the view's resolution: 5x cheaper)."""
    rows, cols = gray.shape[0] // 2, gray.shape[1] // 2
    if rows == 0 or cols == 0:
        return gray
    if cv2 is not None:  # INTER_AREA at exactly 1/2 is the 2 x 2 mean, computed faster
        return cv2.resize(gray[: 2 * rows, : 2 * cols], (cols, rows), interpolation=cv2.INTER_AREA)
    return gray[: 2 * rows, : 2 * cols].reshape(rows, 2, cols, 2).mean(axis=(1, 3))


# -- one pair -------------------------------------------------------------------------------
def pair_features(prev: np.ndarray, cur: np.ndarray, flow_method: str = "farneback") -> np.ndarray:
    """The ``FEATURE_NAMES`` row [14] float32 of one RGB uint8 frame pair (prev, cur)."""
    gray_prev, gray_cur = luma(prev), luma(cur)
    mscn = mscn_statistics(gray_cur)
    half_prev, half_cur = half_size(gray_prev), half_size(gray_cur)
    flow = (
        farneback_flow(half_prev, half_cur)
        if flow_method == "farneback"
        else block_matching_flow(half_prev, half_cur)
    )
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    row = (
        laplacian_variance(gray_cur),
        immerkaer_noise_sigma(gray_cur),
        colourfulness(cur),
        float(gray_cur.std() / 255.0),
        float(gray_cur.mean() / 255.0),
        *mscn,
        float(np.abs(gray_cur - gray_prev).mean() / 255.0),
        float(abs(gray_cur.mean() - gray_prev.mean()) / 255.0),
        float(magnitude.mean()),
        float(magnitude.std()),
    )
    return np.asarray(row, dtype=np.float32)


@register_extractor("handcrafted")
class Handcrafted(ConfiguredExtractor):
    """Classical quality statistics per frame pair: [pairs, len(FEATURE_NAMES)] (module doc)."""

    # Laplacian variance grows with noise and resolution (x 20 the pixel variance on a
    # noisy frame) and leaves float16's +-65504: these statistics are stored as float32.
    cache_dtype = "float32"

    defaults: ClassVar[dict[str, Any]] = {
        "max_frames": 64,
        "size": 256,
        "flow_method": "auto",
        "batch_size": 16,
        "device": "cpu",  # accepted for a uniform config; everything runs on the CPU
    }

    def __init__(self, **config: Any) -> None:
        if config.get("flow_method", "auto") == "auto":
            config["flow_method"] = "farneback" if cv2 is not None else "numpy-bm"
        super().__init__(**config)

    def validate_config(self) -> None:
        super().validate_config()
        if self["flow_method"] not in FLOW_METHODS:
            raise ExtractorConfigError(
                f"extractor 'handcrafted': flow_method must be 'auto' or one of "
                f"{', '.join(FLOW_METHODS)}, got {self['flow_method']!r}"
            )
        if self["flow_method"] == "farneback" and cv2 is None:
            raise ExtractorConfigError(
                "extractor 'handcrafted': flow_method='farneback' needs OpenCV "
                "(pip install opencv-python-headless) or use flow_method='numpy-bm'"
            )

    def view(self):
        from aigvqa.extractors.views import FramePairsView

        return FramePairsView(max_frames=self["max_frames"], size=self["size"])

    def output_dims(self) -> dict[str, int]:
        return {"values": len(FEATURE_NAMES)}

    def feature_names(self) -> list[str]:
        return list(FEATURE_NAMES)

    def load(self, device: str = "cpu") -> None:
        self.weights_identity = WEIGHTS_IDENTITY

    def forward(self, items: np.ndarray) -> np.ndarray:
        """items [B, 2, H, W, 3] uint8 -> [B, len(FEATURE_NAMES)] float32."""
        if items.ndim != 5 or items.shape[1] != 2:
            raise ValueError(f"handcrafted expects frame pairs [B, 2, H, W, 3], got {items.shape}")
        return np.stack([pair_features(p, c, self["flow_method"]) for p, c in items])
