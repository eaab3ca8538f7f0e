"""One training run's parts, built from a config; the steps it takes; how it ends.

    with Job(cfg, out_dir, resume) as job:      # process group, data, model, strategy, optimizer, resume
        for step in job.steps(): ...            # the loop: distid/train.py
        summary = job.finish()                  # final evaluation, summary.json, the closing table

Everything the loop does not show lives here: the ledger's set-up phase, the start-up checks that
every rank regenerated the same θ₀ and P, the strategy (chosen once, from dist.strategy: it wraps
the model and hooks the optimizer), resume, what happens after each step (run/after_step.py), and
— when a collective fails — naming the rank that died or hangs (run/watchdog.py).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

from distid import runtime
from distid.config import Config, ConfigError
from distid.data import ShardedLoader, load_splits
from distid.models import count_params, pretrained
from distid.observe import interface
from distid.observe.evaluate import accuracy
from distid.observe.ledger import CommLedger, to_wire
from distid.observe.progress import Progress, final_table
from distid.observe.summary import Summary
from distid.parallel.consistency import assert_same_across_ranks
from distid.parallel.fsdp import full_state
from distid.run.after_step import AfterStep, settled
from distid.run.build import build, make_optimizer
from distid.run.checkpoint import AlreadyFinished, Checkpointer, default_out_dir, restart_count, size_bytes
from distid.run.fault_injection import Injector
from distid.run.meter import StepMeter
from distid.run.summarize import summarize
from distid.run.watchdog import Watch, is_collective_error, restart_hazard
from distid.strategies import choose
from distid.run import redraw
from distid.subspace import SubspaceModel


class Job:
    """A run of `cfg`. Joins the process group if none exists and leaves it on exit; inside an
    existing group (tests, sweeps, entry points) it leaves it be. resume (or a torchrun restart):
    continue from the latest checkpoint in out_dir/checkpoints."""

    def __init__(self, cfg: Config, out_dir: str | None = None, resume: bool = False):
        self.cfg, self.owns_group = cfg, not dist.is_initialized()
        self.rank, self.n = runtime.init(cfg.dist.timeout_s, cfg.dist.backend)
        self.step = 0  # the step running now, for error messages
        try:
            if cfg.train.global_batch % self.n:
                raise ConfigError(f"train.global_batch = {cfg.train.global_batch} is not a multiple of the world "
                                  f"size {self.n}; every rank must get the same number of samples")
            self._setup(out_dir, resume or restart_count() > 0)
        except BaseException:
            if self.rank == 0:  # a run that never started leaves no folder behind
                _drop_if_empty(getattr(self, "out", None))
            if self.owns_group:
                runtime.shutdown(clean=False)
            raise

    def _setup(self, out_dir: str | None, resume: bool) -> None:
        cfg, rank, n = self.cfg, self.rank, self.n
        self.device, self.ledger, self.t_start = runtime.device(), CommLedger(n), time.perf_counter()
        with self.ledger.phase("setup"):  # data, model, start-up checks and the strategy's wrapper
            self.strategy = choose(cfg, n, self.device)  # refuses what it cannot run before anything is built
            if cfg.subspace.redraw_every:
                redraw.refuse(cfg, self.strategy)
            if cfg.dist.measure_interface:
                try:
                    interface.check_everywhere(cfg.dist.measure_interface)
                except ValueError as e:
                    raise ConfigError(str(e)) from e
            out, token = _agree(out_dir or default_out_dir(cfg.name, resume))
            self.out = Path(out)
            train_split, self.test_split = (s.only(cfg.data.classes) for s in load_splits(cfg.data.dataset,
                                                                                           cfg.data.root))
            self.loader = ShardedLoader(train_split, cfg.train.global_batch, rank, n, seed=cfg.train.seed)
            self.model = build(cfg, int(os.environ.get("LOCAL_WORLD_SIZE", n))).to(self.device)
            self.fingerprint = self.model.fingerprint() if isinstance(self.model, SubspaceModel) else None
            self.theta0 = pretrained.theta0_source(cfg.model.init_from, cfg.train.seed)
            assert_same_across_ranks({**(self.fingerprint or {}), "theta0_source": self.theta0})
            self.shape = _shape(self.model)
            self.net = self.strategy.wrap(self.model)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(cfg, self.trainable, self.strategy)
        self.total_steps = cfg.train.steps or max(1, round(cfg.train.epochs * len(self.loader)))
        self.ckpt = Checkpointer(self.out / "checkpoints", cfg, self.model, self.strategy, self.fingerprint)
        with self.ledger.phase("checkpoint"):  # model, optimizer, loader, RNG and the strategy's state
            self.resumed = self.ckpt.resume(self.opt, self.loader) if resume else None
        self.start = self.resumed[0] if self.resumed else 0
        self.evals = list(self.resumed[1].get("evals", [])) if self.resumed else []  # test accuracies so far
        t = cfg.train
        plateau = self.resumed and settled(self.evals, t.stop_plateau, t.plateau_delta)
        self.settled_at = self.start if plateau else None  # steps done at a plateau
        if resume and _finished(self.out) and self.settled_at is not None:
            raise AlreadyFinished(f"{self.out} holds a run that stopped at a plateau after {self.start} steps "
                                  f"(train.stop_plateau = {cfg.train.stop_plateau}): nothing to do and nothing "
                                  f"written; start afresh with another --out")
        if resume and _finished(self.out):
            if not self.resumed:  # checkpoint.keep = 0: nothing to continue from
                raise AlreadyFinished(f"{self.out} holds a finished run (summary.json written) and no checkpoint "
                                      f"to continue from: nothing to do and nothing written; start afresh with "
                                      f"another --out")
            if self.start >= self.total_steps:
                raise AlreadyFinished(f"{self.out} holds a finished run ({self.start} steps, summary.json written): "
                                      f"nothing to do and nothing written; train on with --set train.steps=N "
                                      f"(N > {self.start}), or start afresh with another --out")
            if rank == 0:  # training on: the folder no longer holds a finished run until this one ends
                (self.out / "summary.json").unlink(missing_ok=True)
        self.losses = [torch.tensor(v) for v in self.resumed[1].get("losses", [])] if self.resumed else []
        if restart_hazard() and restart_count() == 0:
            runtime.print0(restart_hazard())
        if resume:
            runtime.print0(self.resumed[2] if self.resumed else f"no checkpoint in {self.ckpt.folder}: starting from step 0")
        self.progress = Progress(self.out, rank, n, self.total_steps, cfg.train.log_every)
        self.watch = Watch(token)
        self.strategy.attach(self.opt, self.ledger, self.start, self.total_steps)
        redraw.attach(cfg, self.model, self.strategy, self.opt, self.ledger, self.start, self.total_steps)  # after
        # the strategy's hook: a re-draw follows the synchronisation
        self.meter = StepMeter(self.ledger, to_wire(self.strategy.payload, n), self.start,
                               self.strategy.warm_steps(), self.device, cfg.dist.measure_interface)
        drill = Injector(rank, self.strategy.counter)
        self.inject_faults = drill if drill.fault else lambda step, x: x  # DISTID_FAULT: a fire drill
        self.after_step = AfterStep(self)  # the NaN stop, progress, evaluation, replica check, checkpoint
        self.curve: list = []  # [(steps done, training seconds, test accuracy)]
        self.synced: list = []  # [(steps done, wire bytes of the synchronisations between steps so far)]
        self.t_loop, self.eval_s = 0.0, 0.0  # when the first step started; seconds spent evaluating since

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        """Leave the group (if this job joined it); a failed collective becomes a PeerFailure naming
        the ranks that did not answer; any other error is recorded for the other ranks to quote."""
        try:
            if isinstance(error, Exception):
                _note_error(self.out, self.rank, self.step, error)
                if self.n > 1 and is_collective_error(error):
                    raise self.watch.explain(self.step, error) from error
                self.watch.record_error(self.step, error)
        finally:
            if self.owns_group:
                runtime.shutdown(clean=error is None)
        return False

    def steps(self):
        """Step numbers start … total_steps − 1 (start > 0 after a resume); they end early once the
        test accuracy has settled (train.stop_plateau)."""
        self.t_loop = time.perf_counter()
        for step in range(self.start, self.total_steps):
            if self.settled_at is not None:
                return
            self.step = step + 1
            yield step

    def batches(self):
        """Endless stream of this rank's batches, epoch after epoch, on this rank's device (the
        loader moves to its next epoch itself when a pass ends: one advance per pass)."""
        while True:
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def evaluate(self, step: int) -> float:
        """Test accuracy after `step`, logged and appended to the curve as (steps done, training
        seconds, accuracy); training seconds exclude the time spent evaluating (and measuring the
        interface's idle traffic)."""
        t0 = time.perf_counter()
        acc = accuracy(self.net, self.test_split, device=self.device)
        self.progress.scalar("test/accuracy", acc, step)
        self.curve.append((step + 1, t0 - self.t_loop - self.eval_s - self.meter.idle_s, acc))
        self.synced.append((step + 1, self.ledger.wire_totals("sync")["total"]))
        self.eval_s += time.perf_counter() - t0
        return acc

    @property
    def steps_done(self) -> int:
        """Steps this run ends at: total_steps, or fewer where it stopped at a plateau."""
        return self.settled_at or self.total_steps

    def finish(self) -> Summary:
        """Final evaluation and the summary (the replicas were compared after the last step); rank 0
        writes trainable.pt and summary.json (last: its presence means "finished") and prints the
        closing table."""
        with self.ledger.phase("eval"):
            if self.settled_at is None or not self.curve:  # at a plateau the last evaluation was of this model
                self.evaluate(self.steps_done - 1)
            summary = summarize(self)
        last = self.ckpt.last
        summary.resumed_from_step = self.start if self.resumed else None
        summary.checkpoint = str(last) if last else None
        summary.checkpoint_bytes = size_bytes(last) if last and self.rank == 0 else None
        summary.full_state_dict_bytes = 4 * summary.total_params
        trained = full_state(self.model)  # on every rank: under FSDP it gathers the shards
        if getattr(self.model, "folded", None):  # a re-drawn subspace: d alone is not the model
            trained["folded"] = torch.stack(self.model.folded)  # [re-draws, d]: replay θ₀ from it
        if self.rank == 0:
            torch.save(trained, self.out / "trainable.pt")
            summary.save(self.out / "summary.json")
            per_sync = self.ledger.steps["sync"] > 0  # a strategy that synchronises between steps
            print(final_table(summary, self.ledger.table(*(("sync", "sync") if per_sync else ("step",)))), flush=True)
        self.progress.close()
        return summary


def _shape(model: torch.nn.Module) -> dict[str, int]:
    """{total: D of the base model (LoRA adapters excluded), trainable}, before any wrapper shards it."""
    total = model.D if isinstance(model, SubspaceModel) else count_params(model)
    adapters = sum(p.numel() for name, p in model.named_parameters() if name.rpartition(".")[2] in ("lora_A", "lora_B")
                   or hasattr(model, "peft_config") and p.requires_grad)  # PEFT's VeRA, FourierFT, Uni-LoRA
    return dict(total=total - adapters, trainable=count_params(model, trainable_only=True))


def _agree(proposal: str) -> tuple[str, str]:
    """Rank 0's output folder (the ranks' clocks may differ by a second) and a token naming this run's
    keys in the store, for every rank."""
    box = [(proposal, uuid.uuid4().hex[:12])]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    Path(box[0][0]).mkdir(parents=True, exist_ok=True)
    return box[0]


def _finished(out: Path) -> bool:
    """Rank 0's answer, for every rank: does out/summary.json (written last by a finished run) exist?"""
    box = [(out / "summary.json").is_file()]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def _drop_if_empty(out: Path | None) -> None:
    """Remove the run folder if no file was written into it (a run that failed while setting up)."""
    if out is not None and out.is_dir() and not any(f.is_file() for f in out.rglob("*")):
        shutil.rmtree(out, ignore_errors=True)


def _note_error(out: Path, rank: int, step: int, error: BaseException) -> None:
    """Append `rank r, step s: Type: message` to out/error.txt: the folder of a failed run says why."""
    try:
        with open(out / "error.txt", "a") as f:
            f.write(f"rank {rank}, step {step}: {type(error).__name__}: {error}\n")
    except OSError:
        pass
