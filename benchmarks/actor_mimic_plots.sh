#!/usr/bin/env bash
# Draws the README's Actor-Mimic figures from finished runs (it trains nothing):
#
# 1. docs/img/minatar_experts.png: the five experts' training returns, with the
#    published MinAtar targets as dashed lines;
# 2. docs/img/minatar_baseline_vs_student.png: multi-game PPO from scratch
#    (training returns, per game) with each expert's and the student's final
#    evaluation as dashed lines (read from experts.json and the student's eval.json);
# 3. docs/img/minatar_students_10m.png: the 10M-step students (256 and 512 units,
#    512 units with 32 filters, the same distilled at tau 0.5, learning rate
#    annealed) and the 512-unit one
#    continued to 15M, against their experts' evaluations (runs/am5-pub), as
#    dashed lines;
# 4. docs/img/transfer.png: the leave-one-out transfer curves that
#    benchmarks/transfer.py drew (PPO from the student's encoder vs from
#    scratch, mean and min-max band over seeds, one panel per held-out game);
# 5. docs/img/minatar_baseline60m_vs_finetune.png: the fresh 60M-step baseline
#    against the experts, a distilled student and its PPO fine-tune (below);
# 6. docs/img/minatar_experts_retrained.png: the retrained experts (am5-pub) the
#    README's tables use, with the published targets as dashed lines;
# 7. docs/img/minatar_experts_alloc.png: the experts trained with the 50M steps
#    allocated by the curves of figure 6 (am5-alloc: 16M, 12M, 12M, 7M, 3M steps),
#    with the published targets as dashed lines.
# 8. docs/img/minatar_breakout_preset.png: Breakout experts of four settings, mean
#    and min-max band over their seeds, against the published 28 (below).
# 9. docs/img/minatar_experts_final.png: one expert set with every game at the
#    published level (am5-final: SpaceInvaders 16M, Seaquest 12M, Asterix 10M,
#    Freeway 3M steps with --preset minatar, Breakout 10M with --preset
#    minatar-breakout), with the published targets as dashed lines.
# 10. docs/img/minatar_students_final.png: the students of that set (two seeds,
#    mean and min-max band; 9M steps continued to 15M), with the experts' and
#    the 60M-step multi-game PPO baselines' sampled evaluations as dashed lines.
# 11. docs/img/minatar_students_finetune.png: 5M-step PPO fine-tunes of those
#    15M-step students, with and without a critic warm-up (--critic-warmup).
# 12. docs/img/minatar_breakout_seeds.png: Breakout experts of --preset
#    minatar-breakout (learning rate 1e-3), one line per seed, against the
#    published 28.
#
#     bash benchmarks/actor_mimic_plots.sh [RUNS_DIR]        # default: runs
#
# Runs it reads (RUNS_DIR/...): am5-minatar, am5-minatar-ent03 and, if present,
# am5-minatar-b and am5-minatar-ent03-sq (the experts' own runs), am5-10m (the experts folder the students use), am10m-s4m-h256
# (the student), am10m-mg-baseline (the baseline), am5-pub, pub-s10m-h256, pub-s10m-h512 and, if present,
# pub-s10m-h512-c32, pub-s10m-h512-c32-tau05, pub-s15m-h512 and evals500 (the students, their experts and the
# experts' 500-episode evaluations), am5-alloc (the re-allocated experts), am5-final (figure 9), final-s15m-from9m-tau07* (figure 10), final-s15m-tau07*-ft5m-* (figure 11), bo-g995* and bo-ns32-lr1e3-s* (the Breakout experts of figures 8 and 12),
# transfer (benchmarks/transfer.py --out).
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs}
PY=${PYTHON:-python}

# The published MinAtar level per game, drawn as dashed lines on the experts' figures.
published=(--mark Breakout=28:published --mark SpaceInvaders=130:published --mark Asterix=15:published
           --mark Freeway=58:published --mark Seaquest=20:published)

# The experts' runs: the README's two experts commands, plus the folders the
# Seaquest runs were trained into when they ran in parallel with the others.
shopt -s nullglob
experts=("$R"/am5-minatar/MinAtar-*-v0 "$R"/am5-minatar-b/MinAtar-*-v0
         "$R"/am5-minatar-ent03/MinAtar-*-v0 "$R"/am5-minatar-ent03-sq/MinAtar-*-v0)
