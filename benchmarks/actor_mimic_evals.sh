#!/usr/bin/env bash
# The 500-episode evaluations behind the README's Actor-Mimic tables, with
# sampled and with greedy actions, and the ratios computed from them.
#
#     bash benchmarks/actor_mimic_evals.sh experts EXPERTS_DIR TAG   # each game's expert checkpoint
#     bash benchmarks/actor_mimic_evals.sh agent CHECKPOINT TAG      # a multi-game agent, game by game
#     bash benchmarks/actor_mimic_evals.sh ratios TAG [BASELINE_TAG] [EXPERT_TAG]
#
# `experts` and `agent` write, per game, EVALS/TAG-<Game>.json (sampled
# actions) and EVALS/greedy-TAG-<Game>.json (--deterministic), each 500
# episodes from seed 100000 (the same episodes for every policy), with
# `train.py eval --output`. A file that already exists is kept, so an
# interrupted run is finished by rerunning the same command.
#
# `ratios` prints, for both ways of acting, TAG's return as a share of the
# expert's per game with a 95% bootstrap interval (benchmarks/return_ratio.py
# --pair) and, given BASELINE_TAG, the mean over games of the baseline's and
# TAG's shares and their difference (--versus). EXPERT_TAG defaults to
# `expert`. TAG and BASELINE_TAG may each be a comma-separated list of tags,
# one per training run (seed): each run gets its own --pair table, and
# --versus averages the runs of each side (and prints each run's mean).
#
# Environment: EVALS (default runs/evals500), EPISODES (500), SEED (100000),
# GAMES (default: Breakout SpaceInvaders Asterix Freeway Seaquest), PYTHON,
# NUM_ENVS (parallel envs per evaluation; default: train.py eval's 8 per game.
# Another value plays other episodes -- still an unbiased sample -- and runs
# faster: about 2.5x at 32 on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
EVALS=${EVALS:-runs/evals500}
EPISODES=${EPISODES:-500}
SEED=${SEED:-100000}
NUM_ENVS=${NUM_ENVS:-}
read -r -a games <<< "${GAMES:-Breakout SpaceInvaders Asterix Freeway Seaquest}"

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

evaluate() {  # evaluate KIND SOURCE TAG
    local kind=$1 source=$2 tag=$3 g ckpt env_args mode prefix out
    mkdir -p "$EVALS"
    for g in "${games[@]}"; do
        if [ "$kind" = experts ]; then
            ckpt="$source/MinAtar-$g-v0/checkpoint.pt"
            env_args=()
        else
            ckpt=$source
            env_args=(--env "maskrl/MinAtar-$g-v0")
        fi
        if [ ! -f "$ckpt" ]; then
            echo "actor_mimic_evals.sh: no checkpoint at $ckpt" >&2
            exit 2
        fi
        for mode in sampled greedy; do
            prefix=""
            flags=()
            if [ -n "$NUM_ENVS" ]; then
                flags+=(--num-envs "$NUM_ENVS")
            fi
            if [ "$mode" = greedy ]; then
                prefix="greedy-"
                flags+=(--deterministic)
            fi
            out="$EVALS/$prefix$tag-$g.json"
            if [ -f "$out" ]; then
                echo "keeping $out"
                continue
            fi
            echo "evaluating $ckpt on $g ($mode, $EPISODES episodes) -> $out"
            $PY train.py eval --checkpoint "$ckpt" "${env_args[@]}" --episodes "$EPISODES" \
                --seed "$SEED" "${flags[@]}" --output "$out.tmp" > /dev/null
            mv "$out.tmp" "$out"
        done
    done
}

files() {  # files PREFIX TAG[,TAG...] GAME: the runs' eval files, comma-separated
    local prefix=$1 tags=$2 g=$3 t out=""
    for t in ${tags//,/ }; do
        out+="${out:+,}$EVALS/$prefix$t-$g.json"
    done
    echo "$out"
}

ratios() {  # ratios TAG[,TAG...] [BASELINE_TAG[,TAG...]] [EXPERT_TAG]
    local tag=$1 base=${2:-} ref=${3:-expert} g t prefix label
    for prefix in "" greedy-; do
        label=${prefix:-sampled-}
        for t in ${tag//,/ }; do
            echo "## ${label%-} actions: $t as a share of $ref"
            pairs=()
            for g in "${games[@]}"; do
                pairs+=(--pair "$EVALS/$prefix$ref-$g.json" "$EVALS/$prefix$t-$g.json")
            done
            $PY benchmarks/return_ratio.py "${pairs[@]}"
        done
        if [ -n "$base" ]; then
            versus=()
            for g in "${games[@]}"; do
                versus+=(--versus "$EVALS/$prefix$ref-$g.json" "$(files "$prefix" "$base" "$g")"
                         "$(files "$prefix" "$tag" "$g")")
            done
            echo "### ${label%-} actions: $base (A) vs $tag (B)"
            $PY benchmarks/return_ratio.py "${versus[@]}"
        fi
    done
}

case "${1:-}" in
    experts | agent) [ $# -eq 3 ] || usage; evaluate "$1" "$2" "$3" ;;
    ratios) [ $# -ge 2 ] && [ $# -le 4 ] || usage; shift; ratios "$@" ;;
    *) usage ;;
esac
