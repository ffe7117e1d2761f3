#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that has no cargo and no network into
# one folder of the checkout (default .gpu/, which git ignores): the CUDA kd (xz: 92 MB → 11.5 MB), the
# CIFAR-10 hub snapshot and two CIFAR-10 teachers, laid out as ../shared is, within the 64 MiB a
# lent machine takes. Recipes whose data is not packed are reported `no-data` by the check.
#
#   scripts/build-cuda.sh && scripts/gpu-bundle.sh
#   # there:  ln -sfn "$PWD/.gpu/shared" ../shared && xz -dkf .gpu/kd.xz && chmod +x .gpu/kd \
#   #         && KD=.gpu/kd scripts/gpu-check.sh "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu}
SHARED=${SHARED:-../shared}
KD=${KD:-target/cuda/release/kd}
[ -x "$KD" ] || { echo "no CUDA kd at $KD: run scripts/build-cuda.sh first" >&2; exit 2; }
rm -rf "$DEST"
mkdir -p "$DEST/shared/data/hf-cache/hub" "$DEST/shared/data/teachers"
xz -T2 -9 -c "$KD" >"$DEST/kd.xz"
cp -a "$SHARED/data/hf-cache/hub/datasets--uoft-cs--cifar10" "$DEST/shared/data/hf-cache/hub/"
for t in akamaster-resnet56-cifar10 akamaster-resnet20-cifar10; do
  cp -a "$SHARED/data/teachers/$t" "$DEST/shared/data/teachers/"
done
chmod -R u+w "$DEST"
size=$(du -sm "$DEST" | cut -f1)
echo "gpu-bundle: $DEST holds ${size} MiB; with the checkout it must stay under the 64 MiB a lent machine takes"
