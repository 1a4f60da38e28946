#!/usr/bin/env bash
# The full benchmark (issue 6) as run for the committed results: one thread, fixed seed (0), CPU.
#   benchmarks/run_bench.sh            -> benchmarks/results/bench.json + benchmarks/results/report/
#   DEVICE=cuda benchmarks/run_bench.sh  adds the GPU throughput section on a CUDA machine.
# Uses the lab teacher/student under benchmarks/artifacts/lab when they exist, CIFAR-10 from ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p benchmarks/artifacts
exec .venv/bin/edgeclip bench --out benchmarks/results --lab benchmarks/artifacts/lab --threads "${THREADS:-1}" --device "${DEVICE:-cpu}" "$@" \
  2>&1 | tee benchmarks/artifacts/bench.log
