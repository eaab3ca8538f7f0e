"""torchft's DiLoCo on distid's MNIST MLP, data and seed: 2 replica groups of one process each (gloo,
CPU), a Lighthouse in this process, each replica with its own TCPStore and Manager, as torchft runs
on one machine. Writes the trained parameters (in model order, flattened) to argv[1].

    python tests/torchft_diloco.py OUT DATA_ROOT STEPS H GLOBAL_BATCH [FRAGMENTS DELAY MIX]

With FRAGMENTS > 1: Streaming DiLoCo, the parameters cut into the fragments distid's
streaming_diloco cuts (each a module holding those parameters, one outer optimizer each), and after
the last step the fragments distid synchronises once more (torchft's DiLoCo leaves them as they
are) synchronised through torchft's own fragment calls, unmixed, so that both end as one model.
"""

import sys
from datetime import timedelta

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F


def fragments(model, parts):
    """distid's fragments of `model` as modules holding its parameters (torchft syncs modules)."""
    from distid.strategies.streaming_diloco import split

    named = list(model.named_parameters())
    out = []
    for r in split([p.numel() for _, p in named], parts):
        holder = torch.nn.Module()
        for i in r:
            holder.register_parameter(named[i][0].replace(".", "_"), named[i][1])
        out.append(holder)
    return out


def worker(rank, lighthouse, args, queue):
    from torch.distributed import TCPStore
    from torchft import Manager, ProcessGroupGloo
    from torchft.local_sgd import DiLoCo

    from distid.data import ShardedLoader, load_splits
    from distid.models import build_model

    torch.set_num_threads(1)
    out, root, steps, h, batch, parts, delay, mix = args
    train, _ = load_splits("mnist", root)
    loader = iter(ShardedLoader(train, batch, rank, 2, seed=0))  # distid's data order and slices
    model = build_model("mlp", seed=0)  # distid's initial weights
    inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    pieces = fragments(model, parts) if parts > 1 else [model]
    outer = [torch.optim.SGD(m.parameters(), lr=0.7, momentum=0.9, nesterov=True) for m in pieces]
    store = TCPStore("localhost", 0, is_master=True, wait_for_workers=False)
    manager = Manager(pg=ProcessGroupGloo(timeout=timedelta(seconds=30)), min_replica_size=2,
                      load_state_dict=model.load_state_dict, state_dict=model.state_dict,
                      use_async_quorum=False, init_sync=False, replica_id=str(rank), store_addr="localhost",
                      store_port=store.port, rank=0, world_size=1, lighthouse_addr=lighthouse,
                      timeout=timedelta(seconds=30))
    with DiLoCo(manager, pieces, inner, outer, sync_every=h, backup_device=torch.device("cpu"), pin_memory=False,
                fragment_sync_delay=delay, fragment_update_alpha=mix) as diloco:
        for _ in range(steps):
            x, y = next(loader)
            inner.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            inner.step()  # DiLoCo's post-step hook synchronises (a fragment) every h (/ fragments) steps
    if parts > 1:
        from distid.strategies.streaming_diloco import final

        for p in final(steps, h, parts, delay, mix):  # distid's end: once more, unmixed
            fragment = diloco._fragments[p]
            fragment._fragment_update_alpha = 0.0
            manager.start_quorum()
            fragment.prepare_sync()
            fragment.perform_sync()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    queue.put((rank, flat.numpy()))  # by value: a tensor would go by a file descriptor that this
    # process's exit can close before the parent has taken it
    manager.shutdown()


def main(out, root, steps, h, batch, parts=1, delay=0, mix=0.0):
    from torchft._torchft import LighthouseServer

    lighthouse = LighthouseServer(bind="[::]:0", min_replicas=2)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (out, root, int(steps), int(h), int(batch), int(parts), int(delay), float(mix))
    procs = [ctx.Process(target=worker, args=(r, lighthouse.address(), args, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    lighthouse.shutdown()
    torch.save([torch.from_numpy(results[0]), torch.from_numpy(results[1])], out)


if __name__ == "__main__":
    main(*sys.argv[1:])
