#!/usr/bin/env bash
# The experiment queue behind the README's method-comparison (issue 5), SAS and AdaInf (issue 6)
# tables, at the budget one 2-core CPU affords in a couple of hours: 200 steps of batch 512 per cell.
# Resumable: rerun this script and every finished cell / run is skipped, a half-trained one resumes.
#   nohup bash training/experiments/run_all.sh > results/run_all.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-200}
mkdir -p results
# issue 5: SimCLR vs DCL (tau+ 0.05, 0.1) vs CISSL, seed 0 first so a stop leaves a complete row per method
$PY -m training.compare --steps "$STEPS" --seeds 0 --out results/compare_fmnist
# issue 6: AdaInf vs vanilla inflation vs none (generated = PCA Gaussian-mixture stand-in fitted here)
$PY -m training.experiments.adainf_fmnist --budget-steps "$STEPS" --seeds 0 1 2 --out results/adainf_fmnist
# issue 5: seeds 1, 2
$PY -m training.compare --steps "$STEPS" --seeds 0,1,2 --out results/compare_fmnist
# issue 6: SAS (upstream ranking) vs random balanced over the same k-means partition
$PY -m training.experiments.sas_fmnist --budget-steps "$STEPS" --seeds 0 1 2 --fractions 0.2 0.4 0.6 0.8 \
    --methods sas random --n-augment 2 --out results/sas_fmnist
# issue 5: the other methods, seed 0
$PY -m training.compare --steps "$STEPS" --methods all --seeds 0,1,2 --extra-seeds 0 --out results/compare_fmnist
echo "run_all: finished $(date -u)"
