#!/usr/bin/env bash
# Cost of a KD epoch with the teacher soft-label cache against a plain-student epoch, on the
# real CIFAR-10 subset: ResNet-56 teacher, ResNet-20 student, batch 64, a bank of 4 views per
# example (the cache is filled once, before training). Prints per-epoch train seconds of both
# variants and their ratio, then the same without the cache (live teacher) for reference.
#
#   HF_HOME=../shared/data/hf-cache HF_HUB_OFFLINE=1 benchmarks/perf/kd_epoch_cost.sh [train_examples]
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-2000}"
out="$(mktemp -d)"
kd="${KD:-target/release/kd}"
[ -x "$kd" ] || cargo build --release -p kd-cli
common=(reproduce vanilla-kd-cifar10 --profile smoke --seeds 0 --set "data.train_limit=$n" --set train.epochs=2
        --set train.batch_size=64 --set data.augment.bank=4 --runs "$out/runs")
KD_CACHE_DIR="$out/cache" "$kd" "${common[@]}" --set teacher.soft_label_cache=true --results "$out/cached" >/dev/null 2>"$out/cached.log"
KD_CACHE_DIR="$out/cache" "$kd" "${common[@]}" --results "$out/live" >/dev/null 2>"$out/live.log"
grep -h "banked views" "$out/cached.log" || true
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for name in ("cached", "live"):
    runs = [json.loads(l) for l in open(f"{out}/{name}/vanilla-kd-cifar10.history.jsonl")]
    # Epoch 2: both variants past any warm-up.
    t = {r["variant"]: r["epochs"][-1]["train_seconds"] for r in runs}
    print(f"{name:>6}: plain epoch {t['plain']:.2f}s, kd epoch {t['kd']:.2f}s, kd/plain = {t['kd'] / t['plain']:.2f}")
PY
