"""Seconds per training step and peak memory, for the paper preset and a small CPU preset.

Each configuration runs in its own process (so peak RSS is its own): synthetic inputs of the crop
size, the symmetric loss with Dice (14 classes), Adam; one warm-up step, then the mean of --steps.

    python benchmarks/train_bench.py [--threads 2] [--steps 2] [--only cpu-fast]
"""

from __future__ import annotations

import json
import subprocess
import sys

import click

CASES = {
    "paper": dict(model="paper", crop=128, batch=2),
    "cpu-small": dict(model="cpu-small", crop=96, batch=2),
    "cpu-fast": dict(model="cpu-fast", crop=96, batch=2),  # the shipped weights
}

CHILD = r"""
import json, resource, sys, time, torch
from l2r_submit import losses, model
spec, threads, steps = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
dev = torch.device("cuda" if torch.cuda.is_available() and spec.get("cuda") else "cpu")
net = model.build(spec["model"]).to(dev)
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
c, b, ch = spec["crop"], spec["batch"], net.cfg.in_channels
m, f = torch.rand(b, ch, c, c, c, device=dev), torch.rand(b, ch, c, c, c, device=dev)
ms, fs = torch.randint(0, 14, (b, 1, c, c, c), device=dev), torch.randint(0, 14, (b, 1, c, c, c), device=dev)
w = losses.LossWeights()
times = []
for i in range(steps + 1):
    t = time.perf_counter()
    fwd, bwd = net.forward_symmetric(m, f)
    loss = losses.registration_loss(fwd, m, f, ms, fs, w, bwd)["total"]
    opt.zero_grad(); loss.backward(); opt.step()
    if dev.type == "cuda": torch.cuda.synchronize()
    if i: times.append(time.perf_counter() - t)
peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
print(json.dumps({"s_per_step": sum(times) / len(times), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "peak_gpu_gib": peak_gpu, "device": dev.type,
                  "params_m": sum(p.numel() for p in net.parameters()) / 1e6}))
"""


@click.command()
@click.option("--threads", default=2, show_default=True)
@click.option("--steps", default=2, show_default=True)
@click.option("--only", type=click.Choice(list(CASES)), default=None)
@click.option("--cuda", is_flag=True, help="Run on the GPU when there is one.")
def main(threads: int, steps: int, only: str | None, cuda: bool) -> None:
    for name, spec in CASES.items():
        if only and name != only:
            continue
        spec = {**spec, "cuda": cuda}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec), str(threads), str(steps)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
            print(f"{name}: failed ({tail})")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {r['params_m']:.2f} M params, crop {spec['crop']}^3, batch {spec['batch']}, symmetric + Dice, "
              f"{r['device']}, {threads} threads: {r['s_per_step']:.2f} s/step, peak RSS {r['peak_rss_gib']:.2f} GiB"
              + (f", peak GPU {r['peak_gpu_gib']:.2f} GiB" if r["device"] == "cuda" else ""))


if __name__ == "__main__":
    main()
