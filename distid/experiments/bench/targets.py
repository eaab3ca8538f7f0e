"""The speed and memory targets, read off one bench result, each reported as measured (none asserted):
speed — Fastfood step ≤ 1.5× a full step (MLP), dense P·d ≤ 1.5× its copy-bandwidth floor, hand
ring ≤ 2× the backend's all-reduce for 1–64 MiB on 4 ranks; scale — Fastfood state ≤ 2 bytes per
parameter, Fastfood θ₀+P·d and Pᵀ·g ≤ 10× a same-size copy at D = 10⁷, d = 1,000, sparse P·d ≤ 2× its
Pᵀ·g at D = 10⁸, Fastfood step ≤ 2× full on the wide MLP, and layerwise peak memory ≤ 1.5× θ₀ +
activations at the largest D measured."""

from __future__ import annotations

FASTFOOD_STEP, DENSE_FLOOR, RING_OVER_BACKEND = 1.5, 1.5, 2.0
WIDE_STEP, FF_BYTES, FF_OVER_COPY, SPARSE_OVER_T, LAYERWISE_PEAK = 2.0, 2.0, 10.0, 2.0, 1.5


def check(result: dict) -> list[dict]:
    out = []
    for s in result.get("steps", []):
        ff = next((r for r in s["rows"] if r["variant"] == "subspace/fastfood"), None)
        limit = {"mlp": FASTFOOD_STEP, "mlp_wide": WIDE_STEP}.get(s["model"])
        if limit and ff:
            out.append(dict(target=f"Fastfood step ≤ {limit}× full ({s['model']}, {s['world_size']} rank(s))",
                            measured=f"{ff['ratio_to_full']:.2f}×", met=ff["ratio_to_full"] <= limit))
    dense = [r for r in result.get("kernels", {}).get("rows", []) if r["kind"] == "dense"]
    largest = max(dense, key=lambda r: r["proj_bytes"], default=None)  # the P that streams from memory
    mlp = next((r for r in dense if r["D"] == 199_210), None)  # the MLP's own P
    for r in [largest] + ([mlp] if mlp is not largest else []):
        if r is not None:
            out.append(dict(target=f"dense θ₀+P·d ≤ {DENSE_FLOOR}× copy-bandwidth floor (D={r['D']:,}, d={r['d']:,})",
                            measured=f"{r['matvec_over_floor']:.2f}× (Pᵀ·g {r['rmatvec_over_floor']:.2f}×)",
                            met=r["matvec_over_floor"] <= DENSE_FLOOR))
    out += _scale(result)
    rows = [r for r in result.get("collectives", {}).get("rows", [])
            if r["world_size"] == 4 and 2**20 <= r["bytes"] <= 2**26]
    if rows:
        worst = max(r["ring_over_backend"] for r in rows)
        out.append(dict(target=f"hand ring all-reduce ≤ {RING_OVER_BACKEND}× backend, 1–64 MiB, 4 ranks",
                        measured=f"worst {worst:.2f}× over {len(rows)} sizes", met=worst <= RING_OVER_BACKEND))
    return out


def _scale(result: dict) -> list[dict]:
    """The scale targets: the kernel and memory lines."""
    out, kern = [], result.get("kernels", {}).get("rows", [])
    ff = [r for r in kern if r["kind"] == "fastfood"]
    if ff:
        worst = max(ff, key=lambda r: r["bytes_per_param"])
        out.append(dict(target=f"Fastfood state ≤ {FF_BYTES} bytes per parameter (every D, d measured)",
                        measured=f"worst {worst['bytes_per_param']:.3f} (D={worst['D']:,}, d={worst['d']:,})",
                        met=worst["bytes_per_param"] <= FF_BYTES))
    for r in kern:
        if r["kind"] == "fastfood" and r["D"] == 10**7 and r["d"] == 1000:
            out.append(dict(target=f"Fastfood θ₀+P·d and Pᵀ·g ≤ {FF_OVER_COPY}× a copy of D floats (D=10⁷, d=1,000)",
                            measured=f"{r['matvec_over_copy']:.1f}× and {r['rmatvec_over_copy']:.1f}×",
                            met=max(r["matvec_over_copy"], r["rmatvec_over_copy"]) <= FF_OVER_COPY))
        if r["kind"] == "sparse" and r["D"] == 10**8:
            ratio = r["matvec_ms"] / r["rmatvec_ms"]
            out.append(dict(target=f"sparse θ₀+P·d ≤ {SPARSE_OVER_T}× its Pᵀ·g (D=10⁸, d={r['d']:,})",
                            measured=f"{ratio:.2f}×", met=ratio <= SPARSE_OVER_T))
    for m in result.get("memory", {}).get("rows", []):
        if m["layerwise"]:
            out.append(dict(target=f"layerwise forward + backward peak ≤ {LAYERWISE_PEAK}× θ₀ + activations "
                                   f"(D={m['D']:,})",
                            measured=f"{m['peak_over_theta0']:.2f}× θ₀ + activations",
                            met=m["peak_over_theta0"] <= LAYERWISE_PEAK))
    return out
