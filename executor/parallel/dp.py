"""Data parallelism with DDP: gradients all-reduced (averaged) over the dp group, bucketed and
overlapped with backward (Li et al., VLDB 2020)."""
from __future__ import annotations

import warnings

import torch

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel


def apply_ddp(module: nn.Module, dp_mesh: DeviceMesh, device) -> DistributedDataParallel:
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # broadcast_buffers is deprecated but its replacement still syncs at init
        warnings.simplefilter("ignore", FutureWarning)
        # buffers (RoPE tables) are identical on every rank: no per-forward broadcast;
        # gradients are views into the all-reduce buckets (no second copy of the gradients)
        return DistributedDataParallel(module, device_ids=ids, process_group=dp_mesh.get_group(),
                                       broadcast_buffers=False, gradient_as_bucket_view=True)


def allreduce_grads(params, dp_mesh: DeviceMesh) -> None:
    """Average gradients over the dp group in one flat all-reduce, after backward (used with
    pipelining: DDP's reducer cannot follow a schedule's per-micro-batch backward calls in torch
    2.13 — "rebuilt parameter indices size is not same" — so there the all-reduce is not
    overlapped with backward, as in Megatron-LM without ``--overlap-grad-reduce``)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat, group=dp_mesh.get_group())
    flat.div_(dp_mesh.size())
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
