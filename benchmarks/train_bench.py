"""Seconds per training step and peak memory, for the paper preset and small CPU presets, on one process
or several (distributed data parallel, launched by torchrun: gloo on CPU, NCCL on GPUs); with
``--profile``, where the time of a step goes (torch.profiler, top ops by self time).

Each configuration runs in its own processes (so peak memory is their own): synthetic inputs of the crop
size, the symmetric loss with Dice (14 classes, its sums over the global batch), Adam, the module and
step of ``l2r_submit.training.train`` (``TrainingForward``, ``registration_step``) under DDP when there are
several processes, and, as ``l2r_submit.training.trainer.fit`` does, the loss terms read back to the host
after each step (a synchronisation on a GPU). On CUDA: float16 autocast and the loss scaler (AMP) as the
trainer, cuDNN deterministic without autotuning as the trainer sets it (``--cudnn benchmark`` measures
autotuned, non-deterministic cuDNN instead), one GPU per process. One warm-up step, then --steps timed
steps; s/step is their median wall time (the slowest rank's), steps/s its inverse; on CPU also the
median CPU seconds per step (all threads of all processes: on a shared machine it varies less than the
wall time). A case's batch is the global batch, split over the processes; ``--threads`` is shared among
them on CPU. Cases: ``paper`` (128^3 crops), ``cpu-small``, ``cpu-fast`` (96^3), ``cpu-fast-whole`` (whole
192x160x256 volumes), ``tiny`` (64^3); ``--crop N`` gives every case N^3 crops.

    python benchmarks/train_bench.py [--threads 2] [--steps 2] [--only cpu-fast] [--procs 1,2]
                                     [--device cpu|cuda] [--crop 128] [--cudnn deterministic|benchmark]
                                     [--profile] [--trace DIR]

``--profile`` adds one profiled step after the timed ones (CPU activities, and CUDA ones on a GPU;
shapes and memory recorded) and prints its top 25 ops by self time; ``--trace DIR`` also writes its
chrome trace (``DIR/<case>-<procs>p.json``, rank 0; open in chrome://tracing or ui.perfetto.dev).
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
    "paper": dict(model="paper", crop=[128, 128, 128], batch=2),
    "cpu-small": dict(model="cpu-small", crop=[96, 96, 96], batch=2),
    "cpu-fast": dict(model="cpu-fast", crop=[96, 96, 96], batch=2),  # the shipped weights
    "cpu-fast-whole": dict(model="cpu-fast", crop=[192, 160, 256], batch=2),  # whole AbdomenCTCT volumes (the 0.4 s/step)
    "tiny": dict(model="tiny", crop=[64, 64, 64], batch=2),  # the tests' network
}
DEFAULT_CASES = ("paper", "cpu-small", "cpu-fast")

CHILD = r"""
import json, resource, statistics, sys, time, torch
from l2r_submit.nets import regnet
from l2r_submit.training import distributed, losses
from l2r_submit.training.train import TrainingForward, registration_step
from l2r_submit.training.trainer import Share, wrap_ddp
spec, threads, steps = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
dev = torch.device(spec["device"])
dist, dev = distributed.start(dev)
cuda = dev.type == "cuda"
if cuda:
    torch.backends.cudnn.deterministic = spec["cudnn"] == "deterministic"
    torch.backends.cudnn.benchmark = spec["cudnn"] == "benchmark"
b = distributed.check_batch(spec["batch"], dist.world_size)
net = regnet.build(spec["model"]).to(dev).train()
module = wrap_ddp(TrainingForward(net, True), dev, dist)
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
step = registration_step(losses.LossWeights(), cuda, dev.type)
share = Share(b, spec["batch"], dist)
shape, ch = spec["crop"], net.cfg.in_channels
g = torch.Generator(device=dev).manual_seed(dist.rank)
batch = {"moving": torch.rand(b, ch, *shape, device=dev, generator=g), "fixed": torch.rand(b, ch, *shape, device=dev, generator=g),
         "moving_seg": torch.randint(0, 14, (b, 1, *shape), device=dev, generator=g),
         "fixed_seg": torch.randint(0, 14, (b, 1, *shape), device=dev, generator=g)}
scaler = torch.amp.GradScaler("cuda", enabled=cuda)

def one_step():
    objective, terms = step(module, batch, share)
    opt.zero_grad(set_to_none=True); scaler.scale(objective).backward(); scaler.step(opt); scaler.update()
    return {k: float(v.detach()) for k, v in terms.items()}  # the trainer logs every step's terms

