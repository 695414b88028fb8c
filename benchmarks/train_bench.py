"""Seconds per training step and peak memory, for the paper preset and small CPU presets, on one process
or several (distributed data parallel, launched by torchrun: gloo on CPU, NCCL on GPUs).

Each configuration runs in its own processes (so peak memory is their own): synthetic inputs of the crop
size, the symmetric loss with Dice (14 classes, its sums over the global batch), Adam, the module and
step of ``l2r_submit.training.train`` (``TrainingForward``, ``registration_step``) under DDP when there are several
processes; one warm-up step, then the mean of --steps. ``--batch`` is the global batch, split over the
processes; ``--threads`` is shared among them on CPU.

    python benchmarks/train_bench.py [--threads 2] [--steps 2] [--only cpu-fast] [--procs 1,2] [--cuda]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

CASES = {
    "paper": dict(model="paper", crop=128, batch=2),
    "cpu-small": dict(model="cpu-small", crop=96, batch=2),
    "cpu-fast": dict(model="cpu-fast", crop=96, batch=2),  # the shipped weights
}

CHILD = r"""
import json, os, resource, sys, time, torch
from l2r_submit.training import distributed, losses
from l2r_submit.training.train import TrainingForward, registration_step
from l2r_submit.training.trainer import Share, wrap_ddp
spec, threads, steps = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
dev = torch.device("cuda" if torch.cuda.is_available() and spec.get("cuda") else "cpu")
dist, dev = distributed.start(dev)
b = distributed.check_batch(spec["batch"], dist.world_size)
net = model.build(spec["model"]).to(dev).train()
module = wrap_ddp(TrainingForward(net, True), dev, dist)
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
step = registration_step(losses.LossWeights(), dev.type == "cuda", dev.type)
share = Share(b, spec["batch"], dist)
c, ch = spec["crop"], net.cfg.in_channels
g = torch.Generator(device=dev).manual_seed(dist.rank)
batch = {"moving": torch.rand(b, ch, c, c, c, device=dev, generator=g), "fixed": torch.rand(b, ch, c, c, c, device=dev, generator=g),
         "moving_seg": torch.randint(0, 14, (b, 1, c, c, c), device=dev, generator=g),
         "fixed_seg": torch.randint(0, 14, (b, 1, c, c, c), device=dev, generator=g)}
scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
times = []
for i in range(steps + 1):
    dist.barrier()
    t = time.perf_counter()
    objective, _ = step(module, batch, share)
    opt.zero_grad(); scaler.scale(objective).backward(); scaler.step(opt); scaler.update()
    if dev.type == "cuda": torch.cuda.synchronize()
    if i: times.append(time.perf_counter() - t)
peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
mine = {"s_per_step": sum(times) / len(times), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": peak_gpu, "device": dev.type, "params_m": sum(p.numel() for p in net.parameters()) / 1e6}
every = dist.gather(mine)
distributed.stop(dist)
if dist.is_main:
    print(json.dumps({**mine, "s_per_step": max(r["s_per_step"] for r in every),
                      "peak_rss_gib": max(r["peak_rss_gib"] for r in every), "sum_rss_gib": sum(r["peak_rss_gib"] for r in every),
                      "peak_gpu_gib": max(r["peak_gpu_gib"] for r in every)}))
"""


def _launch(script: Path, spec: dict, threads: int, steps: int, procs: int) -> subprocess.CompletedProcess:
    args = [str(script), json.dumps(spec), str(threads), str(steps)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


@click.command()
@click.option("--threads", default=2, show_default=True, help="CPU threads in all, shared by the processes.")
@click.option("--steps", default=2, show_default=True)
@click.option("--only", type=click.Choice(list(CASES)), default=None)
@click.option("--procs", default="1", show_default=True, help="Comma list of process counts, e.g. 1,2.")
@click.option("--cuda", is_flag=True, help="Run on the GPU(s) when there are some (one per process).")
def main(threads: int, steps: int, only: str | None, procs: str, cuda: bool) -> None:
    counts = [int(p) for p in procs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train_bench_child.py"
        script.write_text(CHILD)
        for name, spec in CASES.items():
            if only and name != only:
                continue
            spec = {**spec, "cuda": cuda}
            for n in counts:
                per = max(1, threads // n)
                proc = _launch(script, spec, per, steps, n)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
                    print(f"{name}, {n} process(es): failed ({tail})")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{name}: {r['params_m']:.2f} M params, crop {spec['crop']}^3, global batch {spec['batch']}, "
                      f"symmetric + Dice, {r['device']}, {n} process(es) x {per} threads: {r['s_per_step']:.2f} s/step, "
                      f"peak RSS {r['peak_rss_gib']:.2f} GiB per process ({r['sum_rss_gib']:.2f} GiB in all)"
                      + (f", peak GPU {r['peak_gpu_gib']:.2f} GiB per GPU" if r["device"] == "cuda" else ""))


if __name__ == "__main__":
    main()
