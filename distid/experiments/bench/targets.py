"""Issue 7's speed targets, read off one bench result: Fastfood step ≤ 1.5× a full step (MLP, one
process), dense P·d ≤ 1.5× its copy-bandwidth floor (the MLP's P), hand ring ≤ 2× the backend's
all-reduce for 1–64 MiB on 4 ranks. Each is reported as measured; none is asserted."""

from __future__ import annotations

FASTFOOD_STEP, DENSE_FLOOR, RING_OVER_BACKEND = 1.5, 1.5, 2.0


def check(result: dict) -> list[dict]:
    out = []
    for s in result.get("steps", []):
        ff = next((r for r in s["rows"] if r["variant"] == "subspace/fastfood"), None)
        if s["model"] == "mlp" and ff:
            out.append(dict(target=f"Fastfood step ≤ {FASTFOOD_STEP}× full (MLP, {s['world_size']} rank(s))",
                            measured=f"{ff['ratio_to_full']:.2f}×", met=ff["ratio_to_full"] <= FASTFOOD_STEP))
    dense = [r for r in result.get("kernels", {}).get("rows", []) if r["kind"] == "dense"]
    largest = max(dense, key=lambda r: r["proj_bytes"], default=None)  # the P that streams from memory
    mlp = next((r for r in dense if r["D"] == 199_210), None)  # the MLP's own P
    for r in [largest] + ([mlp] if mlp is not largest else []):
        if r is not None:
            out.append(dict(target=f"dense θ₀+P·d ≤ {DENSE_FLOOR}× copy-bandwidth floor (D={r['D']:,}, d={r['d']:,})",
                            measured=f"{r['matvec_over_floor']:.2f}× (Pᵀ·g {r['rmatvec_over_floor']:.2f}×)",
                            met=r["matvec_over_floor"] <= DENSE_FLOOR))
    rows = [r for r in result.get("collectives", {}).get("rows", [])
            if r["world_size"] == 4 and 2**20 <= r["bytes"] <= 2**26]
    if rows:
        worst = max(r["ring_over_backend"] for r in rows)
        out.append(dict(target=f"hand ring all-reduce ≤ {RING_OVER_BACKEND}× backend, 1–64 MiB, 4 ranks",
                        measured=f"worst {worst:.2f}× over {len(rows)} sizes", met=worst <= RING_OVER_BACKEND))
    return out
