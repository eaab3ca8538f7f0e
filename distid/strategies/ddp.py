"""`dist.strategy = "ddp"`: PyTorch's DistributedDataParallel. Backward all-reduces the trainable
gradients bucket by bucket, so every rank applies the same mean gradient: 4·T bytes handed in per
step for T trainable float32 numbers (a subspace: T = d). `ddp.hook` compresses them (hooks.py).

Every bucket passes through a counting comm hook (`BucketCounter`) before PyTorch's hook; buffers a
model regenerates from its seed (θ₀, P: `model.regenerated_buffers()`) are left out of DDP's
start-up broadcast, so nothing of size D crosses the network for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from distid.config import ConfigError
from distid.parallel.ddp import wrap_ddp
from distid.strategies import hooks
from distid.strategies.base import Strategy, tensor_bytes


@dataclass
class BucketCounter:
    """Gradient bytes DDP handed to its comm hook (GradBucket.buffer()), over every step."""

    calls: int = 0
    payload: int = 0
    keep_local = False  # DISTID_FAULT mode=unsynced: this step, keep the local gradient

    def hook(self, inner=default_hooks.allreduce_hook):
        """A comm hook that books each bucket, then runs `inner` (default: plain all-reduce)."""

        def counting_hook(state, bucket):
            buf = bucket.buffer()
            self.calls += 1
            self.payload += buf.numel() * buf.element_size()
            if not self.keep_local:
                return inner(state, bucket)
            mine = buf.clone()  # a fault drill: all-reduce as usual, then keep this rank's own gradient
            self.keep_local = not bucket.is_last()
            return inner(state, bucket).then(lambda _: mine)

        return counting_hook


def ddp(model: nn.Module, device, hook: hooks.Hook | None = None):
    """(DDP over `model`, its BucketCounter), `hook` (default: plain all-reduce) behind the counter."""
    ignore = model.regenerated_buffers() if hasattr(model, "regenerated_buffers") else []
    net = wrap_ddp(model, device_ids=[device.index] if device.type == "cuda" else None, ignore=ignore)
    counter = BucketCounter()
    hook = hook or hooks.Hook()
    net.register_comm_hook(hook.state, counter.hook(hook.fn))
    if hook.state is not None:  # PowerSGD keeps state per bucket index (error feedback, warm-start P, Q)
        # DDP re-buckets once, after its first step, in the order gradients became ready; a resumed
        # process would meet the first layout again and apply the saved state to other parameters.
        # Fixing the layout now (parameter order, kept for the whole run) makes every step of every
        # process use one layout. The cost: buckets no longer follow the backward's order.
        net.reducer._push_all_rebuilt_params()
    return net, counter


class DDP(Strategy):
    """DDP with the comm hook `ddp.hook` names; one process: the model itself."""

    rebases = True  # each step's gradient is synchronised afresh

    def __init__(self, cfg, n, device):
        super().__init__(cfg, n, device)
        try:
            self.hook = hooks.choose(cfg.ddp.hook, cfg, device.type) if n > 1 else hooks.Hook()
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.own_state = self.hook.own_state

    @property
    def label(self) -> str:
        return "one process" if self.n == 1 else "DDP" + (f" + {self.hook.label}" if self.hook.label else "")

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.n == 1:
            return model
        self.payload = self.hook.payload(model)
        net, self.counter = ddp(model, self.device, self.hook)
        return net

    def warm_steps(self) -> int:
        return self.hook.plain_steps()

    def state_dict(self) -> dict:
        return self.hook.state_dict()

    def state_bytes(self) -> dict:
        """A hook's own tensors (PowerSGD: error feedback, warm-start P and Q), measured."""
        held = tensor_bytes(self.hook.state_dict())
        return {f"{self.hook.label} state": held} if held else {}

    def load_state_dict(self, state: dict) -> None:
        self.hook.load_state_dict(state)
