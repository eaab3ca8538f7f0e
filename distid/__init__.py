"""distid: train in a random subspace (θ = θ₀ + P·d) or with LoRA, under DDP and FSDP,
measure what it costs, and learn the collectives underneath from send/recv."""

__version__ = "0.1.0"
