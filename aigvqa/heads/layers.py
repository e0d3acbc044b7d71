"""Torch layers of the deep heads whose randomness and masking the heads control themselves.

- ``KeyedDropout``: dropout whose mask is a hash of (the fit's seed, epoch, step, layer,
  element coordinates) instead of a draw from torch's global generator. A trial's masks
  then depend on nothing but the trial itself: training trials one by one or together
  (``aigvqa.heads.trials``, under ``torch.func.vmap``) gives the same masks, and padded
  rows or time steps (a batch padded to a longer length) do not shift anyone's draws.
- ``MultiheadAttention``: ``nn.MultiheadAttention``'s parameter names and initialisation
  (saved bundles load unchanged), with attention written out (projections, masked softmax,
  keyed dropout on the weights) where it must be: when attention dropout is on (it must be
  keyed) and under ``vmap`` (``vectorised()``). Otherwise it calls
  ``scaled_dot_product_attention``, on CUDA restricted to the flash, memory-efficient and
  math backends: under bf16 autocast on an H200 the default choice can land on cuDNN
  attention, which builds a graph per new sequence length.
- ``TransformerEncoder`` / ``EncoderLayer``: pre-LN encoder with ``nn.TransformerEncoder``'s
  parameter names, built on the two above.
- The heads' building blocks: ``masked_mean`` / ``masked_std`` (pooling over the valid
  steps), ``sinusoidal_positions``, ``make_mlp``, ``Adapter`` and ``CrossAttentionBlock``
  (made of the layers above; ``heads.base`` re-exports them).

A key is set for the duration of a training forward pass with ``dropout_key(key)``;
without one (a module used outside a head's fit) ``KeyedDropout`` falls back to
``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

M32 = 0xFFFFFFFF
# odd multipliers below 2**27: a product with a 32-bit value stays below 2**59, so int64
# arithmetic never overflows (signed overflow is not something to rely on in kernels)
_MIX = 0x45D9F3B
_DIM_SALTS = (0x2F0F3B1, 0x1B873593 >> 4, 0x5BD1E99, 0x3C6EF37, 0x7F4A7C1, 0x61C8864)

_KEY: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "aigvqa_dropout_key", default=None
)
_VECTORISED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "aigvqa_vectorised", default=False
)


@contextlib.contextmanager
def vectorised():
    """Marks a forward pass run under ``torch.func.vmap`` (trials trained together), where
    attention is written out: scaled_dot_product_attention has no batching rule for its CPU
    backward and would fall back to a loop over the trials."""
    token = _VECTORISED.set(True)
    try:
        yield
    finally:
        _VECTORISED.reset(token)


def _cuda_sdpa_backends():
    """Flash, memory-efficient or math attention, never cuDNN attention: under bf16 on Hopper
    that backend builds a graph per new sequence length (a hypothesis for issue 12's 4x
    slower autocast epoch; see docs/benchmarks.md)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


def mix32(x):
    """A 32-bit integer hash (the "hash32" finaliser) on int64 tensors or Python ints in
    [0, 2**32): every output bit depends on every input bit."""
    x = ((x ^ (x >> 16)) * _MIX) & M32
    x = ((x ^ (x >> 16)) * _MIX) & M32
    return x ^ (x >> 16)


def fold_key(*parts: int) -> int:
    """One 32-bit key from integers (seed, epoch, step, ...): a hash chain, on the host."""
    h = 0x9E3779B9
    for p in parts:
        p = int(p)
        for word in (p & M32, (p >> 32) & M32):
            h = mix32((h + mix32(word ^ 0x85EBCA6B)) & M32)
    return h


@contextlib.contextmanager
def dropout_key(key: torch.Tensor | int | None):
    """Within this block, ``KeyedDropout`` layers draw their masks from ``key`` (an int64
    scalar tensor; under ``vmap`` one per trial)."""
    if key is not None and not isinstance(key, torch.Tensor):
        key = torch.tensor(int(key), dtype=torch.int64)
    token = _KEY.set(key)
    try:
        yield
    finally:
        _KEY.reset(token)


