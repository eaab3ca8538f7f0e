#!/usr/bin/env bash
# Install distid with its test extras into ./.venv and run the whole test suite (gloo, CPU).
# MNIST is fetched first when it can be; tests that need it fall back to small synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=1
unset DISTID_THREADS  # the tests pin one thread per process
echo "+ python -m distid.data fetch mnist --root ${DISTID_DATA:-data}"
python -m distid.data fetch mnist --root "${DISTID_DATA:-data}" \
  || echo "MNIST not fetched: the data-dependent tests use synthetic data or skip"
echo "+ python -m distid.data fetch fashion-mnist --root ${DISTID_DATA:-data}"
python -m distid.data fetch fashion-mnist --root "${DISTID_DATA:-data}" \
  || echo "Fashion-MNIST not fetched: the docs test skips the commands that need it"
echo "+ python -m pytest -q $*"
exec python -m pytest -q "$@"
