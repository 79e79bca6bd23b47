"""ZeRO stage 1 (Rajbhandari et al., SC'20): DDP gradients plus an optimizer whose state
(Adam's m and v; here fp32 master weights are the parameters themselves) is sharded over the dp
group with ``ZeroRedundancyOptimizer``; after each step the owners broadcast updated parameters."""
from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.optim import ZeroRedundancyOptimizer


def zero1_optimizer(params, dp_mesh: DeviceMesh, lr: float, eps: float, weight_decay: float,
                    betas=(0.9, 0.95)) -> ZeroRedundancyOptimizer:
    return ZeroRedundancyOptimizer(list(params), optimizer_class=torch.optim.AdamW,
                                   process_group=dp_mesh.get_group(), lr=lr, eps=eps,
                                   weight_decay=weight_decay, betas=betas)
