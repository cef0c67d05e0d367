#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite: README command 2, and CI's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(bash "$ROOT/tools/setup_env.sh" | tail -n 1)"
cd "$ROOT"
# One intra-op thread: the test tensors are small, and the multi-process tests (torchrun, gloo)
# would otherwise oversubscribe the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
