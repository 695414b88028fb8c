"""The segmentation network of the paper's noisy-label recipe (the authors' ``SegNet``; our own code).

A 3-D U-Net from the registration network's blocks (:mod:`l2r_submit.nets.blocks`): the same stem, down
levels and up levels, one encoder pass (no merge), LeakyReLU (slope 0.01) and InstanceNorm (no affine)
after every conv but the stem's, then a 3x3x3 conv to ``n_classes`` scores. The authors' decoder ends
with a softmax over the classes; :meth:`SegmentationNet.forward` returns the scores before it (logits)
and :func:`probabilities` applies it, so the loss can take the softmax in float32 and prediction can
take the argmax of the logits (the same classes).

The paper's setting (``SEG_PRESETS["paper"]``): 1 input window (W400/L40), channels 16, 32, 64, 128, 256,
convs 1, 2, 3, 2 per level (2, 3, 2, 1 in the decoder), 12 classes (background + challenge labels 1..11;
the adrenal glands 12 and 13 are not segmented): 7.69 M parameters.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.contract import check_volume_batch
from .blocks import Encoder, UpLevel
from .config import SEG_PRESETS, SegConfig
from .inputs import from_model_frame, preprocess, to_model_frame
from .regnet import _pad_to


class SegDecoder(nn.Module):
    """Up levels from the deepest features to full resolution, then the class head (PyTorch's default init).

    Shape: features of every level (full resolution first) -> (B, n_classes, I, J, K) logits.
    """

    def __init__(self, cfg: SegConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        convs = cfg.encoder_convs[::-1]
        self.levels = nn.ModuleList(UpLevel(ch[i], ch[i + 1], n, cfg.norm, True, cfg.activation)
                                    for i, n in enumerate(convs))
        self.head = nn.Conv3d(ch[-1], cfg.n_classes, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for level, skip in zip(self.levels, feats[-2::-1]):
            x = level(x, skip)
        return self.head(x)


class SegmentationNet(nn.Module):
    """image (B, C, I, J, K) in the network's input windows -> class logits (B, n_classes, I, J, K)."""

    def __init__(self, cfg: SegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = SegDecoder(cfg)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, I, J, K) -> (B, n_classes, I, J, K) logits; any size (padded internally at the
        far end of each axis to a multiple of ``cfg.divisor``, the scores cropped back).

        Raises:
            ValueError: not a (B, C, I, J, K) batch, or a wrong channel count.
        """
        check_volume_batch(image, "image")
        if image.shape[1] != self.cfg.in_channels:
            raise ValueError(f"image: {image.shape[1]} channels received, expected {self.cfg.in_channels}")
        shape = tuple(image.shape[2:])
        logits = self.decoder(self.encoder(F.pad(image, _pad_to(shape, self.cfg.divisor))))
        return logits[(slice(None), slice(None), *[slice(0, n) for n in shape])]


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The authors' last activation: softmax over the classes, in float32. Shape: (B, L, ...) -> same."""
    return torch.softmax(logits.float(), dim=1)


@torch.no_grad()
def segment(net: SegmentationNet, ct_hu: torch.Tensor) -> torch.Tensor:
    """Whole-volume label map of a CT in HU: the network's input window (:func:`preprocess`, min-max over
    the whole image, as in training), the authors' frame for imported weights, argmax over the classes.

    Shape: (B, 1, I, J, K) HU -> (B, I, J, K) int64 class indices (class k = challenge label k).
    """
    cfg = net.cfg
    image = to_model_frame(preprocess(ct_hu, cfg.in_channels), cfg.orientation)
    return from_model_frame(net(image), cfg.orientation).argmax(dim=1)


def n_parameters(net: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def build(cfg: SegConfig | str, **overrides) -> SegmentationNet:
    """A segmenter from a config or a preset name (``paper``, ``tiny``), with field overrides.

    Raises:
        ValueError: unknown preset or a bad field value.
    """
    if isinstance(cfg, str):
        if cfg not in SEG_PRESETS:
            raise ValueError(f"segmenter preset '{cfg}' unknown; presets: {', '.join(SEG_PRESETS)}")
        cfg = SEG_PRESETS[cfg]
    return SegmentationNet(replace(cfg, **overrides))
