#!/usr/bin/env bash
# Reproduces the README's two QAT tables (returns of float, post-training int8,
# QAT fake-quantized and QAT int8 policies): 1M-step experts on the five MinAtar
# games, 8-bit and 4-bit QAT PPO runs on Breakout and SpaceInvaders (500k steps
# in float, then 500k quantized), a float and a QAT student (2M steps; the QAT
# one 1M in float, then 1M quantized), then every policy on the same 50
# episodes. About 13M env steps in all; every step is resumable (rerunning the
# script skips or resumes finished and interrupted runs).
#
#     bash benchmarks/qat_tables.sh [RUNS_DIR]        # default: runs
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}
IDS=maskrl/MinAtar-Breakout-v0,maskrl/MinAtar-SpaceInvaders-v0,maskrl/MinAtar-Asterix-v0,maskrl/MinAtar-Freeway-v0,maskrl/MinAtar-Seaquest-v0
run() {  # run NAME ARGS...: train into $R/NAME, or resume it if it exists but has no eval.json
    local name=$1; shift
    if [ -f "$R/$name/eval.json" ]; then echo "== $name: done"; return; fi
    if [ -d "$R/$name" ]; then
        python train.py "$1" --resume "$R/$name" --no-progress
    else
        python train.py "$@" --runs-dir "$R" --run-name "$name" --no-progress
    fi
}
experts() { python train.py experts --env "$1" --total-timesteps 1000000 --runs-dir "$R" --run-name am5 --no-progress; }
# The single-game table first (its float policies are the Breakout and
# SpaceInvaders experts), then the other experts and the students.
experts maskrl/MinAtar-Breakout-v0,maskrl/MinAtar-SpaceInvaders-v0
for g in Breakout SpaceInvaders; do
    run "qat8-$g" ppo --env "maskrl/MinAtar-$g-v0" --total-timesteps 1000000 --qat --qat-start-after 500000
    run "qat4-$g" ppo --env "maskrl/MinAtar-$g-v0" --total-timesteps 1000000 --qat --qat-bits 4 --qat-start-after 500000
done
python benchmarks/qat_returns.py --episodes 50 --out "$R/qat_returns_single.json" \
    --game Breakout "$R/am5/MinAtar-Breakout-v0" "$R/qat8-Breakout" "$R/qat4-Breakout" \
    --game SpaceInvaders "$R/am5/MinAtar-SpaceInvaders-v0" "$R/qat8-SpaceInvaders" "$R/qat4-SpaceInvaders"
experts "$IDS"
run am5-student mimic --experts "$R/am5" --total-timesteps 2000000 --eval-episodes 50
run am5-student-qat8 mimic --experts "$R/am5" --total-timesteps 2000000 --eval-episodes 50 --qat --qat-start-after 1000000
python benchmarks/qat_returns.py --episodes 50 --out "$R/qat_returns_student.json" \
    --game Student "$R/am5-student" "$R/am5-student-qat8"
