"""The run layer: one training run from a config — building, the step meter, checkpoints,
the watchdog, fault injection, the summary — and the run API (`distid.run.api.run`)."""
