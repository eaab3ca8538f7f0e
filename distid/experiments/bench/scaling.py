"""A MODEL, not a measurement: per-step communication time of full, subspace and LoRA training
under DDP and FSDP on 8…4,096 GPUs, from the α–β cost model with published link bandwidths.

Nodes of g = 8 GPUs, NVLink inside a node, one InfiniBand NIC per GPU between nodes (rails).
N ≤ g: one ring over NVLink. N = m·g: hierarchical (reduce-scatter in the node, all-reduce of S/g
across the m nodes on each rail, all-gather in the node); across nodes the cheaper of a ring and
a (double binary) tree. Payloads in float32: DDP all-reduces the trainable gradients (4·T bytes);
FSDP all-gathers the parameters twice and reduce-scatters the trainable gradients; distid's
sharded subspace all-gathers θ once and all-reduces d. Formulas: docs/benchmarks.md.
"""

from __future__ import annotations

import math

# Published link figures (per GPU, per direction).
LINKS = {
    "nvlink": dict(GBps=450.0, source="NVLink 4: 900 GB/s total (both directions) per H100 SXM — NVIDIA H100 "
                                      "Tensor Core GPU datasheet; 450 GB/s each way"),
    "ib": dict(GBps=50.0, source="InfiniBand NDR: 400 Gb/s per port = 50 GB/s each way, one ConnectX-7 per GPU "
                                 "— NVIDIA DGX H100 datasheet (8× 400 Gb/s)"),
}
GPUS_PER_NODE = 8
GPU_COUNTS = [2**k for k in range(3, 13)]  # 8 … 4096

# name: (D, layers, hidden, LoRA Σ(d_in + d_out) per layer / hidden) — GPT-3 Small and XL (Brown et al.
# 2020, Table 2.1: 12×768, 24×2048; attention 4 × 2h, MLP h↔4h: 10h); LLaMA-7B (Touvron et al. 2023:
# 32×4096, SwiGLU 11008: 3 × (h + 11008)).
MODELS = {
    "125M": (125_000_000, 12, 768, 18.0),
    "1.3B": (1_300_000_000, 24, 2048, 18.0),
    "7B": (7_000_000_000, 32, 4096, 8.0 + 3 * (4096 + 11008) / 4096),
}


def trainable(method: str, model: str, d: int, r: int) -> float:
    """T: parameters with a gradient — D (full), d (subspace), r·L·Σ(d_in + d_out) (LoRA)."""
    D, layers, h, per_h = MODELS[model]
    return {"full": D, "subspace": d, "lora": r * layers * per_h * h}[method]


def _ring(steps: float, frac: float, nbytes: float, alpha: float, GBps: float) -> tuple[float, float]:
    """(latency s, bandwidth s) of `steps` ring steps moving frac·nbytes per rank."""
    return steps * alpha, frac * nbytes / (GBps * 1e9)


def all_reduce(nbytes: float, n: int, alpha: float) -> tuple[float, float]:
    g, nv, ib = GPUS_PER_NODE, LINKS["nvlink"]["GBps"], LINKS["ib"]["GBps"]
    if n <= g:
        return _ring(2 * (n - 1), 2 * (n - 1) / n, nbytes, alpha, nv)
    m = n // g
    intra = _ring(2 * (g - 1), 2 * (g - 1) / g, nbytes, alpha, nv)
    ring = _ring(2 * (m - 1), 2 * (m - 1) / m, nbytes / g, alpha, ib)
    tree = (2 * math.ceil(math.log2(m)) * alpha, 2 * nbytes / g / (ib * 1e9))
    inter = min(ring, tree, key=sum)
    return intra[0] + inter[0], intra[1] + inter[1]


def all_gather(nbytes: float, n: int, alpha: float) -> tuple[float, float]:
    """All-gather whose output is nbytes (each rank contributes nbytes/N); reduce-scatter costs the same."""
    g, nv, ib = GPUS_PER_NODE, LINKS["nvlink"]["GBps"], LINKS["ib"]["GBps"]
    if n <= g:
        return _ring(n - 1, (n - 1) / n, nbytes, alpha, nv)
    m = n // g
    inter = _ring(m - 1, (m - 1) / m, nbytes / g, alpha, ib)
    intra = _ring(g - 1, (g - 1) / g, nbytes, alpha, nv)
    return inter[0] + intra[0], inter[1] + intra[1]


def step_comm(method: str, strategy: str, model: str, n: int, d: int, r: int, alpha: float) -> dict:
    """Per-step collectives of one configuration and their modelled time (latency + bandwidth)."""
    D, T = MODELS[model][0], trainable(method, model, d, r)
    if strategy == "ddp":
        ops = [("all_reduce", 4 * T)]
    elif method == "subspace":  # distid's sharded θ₀: θ all-gathered once, d all-reduced
        ops = [("all_gather", 4 * D), ("all_reduce", 4 * d)]
    else:  # FSDP: parameters gathered for forward and backward, trainable gradients reduce-scattered
        ops = [("all_gather", 4 * (D + T if method == "lora" else D))] * 2 + [("reduce_scatter", 4 * T)]
    lat = bw = 0.0
    for op, nbytes in ops:
        a, b = (all_reduce if op == "all_reduce" else all_gather)(nbytes, n, alpha)
        lat, bw = lat + a, bw + b
    return dict(model=model, method=method, strategy=strategy, gpus=n, trainable=T,
                bytes=sum(b for _, b in ops), latency_ms=1e3 * lat, bandwidth_ms=1e3 * bw, comm_ms=1e3 * (lat + bw))


def project(alpha_s: float, alpha_source: str, d: int = 10_000, r: int = 8) -> dict:
    """Every model × strategy × method × GPU count, with the constants used."""
    rows = [step_comm(meth, strat, model, n, d, r, alpha_s)
            for model in MODELS for strat in ("ddp", "fsdp") for meth in ("full", "subspace", "lora")
            for n in GPU_COUNTS]
    return dict(alpha_us=1e6 * alpha_s, alpha_source=alpha_source, d=d, lora_rank=r, gpus_per_node=GPUS_PER_NODE, links=LINKS,
                models={k: dict(D=v[0], layers=v[1], hidden=v[2]) for k, v in MODELS.items()}, rows=rows)
