"""Experiments built from many runs through the run API: compare, sweep (intrinsic dimension),
frontier, convergence and bench — each with its store and report beside it."""
