"""ZeRO-2/3 with FSDP2 ``fully_shard`` over the dp mesh dimension (Zhao et al., VLDB 2023).

Parameters, gradients and optimizer state are sharded per block (one all-gather before each
block's forward and backward, one reduce-scatter of its gradients). ``zero2`` keeps the
parameters unsharded between forward and backward (``reshard_after_forward=False``: no second
all-gather, more memory); ``zero3``/``fsdp`` reshard after forward. With TP, the parameters are
already DTensors on the tp dim and FSDP2 adds the dp dim (2-D, torchtitan style); this is also
what the executor uses for dp when tp > 1 and the plan says ``none``/``zero1`` (DDP around
DTensor fails in torch 2.13), which then shards gradients and optimizer state as ZeRO-2 does.
"""
from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from executor.model import Transformer


def apply_fsdp(model: Transformer, dp_mesh: DeviceMesh, reshard_after_forward: bool) -> Transformer:
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    if not model.tied:
        if model.embed is not None:
            fully_shard(model.embed, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    return model
