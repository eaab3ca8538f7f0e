#!/usr/bin/env bash
# Install distid into ./.venv (created if missing). torch goes in first, pinned to 2.13.0, unless
# the venv already has a torch >= 2.5 (a GPU user's own build is kept); DISTID_TORCH="torch==X"
# changes the pin. Installing torch before distid matters: left to resolve `torch>=2.5` by itself,
# pip takes the newest torch, on Linux a CUDA build of several GB. Where a CPU wheel of 2.13.0 is
# at hand (pip's find-links, or PyTorch's CPU index in PIP_EXTRA_INDEX_URL) the pin picks it.
# Extras: DISTID_EXTRAS (default "test,hf,diloco": transformers and peft for the Hugging Face model and PEFT
# tests, torchft for the DiLoCo cross-check; e.g. "test,peft").
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
echo "+ pip install -e .[${DISTID_EXTRAS:-test,hf,diloco}]"
pip install -q -e ".[${DISTID_EXTRAS:-test,hf,diloco}]" 2> >(grep -v "is ignored: it is neither" >&2)
# Thread default, in the venv's activate script: one OpenMP thread per process unless OMP_NUM_THREADS
# is set (so torchrun prints no OMP_NUM_THREADS banner), and DISTID_THREADS=auto, with which
# distid.runtime gives each process its share of the cores (all of them to a lone process).
grep -q "DISTID_THREADS" .venv/bin/activate || cat >> .venv/bin/activate <<'ACTIVATE'
# distid (launch/setup.sh): OpenMP threads, see distid/runtime.py `share_cores`
if [ -z "${OMP_NUM_THREADS:-}" ]; then export OMP_NUM_THREADS=1 DISTID_THREADS=auto; fi
ACTIVATE
