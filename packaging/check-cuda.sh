#!/usr/bin/env bash
# Compiles Easel with the `cuda` feature on a machine without a GPU or a CUDA install:
# NVIDIA's CUDA 13.4 compiler, headers and runtime come from PyPI wheels into a
# scratch folder, and `cargo check --features cuda` builds candle's CUDA kernels
# (nvcc) and type-checks everything, tests included. It does not link (that needs the
# driver's libcuda) and runs nothing. About 30 minutes on 2 cores; not part of CI.
# Where a GPU is, `cargo test --features cuda --lib local_model` also checks that the
# tiny model captions the same on the GPU as on the CPU.
#
#   bash packaging/check-cuda.sh            # sm_90 (H100); CUDA_COMPUTE_CAP=80 for A100
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheels=${EASEL_CUDA_WHEELS:-${TMPDIR:-/tmp}/easel-cuda-wheels}
if [ ! -x "$wheels/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip install --quiet --no-deps --target "$wheels" \
    "nvidia-cuda-nvcc==13.4.*" "nvidia-nvvm==13.4.*" "nvidia-cuda-crt==13.4.*" \
    "nvidia-cuda-runtime==13.4.*" "nvidia-cuda-cccl"
fi
cuda="$wheels/nvidia/cu13"
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" PATH="$cuda/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${TMPDIR:-/tmp}/easel-cuda-target}
nvcc --version | tail -1
cd "$root"
cargo check --features cuda --lib --bins --tests
