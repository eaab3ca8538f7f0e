#!/usr/bin/env bash
# Install distid into ./.venv (created if missing). torch goes in first, pinned to 2.13.0, unless
# the venv already has a torch >= 2.5 (a GPU user's own build is kept); DISTID_TORCH="torch==X"
# changes the pin. Installing torch before distid matters: left to resolve `torch>=2.5` by itself,
# pip takes the newest torch, on Linux a CUDA build of several GB. Where a CPU wheel of 2.13.0 is
# at hand (pip's find-links, or PyTorch's CPU index in PIP_EXTRA_INDEX_URL) the pin picks it.
# Extras: DISTID_EXTRAS (default "test,hf": transformers, for the Hugging Face model tests; e.g. "test,peft").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || { echo "+ $PYTHON -m venv .venv"; "$PYTHON" -m venv .venv; }
# shellcheck disable=SC1091
. .venv/bin/activate
have_torch='import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 5))'
if ! python -c "$have_torch" 2>/dev/null; then
  echo "+ pip install ${DISTID_TORCH:-torch==2.13.0}"
  pip install -q "${DISTID_TORCH:-torch==2.13.0}" 2> >(grep -v "is ignored: it is neither" >&2)
fi
echo "+ pip install -e .[${DISTID_EXTRAS:-test,hf}]"
pip install -q -e ".[${DISTID_EXTRAS:-test,hf}]" 2> >(grep -v "is ignored: it is neither" >&2)
