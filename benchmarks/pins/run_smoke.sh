#!/usr/bin/env bash
# Runs every recipe's smoke profile with a given kd binary into OUT (never into results/) and
# prints each recipe's exit status and time; then `compare.py OUT/results smoke-3adf348.csv`
# checks that the values equal the pinned ones.
# usage: benchmarks/pins/run_smoke.sh KD_BIN OUT   (run from the repository root)
set -u
KD="$1"; OUT="$2"
mkdir -p "$OUT/results" "$OUT/runs" "$OUT/logs"
root="$(cd "$(dirname "$0")/../.." && pwd)"
export HF_HOME="${HF_HOME:-$root/../shared/data/hf-cache}" HF_HUB_OFFLINE=1
export KD_TEACHERS_DIR="${KD_TEACHERS_DIR:-$root/../shared/data/teachers}"
export KD_CACHE_DIR="$OUT/cache"
cd "$root"
for f in benchmarks/*.toml; do
  e=$(basename "$f" .toml)
  s=$(date +%s)
  "$KD" reproduce "$e" --profile smoke --results "$OUT/results" --runs "$OUT/runs" > "$OUT/logs/$e.log" 2>&1
  echo "$e rc=$? $(( $(date +%s) - s ))s"
done
