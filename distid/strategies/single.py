"""`dist.strategy = "none"`: one process trains one model; nothing is synchronised."""

from __future__ import annotations

from distid.config import ConfigError
from distid.strategies.base import Strategy


class Single(Strategy):
    """One process. With several ranks it would train that many unrelated models: refused."""

    rebases = True  # nothing kept between steps

    def __init__(self, cfg, n, device):
        super().__init__(cfg, n, device)
        if n > 1:
            raise ConfigError(f"dist.strategy = 'none' with {n} ranks would train {n} unsynchronised models: "
                              f"use 'ddp', 'fsdp' or 'local_sgd', or run one process")

    @property
    def label(self) -> str:
        return "one process"
