#!/usr/bin/env bash
# stage.optimizer A/B: adam (the reference) vs lazy_adam (sparse feature-table rows), paired by seed.
# Usage: scripts/optimizer_ab.sh ROOT [extra overrides...]   (finished runs are skipped: re-run to resume)
#   env: DATASET=ml1m MODEL=dcnv2_mix SEEDS="1 2 3 4 5" JOBS=2 FLIP_CTR=flip-ctr
# lazy_adam refuses a whole-table L2 penalty, so both arms train with id_recipe=ours.
# Then: python scripts/write_optimizer_ab.py ROOT --out results/optimizer_ab_ml1m.md
set -euo pipefail
ROOT=${1:?usage: scripts/optimizer_ab.sh ROOT [overrides...]}; shift
DATASET=${DATASET:-ml1m}
MODEL=${MODEL:-dcnv2_mix}
SEEDS=${SEEDS:-"1 2 3 4 5"}
JOBS=${JOBS:-2}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
mkdir -p "$ROOT"
for s in $SEEDS; do for o in adam lazy_adam; do
  run=$ROOT/${DATASET}_${MODEL}_ours_${o}_s$s
  echo "[ -f $run/metrics.json ] || $FLIP_CTR train data=$DATASET id_model=$MODEL id_recipe=ours stage.optimizer=$o seed=$s num_threads=1 hydra.run.dir=$run $* > $run.log 2>&1 || echo FAILED $o $s"
done; done | xargs -P "$JOBS" -I{} bash -c "{}"
