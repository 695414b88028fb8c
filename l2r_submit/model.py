"""The seed network: a symmetric U-Net that predicts spatial gradients (Estienne et al., 2020).

Tensor contract (see :mod:`l2r_submit.contract`): images (B, C, I, J, K), C = number of CT windows;
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

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import check_volume_batch

CT_WINDOWS = ((400.0, 40.0), (800.0, 100.0), (1000.0, 400.0))  # (width, level) in HU


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the network. ``PRESETS`` holds the paper's setting and small CPU settings.

    Attributes:
        in_channels: 1 (window W400/L40) or 3 (multi-window).
        base_channels: channels per level before the multiplier (the paper: 4, 8, 16, 32, 64).
        channel_multiplier: the paper uses 8 (32 ... 512 channels).
        encoder_convs: 3x3x3 convs after each down-sampling (the paper: 1, 2, 3, 2).
        deep_supervision: also predict gradients from each coarser decoder level.
        orientation: ``l2r`` (our axes) or ``estienne2020`` (the authors' input orientation, for
            imported checkpoints: SimpleITK z, y, x order with the z and y axes flipped).
        norm: ``instance`` (InstanceNorm3d, no affine, after every conv but the stem's: the paper) or
            ``none``: no normalisation, and no bias in the decoder and heads, so that equal inputs give
            exactly zero displacement whatever the weights, and no statistic depends on the volume size
            (instance statistics of a training crop differ from those of a whole volume).
    """

    in_channels: int = 3
    base_channels: tuple[int, ...] = (4, 8, 16, 32, 64)
    channel_multiplier: int = 8
    encoder_convs: tuple[int, ...] = (1, 2, 3, 2)
    deep_supervision: bool = False
    orientation: str = "l2r"
    norm: str = "instance"

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels: {self.in_channels} received, expected 1 or 3")
        if len(self.base_channels) != len(self.encoder_convs) + 1:
            raise ValueError(f"base_channels has {len(self.base_channels)} levels, encoder_convs "
                             f"{len(self.encoder_convs)}: expected one more channel entry than conv entries")
        if self.norm not in ("instance", "none"):
            raise ValueError(f"norm: '{self.norm}' received, expected instance or none")
        if self.orientation not in ("l2r", "estienne2020"):
            raise ValueError(f"orientation: '{self.orientation}' received, expected l2r or estienne2020")

    @property
    def channels(self) -> list[int]:
        return [c * self.channel_multiplier for c in self.base_channels]

    @property
    def decoder_bias(self) -> bool:
        """Whether decoder convs and heads have biases: not without norm (equal inputs -> zero field)."""
        return self.norm != "none"

    @property
    def divisor(self) -> int:
        """Spatial sizes are padded internally to a multiple of this."""
        return 2 ** len(self.encoder_convs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model config: unknown keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(deep_supervision=True),  # every run of the paper trained with deep supervision
    "paper-nods": ModelConfig(),
    "cpu-small": ModelConfig(in_channels=3, channel_multiplier=2, encoder_convs=(1, 1, 1, 1)),
    "cpu-fast": ModelConfig(in_channels=3, channel_multiplier=1, encoder_convs=(1, 1, 1, 1)),
    "tiny": ModelConfig(in_channels=1, base_channels=(4, 8, 16), channel_multiplier=1, encoder_convs=(1, 1)),
}


def preprocess(ct_hu: torch.Tensor, n_windows: int, range_of: torch.Tensor | None = None) -> torch.Tensor:
    """CT windows of the paper: clip HU to [L - W/2, L + W/2], then min-max of that image to [0, 1].

    ``range_of``: take the min and max from this image instead (e.g. a crop normalised as its whole
    image is, training and inference alike: :func:`l2r_submit.augment.hu_extremes`).

    Shape: (B, 1, I, J, K) HU [, range_of (B, 1, ...)] -> (B, n_windows, I, J, K) float32.
    """
    check_volume_batch(ct_hu, "ct_hu")
    out = []
    for width, level in CT_WINDOWS[:n_windows]:
        x = ct_hu.float().clamp(level - width / 2, level + width / 2)
        r = x if range_of is None else range_of.float().clamp(level - width / 2, level + width / 2)
        lo = r.amin(dim=(2, 3, 4), keepdim=True)
        hi = r.amax(dim=(2, 3, 4), keepdim=True)
        out.append((x - lo) / (hi - lo).clamp_min(1e-6))
    return torch.cat(out, dim=1)