def keyed_bits(key: torch.Tensor, site: int, shape: torch.Size, device) -> torch.Tensor:
    """Uniform random integers in [0, 2**24) of ``shape`` (int64), a function of (key, site,
    coordinates).

    Coordinates enter one dimension at a time (a hash chain broadcast over the dimensions),
    so the value at (i, j, ...) is the same whatever the sizes of the dimensions: a batch
    padded to more rows or longer sequences changes nothing at the coordinates it shares
    with the unpadded one. The dimensions before the last are mixed fully (small tensors);
    the last, full-size step is one multiply-xorshift round, which is enough for dropout
    masks and is most of the cost.
    """
    h = mix32(
        (key.to(device=device, dtype=torch.int64) + mix32(site & M32)) & M32
    )  # a scalar (per trial)
    last = len(shape) - 1
    for dim, size in enumerate(shape):
        step = (
            torch.arange(1, size + 1, device=device, dtype=torch.int64)
            * _DIM_SALTS[dim % len(_DIM_SALTS)]
        ) & M32
        x = h.unsqueeze(-1) + step  # < 2**33
        if dim < last:
            h = mix32(x & M32)
        else:
            x = ((x ^ (x >> 16)) * _MIX) & M32
            h = x ^ (x >> 15)
    return h >> 8


def keyed_uniform(key: torch.Tensor, site: int, shape: torch.Size, device) -> torch.Tensor:
    """``keyed_bits`` as float32 in [0, 1)."""
    return keyed_bits(key, site, shape, device).to(torch.float32) * (1.0 / (1 << 24))


def _keyed_dropout(x: torch.Tensor, p: float, site: int, key: torch.Tensor) -> torch.Tensor:
    keep = keyed_bits(key, site, x.shape, x.device) >= int(round(p * (1 << 24)))
    return torch.where(keep, x * (1.0 / (1.0 - p)), torch.zeros((), dtype=x.dtype, device=x.device))


