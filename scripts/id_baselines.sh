#!/usr/bin/env bash
# The nine ID baselines × datasets × seeds, JOBS runs at a time, one run directory each under ROOT.
# Usage: scripts/id_baselines.sh ROOT [extra overrides...]   (finished runs are skipped: re-run to resume)
#   env: DATASETS="ml1m ml100k" MODELS="afm pnn ..." SEEDS="1 2 3" JOBS=4 FLIP_CTR="flip-ctr"
# Then: flip-ctr report ROOT --out results/id_baselines.md
set -euo pipefail
ROOT=${1:?usage: scripts/id_baselines.sh ROOT [overrides...]}; shift
DATASETS=${DATASETS:-"ml1m ml100k"}
MODELS=${MODELS:-"afm pnn wide_deep dcn deepfm xdeepfm autoint dcnv2 afn"}
SEEDS=${SEEDS:-"1 2 3 4 5"}
JOBS=${JOBS:-2}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
mkdir -p "$ROOT"
for d in $DATASETS; do for m in $MODELS; do for s in $SEEDS; do
  run=$ROOT/${d}_${m}_s$s
  # finished runs are skipped, so an interrupted grid resumes where it stopped
  echo "[ -f $run/metrics.json ] || $FLIP_CTR train data=$d id_model=$m seed=$s hydra.run.dir=$run $* > $run.log 2>&1 || echo FAILED $d $m $s"
done; done; done | xargs -P "$JOBS" -I{} bash -c "{}"
