"""The network's sizes: ModelConfig, its presets and the CT windows of the inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass


CT_WINDOWS = ((400.0, 40.0), (800.0, 100.0), (1000.0, 400.0))  # (width, level) in HU


class _Levels:
    """What the registration and the segmentation configs share: channels per level, the size divisor,
    their dict form (fields: in_channels, base_channels, channel_multiplier, encoder_convs, norm,
    orientation)."""

    @property
    def channels(self) -> list[int]:
        return [c * self.channel_multiplier for c in self.base_channels]

    @property
    def divisor(self) -> int:
        """Spatial sizes are padded internally to a multiple of this."""
        return 2 ** len(self.encoder_convs)

    def to_dict(self) -> dict:
        return asdict(self)


def _whole(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_levels(cfg) -> None:
    if cfg.in_channels not in (1, 3):
        raise ValueError(f"in_channels: {cfg.in_channels} received, expected 1 or 3")
    # a zero or negative size built a network that failed in its first convolution (a torch traceback)
    if not _whole(cfg.channel_multiplier, 1):
        raise ValueError(f"channel_multiplier: {cfg.channel_multiplier} received, expected a whole number of 1 or more")
    if not all(_whole(c, 1) for c in cfg.base_channels):
        raise ValueError(f"base_channels: {','.join(map(str, cfg.base_channels))} received, expected whole "
                         "numbers of 1 or more")
    if not all(_whole(c, 0) for c in cfg.encoder_convs):
        raise ValueError(f"encoder_convs: {','.join(map(str, cfg.encoder_convs))} received, expected whole "
                         "numbers of 0 or more")
    if len(cfg.base_channels) != len(cfg.encoder_convs) + 1:
        raise ValueError(f"base_channels has {len(cfg.base_channels)} levels, encoder_convs "
                         f"{len(cfg.encoder_convs)}: expected one more channel entry than conv entries")


def _check_frame(cfg) -> None:
    if cfg.norm not in ("instance", "none"):
        raise ValueError(f"norm: '{cfg.norm}' received, expected instance or none")
    if cfg.orientation not in ("l2r", "estienne2020"):
        raise ValueError(f"orientation: '{cfg.orientation}' received, expected l2r or estienne2020")


@dataclass(frozen=True)
class ModelConfig(_Levels):
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
        _check_levels(self)
        _check_frame(self)


    @property
    def decoder_bias(self) -> bool:
        """Whether decoder convs and heads have biases: not without norm (equal inputs -> zero field)."""
        return self.norm != "none"


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


@dataclass(frozen=True)
class SegConfig(_Levels):
    """Every size of the segmentation network (the authors' pseudo-label segmenter: same blocks as the
    registration network's encoder and decoder, one encoder pass, no merge). ``SEG_PRESETS`` holds the
    paper's setting and a tiny one for tests.

    Attributes:
        in_channels: 1 (window W400/L40, as the authors' segmenter).
        base_channels, channel_multiplier: channels per level (the paper: 4..64 times 4 = 16..256).
        encoder_convs: 3x3x3 convs after each down-sampling (the paper: 1, 2, 3, 2; reversed in the decoder).
        n_classes: background + organs (the paper: 12 = background + challenge labels 1..11, adrenals dropped).
        activation: ``leaky`` (LeakyReLU, slope 0.01: the paper) or ``relu``.
        norm: ``instance`` (InstanceNorm3d, no affine, after every conv but the stem's: the paper) or ``none``.
        orientation: ``l2r`` (our axes) or ``estienne2020`` (imported weights: the authors' input frame).
    """

    in_channels: int = 1
    base_channels: tuple[int, ...] = (4, 8, 16, 32, 64)
    channel_multiplier: int = 4
    encoder_convs: tuple[int, ...] = (1, 2, 3, 2)
    n_classes: int = 12
    activation: str = "leaky"
    norm: str = "instance"
    orientation: str = "l2r"

    def __post_init__(self) -> None:
        _check_levels(self)
        if not 2 <= self.n_classes <= 14:
            raise ValueError(f"n_classes: {self.n_classes} received, expected 2..14 (background + organs)")
        if self.activation not in ("leaky", "relu"):
            raise ValueError(f"activation: '{self.activation}' received, expected leaky or relu")
        _check_frame(self)



    @classmethod
    def from_dict(cls, d: dict) -> "SegConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"segmenter config: unknown keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


SEG_PRESETS: dict[str, SegConfig] = {
    "paper": SegConfig(),  # 7.69 M parameters, as the authors' SegNet (channel_multiplication=4, classic vnet)
    "tiny": SegConfig(base_channels=(4, 8, 16), channel_multiplier=1, encoder_convs=(1, 1)),
}


def check_min_shape(shape: tuple[int, ...], divisor: int, source: object) -> None:
    """The network pads volumes to a multiple of ``divisor`` and halves them down to 1/``divisor``; its
    instance norm needs more than one voxel there, so at least one size must exceed ``divisor``.

    Raises:
        ValueError: a smaller volume, naming the smallest size accepted.
    """
    if max(shape) <= divisor:
        raise ValueError(f"{source}: volumes of {tuple(shape)} are too small for this network; at least one size "
                         f"must be {divisor + 1} voxels or more (e.g. {(divisor + 1, *tuple(shape)[1:])})")
