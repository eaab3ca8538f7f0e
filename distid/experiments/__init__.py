"""Experiments built from many runs through the run API, one subpackage per subject: intrinsic/
(the intrinsic dimension: sweep, bisection, probe), methods/ (full, subspace and LoRA side by side:
compare, convergence), communication/ (accuracy against bytes per step, time on named links) and
bench/; plotting.py for their reports, docs.py regenerates the lesson pages' output blocks."""
