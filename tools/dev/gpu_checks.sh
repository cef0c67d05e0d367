#!/usr/bin/env bash
# The GPU checks of one device session, as one background job (it outlives a call):
#
#   setsid nohup bash tools/dev/gpu_checks.sh OUT_DIR [PHASES] > /dev/null 2>&1 < /dev/null &
#
# then poll for OUT_DIR/ALLDONE and pack OUT_DIR (one log and one .rc per step). PHASES is a
# comma-separated subset of (default: all, in this order)
#   tests    the GPU parity suites in four parallel pytest processes (compile-bound: Triton
#            and Inductor compile on the CPU cores), beside the next two; each failure's report
#            is also written at once to NAME.failures (a step stopped at its limit prints none);
#   memcheck compute-sanitizer memcheck of every kernel, eager and under torch.compile (one
#            process each: eager, and each model compiled, after a warm-up run without the
#            sanitizer; MEMCHECK_LIMIT_S, default 840);
#   train    tools/train.py --amp with compile=True on the demo Mask R-CNN (one epoch);
#   bench    tools/benchmark.py, alone on the machine: --what compile (first calls with and
#            without precompilation, compiled training and Mask R-CNN steps; bench_compile),
#            --what vim,det_vim with profiles (bench_vim), and LocalVim-T with its peers (DeiT-T,
#            and at 1024² ViT-Ti) compiled with CUDA graphs, reduce-overhead (bench_vim_graphs);
#            each of the three is a phase too.
# MEMCHECK_PARTS (default eager,vmamba,vim,vim_cls) picks the memcheck processes; WAIT_FOR names
# a file to wait for before the bench phase (another job's ALLDONE, so the timings run alone).
# The wheels of ../shared/wheels/gpu-cp312 are installed first, from ./.whl (carried) or from a
# shared/ folder in the checkout root (which the device copies; it also gives the goldens).
set -u
OUT=${1:?usage: gpu_checks.sh OUT_DIR [PHASES]}
PHASES=${2:-tests,memcheck,train,bench}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mkdir -p "$OUT"
exec > "$OUT/job.log" 2>&1
has() { [[ ",$PHASES," == *",$1,"* ]]; }
step() {  # step NAME LIMIT_S COMMAND...: log to NAME.log, exit status and seconds to NAME.rc
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$? seconds=$((SECONDS - start))" > "$OUT/$name.rc"
}
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
WHEELS=.whl
[ -d shared/wheels/gpu-cp312 ] && ! compgen -G ".whl/*.whl" > /dev/null && WHEELS=shared/wheels/gpu-cp312
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
# The golden fixtures: ../shared is not on the device; a shared/ in the checkout root is copied.
[ -d shared/reference ] && export MMLOCALMAMBA_REFERENCE=$PWD/shared/reference
python3 -c "import sys, torch, triton; print(sys.version, torch.__version__, triton.__version__)"
PYTEST=(python3 -m pytest -q -p no:cacheprovider -rs)
if has tests; then
  pytest_step() {  # pytest_step NAME TEST_FILES...: failures also go to NAME.failures at once
    local name=$1
    shift
    step "$name" 900 env TRITON_CACHE_DIR="$OUT/cache_$name" \
      MMLOCALMAMBA_FAILURE_LOG="$OUT/$name.failures" "${PYTEST[@]}" "$@"
  }
  pytest_step pytest_scan tests/test_triton_scan.py &
  pytest_step pytest_vim tests/test_triton_vim.py tests/test_gpu_goldens.py &
  pytest_step pytest_compile tests/test_precompile.py tests/test_custom_ops.py &
  pytest_step pytest_rest tests/test_triton_merge.py tests/test_gpu_backbone.py &
fi
if has memcheck; then  # eager, then each model compiled, in parallel (the sanitizer is slow)
  MEMCHECK=(compute-sanitizer --tool memcheck --error-exitcode 1 python3 -X faulthandler
    tools/dev/memcheck.py)
  PARTS=",${MEMCHECK_PARTS:-eager,vmamba,vim,vim_cls},"
  [[ $PARTS == *,eager,* ]] && step memcheck_eager "${MEMCHECK_LIMIT_S:-840}" "${MEMCHECK[@]}" &
  # Each compiled part runs once without the sanitizer first (MEMCHECK_WARM=0: not): it fills
  # Inductor's and Triton's caches, so the sanitizer run launches the same kernels without
  # compiling them under the sanitizer. Twice (sessions 5 and 6) the compiled class-token
  # part crashed (SIGSEGV, no sanitizer report) ~35 s into a cold run and passed warm.
  memcheck_compiled() {
    local model=$1
    [ "${MEMCHECK_WARM:-1}" = 1 ] && step "memcheck_warm_$model" 600 python3 \
      tools/dev/memcheck.py --only-compiled --models "$model"
    step "memcheck_compiled_$model" "${MEMCHECK_LIMIT_S:-840}" "${MEMCHECK[@]}" --only-compiled \
      --models "$model"
  }
  for model in vmamba vim vim_cls; do
    [[ $PARTS == *",$model,"* ]] && memcheck_compiled "$model" &
  done
fi
if has train; then
  python3 tools/make_demo_data.py --out data/demo > "$OUT/demo_data.log" 2>&1
  step train_compile 900 python3 tools/train.py \
    configs/mmdet/mask-rcnn_localvmamba-demo_fpn_1xb4-8e_demo-coco.py --amp \
    --work-dir "$OUT/train_compile" --cfg-options compile=True train_cfg.max_epochs=1 &
fi
wait
if [ -n "${WAIT_FOR:-}" ]; then
  while [ ! -e "$WAIT_FOR" ]; do sleep 5; done
fi
if has bench || has bench_compile; then
  step bench_compile 900 python3 tools/benchmark.py --what compile \
    --compile-parts triton,cls_train,det --json "$OUT/bench_compile.json" \
    --md "$OUT/bench_compile.md"
fi
if has bench || has bench_vim; then
  step bench_vim 900 python3 tools/benchmark.py --what vim,det_vim \
    --profile vim,vim_infer,vim_backbone,vim:LocalVim-S --profile-host \
    --json "$OUT/bench_vim.json" --md "$OUT/bench_vim.md"
fi
if has bench || has bench_vim_graphs; then
  step bench_vim_graphs 900 python3 tools/benchmark.py --what compile \
    --compile-parts vim_infer,deit_infer,vim_train,deit_train,vim_backbone,vit_backbone \
    --compile-mode reduce-overhead \
    --json "$OUT/bench_vim_graphs.json" --md "$OUT/bench_vim_graphs.md"
fi
rm -rf "$OUT"/cache_* "$OUT/train_compile"/*.pth
date -u
touch "$OUT/ALLDONE"
