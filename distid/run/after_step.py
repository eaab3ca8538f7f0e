"""What happens after each step, in one call from the loop (`job.after_step(step, loss, logits, y)`),
in this order: the NaN stop, the progress line, an evaluation (and the plateau stop it may bring),
the replica check, a checkpoint. When each falls due is worked out once, before the first step
(`Schedule`), so that a step with nothing due costs a few set lookups.
"""

from __future__ import annotations

import torch

from distid import runtime
from distid.parallel.consistency import check_replicas
from distid.run.watchdog import Diverged
from distid.strategies.base import falls_due


class Schedule:
    """The numbers of steps done (start+1 … total) after which each duty falls due. `period`: the
    strategy's; an evaluation, a replica check or a checkpoint falls on the first step at or after
    each multiple of its interval at which the replicas are one model. A strategy that synchronises
    between steps (period > 1) has the replicas compared after every synchronisation too."""

    def __init__(self, start: int, total: int, period: int, log_every: int, eval_every: int, check_every: int,
                 ckpt_every: int, keep: int):
        done = range(start + 1, total + 1)
        self.log = {k for k in done if k % max(log_every, 1) == 0 or k == total}
        self.eval = {k for k in done if falls_due(k, eval_every, period) and k < total}
        self.checkpoint = {k for k in done if keep > 0 and (k == total or falls_due(k, ckpt_every, period))}
        synced = {k for k in done if k % period == 0} if period > 1 else set()
        self.check = {k for k in done if falls_due(k, check_every, period)} | synced | self.checkpoint | {total}


def check_finite(step: int, loss: torch.Tensor, params: list[torch.Tensor], last_ckpt) -> None:
    """Raise Diverged unless the loss and every trainable parameter are finite. Under DDP the
    parameters are equal on every rank after the all-reduce, so every rank stops at the same step."""
    if torch.isfinite(loss) and all(torch.isfinite(getattr(p, "_local_tensor", p)).all() for p in params):
        return
    keep = f"the last good checkpoint is {last_ckpt} (--resume continues from it)" if last_ckpt else \
        "no checkpoint was written before it"
    what = f"loss is {loss.item()}" if not torch.isfinite(loss) else \
        "the trainable parameters stopped being finite (another rank's loss was not)"
    raise Diverged(f"{what} at step {step}: training diverged and stopped; {keep}; lower train.lr or check the data")


class AfterStep:
    """The duties after each step of `job` (a run/job.py Job, built)."""

    def __init__(self, job):
        self.job, c = job, job.cfg
        self.when = Schedule(job.start, job.total_steps, job.strategy.period, c.train.log_every, c.train.eval_every,
                             c.dist.check_replicas_every, c.checkpoint.every, c.checkpoint.keep)
        self.window = [0.0, 0, 0, 0]  # since the last progress line: loss sum, correct, samples, steps

    def __call__(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        job, done = self.job, step + 1
        check_finite(done, loss, job.trainable, job.ckpt.last)
        job.losses.append(loss)
        w = self.window
        w[0], w[1], w[2], w[3] = w[0] + loss, w[1] + (logits.argmax(1) == y).sum(), w[2] + len(y), w[3] + 1
        if done in self.when.log:
            self.log(step)
        if done in self.when.eval:
            self.evaluate(step)
        last = job.settled_at or job.total_steps  # a plateau ends the run here: check and save as at the end
        saving = done in self.when.checkpoint or (done == last and job.cfg.checkpoint.keep > 0)
        if saving or done in self.when.check or done == last:
            with job.ledger.phase("checks"):  # before a checkpoint, which keeps one replica's copy
                check_replicas(job.model, done, digest=job.strategy.digest)
        if saving:
            self.checkpoint(done)

    def log(self, step: int) -> None:
        """The progress line from the steps since the last one (one tiny all-gather of RSS: "metrics")."""
        job, (loss, correct, samples, steps) = self.job, self.window
        self.window = [0.0, 0, 0, 0]
        with job.ledger.phase("metrics"):
            job.progress.log(step, float(loss) / max(steps, 1), float(correct) / max(samples, 1),
                             job.meter.wire_per_step(step + 1))

    def evaluate(self, step: int) -> None:
        """Test accuracy now; the run stops here once the accuracy has settled (train.stop_plateau)."""
        job, t = self.job, self.job.cfg.train
        with job.ledger.phase("eval"):
            job.evals.append(job.evaluate(step))
        if settled(job.evals, t.stop_plateau, t.plateau_delta):
            job.settled_at = step + 1
            runtime.print0(f"stopping after step {step + 1}: the last {t.stop_plateau} evaluations gained at "
                           f"most {t.plateau_delta:g} on the best before them")

    def checkpoint(self, done: int) -> None:
        """Model, optimizer, loader, RNG, recent losses, evaluations and the strategy's state."""
        job = self.job
        with job.ledger.phase("checkpoint"):
            local = dict(rng=torch.get_rng_state(), losses=[v.item() for v in job.losses[-50:]], evals=job.evals)
            job.ckpt.save(done, job.opt, job.loader, local)


def settled(accs: list[float], k: int, delta: float) -> bool:
    """Has the accuracy settled? The best of the last k evaluations is at most delta above the best
    of those before them (never with k = 0, nor before k + 1 evaluations): k evaluations in a row
    that could not beat the earlier best by more than delta."""
    return k > 0 and len(accs) > k and max(accs[-k:]) <= max(accs[:-k]) + delta
