"""A rank that reports how it was started, for tests/test_forkrun.py: `python -m fork_probe OUT MODE`
writes OUT/rank<RANK>.json (its torchrun variables, argv, sys.path[0], working folder, pid), then
MODE: "ok" exits 0; "fail" exits 3 on rank 1, once every rank has written its report, while the others
sleep; "raise" raises; "hang" sleeps."""

import json
import os
import sys
import time

NAMES = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
         "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")

if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    rank = os.environ.get("RANK", "0")
    torchrun = {k: v for k, v in os.environ.items() if k in NAMES or k.startswith(("TORCHELASTIC_", "TORCH_NCCL"))}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(dict(env=torchrun, argv=sys.argv, path0=sys.path[0], cwd=os.getcwd(), pid=os.getpid(),
                       probe=os.environ.get("FORK_PROBE")), f)
    print(f"rank {rank} started", flush=True)
    if mode == "raise":
        raise RuntimeError("the probe raised")
    if mode == "fail" and rank == "1":
        while len(os.listdir(out)) < int(os.environ["WORLD_SIZE"]):
            time.sleep(0.05)
        sys.exit(3)
    if mode in ("fail", "hang"):
        time.sleep(120)
