#!/usr/bin/env bash
# stages.pretrain.optimizer A/B: adamw (the paper and the reference) vs lazy_adamw (sparse rows of the
# ID tables and MTM's output table), paired by seed; each run pretrains, then finetunes FLIP_ID.
# Usage: scripts/pretrain_optimizer_ab.sh ROOT [extra overrides...]   (finished runs are skipped: re-run to resume)
#   env: DATASET=ml100k SEEDS="1 2 3 4 5" JOBS=1 FLIP_CTR=flip-ctr
# The pipeline's CPU scale (conf/scale/cpu.yaml): one pretraining epoch with a frozen 1-layer PLM.
# Then: python scripts/write_optimizer_ab.py ROOT --arms adamw lazy_adamw --stage finetune_id --out results/pretrain_optimizer_ab.md
set -euo pipefail
ROOT=${1:?usage: scripts/pretrain_optimizer_ab.sh ROOT [overrides...]}; shift
DATASET=${DATASET:-ml100k}
SEEDS=${SEEDS:-"1 2 3 4 5"}
JOBS=${JOBS:-1}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
mkdir -p "$ROOT"
for s in $SEEDS; do for o in adamw lazy_adamw; do
  run=$ROOT/${DATASET}_dcnv2_${o}_s$s
  echo "[ -f $run/finetune_id/metrics.json ] || $FLIP_CTR pipeline data=$DATASET 'strategies=[finetune_id]' stages.pretrain.optimizer=$o seed=$s num_threads=1 hydra.run.dir=$run $* > $run.log 2>&1 || echo FAILED $o $s"
done; done | xargs -P "$JOBS" -I{} bash -c "{}"
