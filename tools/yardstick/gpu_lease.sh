#!/usr/bin/env bash
# One GPU lease of the yardstick v2 run (#20), which takes several (README, "Training across GPU leases"): resume
# from the carried checkpoint parts if any, train for BUDGET_S seconds, and return the checkpoint (15 MiB parts) and
# the log in $OUT; the lease that finishes the recipe returns the model (yardstick-v2.tar) and its validation scores.
#   bash tools/yardstick/gpu_lease.sh [BUDGET_S]   (carry [".lease"]: bank.npz, and resume.npz.NN after lease 1)
# DEVICE, WORKERS, RECIPE, SCORE_ARGS, SCORE_CONDITIONS override the H200 defaults (a CPU test: test_yardstick_resume).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=10 PYTHONPATH=$PWD
budget=${1:-510}                   # of a 600 s command: ~15 s of imports before it, ~10 s of copying after
lease=${LEASE_DIR:-.lease}         # carried: bank.npz (python -m tools.yardstick.clips --write-bank) and the parts
run=${RUN_DIR:-/tmp/yardstick-v2}  # the run's OUT on this machine
OUT=${OUT:-/tmp/yardstick-lease-out}
recipe=${RECIPE:---tower-steps 1500 --steps 15000 --polish-steps 4000}
mkdir -p "$OUT" "$run"
start=$SECONDS
[ -f "$lease/bank.npz" ] || { echo "no $lease/bank.npz: python -m tools.yardstick.clips --write-bank" >&2; exit 2; }
resume=()
if compgen -G "$lease/resume.npz.*" > /dev/null; then
    cat "$lease"/resume.npz.* > "$run.resume.npz" && resume=(--resume "$run.resume.npz")
    echo "resuming from $(ls "$lease"/resume.npz.* | wc -l) parts, sha256 $(sha256sum < "$run.resume.npz" | cut -c1-16)"
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# shellcheck disable=SC2086  # $recipe is a list of flags
timeout $((budget + 120)) python3 -m tools.yardstick.train --world 2 --out "$run" --device "${DEVICE:-cuda}" \
    --workers "${WORKERS:-14}" --threads 1 $recipe --background-bank "$lease/bank.npz" --moment-bytes 3 \
    --time-budget-s "$budget" "${resume[@]}" > "$OUT/train.log" 2>&1
rc=$?
tr '\r' '\n' < "$OUT/train.log" | grep -v '^\s*$' | tail -4
cp "$run/train_log.json" "$OUT/" 2>/dev/null
if [ $rc -eq 75 ]; then  # stopped by the budget: the checkpoint goes back in parts under the 16 MiB file limit
    split -b 15M -d -a 2 "$run/resume.npz" "$OUT/resume.npz."
    echo "stopped: $(du -m "$run/resume.npz" | cut -f1) MB in $(ls "$OUT"/resume.npz.* | wc -l) parts, sha256" \
        "$(sha256sum < "$run/resume.npz" | cut -c1-16), after $((SECONDS - start)) s; put them in $lease/ in place" \
        "of the old parts for the next lease"
    exit 0
elif [ $rc -ne 0 ]; then
    echo "train.py failed (exit $rc) after $((SECONDS - start)) s; the carried parts are still the latest checkpoint"
    exit $rc
fi
tar -C "$run" -cf "$OUT/yardstick-v2.tar" --exclude=train_log.json . && echo "finished: yardstick-v2.tar in \$OUT"
left=$((${LIMIT_S:-580} - (SECONDS - start)))  # validation through Session, on what the command has left
# shellcheck disable=SC2086
timeout "$left" python3 benchmarks/yardstick_v2_gap.py --model "$run" ${SCORE_ARGS:---per-type 10 --threads 4} \
    ${SCORE_CONDITIONS:+--conditions "$SCORE_CONDITIONS"} --quiet --out "$OUT/gap-val.json" > "$OUT/gap.log" 2>&1
echo "validation scoring exit $? at $((SECONDS - start)) s"
cat "$OUT/gap.log"
