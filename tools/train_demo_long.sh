#!/usr/bin/env bash
# A longer CPU run of the demo Mask R-CNN + LocalVMamba that shows the stack learns: COCO bbox
# and segm mAP on the demo val set after every epoch, plotted to docs/demo_curve.png.
#
#   bash tools/train_demo_long.sh            # foreground; or: nohup bash tools/train_demo_long.sh &
#
# Environment: EPOCHS (24), TIME_LIMIT seconds for training (1200: the curve is plotted from
# whatever finished; calling the script again resumes), LONG_WORK_DIR (work_dirs/demo_long),
# CURVE (docs/demo_curve.png; numbers in docs/demo_curve.json), PYTHON (default: the
# environment of tools/setup_env.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EPOCHS="${EPOCHS:-24}"
TIME_LIMIT="${TIME_LIMIT:-1200}"
WORK="${LONG_WORK_DIR:-work_dirs/demo_long}"
CURVE="${CURVE:-docs/demo_curve.png}"
PY="${PYTHON:-$(bash tools/setup_env.sh | tail -n 1)/bin/python}"
START=$SECONDS

"$PY" tools/make_demo_data.py
# Same recipe as the demo config, stretched: LR steps at 3/4 and 11/12 of the epochs.
STEP1=$((EPOCHS * 3 / 4))
STEP2=$((EPOCHS * 11 / 12))
# A second call continues an interrupted run (checkpoints every 4 epochs) instead of restarting.
RESUME=()
if [ -f "$WORK/last_checkpoint" ]; then
  RESUME=(--resume)
  echo "[train_demo_long] resuming from $(cat "$WORK/last_checkpoint")"
fi
rc=0
CONFIG=configs/mmdet/mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py
timeout "$TIME_LIMIT" "$PY" tools/train.py "$CONFIG" \
  --work-dir "$WORK" "${RESUME[@]}" --cfg-options \
  "train_cfg.max_epochs=$EPOCHS" train_cfg.val_interval=1 \
  "param_scheduler.1.end=$EPOCHS" "param_scheduler.1.milestones=[$STEP1,$STEP2]" \
  default_hooks.checkpoint.interval=4 || rc=$?
if [ "$rc" = 124 ]; then
  echo "[train_demo_long] training stopped at the time limit ($TIME_LIMIT s); plotting what ran"
elif [ "$rc" != 0 ]; then
  echo "[train_demo_long] training failed (exit $rc)" >&2
  exit "$rc"
fi
if ! "$PY" tools/plot_curve.py "$WORK" --out "$CURVE" --json "${CURVE%.png}.json"; then
  echo "[train_demo_long] nothing to plot: no validation finished within the time limit" >&2
  exit 1
fi
echo "[train_demo_long] work dir $WORK, curve $CURVE, wall time $((SECONDS - START)) s"
