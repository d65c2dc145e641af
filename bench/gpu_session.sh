#!/usr/bin/env bash
# The prepared GPU session of docs/distributed.md / docs/scaling.md: one command for a lent GPU machine.
#
# Here, before the call: copy the data and the feature caches into an ignored folder of the checkout that
# travels with the working tree (about 70 MiB with ml-1m's posters left out), e.g.
#
#   echo /.gpu/ >> .git/info/exclude
#   mkdir -p .gpu/data .gpu/cache/features
#   rsync -a --exclude posters "$MULTIKG4REC_DATA"/ml-100k "$MULTIKG4REC_DATA"/ml-1m .gpu/data/
#   cp -r ~/.cache/multikg4rec/features/ml-100k ~/.cache/multikg4rec/features/ml-1m .gpu/cache/features/
#
# then run `bash bench/gpu_session.sh` there with `.gpu` carried. What it writes under $OUT (or
# bench/out/gpu) comes back: device_check.md, epochs.md, the full ml-1m training's metrics.json and a log.
# Each step has its own time cap so the whole session ends inside one 10-minute command.
set -uo pipefail
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export MULTIKG4REC_DATA=${MULTIKG4REC_DATA:-$PWD/.gpu/data} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export MULTIKG4REC_CACHE=${MULTIKG4REC_CACHE:-$PWD/.gpu/cache}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

# 1. every model, one epoch on ml-100k, CPU and GPU side by side (about 3 min)
timeout 240 python bench/device_check.py --epochs 1 --md "$OUT/device_check.md" 2>&1 | tee "$OUT/log.txt"

# 2. KGAT and Multi-KG4Rec epochs on ml-1m on the GPU (RecBole's published KGAT: 6.68 s per epoch, TITAN V)
timeout 150 python bench/device_check.py --dataset ml-1m --models kgat multikg4rec --devices cuda --epochs 2 \
    --md "$OUT/epochs.md" 2>&1 | tee -a "$OUT/log.txt"

# 3. a full Multi-KG4Rec ml-1m training on the GPU (target: under 3 minutes)
/usr/bin/time -v timeout 180 python -m multikg4rec train --model multikg4rec --dataset ml-1m --device cuda \
    --seed 0 --output-dir bench/out/gpu_runs --quiet > "$OUT/full_train.json" 2>> "$OUT/log.txt"
echo "full training exit $?" | tee -a "$OUT/log.txt"
find bench/out/gpu_runs -name metrics.json -exec cp {} "$OUT/full_train_metrics.json" \; 2>/dev/null
exit 0
