"""Peak memory of one forward + backward at large D: subspace with θ formed whole, subspace with θ
formed layer by layer (subspace.layerwise), and full training, on a deep MLP of D parameters.

Each case runs in its own process (a fresh heap): RSS after the imports is its zero; the model and
the projection are built; the kernel's high-water mark is reset (/proc/self/clear_refs, Linux); one
forward + backward runs; the peak (VmHWM) is read back. Activations are the bytes autograd saves in
the forward that are not θ (counted by a saved-tensor hook on unique storages). Every case runs with
the allocator setting layerwise mode makes (glibc's mmap threshold fixed at 1 MiB).

    peak_over_theta0 = (peak − zero − activations) / θ₀'s bytes

θ₀ itself is 1.0 of it; the rest is the projection's state, θ's slices and ∂L/∂θ's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WIDTH, BATCH = 1581, 16  # 40 layers of 1,581² + 1,581 ≈ 10⁸ parameters


def deep_mlp(D: int) -> nn.Sequential:
    """Square Linear + ReLU layers of width WIDTH (quick: narrower) until about D parameters."""
    width = WIDTH if D >= 10**7 else 256
    layers = max(1, round(D / (width * width + width)))
    return nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())])


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure(case: str, D: int, d: int) -> dict:
    """One case in this process: 'subspace', 'layerwise' or 'full'."""
    from distid.subspace import SubspaceModel

    from distid.subspace.layerwise import return_large_blocks_to_the_system

    return_large_blocks_to_the_system()  # in every case, as layerwise mode sets it: one allocator for all three
    torch.manual_seed(0)
    zero = _status("VmRSS")
    model = deep_mlp(D)
    width = model[0].in_features
    if case != "full":
        model = SubspaceModel(model, d, "fastfood", seed=0, layerwise=case == "layerwise")
    D_ = model.D if case != "full" else sum(p.numel() for p in model.parameters())
    x, y = torch.randn(BATCH, width), torch.randint(0, width, (BATCH,))
    rest = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    saved = _count_saved(model, case, 4 * D_)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    peak = _status("VmHWM")
    activations = saved(x, y)
    return dict(case=case, layerwise=case == "layerwise", D=D_, d=d, theta0_bytes=4 * D_, zero=zero,
                at_rest=rest - zero, peak=peak - zero, activations=activations,
                peak_over_theta0=(peak - zero - activations) / (4 * D_))


def _count_saved(model: nn.Module, case: str, theta_bytes: int):
    """A function that reruns the forward with a counting hook: bytes of the saved tensors that are not θ."""
    def count(x, y) -> int:
        seen: dict[int, int] = {}

        def pack(t):
            key = t.untyped_storage().data_ptr()
            seen[key] = t.untyped_storage().nbytes()
            return t

        if case == "layerwise":
            lw, inner = model.layerwise, model.layerwise._pack
            lw._pack = lambda t: (lambda r: r if isinstance(r, tuple) else pack(r))(inner(t))
            try:
                F.cross_entropy(model(x), y)
            finally:
                lw._pack = inner
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                F.cross_entropy(model(x), y)
            params = {p.untyped_storage().data_ptr() for p in model.parameters()}
            seen = {k: v for k, v in seen.items() if k not in params and v < theta_bytes}  # θ: one storage of D floats
        return sum(seen.values())
    return count


def bench_memory(quick: bool, d: int = 1000) -> dict:
    """Every case in its own child process; D = 10⁸ (quick: 10⁶)."""
    if not Path("/proc/self/clear_refs").exists():
        return dict(rows=[], skipped="needs Linux's /proc/self/clear_refs to reset the high-water mark")
    D = 10**6 if quick else 10**8
    rows = []
    for case in ("full", "subspace", "layerwise"):
        out = subprocess.run([sys.executable, "-m", "distid.experiments.bench.memory", case, str(D), str(d)],
                             capture_output=True, text=True, timeout=600)
        if out.returncode:  # e.g. a container that refuses writes to clear_refs: the other sections still count
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            return dict(rows=[], skipped=f"the {case} case failed: {last}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return dict(rows=rows, batch=BATCH)


if __name__ == "__main__":  # `-m` imports distid (and its allocator setting) before torch
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
