"""Checks of training settings shared by the registration and segmentation configs and the recipe's plan.

Torch-free (only the standard library), so that ``l2r recipe paper --dry-run`` checks its options at once.
Each raises ValueError with one line: the setting, the value received and what is expected.
"""

from __future__ import annotations

import math


def check_number(name: str, value: object, what: str, positive: bool = True) -> None:
    """``value`` must be a finite number, above 0 (``positive``) or at least 0 (a loss weight).

    Raises:
        ValueError: ``<name>: <value> received, expected <what>`` (NaN, infinities, a value out of range, a bool).
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name}: {value} received, expected {what}")


def check_crop(crop: tuple | None, example: str, shown: str | None = None) -> None:
    """A crop is three positive sizes (None: whole volumes); ``shown`` is the text it was read from.

    Raises:
        ValueError: ``crop: <sizes> received, expected three positive sizes like <example> ...``.
    """
    if crop is None:
        return
    crop = tuple(crop)
    if len(crop) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in crop):
        raise ValueError(f"crop: {shown if shown is not None else ','.join(map(str, crop))} received, expected "
                         f"three positive sizes like {example} (or none for whole volumes)")


def parse_crop(text: str, example: str = "128,128,128") -> tuple[int, int, int] | None:
    """``128,128,128`` -> ``(128, 128, 128)``; ``none`` -> None (whole volumes).

    Raises:
        ValueError: not three positive integer sizes (:func:`check_crop`'s line).
    """
    if text.strip().lower() == "none":
        return None
    try:
        crop: tuple = tuple(int(v) for v in text.split(","))
    except ValueError:
        crop = ()
    check_crop(crop, example, shown=text)
    return crop  # type: ignore[return-value]
