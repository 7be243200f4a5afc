#!/usr/bin/env bash
# The experiment queue behind the README's method-comparison (issue 5), SAS and AdaInf (issue 6)
# tables, at the budget one 2-core CPU affords in a couple of hours: 200 steps of batch 512 per cell.
# Two lanes run side by side with one thread each (on 2 cores, more throughput than one 2-thread
# lane: the small convolutions scale poorly to 2 threads).
# Resumable: rerun this script and every finished cell / run is skipped, a half-trained one resumes.
#   nohup bash training/experiments/run_all.sh > results/run_all.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-200}
export OMP_NUM_THREADS=1
mkdir -p results
# lane 1, issue 5: SimCLR vs DCL (tau+ 0.05, 0.1) vs CISSL over seeds 0,1,2, then MoCo v2, BYOL,
# SimSiam, Barlow Twins, DINO, DISSL with seed 0 (d1024 architecture for all; see training/experiments/compare.py)
# then the SAS experiment's 100% reference (SimCLR on the full train set, same budget, 3 seeds)
( $PY -m training.experiments.compare --steps "$STEPS" --methods all --seeds 0,1,2 --extra-seeds 0 \
      --out results/compare_fmnist
  $PY -m training.experiments.sas_fmnist --threads 1 --budget-steps "$STEPS" --seeds 0 1 2 --methods \
      --out results/sas_fmnist_full
) > results/lane_compare.log 2>&1 &
# lane 2, issue 6: AdaInf vs vanilla inflation vs none (generated = PCA Gaussian-mixture stand-in fitted
# here), then SAS (upstream ranking) vs random balanced over the same k-means partition
( $PY -m training.experiments.adainf_fmnist --threads 1 --budget-steps "$STEPS" --seeds 0 1 2 \
      --out results/adainf_fmnist
  $PY -m training.experiments.sas_fmnist --threads 1 --budget-steps "$STEPS" --seeds 0 1 2 \
      --fractions 0.2 0.4 0.6 0.8 --methods sas random --n-augment 2 --no-full --out results/sas_fmnist
) > results/lane_data.log 2>&1 &
wait
echo "run_all: finished $(date -u)"
