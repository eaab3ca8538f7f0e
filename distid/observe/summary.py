"""The contract of `summary.json`: one dataclass, written by the run and read by attribute by
everything that consumes a run (compare, sweep, frontier, convergence, the closing table).

Byte figures (dicts are {op: bytes, ..., "total": sum}), per rank and per step unless named
otherwise, each named by its meaning — never add or divide two of different meanings:
  comm_wire_*     the headline: what this rank sends under the bandwidth-optimal ring algorithms
                  (all-reduce 2(N−1)/N·S, all-gather and reduce-scatter (N−1)/N·S, broadcast S);
  comm_payload_*  the tensors this rank hands to collectives (all_gather: its 1/N shard);
  comm_measured_* what the network interface counted (opt-in: dist.measure_interface).
`*_bytes_per_step` come from the ledger over `comm_steps_booked` steps, `*_formula` from the
parameters, `*_setup` / `*_warmup` are phase totals. A strategy that synchronises between steps
(local SGD, DiLoCo: every `sync_period` steps) has its synchronisations booked apart
(`*_bytes_per_sync`, over `comm_syncs`, every one booked) and spread over the steps run:
`*_bytes_per_step` = the booked steps' own (`comm_payload_bytes_inner_step`: nothing) + all
synchronisations' bytes ÷ steps. `wire_per_step` is the one figure to quote per step.

`schema` counts the changes of this layout: 2 = the config by sections, the strategy's label and
period (1 had `sync_every` and `outer`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from distid.observe.ledger import sent_per_step

SCHEMA = 2


@dataclass
class Summary:
    # what ran
    method: str
    strategy: str  # dist.strategy as configured
    ddp_active: bool
    world_size: int
    nnodes: int
    local_world_size: int
    backend: str
    device: str
    projection: str | None  # subspace runs only
    total_params: int  # D of the base model (LoRA adapters excluded)
    trainable_params: int
    lora_rank: int | None
    steps: int  # steps trained: steps_planned, or fewer where the run stopped at a plateau
    global_batch: int
    epochs: float
    # communication
    comm_wire_bytes_per_step: dict | None  # None when no step was booked (e.g. fewer steps than the warm-up)
    comm_wire_formula: dict
    comm_wire_bytes_setup: dict
    comm_wire_bytes_warmup: dict
    comm_payload_bytes_per_step: dict | None
    comm_payload_formula: dict
    comm_payload_bytes_setup: dict
    comm_payload_bytes_warmup: dict
    comm_measured_bytes_per_step: float | None  # mean over this host's ranks; None unless measured
    comm_measured_interface: str | None
    comm_calls_per_step: dict
    comm_steps_booked: int
    comm_steps_warmup: int
    ddp_hook_payload_bytes_per_step: float  # payload: the float32 buckets DDP hands its comm hook
    # results
    test_accuracy: float
    train_loss: float
    eval_curve: list  # [(steps done, training seconds, test accuracy)]
    # time and memory
    step_time_s: float | None  # the steps not booked by the ledger: median; their mean where sync_period > 1
    peak_rss_mb: float
    peak_gpu_mb: float | None
    state_bytes: dict  # {params, grads, optimizer, buffers, strategy, total} on this rank
    step_time_s_per_rank: list
    peak_rss_mb_per_rank: list
    state_bytes_per_rank: list
    flops_per_step: int
    projection_flops_per_step: int
    wall_time_s: float
    projection_bytes: int
    # where it came from
    fingerprint: dict | None  # θ₀/P hashes of a subspace run
    theta0: str  # "seed:<n>" or "file:<sha256 prefix>"
    machine: dict
    config: dict
    config_hash: str
    out_dir: str
    code_version: str | None = None  # runtime.code_version(): the package version and a hash of its sources
    # checkpoints
    steps_planned: int | None = None  # train.steps, or train.epochs in steps
    stopped_early: bool = False  # the test accuracy settled (train.stop_plateau) before steps_planned
    resumed_from_step: int | None = None
    checkpoint: str | None = None
    checkpoint_bytes: int | None = None
    full_state_dict_bytes: int | None = None
    # the strategy
    strategy_label: str = ""  # in words: "DDP + PowerSGD (rank 1)", "DiLoCo (H = 32)"
    sync_period: int = 1  # the replicas are one model every this many steps (1: every step)
    comm_syncs: int = 0  # synchronisations between steps, booked (every one is)
    comm_payload_bytes_per_sync: dict | None = None
    comm_wire_bytes_per_sync: dict | None = None
    comm_calls_per_sync: dict | None = None
    comm_payload_bytes_inner_step: dict | None = None  # with synchronisations: what the booked steps handed in
    strategy_state_bytes: dict | None = None  # what the strategy keeps between steps on rank 0, by name
    comm_wire_sync_by_eval: list | None = None  # [(steps done, wire bytes of the synchronisations so far)] at
    # each evaluation, where a strategy synchronises between steps (all booked)
    schema: int = SCHEMA

    @property
    def wire_per_step(self) -> float:
        """Bytes each rank sends per step: the ledger's figure, else the formula's."""
        return sent_per_step(self.comm_wire_bytes_per_step, self.comm_wire_formula)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Write whole or not at all (a temporary, then a rename): its presence means "finished"."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Summary":
        """A summary.json of this schema; keys this version does not know are dropped; an older schema
        raises ValueError naming it (its runs are to be rerun)."""
        raw = json.loads(Path(path).read_text())
        if raw.get("schema", 1) != SCHEMA:
            raise ValueError(f"{path} has summary schema {raw.get('schema', 1)}, this distid reads {SCHEMA}: rerun it")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})
