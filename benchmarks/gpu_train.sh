#!/usr/bin/env bash
# Issue 14 item 5's GPU numbers in one command, on a machine with a CUDA GPU (a few minutes on an H200;
# each of its 5 runs is cut at 90 s, so that the whole script stays under 8 minutes):
# benchmarks/train_bench.py --device cuda, AMP (float16 autocast and the loss scaler, as the trainer),
# symmetric loss with Dice, global batch 2:
#   1. cpu-fast and paper at the paper's 128^3 crops, steps/s and peak GPU memory, cuDNN as the trainer
#      sets it (deterministic, no autotuning) and autotuned (--cudnn benchmark: is determinism worth it?
#      grid_sample's backward is not deterministic on CUDA anyway);
#   2. cpu-fast on whole 192x160x256 volumes (the issue's "about 0.4 s/step on an H200");
#   3. one profiled step of each 128^3 case (top ops by GPU self time; chrome traces in $TRACES);
#   4. with 2 or more GPUs, cpu-fast at 128^3 on 2 processes (DDP, NCCL), global batch 2.
#   bash benchmarks/gpu_train.sh        (PY=... for another interpreter than .venv's; TRACES=dir, default out/gpu_train)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PY:-.venv/bin/python}"
traces="${TRACES:-out/gpu_train}"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('GPU:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count(), '| torch', torch.__version__, \
'| CUDA', torch.version.cuda, '| cuDNN', torch.backends.cudnn.version())"
bench() { timeout 90 "$py" benchmarks/train_bench.py --device cuda --threads 4 "$@" || echo "(run failed or timed out: $*)"; }
for mode in deterministic benchmark; do
  bench --only cpu-fast --only paper --crop 128 --steps 10 --cudnn "$mode"
done
bench --only cpu-fast-whole --steps 10
bench --only cpu-fast --only paper --crop 128 --steps 3 --profile --trace "$traces" | cut -c1-220
if [ "$("$py" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  bench --only cpu-fast --crop 128 --steps 10 --procs 2
fi
