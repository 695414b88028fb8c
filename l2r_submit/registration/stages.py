"""Registration stages that compose: network -> global search -> Adam refinement.

A stage takes ``(moving, fixed, disp_in)`` and returns the whole field of the same pair (moving -> fixed,
a pull map in voxels), never an increment. How each one consumes ``disp_in``:

* ``network`` (:func:`l2r_submit.nets.regnet.register`): registers ``warp(moving, disp_in)`` to ``fixed`` and
  composes, ``compose(disp_in, net_field)`` (with a zero ``disp_in``, its own field);
* ``search`` (:mod:`l2r_submit.registration.search`): the same, by composition: large displacements must not be added;
* ``adam`` (:func:`l2r_submit.registration.instance.refine`): optimises the total field itself, initialised at
  ``disp_in`` (its regulariser acts on the total; the residual is a small local update).

``warp(warp(m, a), b) == warp(m, compose(a, b))`` (:func:`l2r_submit.core.spatial.compose`), so chaining
stages by composition equals warping with each in turn, up to interpolation.

Tensor contract: moving/fixed (1, 1, I, J, K) (HU for CT), disp (1, 3, I, J, K) voxels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from ..core.spatial import compose, warp_image
from ..nets import regnet
from .instance import IOConfig, refine
from .search import SearchConfig, search_stage

STAGE_NAMES = ("network", "search", "adam")


class Stage(Protocol):
    """One registration stage. Shape: moving, fixed (1, 1, I, J, K), disp_in (1, 3, I, J, K) -> (1, 3, I, J, K)."""

    name: str

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class NetworkStage:
    """The network, applied to ``warp(moving, disp_in)`` and composed with ``disp_in``."""

    net: regnet.RegistrationNet
    name: str = "network"

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if not disp_in.any():
                return regnet.register(self.net, moving, fixed)
            warped = warp_image(moving.float(), disp_in, padding_mode="border")
            return compose(disp_in, regnet.register(self.net, warped, fixed))


@dataclass(frozen=True)
class SearchStage:
    """The global discrete search, composed with ``disp_in``. ``ct``: images in HU (CT window), or
    ``(moving, fixed)`` flags for a pair of two modalities."""

    cfg: SearchConfig
    ct: bool | tuple[bool, bool] = True
    name: str = "search"

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor) -> torch.Tensor:
        return search_stage(moving, fixed, disp_in, self.cfg, self.ct)


@dataclass(frozen=True)
class AdamStage:
    """Instance optimisation of the total field, started at ``disp_in``."""

    cfg: IOConfig
    ct: bool | tuple[bool, bool] = True  # as SearchStage's
    name: str = "adam"

    def __call__(self, moving: torch.Tensor, fixed: torch.Tensor, disp_in: torch.Tensor) -> torch.Tensor:
        return refine(disp_in.clone(), moving, fixed, self.cfg, self.ct)


def parse_stages(text: str) -> tuple[str, ...]:
    """``"network,search,adam"`` -> the names in pipeline order.

    Raises:
        ValueError: an unknown or repeated name, or none.
    """
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"stages: '{text}' received, expected a comma list of distinct names among "
                         f"{', '.join(STAGE_NAMES)}")
    return tuple(n for n in STAGE_NAMES if n in names)


def build(names: tuple[str, ...], net: regnet.RegistrationNet | None, search_cfg: SearchConfig,
          io_cfg: IOConfig, ct: bool | tuple[bool, bool] = True) -> list[Stage]:
    """The stages named, in pipeline order (network, search, adam). ``ct``: the images are CT in HU, one
    flag for both or ``(moving, fixed)`` (:func:`l2r_submit.registration.features.ct_flags`).

    Raises:
        ValueError: an unknown stage name, or ``network`` named without a network.
    """
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"stages: unknown {', '.join(map(repr, unknown))}, expected names among {', '.join(STAGE_NAMES)}")
    stages: list[Stage] = []
    for name in STAGE_NAMES:
        if name not in names:
            continue
        if name == "network":
            if net is None:
                raise ValueError("stage 'network' needs a network")
            stages.append(NetworkStage(net))
        elif name == "search":
            stages.append(SearchStage(search_cfg, ct))
        else:
            stages.append(AdamStage(io_cfg, ct))
    return stages


def run(stages: list[Stage], moving: torch.Tensor, fixed: torch.Tensor,
        disp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Chain the stages from ``disp`` (None: a zero field); returns the field and each stage's seconds.

    Shape: moving, fixed (1, 1, I, J, K), disp (1, 3, I, J, K) -> (1, 3, I, J, K), {name: seconds}.
    """
    if disp is None:
        disp = torch.zeros((1, 3, *fixed.shape[2:]), device=fixed.device)
    seconds: dict[str, float] = {}
    for stage in stages:
        t0 = time.perf_counter()
        disp = stage(moving, fixed, disp)
        if disp.is_cuda:
            torch.cuda.synchronize(disp.device)
        seconds[stage.name] = round(time.perf_counter() - t0, 3)
    return disp, seconds
