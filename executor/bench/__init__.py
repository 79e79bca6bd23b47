"""Microbenchmarks behind ``clusterplan calibrate`` (torch side).

``python -m torch.distributed.run --standalone --nproc-per-node N -m executor.bench --out R.json``
runs, with one thread per rank:

* ``compute``: GEMM throughput over transformer shapes (fp32, bf16), memory-bound op throughput,
  per-op framework overhead, memory baselines (rank 0 alone; the others wait in a barrier, which
  costs no CPU on gloo);
* ``collectives``: all_reduce, all_gather, reduce_scatter and send_recv on gloo for each group size;
* ``contention``: the same GEMM on 1, 2, 4, ... concurrent ranks (how ranks share the cores);
* ``framework`` (on request; ``clusterplan calibrate`` runs it on 2 ranks): the executor's own
  building blocks (per-op cost under autograd, the element-wise work of its code per kind,
  :mod:`executor.bench.elementwise`, TP / DDP / ZeRO-1 / FSDP2 reference steps, training-step
  memory), :mod:`executor.bench.framework`.

Rank 0 writes one JSON document (schema :data:`SCHEMA`, described in ``executor/bench/README``
of :mod:`planner.calibrate`) that the torch-free planner turns into a hardware profile.
"""
SCHEMA = "clusterplan-bench/1"
