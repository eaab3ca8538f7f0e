"""Full training, the subspace and LoRA side by side at one budget: per step under DDP and FSDP
(`python -m distid.experiments.methods.compare`), accuracy against steps and seconds (convergence.py)."""
