#!/bin/bash
# usage: check.sh TREE OUT  (TREE: a checkout of this repository with the README's venv active)
# Trains tiny DPO and SPO and the README's MiniPick DPO from TREE, evaluates the last, hashes weights.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$1; OUT=$2; mkdir -p "$OUT"; cd "$TREE"
export PYTHONPATH=$TREE:$TREE/tests/resume OMP_NUM_THREADS=1
rm -rf "$OUT/runs"
python -m lightning_pref fit --config tests/configs/tiny_dpo.yaml --trainer.logger.init_args.save_dir "$OUT/runs" > "$OUT/tiny_dpo.log" 2>&1
python -m lightning_pref fit --config tests/configs/tiny_spo.yaml --trainer.logger.init_args.save_dir "$OUT/runs" > "$OUT/tiny_spo.log" 2>&1
unset OMP_NUM_THREADS
python -m lightning_pref fit --config experiments/dpo_minipick.yaml --trainer.logger.init_args.save_dir "$OUT/runs" > "$OUT/mp.log" 2>&1
python -m lightning_pref evaluate --run "$OUT/runs/dpo_minipick/version_0" > "$OUT/eval.log" 2>&1
python "$HERE/hash_weights.py" "$OUT/runs" > "$OUT/hashes.txt"
cat "$OUT/hashes.txt"
