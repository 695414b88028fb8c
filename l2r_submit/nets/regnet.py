"""The seed network: a symmetric U-Net that predicts spatial gradients (Estienne et al., 2020).

Tensor contract (see :mod:`l2r_submit.core.contract`): images (B, C, I, J, K), C = number of CT windows;
the output displacement is (B, 3, I, J, K) float32 voxels, a pull map on the fixed grid.

Architecture (facts from the paper and the authors' public code; our own implementation):
  * one encoder, shared, applied to moving and to fixed; skips merged by SUBTRACTION (moving - fixed);
  * encoder: input block (no norm) ``h = relu(conv_a(x)); out = relu(conv_b(h)) + h``, then per level a
    2x2x2 stride-2 conv and n 3x3x3 convs, each conv + InstanceNorm (no affine) + ReLU;
  * decoder: per level a 2x2x2 stride-2 transposed conv (+ norm + ReLU), concat [up, skip], n convs;
  * head: 3x3x3 conv to 3 channels + sigmoid = spatial gradients g in (0, 1), 0.5 = identity; the head is
    zero-initialised so an untrained network gives a zero displacement;
  * deep supervision: a 3x3x3 conv to 3 channels on the merged bottleneck and on each decoder level but
    the last (PyTorch's default init, as the authors'), nearest-neighbour upsampling to full size, then
    the sigmoid;
  * integration along axis k: position p_k(i) = 2 * sum_{m <= i} g_k(m) - 1 (voxels), disp = p - i.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.contract import check_volume_batch
from .blocks import Decoder, Encoder
from .config import ModelConfig, PRESETS, check_min_shape
from .inputs import disp_from_model_frame, integrate, preprocess, to_model_frame


class RegistrationNet(nn.Module):
    """moving, fixed (B, C, I, J, K) -> displacement (B, 3, I, J, K), plus coarser ones with deep supervision."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.deep_heads = nn.ModuleList(
            nn.Conv3d(c, 3, 3, padding=1, bias=cfg.decoder_bias) for c in cfg.channels[::-1][:-1]
        ) if cfg.deep_supervision else nn.ModuleList()  # default init, as the authors' (only the final head is zeroed)

    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(image)

    def decode(self, feats_moving: list[torch.Tensor], feats_fixed: list[torch.Tensor],
               shape: tuple[int, ...], deep: bool = True) -> list[torch.Tensor]:
        """Displacements from encoder features: the full-resolution one first, then deep-supervision ones
        (not with ``deep=False``: inference needs the full one only)."""
        merged = [m - f for m, f in zip(feats_moving, feats_fixed)]
        logits, coarse = self.decoder(merged)
        grads = [torch.sigmoid(logits)]
        for head, feat in zip(self.deep_heads if deep else [], coarse):  # upsample (nearest) first, then the sigmoid
            grads.append(torch.sigmoid(F.interpolate(head(feat), size=logits.shape[2:], mode="nearest")))
        crop = (slice(None), slice(None), *[slice(0, n) for n in shape])
        return [integrate(g.float())[crop] for g in grads]

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, deep: bool = True) -> list[torch.Tensor]:
        """Shape: moving, fixed (B, C, I, J, K) -> list of (B, 3, I, J, K) displacements (full first;
        the deep-supervision ones only with ``deep``).

        Raises:
            ValueError: inputs of different shapes or a wrong channel count.
        """
        check_volume_batch(moving, "moving")
        check_volume_batch(fixed, "fixed", moving.shape[2:])
        if moving.shape[1] != self.cfg.in_channels:
            raise ValueError(f"moving: {moving.shape[1]} channels received, expected {self.cfg.in_channels}")
        shape = tuple(moving.shape[2:])
        pad = _pad_to(shape, self.cfg.divisor)
        fm, ff = self.encode(F.pad(moving, pad)), self.encode(F.pad(fixed, pad))
        return self.decode(fm, ff, shape, deep)

    def forward_symmetric(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both directions from one pass of the shared encoder: (moving->fixed, fixed->moving)."""
        check_volume_batch(moving, "moving")
        check_volume_batch(fixed, "fixed", moving.shape[2:])
        shape = tuple(moving.shape[2:])
        pad = _pad_to(shape, self.cfg.divisor)
        fm, ff = self.encode(F.pad(moving, pad)), self.encode(F.pad(fixed, pad))
        return self.decode(fm, ff, shape), self.decode(ff, fm, shape)


def register(net: RegistrationNet, moving_hu: torch.Tensor, fixed_hu: torch.Tensor) -> torch.Tensor:
    """Moving and fixed CT in HU (B, 1, I, J, K) -> displacement (B, 3, I, J, K) in our contract.

    Raises:
        ValueError: not tensors, another rank, not one channel, NaN or inf values, shapes that differ, a
            volume too small for the network (one line each; torch's own errors came from deep inside, and
            a batch of 2 moving against 1 fixed passed silently).
    """
    cfg = net.cfg
    for name, x in (("moving", moving_hu), ("fixed", fixed_hu)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: a torch.Tensor (B, 1, I, J, K) of HU expected, not {type(x).__name__}")
        check_volume_batch(x, name)
        if x.shape[1] != 1:
            raise ValueError(f"{name}: {x.shape[1]} channels received, expected 1 (CT in HU; the network's input "
                             "windows are made from it)")
        if not torch.isfinite(x).all():  # a NaN field came back without a word
            raise ValueError(f"{name}: holds NaN or inf values")
    if moving_hu.shape != fixed_hu.shape:
        raise ValueError(f"moving {tuple(moving_hu.shape)} and fixed {tuple(fixed_hu.shape)}: expected the same "
                         "shape (B, 1, I, J, K)")
    check_min_shape(tuple(fixed_hu.shape[2:]), cfg.divisor, "fixed")
    moving = to_model_frame(preprocess(moving_hu, cfg.in_channels), cfg.orientation)
    fixed = to_model_frame(preprocess(fixed_hu, cfg.in_channels), cfg.orientation)
    return disp_from_model_frame(net(moving, fixed, deep=False)[0], cfg.orientation)


def _pad_to(shape: tuple[int, ...], divisor: int) -> list[int]:
    """F.pad amounts (last axis first) padding each axis at its end up to a multiple of divisor."""
    pad = []
    for n in reversed(shape):
        pad += [0, (-n) % divisor]
    return pad


def build(cfg: ModelConfig | str, **overrides) -> RegistrationNet:
    """A network from a config or a preset name, with field overrides."""
    if isinstance(cfg, str):
        if cfg not in PRESETS:
            raise ValueError(f"preset '{cfg}' unknown; presets: {', '.join(PRESETS)}")
        cfg = PRESETS[cfg]
    return RegistrationNet(replace(cfg, **overrides))
