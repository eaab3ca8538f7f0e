"""A GPT-2-small-shaped model (12 layers, width 768, 50,257-token vocabulary, tied embeddings;
D = 124,439,808) on one GPU: what full training, LoRA and a Fastfood subspace cost per step.

    python -m distid.experiments.bench.gpt2 [--d 1000,10000,100000] [--lora-rank 8] [--batch 8] [--context 1024]

Random weights, random tokens (nothing is learnt; only cost is measured). Per variant: median step
time over --steps timed steps after --warmup, peak GPU memory (torch.cuda.max_memory_allocated,
model + optimizer + activations), trainable parameters, and the array a DDP all-reduce would carry
per step, 4 × trainable (the payload distid's ledger measures for these methods on CPU; a ring
all-reduce sends 2(N−1)/N of it per rank, the wire figure). Adam, TF32
matmuls. Writes gpt2.json and gpt2.md to --out. Needs CUDA and `transformers`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distid import lora, runtime
from distid.models import count_params
from distid.subspace import SubspaceModel


def gpt2_small(context: int):
    from distid.models.hf import hf_gpt2

    return hf_gpt2(vocab=50257, context=context, width=768, layers=12, heads=12)


def build(variant: str, x: int, context: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = gpt2_small(context)
    if variant == "lora":
        return lora.inject(model, x, 2.0 * x, ["c_attn"], seed=0)  # PEFT's GPT-2 target, α = 2r
    if variant == "subspace":
        return SubspaceModel(model, x, "fastfood", seed=0)
    return model


def measure(variant: str, x: int, args) -> dict:
    """One variant: build on the GPU, warm up, time --steps steps; peak memory over all of it."""
    dev = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    net = build(variant, x, args.context).to(dev)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4)
    g = torch.Generator(device=dev).manual_seed(0)
    tokens = torch.randint(0, 50257, (args.batch, args.context + 1), device=dev, generator=g)
    xb, yb = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    trainable = count_params(net, trainable_only=True)
    row = dict(variant=variant if variant == "full" else f"{variant} {'r' if variant == 'lora' else 'd'}={x:,}",
               trainable=trainable, ddp_bytes_per_step=4 * trainable, step_ms=1e3 * statistics.median(times),
               peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20,
               D=net.D if isinstance(net, SubspaceModel) else count_params(net) - (trainable if variant == "lora" else 0))
    del net, opt, params
    gc.collect()
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    full = rows[0]
    lines = [f"# GPT-2-small-shaped model on {meta['gpu']}\n",
             f"D = {full['D']:,} (tied embeddings counted once); batch {meta['batch']} × {meta['context']} tokens; "
             f"Adam, fp32 weights, TF32 matmuls; median of {meta['steps']} steps after {meta['warmup']}; "
             f"torch {meta['torch']}.\n",
             "| variant | trainable | DDP all-reduce array B (4·T) | step ms | × full | peak GPU MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['trainable']:,} | {r['ddp_bytes_per_step']:,} | {r['step_ms']:.1f} | "
                     f"{r['step_ms'] / full['step_ms']:.2f} | {r['peak_gpu_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distid.experiments.bench.gpt2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", default="1000,10000,100000", help="subspace dimensions, comma-separated")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="runs/gpt2")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: distid.experiments.bench.gpt2 needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.set_float32_matmul_precision("high")
    variants = [("full", 0), ("lora", args.lora_rank)] + [("subspace", int(d)) for d in args.d.split(",")]
    rows = []
    for v, x in variants:
        rows.append(measure(v, x, args))
        print(json.dumps(rows[-1]), flush=True)
    meta = dict(gpu=torch.cuda.get_device_name(), batch=args.batch, context=args.context, steps=args.steps,
                warmup=args.warmup, torch=torch.__version__, machine=runtime.machine())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpt2.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    md = markdown(rows, meta)
    (out / "gpt2.md").write_text(md)
    print(md + f"\nwrote {out}/gpt2.json, gpt2.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