shopt -u nullglob
# Each figure is drawn only where its runs exist (a checkout may hold some of them).
if [ ${#experts[@]} -gt 0 ]; then
$PY train.py plot "${experts[@]}" --smooth 20 \
    "${published[@]}" \
    --title "Experts: masked PPO, --preset minatar, 10M steps per game" --out docs/img/minatar_experts.png
fi

# --mark GAME=VALUE:LABEL for every expert (experts.json) and for the student (eval.json).
if [ -f "$R/am5-10m/experts.json" ] && [ -f "$R/am10m-s4m-h256/eval.json" ] && [ -d "$R/am10m-mg-baseline" ]; then
mapfile -t marks < <($PY - "$R/am5-10m/experts.json" "$R/am10m-s4m-h256/eval.json" <<'PYEOF'
import json, sys
def game(env_id):
    return env_id.split("/")[-1].removeprefix("MinAtar-").rsplit("-v", 1)[0]
for e in json.load(open(sys.argv[1]))["experts"]:
    print("--mark"); print(f"{game(e['env_id'])}={e['mean_return']}:expert (10M steps)")
for env_id, r in json.load(open(sys.argv[2]))["eval"]["per_game"].items():
    print("--mark"); print(f"{game(env_id)}={r['mean']}:student (4M steps)")
PYEOF
)
$PY train.py plot "$R"/am10m-mg-baseline --smooth 20 "${marks[@]}" \
    --title "Multi-game PPO from scratch (51M steps) vs the experts and the student" \
    --out docs/img/minatar_baseline_vs_student.png
fi

# The 10M-step students, one panel per game, each expert's evaluation as a dashed line:
# its 500-episode evaluation (RUNS_DIR/evals500/expert-<Game>.json, from
# train.py eval --episodes 500 --seed 100000 --output ...) where there is one, else
# the 100 episodes of experts.json.
if [ -f "$R/am5-pub/experts.json" ] && [ -d "$R/pub-s10m-h512" ]; then
    mapfile -t marks < <($PY - "$R/am5-pub/experts.json" "$R/evals500" <<'PYEOF'
import json, os, sys
for e in json.load(open(sys.argv[1]))["experts"]:
    game = e["env_id"].split("/")[-1].removeprefix("MinAtar-").rsplit("-v", 1)[0]
    path = os.path.join(sys.argv[2], f"expert-{game}.json")
    if os.path.isfile(path):
        r = json.load(open(path))
        print("--mark"); print(f"{game}={r['mean']}:expert ({r['episodes']} episodes)")
    else:
        print("--mark"); print(f"{game}={e['mean_return']}:expert ({e['episodes']} episodes)")
PYEOF
)
    # pub-s15m-h512 is a copy of pub-s10m-h512 resumed to 15M steps: its curve is
    # the 10M-step run's up to 10M, so it replaces it where it exists.
    students=("$R"/pub-s10m-h512)
    if [ -d "$R/pub-s15m-h512" ]; then students=("$R"/pub-s15m-h512); fi
    for s in pub-s10m-h256 pub-s10m-h512-c32 pub-s10m-h512-c32-tau05; do
        if [ -d "$R/$s" ]; then students+=("$R/$s"); fi
    done
    $PY train.py plot "${students[@]}" --smooth 20 "${marks[@]}" \
        --title "Actor-Mimic students, learning rate annealed, vs their experts" \
        --out docs/img/minatar_students_10m.png
fi

# 5. docs/img/minatar_baseline60m_vs_finetune.png: the 60M-step baseline run from
# scratch in one go (mg-baseline-60m), per game, with the 500-episode sampled
# evaluations of the retrained experts, the 5M-step student distilled with value
# regression and that student fine-tuned with PPO for 5M more steps as dashed
# lines (EVALS, default RUNS_DIR/evals500-s13: expert-, s5m-v05- and
# s5m-v05-ft5m-lr5e-5-<Game>.json, from benchmarks/actor_mimic_evals.sh).
EV=${EVALS:-$R/evals500-s13}
if [ -d "$R/mg-baseline-60m" ] && [ -f "$EV/s5m-v05-ft5m-lr5e-5-Breakout.json" ]; then
    mapfile -t marks < <($PY - "$EV" <<'PYEOF'
import json, os, sys
labels = {"expert": "expert (10M steps)", "s5m-v05": "student (5M distilled)",
          "s5m-v05-ft5m-lr5e-5": "student + PPO fine-tune (5M + 5M)"}
for game in ["Breakout", "SpaceInvaders", "Asterix", "Freeway", "Seaquest"]:
    for tag, label in labels.items():
        path = os.path.join(sys.argv[1], f"{tag}-{game}.json")
        if os.path.isfile(path):
            print("--mark"); print(f"{game}={json.load(open(path))['mean']}:{label}")
PYEOF
)
    $PY train.py plot "$R"/mg-baseline-60m --smooth 20 "${marks[@]}" \
        --title "Multi-game PPO from scratch (60M steps) vs the experts and the students" \
        --out docs/img/minatar_baseline60m_vs_finetune.png
fi

# One experts folder's training curves, with the published level as dashed lines,
# if the folder holds expert runs: experts_figure FOLDER SMOOTH TITLE OUT.
experts_figure() {
    local runs
    shopt -s nullglob
    runs=("$1"/MinAtar-*-v0)
    shopt -u nullglob
    if [ ${#runs[@]} -gt 0 ]; then
        $PY train.py plot "${runs[@]}" --smooth "$2" "${published[@]}" --title "$3" --out "$4"
    fi
}

# 6. The retrained experts (RUNS_DIR/am5-pub: the README's three experts commands).
experts_figure "$R/am5-pub" 20 "Experts of the README's tables: --preset minatar, 10M steps per game" \
    docs/img/minatar_experts_retrained.png
# 7. The re-allocated experts (RUNS_DIR/am5-alloc); a shorter smoothing window,
# as Freeway's 3M steps log few episodes.
experts_figure "$R/am5-alloc" 5 "Experts with the 50M steps allocated by their curves (16M, 12M, 12M, 7M, 3M)" \
    docs/img/minatar_experts_alloc.png
# 9. The expert set of the README's first tables (RUNS_DIR/am5-final).
experts_figure "$R/am5-final" 5 "Experts at the published level: 16M, 12M, 10M, 3M steps; Breakout 10M, its own preset" \
    docs/img/minatar_experts_final.png

# 10. The students of am5-final: final-s15m-from9m-tau07 and its -s2 (the 9M-step
# runs final-s9m-h512-c32-tau07[-s2] copied and resumed to 15M: their curves are
# the 9M-step runs' up to 9M), one line with a band over the two seeds; dashed
# lines: the experts' and the two baselines' (their mean) 200- and 500-episode
# sampled evaluations, from the committed files in docs/data/actor_mimic_evals500_retrained.
shopt -s nullglob
finals=("$R"/final-s15m-from9m-tau07 "$R"/final-s15m-from9m-tau07-s[0-9]*)
shopt -u nullglob
if [ -d "$R/final-s15m-from9m-tau07" ]; then
    mapfile -t marks < <($PY - docs/data/actor_mimic_evals500_retrained <<'PYEOF'
import json, os, sys
for game in ["Breakout", "SpaceInvaders", "Asterix", "Freeway", "Seaquest"]:
    expert = json.load(open(os.path.join(sys.argv[1], f"expert-final-{game}.json")))["mean"]
    base = [json.load(open(os.path.join(sys.argv[1], f"{tag}-{game}.json")))["mean"]
            for tag in ("baseline60m-fresh", "baseline60m-s2")]
    print("--mark"); print(f"{game}={expert}:expert")
    print("--mark"); print(f"{game}={sum(base) / len(base)}:multi-game PPO, 60M steps (2 runs)")
PYEOF
)
    $PY train.py plot "${finals[@]}" --group --smooth 20 "${marks[@]}" \
        --title "Students of the all-published experts (2 seeds; 9M steps, continued to 15M)" \
        --out docs/img/minatar_students_final.png
fi

# 11. docs/img/minatar_students_finetune.png: PPO fine-tunes of those students from 15M
# steps (learning rate 5e-5, 5M steps), with and without --critic-warmup 500000, one
# line per run, with the experts' and the 15M-step students' sampled evaluations.
tunes=(final-s15m-tau07-ft5m-lr5e-5 final-s15m-tau07-s2-ft5m-lr5e-5
       final-s15m-tau07-ft5m-cw500k-lr5e-5 final-s15m-tau07-s2-ft5m-cw500k-lr5e-5)
if [ -d "$R/${tunes[0]}" ]; then
    mapfile -t marks < <($PY - docs/data/actor_mimic_evals500_retrained <<'PYEOF'
import json, os, sys
for game in ["Breakout", "SpaceInvaders", "Asterix", "Freeway", "Seaquest"]:
    expert = json.load(open(os.path.join(sys.argv[1], f"expert-final-{game}.json")))["mean"]
    start = [json.load(open(os.path.join(sys.argv[1], f"{tag}-{game}.json")))["mean"]
             for tag in ("final-s15m-from9m-tau07", "final-s15m-from9m-tau07-s2")]
    print("--mark"); print(f"{game}={expert}:expert")
    print("--mark"); print(f"{game}={sum(start) / len(start)}:the 15M-step students (2 seeds)")
PYEOF
)
    $PY train.py plot "${tunes[@]/#/$R/}" --smooth 20 "${marks[@]}" \
        --title "PPO fine-tunes of the 15M-step students (lr 5e-5), without and with a 500k-step critic warm-up" \
        --out docs/img/minatar_students_finetune.png
fi

# 8. Breakout experts, one line per setting (mean and min-max band over seeds; an
# expert folder runs/NAME-sK/MinAtar-Breakout-v0 counts as seed K of NAME): the
# annealed-entropy recipe with --gamma 0.995 (bo-g995, bo-g995-s2 ... -s5), the same
# at learning rate 1e-3 (bo-g995-lr1e3-s1 ... -s6), with 32 steps per rollout, i.e.
# --preset minatar-breakout (bo-g995-ns32-s1 ... -s6), and the preset at learning rate
# 1e-3 (bo-ns32-lr1e3-s2, -s4, -s5, -s6); docs/actor_mimic.md has the commands.
shopt -s nullglob
breakout=("$R"/bo-g995/MinAtar-Breakout-v0 "$R"/bo-g995-s[0-9]*/MinAtar-Breakout-v0
          "$R"/bo-g995-lr1e3-s[0-9]*/MinAtar-Breakout-v0 "$R"/bo-g995-ns32-s[0-9]*/MinAtar-Breakout-v0
          "$R"/bo-ns32-lr1e3-s[0-9]*/MinAtar-Breakout-v0)
shopt -u nullglob
if [ ${#breakout[@]} -gt 0 ]; then
$PY train.py plot "${breakout[@]}" --group --smooth 20 --mark Breakout=28:published \
    --title "Breakout experts, 10M steps: gamma 0.995, learning rate 1e-3, twice the updates per sample, both" \
    --out docs/img/minatar_breakout_preset.png
fi

# 12. The Breakout preset's runs (bo-ns32-lr1e3-sK: --preset minatar-breakout,
# learning rate 1e-3, seed K), one line per seed: every seed against 28.
shopt -s nullglob
preset_seeds=("$R"/bo-ns32-lr1e3-s[0-9]*/MinAtar-Breakout-v0)
shopt -u nullglob
if [ ${#preset_seeds[@]} -gt 0 ]; then
$PY train.py plot "${preset_seeds[@]}" --smooth 20 --mark Breakout=28:published \
    --title "Breakout, --preset minatar-breakout: one line per seed" \
    --out docs/img/minatar_breakout_seeds.png
fi

# benchmarks/transfer.py draws this figure itself (train.py plot --group, one
# panel per held-out game) into its --out folder.
if [ -f "$R/transfer/transfer.png" ]; then
    cp "$R/transfer/transfer.png" docs/img/transfer.png && echo "copied docs/img/transfer.png"
fi
