#!/usr/bin/env bash
# Issue 16's GPU numbers in one command, on a machine with a CUDA GPU: benchmarks/predict_bench.py over
# the first 4 val pairs of test_data/ (192x160x256), the network alone (--io-iters 0) and the default stages (search + 40
# half-resolution Adam iterations), each the sequential and the pipelined path, then a timed rerun over the folder.
# Targets: network only <= 0.5 s per pair end to end; default stages <= 2 s per pair.
#   bash benchmarks/gpu_predict.sh            (PY=... for another interpreter than .venv's; THREADS=4)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PY:-.venv/bin/python}"
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CPU cores', __import__('os').cpu_count())"
"$py" benchmarks/predict_bench.py --device cuda --threads "${THREADS:-4}" --io-iters 0,40 --pairs 4
