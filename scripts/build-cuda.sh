#!/usr/bin/env bash
# Builds a kd that trains on NVIDIA GPUs (`--device cuda`): `cargo build --release -p kd-cli
# --features cuda` into target/cuda/release/kd.
#
# With a CUDA toolkit installed (nvcc on PATH, or CUDA_HOME set) it uses that. Without one (a
# machine with no GPU, for a compile check or to build a binary to carry to a GPU machine), it
# assembles one from NVIDIA's PyPI wheels (CUDA 13.0 Update 2, ~1.2 GB) in a virtual
# environment outside the repository, and links against a generated libcuda.so stub (soname
# libcuda.so.1, every call returns "no device"): the binary binds to the real driver's
# libcuda.so.1 where it runs. Keep nvcc at 13.0: newer nvcc emits PTX that a CUDA 13.0 driver
# refuses.
#
#   scripts/build-cuda.sh                 # CUDA_COMPUTE_CAP from nvidia-smi, else 90 (H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh --features cudnn   # extra cargo arguments pass on
#
# Variables: KD_CUDA_VENV (wheels' venv, default ~/.cache/kd-bench/cuda-venv), KD_CUDA_TOOLKIT
# (the assembled toolkit, default ~/.cache/kd-bench/cuda-toolkit), CUDA_COMPUTE_CAP,
# CARGO_BUILD_JOBS and CUDAFORGE_THREADS (parallel nvcc jobs; default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/kd-bench

if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
fi

if [ -n "${CUDA_HOME:-}" ]; then
  echo "build-cuda: using the CUDA toolkit at $CUDA_HOME"
else
  VENV=${KD_CUDA_VENV:-$CACHE/cuda-venv}
  TK=${KD_CUDA_TOOLKIT:-$CACHE/cuda-toolkit}
  echo "build-cuda: no CUDA toolkit here; assembling one from PyPI wheels in $VENV"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
  C=$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')

  # A folder shaped like a toolkit: bin/ include/ nvvm/ from the wheels, lib64/ with the
  # unversioned names the linker wants, lib64/stubs/libcuda.so (no wheel ships the driver).
  rm -rf "$TK"
  mkdir -p "$TK/lib64/stubs"
  ln -s "$C/bin" "$TK/bin"
  ln -s "$C/include" "$TK/include"
  ln -s "$C/nvvm" "$TK/nvvm"
  for l in cudart.so.13 cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13; do
    ln -s "$C/lib/lib$l" "$TK/lib64/lib$l"
    ln -s "$C/lib/lib$l" "$TK/lib64/lib${l%%.so*}.so"
  done
  # The stub declares every driver entry point cudarc binds; each returns CUDA_ERROR_NO_DEVICE.
  cargo fetch -q
  DRV=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | sort -V | tail -1)/src/driver/sys/mod.rs
  grep -oE '^pub unsafe fn cu[A-Za-z_0-9]+\(' "$DRV" | sort -u \
    | sed -E 's/pub unsafe fn ([A-Za-z_0-9]+)\(/int \1(void) { return 100; }/' >"$TK/lib64/stubs/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$TK/lib64/stubs/libcuda.so" "$TK/lib64/stubs/cuda_stub.c"
  ln -s libcuda.so "$TK/lib64/stubs/libcuda.so.1"
  CUDA_HOME=$TK
  echo "build-cuda: to run this kd here (it will say there is no GPU):"
  echo "  LD_LIBRARY_PATH=$TK/lib64/stubs:$C/lib target/cuda/release/kd bench --device cuda"
fi

if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .) || true
  CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
fi
# What cudarc's and candle-kernels' build scripts read.
export CUDA_HOME CUDA_COMPUTE_CAP
export PATH=$CUDA_HOME/bin:$PATH
export NVCC=$CUDA_HOME/bin/nvcc
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
echo "build-cuda: compute capability $CUDA_COMPUTE_CAP, nvcc $("$NVCC" --version | tail -2 | head -1)"

time cargo build --release -p kd-cli --bin kd --features cuda --target-dir target/cuda "$@"
echo "build-cuda: built target/cuda/release/kd"
