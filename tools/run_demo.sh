#!/usr/bin/env bash
# The whole stack on a fresh machine, on CPU, with data we can ship:
#
#   bash tools/run_demo.sh
#
#  1. sets up the Python environment (tools/setup_env.sh; seconds when it already exists),
#  2. writes the synthetic COCO / ADE20K-format demo data (tools/make_demo_data.py),
#  3. trains the demo Mask R-CNN + LocalVMamba and evaluates it (CocoMetric, bbox + segm),
#  4. trains the demo UperNet + LocalVMamba and evaluates it with multi-scale + flip
#     test-time augmentation (IoUMetric),
#  5. paints predictions of both models into PNG files,
# and prints where everything went. Outputs go to $DEMO_WORK_DIR (default work_dirs/demo), the
# data to $DEMO_DATA_DIR (default data/demo). PYTHON=/path/to/python uses that interpreter's
# environment instead of running tools/setup_env.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="${DEMO_WORK_DIR:-work_dirs/demo}"
DATA="${DEMO_DATA_DIR:-data/demo}"
DET_CFG=configs/mmdet/mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py
SEG_CFG=configs/mmseg/upernet_localvmamba-demo_1xb4-300iter_demo-ade-128x128.py
START=$SECONDS

step() { echo; echo "=== [run_demo] $* ($((SECONDS - START)) s)"; }

step "1/5 environment"
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"  # an existing environment; tools/setup_env.sh is skipped
else
  PY="$(bash tools/setup_env.sh | tail -n 1)/bin/python"
fi
"$PY" -c "import mmlocalmamba, mmdet, mmseg, torch; print('torch', torch.__version__, \
'| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__, '| mmlocalmamba', \
mmlocalmamba.__version__)"

step "2/5 demo data -> $DATA"
"$PY" tools/make_demo_data.py --out "$DATA"

# Configs read data/demo/...; another data directory is passed through --cfg-options.
DET_DATA=()
SEG_DATA=()
if [ "$DATA" != "data/demo" ]; then
  DET_DATA=(--cfg-options "train_dataloader.dataset.data_root=$DATA/coco/"
            "val_dataloader.dataset.data_root=$DATA/coco/"
            "test_dataloader.dataset.data_root=$DATA/coco/"
            "val_evaluator.ann_file=$DATA/coco/annotations/instances_val.json"
            "test_evaluator.ann_file=$DATA/coco/annotations/instances_val.json")
  SEG_DATA=(--cfg-options "train_dataloader.dataset.data_root=$DATA/ade"
            "val_dataloader.dataset.data_root=$DATA/ade"
            "test_dataloader.dataset.data_root=$DATA/ade")
fi

step "3/5 Mask R-CNN: train and evaluate"
"$PY" tools/train.py "$DET_CFG" --work-dir "$WORK/maskrcnn" "${DET_DATA[@]}"
DET_CKPT="$(cat "$WORK/maskrcnn/last_checkpoint")"
"$PY" tools/test.py "$DET_CFG" "$DET_CKPT" --work-dir "$WORK/maskrcnn/test" \
  --out "$WORK/maskrcnn/predictions.pkl" --metrics-out "$WORK/maskrcnn/metrics.json" \
  "${DET_DATA[@]}"

step "4/5 UperNet: train and evaluate (single scale, then multi-scale + flip)"
"$PY" tools/train.py "$SEG_CFG" --work-dir "$WORK/upernet" "${SEG_DATA[@]}"
SEG_CKPT="$(cat "$WORK/upernet/last_checkpoint")"
"$PY" tools/test.py "$SEG_CFG" "$SEG_CKPT" --work-dir "$WORK/upernet/test" \
  --metrics-out "$WORK/upernet/metrics.json" "${SEG_DATA[@]}"
"$PY" tools/test.py "$SEG_CFG" "$SEG_CKPT" --tta --work-dir "$WORK/upernet/test_tta" \
  --metrics-out "$WORK/upernet/metrics_tta.json" "${SEG_DATA[@]}"

step "5/5 prediction images"
"$PY" tools/visualize.py "$DET_CFG" "$DET_CKPT" "$DATA/coco/val" --limit 8 \
  --out "$WORK/maskrcnn_predictions.png"
"$PY" tools/visualize.py "$SEG_CFG" "$SEG_CKPT" "$DATA/ade/images/validation" --limit 8 \
  --out "$WORK/upernet_predictions.png"

step "done"
"$PY" - "$WORK" <<'PYEOF'
import json, os.path as osp, sys
work = sys.argv[1]
def show(title, path, keys, fmt):
    metrics = json.load(open(osp.join(work, path)))
    print(f'{title:<32}' + '  '.join(f'{k.split("/")[-1]} {metrics[k]:{fmt}}' for k in keys))
show('Mask R-CNN, COCO mAP (0-1):', 'maskrcnn/metrics.json',
     ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'], '.3f')
show('UperNet single scale (%):', 'upernet/metrics.json', ['mIoU', 'mAcc', 'aAcc'], '.2f')
show('UperNet multi-scale+flip (%):', 'upernet/metrics_tta.json', ['mIoU', 'mAcc', 'aAcc'], '.2f')
PYEOF
cat <<EOF

Outputs
  demo data               $DATA/coco, $DATA/ade
  Mask R-CNN checkpoint   $DET_CKPT
  Mask R-CNN metrics      $WORK/maskrcnn/metrics.json (predictions: $WORK/maskrcnn/predictions.pkl)
  UperNet checkpoint      $SEG_CKPT
  UperNet metrics         $WORK/upernet/metrics.json, $WORK/upernet/metrics_tta.json (TTA)
  prediction images       $WORK/maskrcnn_predictions.png, $WORK/upernet_predictions.png
  training logs           $WORK/maskrcnn/<timestamp>/, $WORK/upernet/<timestamp>/
wall time: $((SECONDS - START)) s
EOF
