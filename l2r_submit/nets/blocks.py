"""Encoder and decoder blocks of the registration network (shared by the networks built on them)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


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
