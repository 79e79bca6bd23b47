"""Training batches: synthetic tokens from a fixed seed, or byte-level tokens of a local text file.

``global_batch(step)`` returns the same (global_batch, seq_len + 1) token tensor on every rank for
a given step, so every parallel layout and the single-process reference see the same data; each
data-parallel rank then takes its contiguous rows (:func:`local_rows`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from planner.errors import InputError


class Batches:
    """Deterministic token batches.

    seed: base seed; step k uses seed + k.
    text_path: optional UTF-8/bytes file; tokens are its bytes (vocab 256), windows start at
        positions drawn from the step's generator.
    """

    def __init__(self, vocab_size: int, global_batch: int, seq_len: int, seed: int = 1234,
                 text_path: str | None = None):
        self.vocab_size = vocab_size
        self.global_batch_size = global_batch
        self.seq_len = seq_len
        self.seed = seed
        self.text = None
        if text_path is not None:
            path = Path(text_path)
            if not path.is_file():
                raise InputError("data", f"{path} is not a file")
            if vocab_size < 256:
                raise InputError("data", f"byte-level text needs vocab_size >= 256, the model has {vocab_size}")
            data = path.read_bytes()
            if len(data) < seq_len + 2:
                raise InputError("data", f"{path} has {len(data)} bytes, need more than seq_len+1={seq_len + 1}")
            self.text = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()

    def global_batch(self, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + step)
        shape = (self.global_batch_size, self.seq_len + 1)
        if self.text is None:
            return torch.randint(0, self.vocab_size, shape, generator=gen)
        starts = torch.randint(0, len(self.text) - self.seq_len - 1, (self.global_batch_size,), generator=gen)
        return torch.stack([self.text[s:s + self.seq_len + 1] for s in starts.tolist()])


def local_rows(batch: torch.Tensor, dp_rank: int, dp: int) -> torch.Tensor:
    """Rows of the global batch that data-parallel rank ``dp_rank`` of ``dp`` trains on."""
    rows = batch.shape[0] // dp
    return batch[dp_rank * rows:(dp_rank + 1) * rows]


def split_inputs(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, next-token targets) of a (b, s+1) token tensor."""
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
