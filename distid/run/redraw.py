"""Re-drawn subspaces (Gressmann et al. 2020, "Improving Neural Network Training in Low Dimensional
Random Bases"): every K = `subspace.redraw_every` steps, after the optimizer's step (and after the
strategy's synchronisation, whose hook was registered first), every rank folds θ₀ ← θ₀ + P·d,
draws the next P from the seed and starts a new d at zero (SubspaceModel.redraw).

A fixed subspace caps accuracy at what its d can reach; a new one every K steps lets training leave
it while every synchronisation still carries d numbers: the bytes per step are the fixed
subspace's, nothing more is sent for a re-draw. What does not carry over: the optimizer's moments
of d belong to the old basis — `subspace.redraw_optimizer = "reset"` (the default) drops them,
"keep" carries them into the new one — and a strategy's own copy of d (local steps' θ_start, reset
to the new d = 0; with "reset", its outer momentum dropped too). Under local steps the replicas hold
the same d only right after a synchronisation, so K must be a multiple of H.

"Identically" rests on every rank computing P·d bit for bit alike: after each re-draw the ranks
compare a hash of θ₀ (one tiny all-gather, ledger phase "checks").
"""

from __future__ import annotations

import torch

from distid.config import ConfigError
from distid.parallel.consistency import assert_same_across_ranks
from distid.strategies.base import BUILTIN, find

def check_replayed(model, expected: str, where: str) -> None:
    """After a replay of `where`'s re-draws: every rank's θ₀ alike, and the writer's (sha256 `expected`);
    else one error on every rank (CheckpointError's text, as a ValueError)."""
    mine = model.theta0_digest()
    assert_same_across_ranks({"θ₀ replayed from the checkpoint's re-draws": mine})
    if mine != expected:
        raise ValueError(f"{where}: θ₀ replayed here from its {model.draw} re-draws differs from the writer's "
                         f"(sha256 {mine} vs {expected}): another machine's kernel rounds P·d differently")


def refuse(cfg, strategy) -> None:
    """ConfigError (one line) where re-draws cannot run as asked under `strategy` (chosen)."""
    K, name = cfg.subspace.redraw_every, cfg.dist.strategy
    if not strategy.rebases:
        works = [n for n in BUILTIN if find(n).rebases]  # the strategies that say so (Strategy.rebases)
        raise ConfigError(f"subspace.redraw_every = {K} runs under dist.strategy = {', '.join(map(repr, works))}; "
                          f"this run's is {name!r} (its state would outlive the subspace it belongs to)")
    if K % strategy.period:
        raise ConfigError(f"subspace.redraw_every = {K} must be a multiple of the {strategy.period} steps between "
                          f"synchronisations of {strategy.label}: the replicas hold the same d only right after one")
    if cfg.subspace.layerwise:
        raise ConfigError("subspace.redraw_every > 0 cannot be combined with subspace.layerwise (a re-draw folds "
                          "θ₀ whole)")
    if cfg.subspace.said:
        raise ConfigError("subspace.redraw_every > 0 cannot be combined with subspace.said (a fold would need λ, "
                          "which the re-draw history does not keep)")


def attach(cfg, model, strategy, opt, ledger, start: int, steps: int) -> None:
    """Hook the re-draws of `cfg` (subspace.redraw_every, redraw_optimizer) on `opt`'s step, after the
    strategy's hook; nothing where subspace.redraw_every is 0."""
    if cfg.subspace.redraw_every:
        keep = cfg.subspace.redraw_optimizer == "keep"
        Redraw(model, strategy, cfg.subspace.redraw_every, keep).attach(opt, ledger, start, steps)


class Redraw:
    """The re-draw schedule of one run: `attach` after the strategy's, so its hook runs second."""

    def __init__(self, model, strategy, every: int, keep_moments: bool):
        self.model, self.strategy, self.every, self.keep = model, strategy, every, keep_moments

    def attach(self, opt: torch.optim.Optimizer, ledger, start: int, steps: int) -> None:
        self.opt, self.ledger, self.done, self.steps = opt, ledger, start, steps
        opt.register_step_post_hook(lambda *_: self.after_step())

    def after_step(self) -> None:
        self.done += 1
        if self.done % self.every == 0:  # the last step's too: a run cut there and resumed folds as one
            self.redraw()  # that runs on (trainable.pt keeps every fold, d = 0 then)

    def redraw(self) -> None:
        self.model.redraw()
        if not self.keep:
            for p in self.model.parameters():
                self.opt.state.pop(p, None)  # Adam restarts its moments (and bias correction) for d
        self.strategy.rebase(reset=not self.keep)
        with self.ledger.phase("checks"):
            assert_same_across_ranks({f"θ₀ after re-draw {self.model.draw}": self.model.theta0_digest()})
