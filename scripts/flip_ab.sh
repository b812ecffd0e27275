#!/usr/bin/env bash
# Alignment A/B runs (issue 15): `flip-ctr pipeline` with FLIP_ID only (or scratch), one run
# directory per (dataset, variant, seed) under ROOT, JOBS at a time; finished runs are skipped
# (re-run to resume; concurrent invocations on one ROOT split the jobs). Variants: scripts/flip_ab_variants.tsv (name <TAB> overrides).
# Usage: scripts/flip_ab.sh ROOT [extra overrides...]
#   env: DATASETS="ml100k" VARIANTS="defaults scratch" (default: all in the file) SEEDS="1 2 3"
#        JOBS=2 FLIP_CTR=flip-ctr
# Then: python scripts/write_flip_ab_results.py ROOT ...
set -euo pipefail
ROOT=${1:?usage: scripts/flip_ab.sh ROOT [overrides...]}; shift
HERE=$(cd "$(dirname "$0")" && pwd)
DATASETS=${DATASETS:-ml100k}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
VARIANTS=${VARIANTS:-$(grep -v '^#' "$HERE/flip_ab_variants.tsv" | cut -f1 | tr '\n' ' ')}
mkdir -p "$ROOT"
for s in $SEEDS; do for d in $DATASETS; do for v in $VARIANTS; do
  overrides=$(grep -v '^#' "$HERE/flip_ab_variants.tsv" | awk -F'\t' -v n="$v" '$1 == n {print $2}')
  [ -n "$overrides" ] || { echo "unknown variant $v" >&2; exit 2; }
  case "$overrides" in *strategies=*) strategies="" ;; *) strategies="strategies=[finetune_id]" ;; esac
  run=$ROOT/${d}_${v}_s$s
  # a finished run has summary.json (written last), so an interrupted grid resumes
  # $run.lock: several invocations on the same ROOT share the work without running a job twice
  # (a lock left by a killed run: remove it to rerun that job)
  echo "test -s $run/summary.json || ! mkdir $run.lock 2>/dev/null || { $FLIP_CTR pipeline data=$d seed=$s $strategies $overrides trainer.log_every_n_steps=10 task_name=flip_ab hydra.run.dir=$run $* > $run.log 2>&1 || echo FAILED $run; rmdir $run.lock; }"
done; done; done | xargs -P "$JOBS" -I{} bash -c "{}"
