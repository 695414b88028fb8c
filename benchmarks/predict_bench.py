"""Seconds per pair and peak RSS of `l2r predict` at full resolution (192x160x256) on test_data/.

Each configuration is a separate `l2r predict` process whose own peak resident set is reported, run
twice: the sequential path (--sequential: read, register, write one after the other) and the pipelined
one (the default: the next pair read and the previous field written while a pair is registered).
From its run.json: seconds per pair of the whole run (wall, run_seconds / pairs), the mean seconds per
pair of each step (read, network, search, adam, write), and "compute" = the registration stages alone;
the target is a pipelined run within 10% of its compute. Then a rerun over the finished folder (every
pair skipped) is timed as a whole process.

    python benchmarks/predict_bench.py [--threads 2] [--io-iters 0,N] [--pairs 4] [--paper] [--device cpu]

With no option it times predict's defaults (the search, then the refinement's default iterations).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from l2r_submit.registration.predict import DEFAULT_IO_ITERS

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


def run_predict(args: list[str], out: Path) -> tuple[dict, float, float, str]:
    """Run one `l2r predict` process; returns (its run.json, its peak RSS in GiB, its wall seconds, the
    last line it printed)."""
    cmd = [sys.executable, "-c", CHILD, "predict", str(DATA), "--out", str(out), "--quiet", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd[3:])}\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.split("PEAK_RSS_KIB")[-1].split()[0])
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return json.loads((out / "run.json").read_text()), peak_kib / 2**20, wall, last


def describe(manifest: dict) -> tuple[str, float, float]:
    """One line for a run: wall seconds per pair, each step's, compute alone; and (wall, compute) per pair."""
    done = [p for p in manifest["pairs"].values() if p["status"] == "done"]
    wall = manifest["run_seconds"] / len(done)
    steps = manifest["seconds_per_pair"]
    compute = sum(v for k, v in steps.items() if k not in ("read", "write"))
    parts = ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
    return f"{wall:.2f} s/pair over {len(done)} pairs (per step: {parts}; compute alone {compute:.2f})", wall, compute


@click.command()
@click.option("--threads", default=2, show_default=True)
@click.option("--io-iters", default=str(DEFAULT_IO_ITERS), show_default=True,
              help="Comma list of refinement iterations (0: the network alone).")
@click.option("--pairs", "n_pairs", default=4, show_default=True, help="The first N val pairs of test_data/.")
@click.option("--paper", is_flag=True, help="Also time the paper-size preset (random weights, one pair).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def main(threads: int, io_iters: str, n_pairs: int, paper: bool, device: str) -> None:
    data = json.loads(DATA.read_text())["registration_val"][:n_pairs]
    key = lambda p: "_".join(Path(p[r]).name.split("_")[1] for r in ("fixed", "moving"))  # noqa: E731
    common = ["--threads", str(threads), "--device", device, "--pairs", ",".join(key(p) for p in data)]
    with tempfile.TemporaryDirectory() as tmp:
        for iters in [int(v) for v in io_iters.split(",")]:
            for how in ("sequential", "pipelined"):
                out = Path(tmp) / f"io{iters}-{how}"
                flag = ["--sequential"] if how == "sequential" else []
                manifest, rss, _, _ = run_predict([*common, "--io-iters", str(iters), *flag], out)
                line, wall, compute = describe(manifest)
                stages = "+".join(k for k in manifest["seconds_per_pair"] if k not in ("read", "write"))
                label = f"stages {stages}" + (f" ({iters} Adam iterations)" if iters else "")
                print(f"shipped weights, {label}, {how}: {line}; wall / compute {wall / compute:.2f}, "
                      f"peak RSS {rss:.2f} GiB ({device}, {threads} threads)", flush=True)
            _, _, wall, last = run_predict([*common, "--io-iters", str(iters)], out)  # the pipelined run's request
            print(f"rerun over the finished folder: {wall:.2f} s in all, as a process ({last})", flush=True)
        if paper:
            import torch

            from l2r_submit.nets import checkpoint, regnet

            torch.manual_seed(0)
            net = regnet.build("paper")
            torch.nn.init.normal_(net.decoder.head.weight, 0, 1e-3)
            ckpt = checkpoint.save(Path(tmp) / "paper.pt", net)
            manifest, rss, _, _ = run_predict([*common[:4], "--io-iters", "0", "--checkpoint", str(ckpt),
                                            "--pairs", "0001_0004"], Path(tmp) / "paper")
            print(f"paper preset (30.75 M, random weights), network only: {describe(manifest)[0]}, "
                  f"peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
