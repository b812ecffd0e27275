#!/usr/bin/env bash
# ID models under the three protocols (conf/protocol/) and two training recipes (conf/id_recipe/),
# JOBS runs at a time, one run directory each under ROOT; finished runs are skipped (re-run to resume).
# Usage: scripts/id_protocols.sh ROOT [extra overrides...]
#   env: DATASETS="ml1m" VARIANTS="dcnv2_mix:reference dcnv2:ours" PROTOCOLS="paper refit holdout"
#        SEEDS="1 2 3 4 5" JOBS=2 FLIP_CTR=flip-ctr
#   a VARIANT is <conf/id_model name>:<conf/id_recipe name>
# Then: flip-ctr report ROOT --out results/...
set -euo pipefail
ROOT=${1:?usage: scripts/id_protocols.sh ROOT [overrides...]}; shift
DATASETS=${DATASETS:-ml1m}
VARIANTS=${VARIANTS:-"dcnv2_mix:reference dcnv2:ours"}
PROTOCOLS=${PROTOCOLS:-"paper refit holdout"}
SEEDS=${SEEDS:-"1 2 3 4 5"}
JOBS=${JOBS:-2}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
mkdir -p "$ROOT"
for s in $SEEDS; do for d in $DATASETS; do for v in $VARIANTS; do for p in $PROTOCOLS; do
  m=${v%%:*}; r=${v##*:}
  run=$ROOT/${d}_${m}_${r}_${p}_s$s
  # a finished run has "stage" in metrics.json (written last), so an interrupted grid resumes
  echo "grep -qs '\"stage\"' $run/metrics.json || $FLIP_CTR train data=$d id_model=$m id_recipe=$r protocol=$p seed=$s hydra.run.dir=$run $* > $run.log 2>&1 || echo FAILED $run"
done; done; done; done | xargs -P "$JOBS" -I{} bash -c "{}"
