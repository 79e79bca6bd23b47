"""One module per parallelism: dp (DDP), zero (ZeRO-1), fsdp (FSDP2 for ZeRO-2/3), tp (DTensor
tensor + sequence parallel), pp (torch.distributed.pipelining stages and schedules)."""
