"""Encoder and decoder blocks of the registration network (shared by the networks built on them)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, SegConfig

ACTIVATIONS = ("relu", "leaky")
"""``relu`` (the registration network) or ``leaky`` (LeakyReLU, slope 0.01: the authors' segmenter)."""


def activation(name: str) -> nn.Module:
    """The activation module named ``name`` (in place)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: '{name}' received, expected one of {', '.join(ACTIVATIONS)}")
    return nn.ReLU(inplace=True) if name == "relu" else nn.LeakyReLU(0.01, inplace=True)


class ConvNormAct(nn.Sequential):
    """conv (k^3) + InstanceNorm3d (no affine; or nothing with ``norm="none"``) + ReLU (or ``act``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, transposed: bool = False,
                 norm: str = "instance", bias: bool = True, act: str = "relu") -> None:
        conv_cls = nn.ConvTranspose3d if transposed else nn.Conv3d
        pad = 0 if kernel == 2 else kernel // 2
        super().__init__()
        self.conv = conv_cls(cin, cout, kernel, stride=stride, padding=pad, bias=bias)
        self.norm = nn.InstanceNorm3d(cout, affine=False, eps=1e-5) if norm == "instance" else nn.Identity()
        self.act = activation(act)


class Stem(nn.Module):
    """The authors' input block, no norm: ``h = relu(conv_in(x)); out = relu(conv_res(h)) + h``.

    The activation follows each conv and the residual is added after the second one (their
    ``InputBlock``: ``add_conv`` = ``conv_in``, ``conv`` = ``conv_res``).

    Shape: (B, cin, I, J, K) -> (B, cout, I, J, K).
    """

    def __init__(self, cin: int, cout: int, act: str = "relu") -> None:
        super().__init__()
        self.conv_in = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv_res = nn.Conv3d(cout, cout, 3, padding=1)
        activation(act)  # checks the name
        self.act_name = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.relu if self.act_name == "relu" else F.leaky_relu  # leaky: slope 0.01, as nn.LeakyReLU
        h = f(self.conv_in(x))
        return f(self.conv_res(h)) + h


class DownLevel(nn.Module):
    def __init__(self, cin: int, cout: int, n_convs: int, norm: str = "instance", act: str = "relu") -> None:
        super().__init__()
        self.down = ConvNormAct(cin, cout, kernel=2, stride=2, norm=norm, act=act)
        self.convs = nn.Sequential(*[ConvNormAct(cout, cout, norm=norm, act=act) for _ in range(n_convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.down(x))


class UpLevel(nn.Module):
    def __init__(self, cin: int, cout: int, n_convs: int, norm: str = "instance", bias: bool = True,
                 act: str = "relu") -> None:
        super().__init__()
        opts = dict(norm=norm, bias=bias, act=act)
        self.up = ConvNormAct(cin, cout, kernel=2, stride=2, transposed=True, **opts)
        self.convs = nn.Sequential(ConvNormAct(2 * cout, cout, **opts),
                                   *[ConvNormAct(cout, cout, **opts) for _ in range(n_convs - 1)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class Encoder(nn.Module):
    """The stem and the down levels (the registration network's, or the segmenter's with its activation).

    Shape: (B, in_channels, I, J, K) -> one feature map per level, full resolution first.
    """

    def __init__(self, cfg: ModelConfig | SegConfig) -> None:
        super().__init__()
        ch = cfg.channels
        act = getattr(cfg, "activation", "relu")
        self.stem = Stem(cfg.in_channels, ch[0], act)
        self.levels = nn.ModuleList(DownLevel(ch[i], ch[i + 1], n, cfg.norm, act) for i, n in enumerate(cfg.encoder_convs))

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
