#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install into ./.venv, fetch MNIST into ./data,
# run lesson 1 (collectives from send/recv), lesson 2 (data parallel from first principles) and
# the MLP trained in a d = 750 random subspace under DDP, on NPROC local processes (default 4;
# gloo on CPU, NCCL when every process can have its own GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
. .venv/bin/activate
NPROC=${NPROC:-4}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() { echo "+ $*"; "$@"; }
run python -m distid.data fetch mnist --root "${DISTID_DATA:-data}"
run torchrun --standalone --nproc_per_node="$NPROC" -m distid.primitives
run torchrun --standalone --nproc_per_node="$NPROC" -m distid.parallel --data-root "${DISTID_DATA:-data}"
run torchrun --standalone --nproc_per_node="$NPROC" -m distid.train --config configs/mnist_fc_subspace.toml \
  --set data.root="${DISTID_DATA:-data}"
