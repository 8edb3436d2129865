"""
Data parallel over several processes with torchrun, the nanoGPT way (PyTorch's own DDP, nothing home-made):

    torchrun --standalone --nproc_per_node=N train.py ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `setup` starts the process group (nccl on GPUs, gloo on CPU)
and gives each rank its GPU. Without torchrun nothing here does anything: one process, rank 0 of 1, exactly
today's run. What is split, per stage:
  sft     each rank runs its share of every batch's rows; DDP averages the gradients
  rl      each rank samples, scores and backprops its share of the batch's groups (and of a filter round's
          problems, gathered so that every rank builds the same data set); the reference model and the
          log-prob passes stay local; DDP averages the gradients
  vm      each rank takes its share of every batch's tasks; DDP averages the gradients
  mcts    batches of searches, round-robin over the ranks; rank 0 merges them in order
  decode  rows (the greedy row, each seed's pool, each search), round-robin over the ranks; rank 0 merges
Rank 0 alone evaluates, writes checkpoints, records, results.json and logs; the others wait at a barrier.
"""
import os

import torch
import torch.distributed as dist


def setup(device):
    """Start the process group when torchrun started us; returns the device this rank uses."""
    if 'RANK' not in os.environ:
        return device
    gpu = device.startswith('cuda')
    dist.init_process_group(backend='nccl' if gpu else 'gloo')
    if gpu:
        device = f'cuda:{os.environ["LOCAL_RANK"]}'
        torch.cuda.set_device(device)
    return device


def cleanup():
    if dist.is_initialized():
        dist.barrier()  # no rank tears down gloo while another still talks to it (that aborts the other)
        dist.destroy_process_group()


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def local_world():
    """Processes on this machine (they share its cores)."""
    return int(os.environ.get('LOCAL_WORLD_SIZE', world()))


def is_main():
    return rank() == 0


def shard(xs):
    """This rank's share of a list: every world()-th item from rank()."""
    return xs[rank()::world()]


def gather(obj):
    """The list of every rank's obj, in rank order, on every rank ([obj] in one process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def unshard(parts):
    """Undo shard(): the per-rank lists of gather(shard(xs)) back in xs's order."""
    out = [None] * sum(map(len, parts))
    for r, part in enumerate(parts):
        out[r::len(parts)] = part
    return out


def all_sum(x):
    """A number summed over the ranks."""
    if not dist.is_initialized():
        return x
    t = torch.tensor(float(x), dtype=torch.float64)
    dist.all_reduce(t)
    return t.item()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def wrap(module, device):
    """DDP around module (gradients all-reduced, averaged over ranks, in backward); the module itself in one
    process. Every forward of the wrapped module must go through the wrapper."""
    if not dist.is_initialized():
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device] if device.startswith('cuda') else None)


def no_sync(wrapped, last):
    """Skip DDP's all-reduce for all but the `last` micro-batch of an optimizer step (the gradients accumulate
    locally and are reduced once)."""
    if last or not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return torch.enable_grad()
    return wrapped.no_sync()
