"""bench.md from bench.json: the machine, then one table per section, then the speed and memory targets."""

from __future__ import annotations

def machine_line(r: dict) -> str:
    m = r["machine"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"Machine: {m['cpu']}, {m['cores']} cores{gpu}, torch {m['torch']}, Python {m['python']}; "
            f"in-process sections on {m['torch_threads']} torch threads, torchrun ranks on 1 each, "
            f"backend {m['backend']}. Load average (1/5/15 min) at start {r['load']['start']}, "
            f"at end {r['load']['end']}.")


def _kernels(k: dict) -> list[str]:
    c = k["copy"]
    out = ["## 1. Projection kernels\n",
           f"Copy bandwidth (dst.copy_(src), {c['bytes'] / 2**20:.0f} MiB, read + write counted): "
           f"**{c['copy_GBps']:.1f} GB/s**; read-only (src.sum()): {c['read_GBps']:.1f} GB/s.\n",
           "Each row's copy is `dst.copy_(θ₀)` of D floats, timed in the same interleaved rounds as its kernels; "
           "θ₀+P·d is formed as training forms it (Fastfood and sparse: θ₀'s add fused into the pass).\n",
           "| projection | D | d | P bytes | bytes / param | θ₀+P·d ms | Pᵀ·g ms | copy ms | θ₀+P·d ÷ copy "
           "| Pᵀ·g ÷ copy | dense GB/s (P·d / Pᵀ·g) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in k["rows"]:
        bw = f"{r['matvec_GBps']:.1f} / {r['rmatvec_GBps']:.1f}" if r["kind"] == "dense" else ""
        out.append(f"| {r['kind']} | {r['D']:,} | {r['d']:,} | {r['proj_bytes'] / 2**20:,.1f} MiB | "
                   f"{r['bytes_per_param']:,.2f} | {r['matvec_ms']:.3f} | {r['rmatvec_ms']:.3f} | {r['copy_ms']:.3f} | "
                   f"{r['matvec_over_copy']:.1f} | {r['rmatvec_over_copy']:.1f} | {bw} |")
    if k["skipped"]:
        out.append("\nLeft out (estimated memory over the " f"{k['max_gb']} GB limit): " + ", ".join(
            f"{s['kind']} D={s['D']:.0e} d={s['d']:,} ({s['need_GB']:.1f} GB)" for s in k["skipped"]) + ".")
    out.append("\nCrossover (P·d + Pᵀ·g, Fastfood against dense):\n")
    for c in k["crossover"]:
        ratios = ", ".join(f"d={d}: {v:.2f}×" for d, v in c["ratio_dense_over_fastfood"].items())
        win = (f"Fastfood faster from d = {c['fastfood_wins_from_d']:,}" if c["fastfood_wins_from_d"]
               else "dense faster at every measured d")
        below = f" (dense faster at d = {c['dense_wins_at_d']:,})" if c["dense_wins_at_d"] else ""
        out.append(f"- D = {c['D']:,}: {win}{below}; dense ÷ Fastfood time {ratios}.")
    return out


def _memory(m: dict) -> list[str]:
    if not m["rows"]:
        return [f"\n## 1b. Memory at large D\n\nLeft out: {m['skipped']}.\n"]
    r0 = m["rows"][0]
    out = ["\n## 1b. Memory at large D: one forward + backward\n",
           f"A deep MLP of D = {r0['D']:,} parameters (square Linear + ReLU layers), batch {m['batch']}, Fastfood "
           f"d = {r0['d']:,}; each case in its own process, bytes above the process's RSS after its imports. "
           "*at rest*: model and projection built; *peak*: the high-water mark over one forward + backward; "
           "*activations*: what autograd saves that is not θ.\n",
           "| case | θ₀ MiB | at rest MiB | peak MiB | activations MiB | (peak − activations) ÷ θ₀ |",
           "|---|---:|---:|---:|---:|---:|"]
    names = {"full": "full training", "subspace": "subspace, θ whole", "layerwise": "subspace, θ layer by layer"}
    for r in m["rows"]:
        out.append(f"| {names[r['case']]} | {r['theta0_bytes'] / 2**20:,.0f} | {r['at_rest'] / 2**20:,.0f} | "
                   f"{r['peak'] / 2**20:,.0f} | {r['activations'] / 2**20:,.1f} | {r['peak_over_theta0']:.2f} |")
    return out


def _steps(steps: list[dict]) -> list[str]:
    out = ["\n## 2. Training step time\n"]
    for s in steps:
        out += [f"\n{s['model']} (D = {s['D']:,}), d = {s['d']}, global batch {s['global_batch']} "
                f"({s['local_batch']} per rank), {s['world_size']} rank(s), Adam:\n",
                "| variant | trainable | step ms (median) | × full | steps timed | IQR / median |",
                "|---|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            out.append(f"| {r['variant']} | {r['trainable']:,} | {r['step_ms']:.2f} | {r['ratio_to_full']:.2f} | "
                       f"{r['samples']} | {r['spread']:.2f} |")
        for k, why in s["skipped"].items():
            out.append(f"\n{k} left out: {why}.")
    return out


def _collectives(c: dict) -> list[str]:
    out = ["\n## 3. All-reduce: hand ring (send/recv) against the backend's\n",
           "| ranks | bytes | ring ms | backend ms | ring ÷ backend | ring busbw GB/s | backend busbw GB/s |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in c["rows"]:
        out.append(f"| {r['world_size']} | {_size(r['bytes'])} | {r['ring_ms']:.3f} | {r['backend_ms']:.3f} | "
                   f"{r['ring_over_backend']:.2f} | {r['ring_busbw_GBps']:.2f} | {r['backend_busbw_GBps']:.2f} |")
    out.append("\nα–β fit, t = 2(N−1)·α + 2(N−1)/N·S·β, over every row above:\n")
    for k, f in c["fit"].items():
        out.append(f"- {k}: α = {f['alpha_us']:.1f} µs, 1/β = {f['bandwidth_GBps']:.2f} GB/s "
                   f"(largest relative error {f['max_rel_error']:.0%} over {f['points']} points)")
    return out


def _over(a: float, b: float) -> str:
    """a ÷ b for the one table that sets a measurement beside the formulas it is checked against."""
    return f"{a / b:.3f}" if b else "—"


def _interface(rows: list[dict]) -> list[str]:
    out = ["\n## 3b. Bytes on the interface against the wire figure\n",
           "Per rank, per call, float32 arrays of S bytes. *wire*: the headline figure, the ring algorithms "
           "(all-reduce 2(N−1)/N·S, all-gather and reduce-scatter (N−1)/N·S, broadcast S: the busiest rank of "
           "a pipelined chain). *gloo sends*: the mean over ranks of gloo's own algorithm (reduce-scatter is an "
           "all-reduce followed by a copy; a broadcast moves (N−1)·S in all). *measured*: the interface's byte "
           "counters (psutil) over the calls, fenced by barriers, divided by the ranks, an idle window of the "
           "same length subtracted.\n",
           "| ranks | op | S | wire B | gloo sends B | measured B | measured ÷ gloo | measured ÷ wire |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['world_size']} | {r['op']} | {_size(r['bytes'])} | {r['wire']:,.0f} | {r['gloo']:,.0f} | "
                   f"{r['measured']:,.0f} | {_over(r['measured'], r['gloo'])} | {_over(r['measured'], r['wire'])} |")
    return out


def _scaling(s: dict) -> list[str]:
    show = [8, 64, 512, 4096]
    out = ["\n## 4. Scaling projection — a MODEL, not a measurement\n",
           f"α = {s['alpha_us']:.1f} µs ({s['alpha_source']}: gloo over this machine's loopback, pessimistic "
           f"for NVLink/InfiniBand), links: " + "; ".join(v["source"] for v in s["links"].values()) +
           f". {s['gpus_per_node']} GPUs per node, float32 payloads, subspace d = {s['d']:,}, LoRA r = "
           f"{s['lora_rank']}. Per-step communication time in ms (latency + bandwidth terms); formulas in "
           f"docs/benchmarks.md.\n",
           "| model | strategy | method | trainable | array S B/step | " + " | ".join(f"{n} GPUs" for n in show) + " |",
           "|---|---|---|---:|---:|" + "---:|" * len(show)]
    key = {}
    for r in s["rows"]:
        key.setdefault((r["model"], r["strategy"], r["method"]), {})[r["gpus"]] = r
    for (model, strat, meth), by_n in key.items():
        r0 = by_n[show[0]]
        out.append(f"| {model} | {strat} | {meth} | {r0['trainable']:,.0f} | {_size(r0['bytes'])} | "
                   + " | ".join(f"{by_n[n]['comm_ms']:.3g}" for n in show) + " |")
    return out


def _targets(t: dict) -> list[str]:
    out = ["\n## Targets\n", "| target | measured | met |", "|---|---|---|"]
    for row in t:
        out.append(f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'no'} |")
    return out


def _size(b: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= f:
            return f"{b / f:.3g} {unit}"
    return f"{b:.0f} B"


def to_markdown(r: dict) -> str:
    lines = ["# distid bench\n", machine_line(r) + "\n"]
    if "kernels" in r:
        lines += _kernels(r["kernels"])
    if "memory" in r:
        lines += _memory(r["memory"])
    if "steps" in r:
        lines += _steps(r["steps"])
    if "collectives" in r:
        lines += _collectives(r["collectives"])
    if r.get("interface"):
        lines += _interface(r["interface"])
    if "scaling" in r:
        lines += _scaling(r["scaling"])
    if r.get("targets"):
        lines += _targets(r["targets"])
    return "\n".join(lines) + "\n"
