"""The network's sizes: ModelConfig, its presets and the CT windows of the inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
