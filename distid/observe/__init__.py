"""Observation: what a run costs and how it does — the communication ledger, memory held,
test accuracy, the progress line and TensorBoard, and the summary.json schema."""
