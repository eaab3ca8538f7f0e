"""Convergence at a matched budget: full training, LoRA and a random subspace, test accuracy
against steps and against training seconds, in one figure.

    python -m distid.experiments.methods.convergence --config configs/vit_finetune.toml [--set subspace.d=2000] [--out DIR]

Each curve is one `distid.train.train` of the config with train.method changed (lr: sweep.full_lr,
train.lr, sweep.lora_lr — the sweep's); LoRA's rank is lora.rank, or the one whose trainable
count is closest to subspace.d. The curve is summary.json's eval_curve (every train.eval_every steps;
training seconds exclude the evaluations). Writes convergence.json, .md and .png to --out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from distid import runtime
from distid.config import Config, ConfigError, load_config, timestamped_dir
from distid.experiments.plotting import pyplot, save
from distid.run import cli
from distid.train import train_logged

METHODS = ("full", "lora", "subspace")


def lr_of(cfg: Config, method: str) -> float:
    return {"full": cfg.sweep.full_lr, "subspace": cfg.train.lr, "lora": cfg.sweep.lora_lr}[method]


def run_method(args, cfg: Config, method: str, out: Path) -> dict:
    s = train_logged(load_config(args.config, [*args.overrides, f"train.method={method}", f"train.lr={lr_of(cfg, method)}"]),
                   out / method)
    runtime.print0(f"{method:<9} test acc {s.test_accuracy:.4f} after {s.steps:,} steps  ({out / method}/train.log)")
    keep = ("trainable_params", "lora_rank", "test_accuracy", "step_time_s", "steps", "eval_curve", "theta0")
    return dict(method=method, lr=lr_of(cfg, method), **{k: getattr(s, k) for k in keep})


def markdown(curves: list[dict], cfg: Config, machine: dict) -> str:
    lines = [f"# Convergence — {cfg.model.name} on {cfg.data.dataset}"
             + (f" (classes {cfg.data.classes})" if cfg.data.classes else "") + "\n",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
             f"{machine['world_size']} rank(s). θ₀: {curves[0]['theta0']}.\n",
             "| method | trainable | lr | steps | training s | step ms | final test acc |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in curves:
        rank = f" (r={c['lora_rank']})" if c["lora_rank"] else ""
        lines.append(f"| {c['method']} | {c['trainable_params']:,}{rank} | {c['lr']:g} | {c['steps']} | "
                     f"{c['eval_curve'][-1][1]:.1f} | {1e3 * (c['step_time_s'] or float('nan')):.2f} | "
                     f"{c['test_accuracy']:.4f} |")
    return "\n".join(lines) + "\n\n![accuracy against steps and seconds](convergence.png)\n"


def plot(curves: list[dict], cfg: Config, path: Path) -> bool:
    """convergence.png: test accuracy against steps and against training seconds, a line per method;
    False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for c in curves:
        steps, secs, acc = zip(*c["eval_curve"])
        label = f"{c['method']} ({c['trainable_params']:,} trained)"
        axes[0].plot(steps, acc, "o-", ms=3, label=label)
        axes[1].plot(secs, acc, "o-", ms=3, label=label)
    axes[0].set_xlabel("optimizer steps")
    axes[1].set_xlabel("training seconds (evaluations excluded)")
    axes[0].set_ylabel("test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Convergence at a matched budget: {cfg.model.name} on {cfg.data.dataset}")
    fig.tight_layout()
    save(fig, path)
    return True


def convergence(args, cfg: Config) -> None:
    if not cfg.train.eval_every:
        raise ConfigError("train.eval_every must be > 0: it sets how often the curves are measured")
    out = Path(args.out or timestamped_dir(f"convergence-{cfg.name}"))
    curves = [run_method(args, cfg, m, out) for m in METHODS]
    if dist.get_rank() == 0:
        machine = runtime.machine()
        (out / "convergence.json").write_text(json.dumps(dict(machine=machine, curves=curves), indent=1))
        md = markdown(curves, cfg, machine)
        (out / "convergence.md").write_text(md)
        drew = plot(curves, cfg, out / "convergence.png")
        print(md + f"\nwrote {out}/convergence.json, convergence.md"
              + (", convergence.png" if drew else " (matplotlib missing: no convergence.png)"))


def main(argv=None) -> int:
    return cli.main(argv, "python -m distid.experiments.methods.convergence", __doc__, convergence,
                    out="runs/convergence-<config name>-<YYYYmmdd-HHMMSS>")


if __name__ == "__main__":
    sys.exit(main())
