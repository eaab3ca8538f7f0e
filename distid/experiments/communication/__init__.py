"""Accuracy against communication (`python -m distid.experiments.communication.frontier`): bytes per
step of every way to shrink DDP's all-reduce (frontier.py, report.py), time on named links (links.py)."""
