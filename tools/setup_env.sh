#!/usr/bin/env bash
# Create (or refresh) the Python environment for mmlocalmamba with the pinned OpenMMLab stack.
#
#   bash tools/setup_env.sh            # venv at $MMLOCALMAMBA_VENV (default ~/.venvs/mmlocalmamba)
#
# Idempotent: every step checks what is installed first, so a second run takes seconds.
# mmcv 2.1.0 has no wheel for torch 2.14: it comes from ../shared/wheels when a matching wheel is
# there, otherwise it is built from the PyPI sdist with its ops (about 14 min on 2 cores).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMLOCALMAMBA_VENV:-$HOME/.venvs/mmlocalmamba}"
WHEELS="${MMLOCALMAMBA_WHEELS:-$ROOT/../shared/wheels}"
PY="${PYTHON:-python3}"

TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
MMENGINE_PIN="mmengine==0.10.7"
MMCV_VERSION="2.1.0"
MMDET_PIN="mmdet==3.3.0"
MMSEG_PIN="mmsegmentation==1.2.2"

log() { echo "[setup_env] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment at $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

# installed_version NAME -> prints the installed version or nothing
installed_version() {
  "$VPY" - "$1" <<'PYEOF'
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
PYEOF
}

need() {  # need NAME VERSION -> true when NAME==VERSION is not installed
  [ "$(installed_version "$1")" != "$2" ]
}

if need torch 2.14.1 || need torchvision 0.29.1; then
  log "installing $TORCH_PIN $TORCHVISION_PIN"
  "${PIP[@]}" "$TORCH_PIN" "$TORCHVISION_PIN"
fi

# mmcv's setup.py imports pkg_resources: setuptools < 81 is required to build it; this
# project's pyproject.toml needs setuptools >= 77 (license metadata of PEP 639).
SETUPTOOLS_VERSION="$(installed_version setuptools)"
if [ -z "$SETUPTOOLS_VERSION" ] || [ "${SETUPTOOLS_VERSION%%.*}" -ge 81 ] ||
   [ "${SETUPTOOLS_VERSION%%.*}" -lt 77 ]; then
  log "installing setuptools>=77,<81 (mmcv's build needs pkg_resources)"
  "${PIP[@]}" "setuptools>=77,<81" wheel
fi

if need mmcv "$MMCV_VERSION" || ! "$VPY" -c "import mmcv._ext" 2>/dev/null; then
  TAG="$("$VPY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')"
  TORCH_VERSION="$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  CACHED="$(ls "$WHEELS"/mmcv-"$MMCV_VERSION"-"$TAG"-*.whl 2>/dev/null | head -n 1 || true)"
  if [ -n "$CACHED" ] && [ "$TORCH_VERSION" = "2.14.1" ] && [ "$(uname -m)" = "x86_64" ]; then
    log "installing mmcv $MMCV_VERSION from the wheel cache $CACHED"
    "${PIP[@]}" --no-deps "$CACHED"
  else
    log "building mmcv $MMCV_VERSION from its sdist with ops (about 14 min on 2 cores)"
    BUILD="$(mktemp -d)"
    "$VPY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
      "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    # torch >= 2.6 headers need C++20; mmcv 2.1.0 asks for C++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
    "${PIP[@]}" ninja psutil
    (cd "$BUILD/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$VPY" -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps .)
    rm -rf "$BUILD"
  fi
fi

# The rest: pure Python or with wheels. mmcv's own runtime deps are listed explicitly because it
# was installed with --no-deps.
PKGS=("$MMENGINE_PIN" "$MMDET_PIN" "$MMSEG_PIN" ftfy regex timm pycocotools
      addict yapf packaging pillow pyyaml opencv-python-headless scipy shapely terminaltables
      matplotlib pytest)
MISSING=()
for spec in "${PKGS[@]}"; do
  name="${spec%%==*}"
  want="${spec#*==}"
  have="$(installed_version "$name")"
  if [ -z "$have" ] || { [ "$want" != "$spec" ] && [ "$have" != "$want" ]; }; then
    MISSING+=("$spec")
  fi
done
if [ ${#MISSING[@]} -gt 0 ]; then
  log "installing ${MISSING[*]}"
  "${PIP[@]}" "${MISSING[@]}" "mmcv==$MMCV_VERSION"
fi

# The project itself, editable, every time (cheap; re-points the venv at this checkout).
# (checked from / so that a checkout in the working directory does not count as installed)
if ! (cd / && "$VPY" - "$ROOT" <<'PYEOF' 2>/dev/null
import os, sys
import mmlocalmamba
sys.exit(0 if os.path.realpath(os.path.dirname(os.path.dirname(mmlocalmamba.__file__))) == os.path.realpath(sys.argv[1]) else 1)
PYEOF
); then
  log "installing mmlocalmamba (editable) from $ROOT"
  "${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
fi

log "environment ready: $VENV"
echo "$VENV"
