"""Activation recomputation (Chen et al., 2016; Korthikanti et al., 2022).

``none``: keep every activation. ``selective``: checkpoint only the attention core
(softmax(QK^T)V — the 5·a·s/h term of Korthikanti et al.'s s·b·h·(34 + 5·a·s/h)).
``full``: checkpoint each transformer block, keeping only its input.
Non-reentrant ``torch.utils.checkpoint`` so it composes with DTensor, FSDP2 and pipelining.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

MODES = ("none", "selective", "full")


def checkpointed(fn, *args):
    """Run ``fn(*args)`` saving only its inputs; recompute it during backward."""
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True)


def apply_recompute(model: torch.nn.Module, mode: str) -> None:
    """Set the recompute mode on every block (``Block``) and attention module of ``model``."""
    if mode not in MODES:
        raise ValueError(f"recompute: must be one of {MODES}, got {mode!r}")
    from executor.model import Attention, Block

    for module in model.modules():
        if isinstance(module, Block):
            module.recompute = "full" if mode == "full" else "none"
        elif isinstance(module, Attention):
            module.recompute = "selective" if mode == "selective" else "none"