def integrate(gradients: torch.Tensor) -> torch.Tensor:
    """Spatial gradients to a voxel displacement: ``p_k(i) = 2 cumsum_k(g_k)(i) - 1``, ``disp = p - i``.

    Shape: (B, 3, I, J, K), channel k integrated along array axis k -> (B, 3, I, J, K) voxels.
    g = 0.5 everywhere gives exactly 0.
    """
    out = []
    for k in range(3):
        pos = 2.0 * torch.cumsum(gradients[:, k], dim=k + 1) - 1.0
        n = gradients.shape[k + 2]
        shape = [1, 1, 1]
        shape[k] = n
        out.append(pos - torch.arange(n, dtype=pos.dtype, device=pos.device).view(1, *shape))
    return torch.stack(out, dim=1)


class ConvNormAct(nn.Sequential):
    """conv (k^3) + InstanceNorm3d (no affine; or nothing with ``norm="none"``) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, transposed: bool = False,
                 norm: str = "instance", bias: bool = True) -> None:
        conv_cls = nn.ConvTranspose3d if transposed else nn.Conv3d
        pad = 0 if kernel == 2 else kernel // 2
        super().__init__()
        self.conv = conv_cls(cin, cout, kernel, stride=stride, padding=pad, bias=bias)
        self.norm = nn.InstanceNorm3d(cout, affine=False, eps=1e-5) if norm == "instance" else nn.Identity()
        self.act = nn.ReLU(inplace=True)


class Stem(nn.Module):
    """The authors' input block, no norm: ``h = relu(conv_in(x)); out = relu(conv_res(h)) + h``.

    The activation follows each conv and the residual is added after the second one (their
    ``InputBlock``: ``add_conv`` = ``conv_in``, ``conv`` = ``conv_res``).

    Shape: (B, cin, I, J, K) -> (B, cout, I, J, K).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv_res = nn.Conv3d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv_in(x))
        return F.relu(self.conv_res(h)) + h


class DownLevel(nn.Module):
    def __init__(self, cin: int, cout: int, n_convs: int, norm: str = "instance") -> None:
        super().__init__()
        self.down = ConvNormAct(cin, cout, kernel=2, stride=2, norm=norm)
        self.convs = nn.Sequential(*[ConvNormAct(cout, cout, norm=norm) for _ in range(n_convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.down(x))


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, n_convs: int, norm: str = "instance", bias: bool = True) -> None:
        super().__init__()
        opts = dict(norm=norm, bias=bias)
        self.up = ConvNormAct(cin, cout, kernel=2, stride=2, transposed=True, **opts)
        self.convs = nn.Sequential(ConvNormAct(2 * cout, cout, **opts),
                                   *[ConvNormAct(cout, cout, **opts) for _ in range(n_convs - 1)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.stem = Stem(cfg.in_channels, ch[0])
        self.levels = nn.ModuleList(DownLevel(ch[i], ch[i + 1], n, cfg.norm) for i, n in enumerate(cfg.encoder_convs))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for level in self.levels:
            feats.append(level(feats[-1]))
        return feats


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.channels[::-1]
        convs = cfg.encoder_convs[::-1]
        self.levels = nn.ModuleList(UpLevel(ch[i], ch[i + 1], n, cfg.norm, cfg.decoder_bias) for i, n in enumerate(convs))
        self.head = nn.Conv3d(ch[-1], 3, 3, padding=1, bias=cfg.decoder_bias)
        nn.init.zeros_(self.head.weight)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def forward(self, merged: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = merged[-1]
        coarse = [x]
        for level, skip in zip(self.levels, merged[-2::-1]):
            x = level(x, skip)
            coarse.append(x)
        return self.head(x), coarse[:-1]


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


def to_model_frame(x: torch.Tensor, orientation: str) -> torch.Tensor:
    """Our (B, C, I, J, K) volume in the frame the network was trained in.

    ``estienne2020``: the authors read volumes with SimpleITK (array axes k, j, i) and flipped the first
    two of those axes. ``l2r``: unchanged.
    """
    if orientation == "l2r":
        return x
    return x.permute(0, 1, 4, 3, 2).flip(2, 3)


def disp_from_model_frame(disp: torch.Tensor, orientation: str) -> torch.Tensor:
    """A displacement predicted in the network's frame, back in our contract (axes, channel order, signs)."""
    if orientation == "l2r":
        return disp
    back = disp.flip(2, 3).permute(0, 1, 4, 3, 2)  # spatial axes back to (i, j, k)
    return torch.stack([back[:, 2], -back[:, 1], -back[:, 0]], dim=1)  # flipped axes change sign


def register(net: RegistrationNet, moving_hu: torch.Tensor, fixed_hu: torch.Tensor) -> torch.Tensor:
    """Moving and fixed CT in HU (B, 1, I, J, K) -> displacement (B, 3, I, J, K) in our contract."""
    cfg = net.cfg
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


__all__ = ["ModelConfig", "PRESETS", "RegistrationNet", "build", "integrate", "preprocess", "register",
           "to_model_frame", "disp_from_model_frame"]