times, cpu_times = [], []
for i in range(steps + 1):
    dist.barrier()
    if cuda: torch.cuda.synchronize()
    t, c = time.perf_counter(), time.process_time()
    one_step()
    if cuda: torch.cuda.synchronize()
    if i: times.append(time.perf_counter() - t); cpu_times.append(time.process_time() - c)
peak_gpu = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else 0.0
if spec.get("profile") and dist.is_main:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, record_shapes=True, profile_memory=True) as prof:
        one_step()
        if cuda: torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=25, max_name_column_width=40,
                                                               max_shapes_column_width=80)
    with open(spec["profile"], "w") as fh:
        fh.write(table)
    if spec.get("trace"):
        prof.export_chrome_trace(spec["trace"])
elif spec.get("profile"):
    one_step()  # the other ranks step along (DDP's all-reduce needs every rank)
mine = {"s_per_step": statistics.median(times), "cpu_s_per_step": statistics.median(cpu_times), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": peak_gpu, "device": dev.type, "gpu": torch.cuda.get_device_name(dev) if cuda else "",
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6}
every = dist.gather(mine)
distributed.stop(dist)
if dist.is_main:
    print(json.dumps({**mine, "s_per_step": max(r["s_per_step"] for r in every), "cpu_s_per_step": sum(r["cpu_s_per_step"] for r in every),
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


def _summary(name: str, spec: dict, r: dict, n: int, per: int) -> str:
    size = "x".join(map(str, spec["crop"]))
    where = (f"{r['gpu']}, AMP float16, cuDNN {spec['cudnn']}, {n} process(es)" if r["device"] == "cuda"
             else f"cpu, {n} process(es) x {per} threads")
    line = (f"{name}: {r['params_m']:.2f} M params, {size}, global batch {spec['batch']}, symmetric + Dice, {where}: "
            f"{r['s_per_step']:.3f} s/step ({1 / r['s_per_step']:.2f} steps/s), ")
    if r["device"] == "cuda":
        return line + f"peak GPU {r['peak_gpu_gib']:.2f} GiB per GPU (max_memory_allocated), peak RSS {r['peak_rss_gib']:.2f} GiB"
    return line + (f"{r['cpu_s_per_step']:.2f} CPU s/step (all threads, all processes), "
                   f"peak RSS {r['peak_rss_gib']:.2f} GiB per process ({r['sum_rss_gib']:.2f} GiB in all)")


@click.command()
@click.option("--threads", default=2, show_default=True, help="CPU threads in all, shared by the processes.")
@click.option("--steps", default=2, show_default=True, help="Timed steps after one warm-up step.")
@click.option("--only", multiple=True, type=click.Choice(list(CASES)),
              help=f"Cases to run (repeatable); default: {', '.join(DEFAULT_CASES)}.")
@click.option("--procs", default="1", show_default=True, help="Comma list of process counts, e.g. 1,2.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: one GPU per process, AMP as the trainer.")
@click.option("--cuda", "cuda_flag", is_flag=True, hidden=True, help="Same as --device cuda (older scripts).")
@click.option("--crop", default=None, type=int, help="Cubic crop size for every case (default: each case's own).")
@click.option("--cudnn", type=click.Choice(["deterministic", "benchmark"]), default="deterministic", show_default=True,
              help="cuDNN mode on CUDA: the trainer's (deterministic, no autotuning) or autotuned.")
@click.option("--profile", is_flag=True, help="Print the top ops by self time of one more (profiled) step.")
@click.option("--trace", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --profile: write the step's chrome trace into this folder.")
def main(threads: int, steps: int, only: tuple[str, ...], procs: str, device: str, cuda_flag: bool,
         crop: int | None, cudnn: str, profile: bool, trace: Path | None) -> None:
    if cuda_flag:
        device = "cuda"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.UsageError("--device cuda: no CUDA device is available")
    counts = [int(p) for p in procs.split(",")]
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train_bench_child.py"
        script.write_text(CHILD)
        for name in only or DEFAULT_CASES:
            spec = {**CASES[name], "device": device, "cudnn": cudnn}
            if crop is not None:
                spec["crop"] = [crop] * 3
            for n in counts:
                per = max(1, threads // n)
                run = dict(spec)
                if profile:
                    run["profile"] = str(Path(tmp) / f"{name}-{n}p.txt")
                    if trace is not None:
                        run["trace"] = str((trace / f"{name}-{n}p.json").resolve())
                proc = _launch(script, run, per, steps, n)
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
                    print(f"{name}, {n} process(es): failed ({tail})")
                    failed = True
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(_summary(name, run, r, n, per), flush=True)
                if profile:
                    print(Path(run["profile"]).read_text(), flush=True)
                    if trace is not None:
                        print(f"chrome trace: {run['trace']}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