class KeyedDropout(nn.Module):
    """Inverted dropout with keyed masks (module docstring). ``site`` tells the layers of
    one module apart; ``number_dropout_sites`` numbers them after the module is built."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.site = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        key = _KEY.get()
        if key is None:
            return F.dropout(x, self.p, True)
        return _keyed_dropout(x, self.p, self.site, key)

    def extra_repr(self) -> str:
        return f"p={self.p}, site={self.site}"


def number_dropout_sites(module: nn.Module) -> nn.Module:
    """Give every ``KeyedDropout`` in ``module`` its own site number (module order)."""
    for i, layer in enumerate(
        m for m in module.modules() if isinstance(m, (KeyedDropout, MultiheadAttention))
    ):
        layer.site = i + 1
    return module


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention(d, heads, dropout, batch_first=True)`` for the heads' use:
    same parameters and initialisation, written out (module docstring).

    ``forward(query [B, Tq, d], key [B, Tk, d], value [B, Tk, d], key_mask [B, Tk] bool,
    True where a key holds data) -> [B, Tq, d]``; every row needs at least one valid key.
    """

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by {heads} heads")
        self.embed_dim, self.num_heads, self.p = d_model, heads, float(dropout)
        self.site = 0
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        # nn.MultiheadAttention._reset_parameters, in the same order (same draws per seed)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor
    ) -> torch.Tensor:
        d, h = self.embed_dim, self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:d], b[:d])
        if key is value:
            k, v = F.linear(key, w[d:], b[d:]).chunk(2, dim=-1)
        else:
            k, v = (
                F.linear(key, w[d : 2 * d], b[d : 2 * d]),
                F.linear(value, w[2 * d :], b[2 * d :]),
            )

        def split(x):  # [B, T, d] -> [B, h, T, d/h]
            return x.unflatten(-1, (h, d // h)).transpose(-3, -2)

        q, k, v = split(q), split(k), split(v)
        if not (self.training and self.p > 0.0) and not _VECTORISED.get():
            # no dropout to key and not under vmap: torch's fused attention (same maths)
            mask = key_mask[..., None, None, :]
            if q.is_cuda:
                with _cuda_sdpa_backends():
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.out_proj(out.transpose(-3, -2).flatten(-2))
        scores = (q * (1.0 / math.sqrt(d // h))) @ k.transpose(-2, -1)  # [B, h, Tq, Tk]
        valid = key_mask[..., None, None, :]
        scores = torch.where(
            valid, scores, torch.full((), -math.inf, dtype=scores.dtype, device=scores.device)
        )
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.p > 0.0:
            drop_key = _KEY.get()
            weights = (
                F.dropout(weights, self.p, True)
                if drop_key is None
                else _keyed_dropout(weights, self.p, self.site, drop_key)
            )
        out = (weights.to(v.dtype) @ v).transpose(-3, -2).flatten(-2)  # [B, Tq, d]
        return self.out_proj(out)


class EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(d, heads, ffn, dropout, activation="gelu",
    batch_first=True, norm_first=True)``: same parameters, initialisation and maths."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, heads, dropout)
        self.linear1 = nn.Linear(d_model, ffn)
        self.dropout = KeyedDropout(dropout)
        self.linear2 = nn.Linear(ffn, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = KeyedDropout(dropout)
        self.dropout2 = KeyedDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.dropout1(self.self_attn(h, h, h, mask))
        return x + self.dropout2(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))


class TransformerEncoder(nn.Module):
    """``layers`` copies of one ``EncoderLayer`` (as ``nn.TransformerEncoder`` copies its
    layer: every layer starts from the same weights)."""

    def __init__(self, layer: EncoderLayer, layers: int):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


# --------------------------------------------------------------------------------------
# building blocks of the heads
# --------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D], [B, T] bool -> [B, D] mean over the True steps (padded steps are
    selected away, not multiplied by 0: nothing in them reaches the result)."""
    keep = mask[..., None]
    return torch.where(keep, x, 0.0).sum(1) / keep.sum(1).clamp_min(1).to(x.dtype)


def masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D] population std over the True steps."""
    keep = mask[..., None]
    count = keep.sum(1, keepdim=True).clamp_min(1).to(x.dtype)
    mean = torch.where(keep, x, 0.0).sum(1, keepdim=True) / count
    var = torch.where(keep, (x - mean) ** 2, 0.0).sum(1) / count[:, 0]
    return (var + 1e-8).sqrt()


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[length, dim] fixed sine/cosine positions (Vaswani et al. 2017): no maximum length,
    so a head fitted on short sequences still predicts on longer (or more padded) ones."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    out = torch.zeros(length, dim, device=device, dtype=torch.float32)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out.to(dtype)


def make_mlp(
    in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0
) -> nn.Sequential:
    """``layers`` Linear layers with GELU and (keyed) dropout between them."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU(), KeyedDropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class Adapter(nn.Module):
    """Projection of a cached frozen feature into the head's width, then a residual
    bottleneck (Houlsby et al. 2019): the light trainable layer MSA-VQA puts on top of
    frozen CLIP features."""

    def __init__(self, in_dim: int, out_dim: int, bottleneck: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))
        self.down = nn.Linear(out_dim, bottleneck)
        self.up = nn.Linear(bottleneck, out_dim)
        self.dropout = KeyedDropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return h + self.up(self.dropout(torch.nn.functional.gelu(self.down(h))))


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention + feed-forward: ``x`` (queries) reads from ``context``,
    whose padded steps are masked out of the attention."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = MultiheadAttention(d_model, heads, dropout)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn), nn.GELU(), KeyedDropout(dropout), nn.Linear(ffn, d_model)
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        kv = self.norm_kv(context)
        x = x + self.attn(self.norm_q(x), kv, kv, context_mask)
        return x + self.ffn(self.norm_ffn(x))
