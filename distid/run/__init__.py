"""The run layer: one training run from a config — building, the step meter, checkpoints,
the watchdog, fault injection, the summary. The loop itself is distid/train.py."""
