#!/usr/bin/env bash
# make check-gpu: prove the GPU half of alexnet-deploy on a machine with an NVIDIA GPU, in one run (< 8 min).
#
#   scripts/check_gpu.sh [--dry-run] [--out DIR] [--cpu-folder DIR] [--wheels DIR] [--work DIR] [--budget-s S]
#   scripts/check_gpu.sh wheels                  # the wheels the GPU machine needs, and the gpu-wheels command
#   scripts/check_gpu.sh build-cpu-folder DIR    # on the CPU host: the deployment folder to carry over
#
# Steps (each a row of OUT/gpu-check.json and OUT/gpu-check.md: passed, failed, or skipped with the reason):
#   preflight         GPU (nvidia-smi, libcuda, torch.cuda), driver CUDA vs onnxruntime-gpu's, staged wheels
#   pytest-gpu        pytest -m gpu
#   train, export-models, inputs      digits checkpoint (alexnet-train), ONNX models, images, a short video
#   predict-ort-cuda, probe-ort-trt, probe-trt   which GPU engines run here, each against ONNX Runtime CPU
#   deploy-gpu        alexnet-deploy --engines torch-cuda,ort-cuda[,ort-trt][,trt]
#   verify-gpu-*, verify-cpu-*        alexnet-verify of that folder and of the CPU-built one, per GPU engine
#   bench-cuda, export-trt-bench, bench-trt, bench-trt-graph   torch-cuda / ort-cuda / trt, b1/32/256,
#                     cifar10 and torchvision, device-side split timing, CUDA graphs (trt)
#   stream-ort-cuda   alexnet-stream --engine ort-cuda on the video (same top-1 per frame as --engine ort)
#   serve-ort-cuda    one alexnet-serve --engine ort-cuda classify request (same answer as alexnet-predict)
#
# Exit status: 0 no step failed; 1 a step failed (or the time budget ran out); 2 bad input, before any GPU
# work: no GPU, a missing wheel, a driver too old for the staged onnxruntime-gpu, a bad option (one line on
# stderr; the report is still written, every step skipped with the reason). --dry-run lists the steps and their
# commands and exits 0. Offline: nothing is downloaded; docs/gpu-check.md says how to stage the wheels.
#
# Environment: PYTHON (the interpreter with torch; default python3), OUT (report folder when --out is not
# given), CHECK_GPU_WHEELS (staged wheels when --wheels is not given).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "check-gpu: no Python interpreter '$PY' (set PYTHON=)" >&2; exit 2; }
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null \
    || { echo "check-gpu: $PY is older than Python 3.11 (tomllib); set PYTHON=" >&2; exit 2; }

case "${1:-}" in
    run|wheels|build-cpu-folder|probe|inputs|capture|serve-request|-h|--help) ;;
    *) set -- run "$@" ;;
esac
exec "$PY" "$REPO/scripts/check_gpu.py" "$@"
