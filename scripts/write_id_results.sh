#!/usr/bin/env bash
# Rebuilds results/id_baselines.md from the grid's run directories (see scripts/id_baselines.sh).
set -euo pipefail
ROOT=${1:-outputs/id_baselines}
FLIP_CTR=${FLIP_CTR:-flip-ctr}
{
cat <<'HDR'
# ID models trained from scratch (Table II ID baselines)

Commands (cpu2 = 2-core CPU machine shared with other jobs; torch 1 thread per run):

    DATASETS="ml1m ml100k" SEEDS="1 2 3" JOBS=1 scripts/id_baselines.sh outputs/id_baselines num_threads=1
    flip-ctr report outputs/id_baselines

each run being `flip-ctr train data=<ml1m|ml100k> id_model=<model> seed=<s>`: embedding 32,
DNN [300,300,128], Adam lr 1e-3, batch 256, up to 5 epochs with early stopping on the
validation AUC (patience 1; validation = last 10% of the chronological training part), best
checkpoint evaluated on the full chronological test set (ML-1M: 73,902 rows; ML-100K: 7,286).

HDR
"$FLIP_CTR" report "$ROOT"
cat <<'GAP'

## DCNv2 on ML-1M vs the paper's 0.8548

The protocol above fits on the first 81% of rows (the last 9% before the test period is the
validation slice) and selects the epoch on it. Training instead on the whole 90% training part
for the epoch count the validation run picked (2), as a paper-style run without a held-out
slice would, closes most of the gap on the same seed:

    flip-ctr train data=ml1m id_model=dcnv2 seed=1 data.train_split=train callbacks=none stage.max_epochs=2 num_threads=1

| protocol | seed | test AUC | test Logloss |
|---|---|---|---|
| fit 81%, early stopping on the validation slice (table above) | 1 | see ml1m/dcnv2 | |
| fit on all 90%, 2 epochs, no selection | 1 | 0.8494 | 0.3906 |
| paper (Table II) | – | 0.8548 | 0.3893 |

One seed only, and the change mixes two effects (11% more rows, and those rows are the most
recent before the test period); they are not separated yet. The remaining ≈0.005 AUC is within what untuned lr/regularisation explain (the paper
tunes per model; we use lr 1e-3, no weight decay, no dropout for every model); this is not
investigated further yet.
GAP
} > results/id_baselines.md
"$FLIP_CTR" report "$ROOT" --out results/id_baselines_table.md > /dev/null
echo "wrote results/id_baselines.md"
