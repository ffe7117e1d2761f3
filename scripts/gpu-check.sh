#!/usr/bin/env bash
# The GPU check: on a CUDA machine, every recipe's smoke profile with `--device cuda`, `kd bench
# --device cuda` for the CIFAR ResNets and the GLUE text students, and the same ResNet step in
# PyTorch on the same GPU when torch is there. Writes to OUT_DIR:
#   gpu-check.log    everything printed
#   smoke.csv        experiment,status,seconds   (status: pass, fail, no-data)
#   throughput.csv   tool,device,model,train_batch,train_ex_per_s,eval_batch,infer_ex_per_s
# Finishes in a few minutes on one modern GPU (each smoke run is capped at SMOKE_TIMEOUT s).
#
#   scripts/gpu-check.sh OUT_DIR
#
# Variables: KD (the binary; default target/cuda/release/kd from scripts/build-cuda.sh), HF_HOME
# (hub cache with the smoke data; default ../shared/data/hf-cache; recipes whose data is not
# there are reported `no-data`, not failed), KD_TEACHERS_DIR, DEVICE (default cuda), KERNELS
# (passed as --kernels; `DEVICE=cpu KERNELS=generic` rehearses the check on a CPU machine),
# KD_CUDA_LIBS (extra folder for libcublas/libcurand when the driver's Python lacks them),
# SMOKE_TIMEOUT (default 300; the 16-variant zoo-cifar100 needs ~150 s on a loaded 2-core CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu-check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
KD=${KD:-target/cuda/release/kd}
DEVICE=${DEVICE:-cuda}
KERNELS_ARG=${KERNELS:+--kernels $KERNELS}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-300}
export HF_HOME=${HF_HOME:-$(cd .. && pwd)/shared/data/hf-cache}
export HF_HUB_OFFLINE=1
export KD_TEACHERS_DIR=${KD_TEACHERS_DIR:-$(cd .. && pwd)/shared/data/teachers}
export KD_CACHE_DIR=$OUT/cache
LOG=$OUT/gpu-check.log
exec > >(tee "$LOG") 2>&1

# cuBLAS / cuRAND: from the machine's Python CUDA wheels if it has them (the driver gives libcuda).
PYLIB=$(python3 -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=${KD_CUDA_LIBS:+$KD_CUDA_LIBS:}${PYLIB:+$PYLIB:}${LD_LIBRARY_PATH:-}

echo "gpu-check $(date -u +%FT%TZ), kd-bench $(git rev-parse --short HEAD 2>/dev/null || echo '?'), device $DEVICE ${KERNELS:+kernels $KERNELS}"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>/dev/null || echo "no nvidia-smi"
[ -x "$KD" ] || { echo "no kd binary at $KD: build it with scripts/build-cuda.sh or set KD"; exit 2; }

echo "experiment,status,seconds" >"$OUT/smoke.csv"
failed=0
for recipe in benchmarks/*.toml; do
  exp=$(basename "$recipe" .toml)
  grep -q '^\[profiles.smoke\]' "$recipe" || continue
  t0=$(date +%s%N)
  timeout "$SMOKE_TIMEOUT" "$KD" reproduce "$exp" --profile smoke --device "$DEVICE" $KERNELS_ARG \
    --results "$OUT/results" --runs "$OUT/runs" >"$OUT/smoke-$exp.txt" 2>&1
  rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  secs=$((ms / 1000)).$(printf %03d $((ms % 1000)))
  if [ $rc -eq 0 ]; then status=pass
  elif grep -q "is not in the hub cache\|no teacher file\|No such file" "$OUT/smoke-$exp.txt"; then status=no-data
  else status=fail; failed=$((failed + 1)); fi
  printf '%-32s %-8s %6.1f s\n' "$exp" "$status" "$secs"
  [ "$status" = fail ] && tail -5 "$OUT/smoke-$exp.txt"
  echo "$exp,$status,$secs" >>"$OUT/smoke.csv"
done

echo "tool,device,model,train_batch,train_ex_per_s,eval_batch,infer_ex_per_s" >"$OUT/throughput.csv"
# Rows of `kd bench` / pytorch_step.py: model batch train batch infer.
to_csv() { awk -v tool="$1" -v dev="$DEVICE" 'NF == 5 && $2 ~ /^[0-9]+$/ { print tool "," dev "," $1 "," $2 "," $3 "," $4 "," $5 }'; }
"$KD" bench --device "$DEVICE" $KERNELS_ARG --archs resnet20,resnet56,resnet8x4 --repeats 10 | tee "$OUT/bench-kd.txt"
to_csv kd-bench <"$OUT/bench-kd.txt" >>"$OUT/throughput.csv"
"$KD" bench --device "$DEVICE" $KERNELS_ARG --archs bert-L2,bert-L4,bert-L6,textcnn --repeats 10 | tee "$OUT/bench-kd-text.txt"
to_csv kd-bench <"$OUT/bench-kd-text.txt" >>"$OUT/throughput.csv"
if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  python3 benchmarks/perf/pytorch_step.py --device cuda --archs resnet20,resnet56 --repeats 10 | tee "$OUT/bench-torch.txt"
  to_csv pytorch <"$OUT/bench-torch.txt" >>"$OUT/throughput.csv"
else
  echo "PyTorch with CUDA is not installed here: no PyTorch rows"
fi

echo "gpu-check: $failed smoke recipe(s) failed; results in $OUT (smoke.csv, throughput.csv, gpu-check.log)"
exit $((failed > 0))
