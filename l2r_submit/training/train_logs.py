"""A training run's logs: one row per epoch as ``log.jsonl`` and ``log.csv``, and ``curves.png``."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from ..core import io


def write_logs(out_dir: Path, history: list[dict]) -> None:
    """``log.jsonl`` and ``log.csv`` of the epochs so far, each written atomically."""
    text = "".join(json.dumps(r) + "\n" for r in history)
    io.atomic_write(out_dir / "log.jsonl", lambda tmp: Path(tmp).write_text(text))
    keys = list(dict.fromkeys(k for r in history for k in r))

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)

    io.atomic_write(out_dir / "log.csv", write_csv)


def plot_curves(history: list[dict], path: Path) -> None:
    """Training terms and validation metrics per epoch, one panel each (needs matplotlib)."""
    if not history:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed, no curves.png", file=sys.stderr)
        return
    keys = [k for k in history[-1] if k not in ("epoch", "seconds", "world_size")]
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.flat, keys):
        pts = [(r["epoch"], r[key]) for r in history if key in r and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)
