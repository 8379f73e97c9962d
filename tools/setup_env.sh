#!/usr/bin/env bash
# Creates/updates the project virtual environment (.venv by default).
#  - keeps an already-installed torch (e.g. a CUDA build on a GPU node), else installs torch==2.13.0
#  - builds mmcv 2.1.0 with ops from source once and caches the wheel (CUDA ops when nvcc + GPU exist)
#  - installs mmengine 0.10.x, mmsegmentation 1.2.2, mmdet 3.3.0, peft, transformers, test tools
#  - installs onnx, onnxruntime, onnxscript (deployment, requirements/deploy.txt)
#  - installs this package in editable mode
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
CACHE=${SOMA_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/soma/wheels}
mkdir -p "$CACHE"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pip_install() { "$VPY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | sed "/is ignored: it is neither a file nor a directory/d"; }

if [ -f "$VENV/.soma-setup-ok" ] && [ "$VENV/.soma-setup-ok" -nt requirements/runtime.txt ] \
   && [ "$VENV/.soma-setup-ok" -nt setup.py ] && [ "$VENV/.soma-setup-ok" -nt tools/setup_env.sh ] \
   && [ "$VENV/.soma-setup-ok" -nt requirements/tests.txt ] && [ "$VENV/.soma-setup-ok" -nt requirements/optional.txt ] \
   && [ "$VENV/.soma-setup-ok" -nt requirements/deploy.txt ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

# 1. torch: keep what is there
if "$VPY" -c "import torch" 2>/dev/null; then
  echo "[setup] keeping torch $("$VPY" -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing torch==2.13.0"
  pip_install "torch==2.13.0"
fi
pip_install wheel ninja "numpy<2" packaging

# 2. mmcv with ops: build once, reuse the wheel
TORCH_TAG=$("$VPY" -c "import torch; print(torch.__version__.replace('+','_'))")
WITH_CUDA=$("$VPY" -c "import torch, shutil; print(int(torch.cuda.is_available() and shutil.which('nvcc') is not None))")
PYTAG=$("$VPY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
WHEEL_DIR="$CACHE/mmcv-$MMCV_VERSION-$PYTAG-torch$TORCH_TAG-cuda$WITH_CUDA"
if "$VPY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  echo "[setup] mmcv $MMCV_VERSION with ops already installed"
else
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    echo "[setup] building mmcv $MMCV_VERSION with ops (cuda=$WITH_CUDA); takes ~7 min on 2 cores, done once"
    mkdir -p "$WHEEL_DIR.tmp"
    # MMCV_WITH_OPS=1 and FORCE_CUDA only when a GPU toolchain exists
    if [ "$WITH_CUDA" = 1 ]; then export FORCE_CUDA=1; else export FORCE_CUDA=0; fi
    # mmcv's setup.py needs setuptools<70; torch wants >=77 at run time: downgrade only for the build
    pip_install "setuptools<70" 2>/dev/null || true
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VPY" -m pip wheel --no-deps --no-build-isolation \
      --no-binary mmcv -w "$WHEEL_DIR.tmp" "mmcv==$MMCV_VERSION"
    pip_install "setuptools>=77.0.3"
    rm -rf "$WHEEL_DIR"; mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  fi
  pip_install --no-deps "$WHEEL_DIR"/mmcv-*.whl
fi

# 3. the rest
# deploy.txt: onnx, onnxruntime, onnxscript (ONNX export and runner); it pins ml_dtypes so
# that onnx keeps this project's numpy < 2
pip_install -r requirements/runtime.txt -r requirements/tests.txt -r requirements/optional.txt \
  -r requirements/deploy.txt
pip_install --no-deps --no-build-isolation -e .
"$VPY" -c "import mmcv.ops, mmseg, mmdet, soma; print('[setup] ok: mmcv', mmcv.__version__, 'mmseg', mmseg.__version__, 'mmdet', mmdet.__version__)"
"$VPY" -c "import numpy, onnx, onnxruntime, onnxscript; assert numpy.__version__ < '2', numpy.__version__; print('[setup] ok: onnx', onnx.__version__, 'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"
touch "$VENV/.soma-setup-ok"
