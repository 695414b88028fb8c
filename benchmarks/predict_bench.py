"""Seconds per pair and peak RSS of `l2r predict` at full resolution (192x160x256) on test_data/.

Each configuration is a separate `l2r predict` process whose own peak resident set is reported;
seconds per pair come from its run.json (reading, inference, optional refinement, writing).

    python benchmarks/predict_bench.py [--threads 2] [--io-iters 0,N] [--paper] [--device cpu]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "test_data" / "AbdomenCTCT_dataset.json"


CHILD = """
import resource, runpy, sys
sys.argv = ["l2r"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("l2r_submit", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def run_predict(args: list[str], out: Path) -> tuple[float, float, int]:
    """Run one `l2r predict` process; returns (seconds per pair, its peak RSS in GiB, pairs done)."""
    cmd = [sys.executable, "-c", CHILD, "predict", str(DATA), "--out", str(out), "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd[3:])}\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.split("PEAK_RSS_KIB")[-1].split()[0])
    manifest = json.loads((out / "run.json").read_text())
    secs = [p["seconds"] for p in manifest["pairs"].values() if p["status"] == "done"]
    return sum(secs) / len(secs), peak_kib / 2**20, len(secs)


@click.command()
@click.option("--threads", default=2, show_default=True)
@click.option("--io-iters", default="0", show_default=True, help="Comma list of instance-optimisation settings.")
@click.option("--paper", is_flag=True, help="Also time the paper-size preset (random weights, one pair).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def main(threads: int, io_iters: str, paper: bool, device: str) -> None:
    common = ["--threads", str(threads), "--device", device]
    with tempfile.TemporaryDirectory() as tmp:
        for iters in [int(v) for v in io_iters.split(",")]:
            sec, rss, n = run_predict([*common, "--io-iters", str(iters)], Path(tmp) / f"io{iters}")
            label = "network only" if iters == 0 else f"network + {iters} instance-optimisation iterations"
            print(f"shipped weights, {label}: {sec:.2f} s/pair over {n} pairs, peak RSS {rss:.2f} GiB "
                  f"({device}, {threads} threads)")
        if paper:
            import torch

            from l2r_submit import checkpoint, model

            torch.manual_seed(0)
            net = model.build("paper")
            torch.nn.init.normal_(net.decoder.head.weight, 0, 1e-3)
            ckpt = checkpoint.save(Path(tmp) / "paper.pt", net)
            sec, rss, n = run_predict([*common, "--io-iters", "0", "--checkpoint", str(ckpt), "--pairs", "0001_0004"],
                                      Path(tmp) / "paper")
            print(f"paper preset (30.75 M, random weights), network only: {sec:.2f} s/pair, "
                  f"peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
