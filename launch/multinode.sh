#!/usr/bin/env bash
# One node of a multi-node job: start this on every node (same command, same JOB_ID).
#   launch/multinode.sh MODULE [ARGS...]
#
# Environment (defaults in brackets):
#   HEAD_ADDR       address of the rendezvous node, reachable from every node   [$MASTER_ADDR or 127.0.0.1]
#   HEAD_PORT       a free TCP port on HEAD_ADDR                                [$MASTER_PORT or 29500]
#   NNODES          number of nodes, or MIN:MAX for an elastic job               [2]
#   NODE_RANK       passed as --node-rank; the c10d rendezvous ignores it and   [unset]
#                   assigns node ranks itself
#   NPROC_PER_NODE  processes on this node (one per GPU on GPU nodes)            [GPUs visible, else 1]
#   JOB_ID          rendezvous id shared by the nodes of one job                 [$SLURM_JOB_ID or distid]
#   JOIN_TIMEOUT    seconds to wait for all nodes before giving up               [600]
# The c10d rendezvous runs on HEAD_ADDR:HEAD_PORT: the node whose address that is hosts it.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: HEAD_ADDR=... NNODES=... $0 MODULE [ARGS...]   (see the header of $0)" >&2
  exit 2
fi
module=$1
shift
gpus=$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
[ "$gpus" -gt 0 ] 2>/dev/null || gpus=1
# torchrun --max-restarts: a fresh rendezvous store per attempt (pytorch/pytorch#135712)
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"
cmd=(torchrun
  --nnodes="${NNODES:-2}"
  --nproc-per-node="${NPROC_PER_NODE:-$gpus}"
  --rdzv-backend=c10d
  --rdzv-endpoint="${HEAD_ADDR:-${MASTER_ADDR:-127.0.0.1}}:${HEAD_PORT:-${MASTER_PORT:-29500}}"
  --rdzv-id="${JOB_ID:-${SLURM_JOB_ID:-distid}}"
  --rdzv-conf="join_timeout=${JOIN_TIMEOUT:-600}")
[ -n "${NODE_RANK:-}" ] && cmd+=(--node-rank="$NODE_RANK")
cmd+=(-m "$module" "$@")
echo "+ ${cmd[*]}"
# torchrun's stderr passes through unchanged; a copy is kept to explain a rendezvous timeout.
errlog=$(mktemp)
trap 'rm -f "$errlog"' EXIT
set +e
{ "${cmd[@]}" 2>&1 1>&3 | tee "$errlog" >&2; } 3>&1
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ] && grep -q RendezvousTimeoutError "$errlog"; then
  echo "distid: the rendezvous at ${HEAD_ADDR:-${MASTER_ADDR:-127.0.0.1}}:${HEAD_PORT:-${MASTER_PORT:-29500}}" \
       "(job ${JOB_ID:-${SLURM_JOB_ID:-distid}}) timed out after ${JOIN_TIMEOUT:-600} s waiting for" \
       "${NNODES:-2} nodes: start this same command on every node, with the same HEAD_ADDR, HEAD_PORT" \
       "and JOB_ID, and check that HEAD_PORT on HEAD_ADDR is reachable from each node (firewall)." >&2
fi
exit "$rc"
