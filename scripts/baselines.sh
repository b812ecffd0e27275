#!/usr/bin/env bash
# Table II PLM/hybrid baselines × seeds on one dataset, one run at a time, one run directory each
# under ROOT (finished runs are skipped: re-run to resume). Default: the CPU scale of
# results/baselines.md (MiniLM-L6 cut to 2 layers, 20 training batches of 128 rows per PLM phase).
# Usage: scripts/baselines.sh ROOT [extra overrides...]
#   env: DATA=ml100k BASELINES="ctr_bert ptab p5_random ctrl plm_only" SEEDS="1 2 3" FLIP_CTR=flip-ctr
#        PLM_LR=1e-4 (the PLM learning rate of every PLM phase at CPU scale)
#        SCALE="..." (replace the CPU-scale overrides; SCALE= runs each stage's own defaults)
# Then: flip-ctr report ROOT --out results/baselines_table.md
set -euo pipefail
ROOT=${1:?usage: scripts/baselines.sh ROOT [overrides...]}; shift
DATA=${DATA:-ml100k}
BASELINES=${BASELINES:-"ctr_bert ptab p5_random ctrl plm_only"}
SEEDS=${SEEDS:-"1 2 3"}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
PLM_LR=${PLM_LR:-1e-4}
# CPU scale, every PLM phase alike: 1 epoch over the first 20 shuffled training batches of 128
# rows, no validation pass (nothing to select after one short epoch), PLM lr $PLM_LR.
# CTRL's ID-model finetuning runs at the ID baselines' full scale (5 epochs, early stopping).
CPU_SCALE="plm.keep_layers=2 data.eval_batch_size=512 stage.batch_size=128"
declare -A STAGE_SCALE=(
  [ctr_bert]="stage.max_epochs=1 stage.limit_train_batches=20 stage.validate=false stage.lr_plm=$PLM_LR"
  [ptab]="stage.max_epochs=1 stage.limit_train_batches=20 stage.validate=false stage.lr_plm=$PLM_LR stage.mlm.limit_train_batches=20 stage.mlm.lr=$PLM_LR"
  [p5]="stage.max_epochs=1 stage.limit_train_batches=20 stage.validate=false"
  [p5_random]="stage.max_epochs=1 stage.limit_train_batches=20 stage.validate=false"
  [ctrl]="stage.align.limit_train_batches=20 stage.align.lr_plm=$PLM_LR"
  [plm_only]="stage.max_epochs=1 stage.limit_train_batches=20 stage.validate=false stage.lr_plm=$PLM_LR"
)
mkdir -p "$ROOT"
for s in $SEEDS; do for b in $BASELINES; do
  run=$ROOT/${DATA}_${b}_s$s
  [ -f "$run/metrics.json" ] && continue
  scale=${SCALE-"$CPU_SCALE ${STAGE_SCALE[$b]:-}"}
  echo "$(date +%T) $b seed $s → $run"
  # shellcheck disable=SC2086
  $FLIP_CTR train baseline=$b data=$DATA seed=$s hydra.run.dir=$run $scale "$@" > "$run.log" 2>&1 \
    || echo "FAILED $b seed $s (see $run.log)"
done; done
