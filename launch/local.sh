#!/usr/bin/env bash
# One node: NPROC processes of a distid module on this machine.
#   launch/local.sh NPROC MODULE [ARGS...]
#   launch/local.sh 4 distid.train --config configs/mnist_fc_subspace.toml
# gloo on CPU, NCCL when every process can have its own GPU (distid's backend "auto").
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 NPROC MODULE [ARGS...]   e.g. $0 4 distid.train --config configs/mnist_fc_subspace.toml" >&2
  exit 2
fi
nproc=$1 module=$2
shift 2
# torchrun --max-restarts: a fresh rendezvous store per attempt (pytorch/pytorch#135712)
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"
# --local-addr: with that store per attempt the workers meet at the agent's address, by default the
# host's name, which need not resolve; one node meets on the loopback
cmd=(torchrun --standalone --local-addr=127.0.0.1 --nproc_per_node="$nproc" -m "$module" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
