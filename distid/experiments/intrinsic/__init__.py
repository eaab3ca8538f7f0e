"""The intrinsic dimension of a task (`python -m distid.experiments.intrinsic.sweep`): a sweep over a
grid of d (sweep.py) or a bisection on log d (bisect.py, bisect_sweep.py), its points (points.py;
sweep.json: store.py), d_int from their accuracies (dimension.py), its report (report.py); the
budget a task needs (probe.py)."""
