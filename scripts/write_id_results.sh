#!/usr/bin/env bash
# Rebuilds results/id_baselines_refit.md (+ .csv of every run) from the grid's run directories
# (scripts/id_baselines.sh, which runs the default protocol=refit). results/id_baselines.md is
# the hand-written overview that cites it.
set -euo pipefail
ROOT=${1:-outputs/id_baselines}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
{
cat <<'HDR'
# Nine ID models trained from scratch, protocol=refit (Table II ID baselines)

Commands (cpu2 = the 2-core CPU machine; torch 1 thread per run):

    DATASETS="ml1m ml100k" SEEDS="1 2 3 4 5" JOBS=2 scripts/id_baselines.sh outputs/id_baselines num_threads=1
    scripts/write_id_results.sh outputs/id_baselines

each run being `flip-ctr train data=<ml1m|ml100k> id_model=<model> seed=<s>` (protocol=refit, the
default): embedding 32, DNN [300,300,128], Adam lr 1e-3, batch 256; the epoch count (up to 10) is
chosen on the validation slice (last 10% of the chronological training part, patience 2), then
the model is trained again from the same initialisation on the whole training part for that many
epochs and tested once on the full chronological test set (ML-1M: 73,902 rows; ML-100K: 7,286).

HDR
"$FLIP_CTR" report "$ROOT" --out results/id_baselines_refit_table.md
} > results/id_baselines_refit.md
echo "wrote results/id_baselines_refit.md"
