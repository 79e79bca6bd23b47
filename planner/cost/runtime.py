"""What the training framework does, as far as the cost model needs it: the one object that
names the stack being modelled.

These are structural facts of a framework version (which kernels it runs, what it overlaps),
not fitted numbers. The default is a current stack (flash attention, DP gradient reduction
overlapped with backward, FSDP/ZeRO-3 prefetch). Named presets describe the frameworks of the
published runs in ``benchmarks/published_runs.csv`` (``clusterplan validate`` picks one from a
row's ``framework`` column) and this project's own executor (``executor``), whose measured
costs come from a profile that ``clusterplan calibrate`` wrote (its ``framework:`` section).
:func:`bind_runtime` is where a runtime meets a cluster: every pricing entry point calls it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from planner.cost.precision import grad_bytes_per_param
from planner.errors import InputError, require
from planner.hardware import ClusterSpec, NodeSpec

ATTENTION_KINDS = ("flash", "unfused")
SELECTIVE_RECOMPUTE = ("attention_core", "every_second_mm")
GATHER_GRANULARITY = ("per_layer", "per_tensor")


@dataclass(frozen=True)
class Runtime:
    """Framework behaviour.

    name: the preset's name (what a prediction reports it was made for).
    executor: this project's executor (``executor/``): its own structure (eager element-wise
        ops, one all-reduce per column-parallel linear, FSDP2 units, ...: :mod:`planner.cost.framework`)
        at the costs measured into the profile's ``framework:`` section; otherwise a fused
        production stack priced from the device's rates alone.
    attention: ``flash`` (FlashAttention, Dao et al. 2022: fused, no s x s tensor in memory,
        backward recomputes the scores: 2.5x the forward matmul work) or ``unfused``
        (Megatron-LM 2021: QK^T and AV batched GEMMs with s x s scores written to memory, fused
        scale-mask-softmax, attention dropout as separate kernels).
    attention_kernel: with ``flash`` attention, the fused kernel the stack calls, priced at its
        measured rate where the profile has it (:attr:`planner.hardware.DeviceSpec.
        attention_kernels`): ``flash2`` (FlashAttention-2: PyTorch SDPA's flash backend,
        flash-attn 2), ``cudnn`` (Transformer Engine's fused attention, cuDNN on Hopper), ``flash3``.
    overlap_grad_reduce: DP gradient reduction overlapped with the backward pass (PyTorch DDP
        buckets, Megatron-Core ``--overlap-grad-reduce``); only the part longer than one
        micro-batch's backward on the stage is exposed. Otherwise it runs after backward.
    overlap_param_gather: ZeRO-1/2 (distributed optimizer) parameter all-gather overlapped with
        the next forward (Megatron-Core ``--overlap-param-gather``); otherwise exposed.
    tp_comm_overlap: with sequence parallel, each tensor-parallel all-gather / reduce-scatter is
        split and pipelined with the projection GEMM that consumes or produces it (Transformer
        Engine userbuffers, Megatron-Core ``--tp-comm-overlap``, which asserts
        ``--sequence-parallel``): the forward's collectives run beside the block's forward GEMMs,
        the backward's beside its dgrad and wgrad GEMMs; only the excess and the SMs they hold
        show (:func:`planner.cost.comm.overlapped_exposed_s`). Otherwise TP communication is
        exposed.
    pipeline_grad_all_reduce: with pipeline parallelism, ZeRO-1 gradients are all-reduced whole
        (not reduce-scattered) after the last micro-batch, then each rank steps its partition and
        all-gathers the weights (DeepSpeed ``PipelineEngine._exec_reduce_grads`` ->
        ``_bf16_reduce_grads``: ``buffered_allreduce_fallback`` over the BF16 optimizer's FP32
        gradients).
    shard_prefetch: ZeRO-3/FSDP parameter all-gathers and gradient reduce-scatters run on a side
        stream overlapped with the neighbouring layer's compute (FSDP forward/backward prefetch,
        DeepSpeed ``overlap_comm``); only the excess over compute is exposed (per block for
        ``per_layer``; with ``per_tensor``, module by module as DeepSpeed's 2021 coordinator
        does, see the prefetch fields below).
    gather_granularity: ZeRO-3/FSDP collectives per layer: one flat parameter per block
        (FSDP ``per_layer``) or one per parameter tensor (DeepSpeed ZeRO-3 ``per_tensor``;
        each pays the ring latency).
    shard_overlap_fraction: without ``shard_prefetch``, the fraction of the shorter of ZeRO-3
        communication and compute that still overlaps (DeepSpeed ``overlap_comm`` runs the
        collectives on a side stream, but its 2021 ``_allgather_param`` calls
        ``torch.cuda.synchronize()`` before each gather, so only part of it hides).
    multi_rail: a group spanning nodes splits its inter-node traffic over the node's NICs
        (NCCL's multi-rail rings: each NIC carries 1/k of the data). False: every
        rank's full share crosses its own NIC (a flat ring in rank order, as DeepSpeed-2021
        ZeRO-3's per-parameter list all-gathers over the whole data-parallel group run).
    list_collective_copies: the ZeRO-3 collectives go through torch.distributed's list-based
        all_gather / reduce_scatter (DeepSpeed 2021 ``_allgather_param``), for which
        ProcessGroupNCCL copies each of the n per-rank tensors in its own kernel: n extra
        kernel launches (``device.kernel_overhead_s`` each) per collective.
    param_persistence_threshold: with per-tensor gathers, parameter tensors of at most this many
        elements stay resident and are not gathered (DeepSpeed
        ``stage3_param_persistence_threshold``, default 1e5); 0 gathers every tensor.
    prefetch_bucket_numel, max_live_parameters, max_reuse_distance: with ``per_tensor`` gathers
        and ``shard_prefetch``, the DeepSpeed-2021 stage-3 parameter coordinator is simulated
        module by module (:func:`planner.cost.step._per_tensor_prefetch_exposed`): each prefetch
        gathers the next not-gathered tensors of the trace up to ``prefetch_bucket_numel``
        elements (``stage3_prefetch_bucket_size``, default 5e7; at least one tensor), only
        while fewer than ``max_live_parameters`` elements are gathered
        (``stage3_max_live_parameters``; 0 = no limit), and a module's parameters stay gathered
        when it runs again within ``max_reuse_distance`` elements of trace
        (``stage3_max_reuse_distance``, default 1e9).
    recompute_gathers_again: ZeRO-3 with full recomputation gathers the parameters once more
        for the recomputed forward (DeepSpeed's module hooks fire again; FSDP's backward
        pre-hook gathers once for recompute + backward).
    selective_recompute: what ``--recompute selective`` recomputes in this stack:
        ``attention_core`` (Megatron-LM / Megatron-Core, Korthikanti et al. 2022 Sec. 5: the
        attention core only) or ``every_second_mm`` (torchtitan's selective AC, option ``op``:
        torchtitan/parallelisms/parallelize_llama.py ``_save_list`` at 9dec370, 2024-12: the
        outputs of the matmuls and of the SDPA kernel are saved except every second ``aten.mm``
        of a block in forward order, and every element-wise op is recomputed;
        :func:`planner.cost.compute.op_sac_recomputed_gemms`).
    fp32_cross_entropy: the loss is ``F.cross_entropy`` on an fp32 copy of the logits (torchtitan
        train.py ``loss_fn`` at 9dec370), holding what this project's executor's loss holds
        (:func:`planner.cost.memory.logits_bytes_per_token`); False: Megatron's fused
        vocab-parallel cross entropy (fp32 logits and their gradient in the compute dtype).
    eager_elementwise: the model's element-wise ops run as PyTorch eager kernels, one per op of
        its Python code (torchtitan without ``--training.compile``, its default at 9dec370:
        :mod:`planner.cost.eager_ops`); otherwise fused as torch.compile or hand-written kernels
        fuse them.
    fsdp_unsharded_with_pp: with pipeline parallelism an FSDP unit keeps its parameters unsharded
        through the step (torchtitan: ``reshard_after_forward=False`` when pp is enabled,
        parallelize_llama.py at 9dec370) and the pipeline keeps its gradients unsharded until the
        last micro-batch (torch.distributed.pipelining's ``backward_maybe_with_nosync``): ZeRO-1's
        state (bf16 weights and gradients whole, fp32 master and Adam state sharded) and traffic
        (one gather and one reduce-scatter per step). :meth:`priced_sharding`. Accumulated over
        micro-batches those whole gradients are held in FSDP2's reduce dtype
        (:meth:`accumulated_grad_bytes`).
    main_grad_bytes: bytes per parameter of the gradient buffer a bf16 (or FP8) run accumulates
        over the rank's parameters and reduces over dp (:meth:`grad_bytes`): 4 where it is fp32
        (Megatron-LM: ``--bf16`` forces ``accumulate_allreduce_grads_in_fp32``, the DDP
        ``main_grad`` buffer, arguments.py; NeMo 2 and Megatron-Bridge's ``bf16_mixed``:
        ``grad_reduce_in_fp32=True``; DeepSpeed's ``BF16_Optimizer`` ``fp32_groups_gradients``),
        2 where it is bf16 (NeMo 1 configs: Apex ``distributed_fused_adam`` or
        ``mcore_distributed_optim`` with ``grad_sync_dtype: bf16``). None: the precision's own
        (:func:`planner.cost.precision.grad_bytes_per_param` reduced, 2 bytes held).
    shard_grads_reduced_fp32: ZeRO-3 / FSDP reduce-scatters a half-precision run's gradients in
        fp32, twice the bytes of the gather (torchtitan: FSDP2's ``MixedPrecisionPolicy``
        ``reduce_dtype`` from ``training.mixed_precision_reduce``, whose only value is
        "float32": torchtitan/config/configs.py); otherwise in the weights' dtype.
    shardings / pipeline_shardings: the data-parallel shardings the framework runs, and those it
        runs together with pipeline parallelism; ``schedules``: its pipeline schedules;
        ``context_parallel`` / ``expert_parallel``: whether it has context / expert parallelism.
        A plan outside them is one the framework cannot run (:meth:`refusal`); the search does
        not propose it.
    """

    name: str = "default"
    executor: bool = False
    attention: str = "flash"
    attention_kernel: str = "flash2"
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True
    tp_comm_overlap: bool = False
    pipeline_grad_all_reduce: bool = False
    shard_prefetch: bool = True
    gather_granularity: str = "per_layer"
    recompute_gathers_again: bool = False
    shard_overlap_fraction: float = 0.0
    multi_rail: bool = True
    list_collective_copies: bool = False
    param_persistence_threshold: int = 0
    prefetch_bucket_numel: int = 50_000_000
    max_live_parameters: int = 0
    max_reuse_distance: int = 1_000_000_000
    selective_recompute: str = "attention_core"
    fp32_cross_entropy: bool = False
    eager_elementwise: bool = False
    fsdp_unsharded_with_pp: bool = False
    main_grad_bytes: float | None = None
    shard_grads_reduced_fp32: bool = False
    shardings: tuple[str, ...] = ("none", "zero1", "zero2", "zero3", "fsdp")
    pipeline_shardings: tuple[str, ...] = ("none", "zero1", "zero2", "zero3", "fsdp")
    schedules: tuple[str, ...] = ("gpipe", "1f1b", "interleaved", "zb")
    context_parallel: bool = True
    expert_parallel: bool = True

    def priced_sharding(self, sharding: str, pp: int) -> str:
        """The sharding as this stack runs it (:attr:`fsdp_unsharded_with_pp`)."""
        if self.fsdp_unsharded_with_pp and pp > 1 and sharding in ("zero3", "fsdp"):
            return "zero1"
        return sharding

    def accumulated_grad_bytes(self, parallel) -> float | None:
        """Bytes per parameter of the whole gradients an FSDP unit accumulates over the
        micro-batches of a pipelined step (:attr:`fsdp_unsharded_with_pp`; ``parallel`` already
        priced, so its FSDP reads as zero1): FSDP2 keeps them in its reduce dtype between
        micro-batches (``FSDPParam.to_accumulated_grad_if_needed`` in
        torch/distributed/fsdp/_fully_shard/_fsdp_param.py), fp32 for a half-precision run
        (torchtitan's ``mixed_precision_reduce`` default); the runtime's gradient buffer
        (:attr:`main_grad_bytes`). None: the precision's own."""
        if (self.fsdp_unsharded_with_pp and parallel.pp > 1 and parallel.sharding == "zero1"
                and parallel.num_micro_batches > 1 and parallel.precision in ("bf16", "fp16", "fp8")):
            return 4.0
        return self._grad_buffer_bytes(parallel.precision)

    def grad_bytes(self, precision: str) -> float:
        """Bytes per gradient element reduced over dp: the runtime's gradient buffer for a bf16
        or FP8 run (:attr:`main_grad_bytes`), else the precision's own."""
        own = self._grad_buffer_bytes(precision)
        return grad_bytes_per_param(precision) if own is None else own

    def _grad_buffer_bytes(self, precision: str) -> float | None:
        """:attr:`main_grad_bytes` where it applies (a bf16 or FP8 run), else None."""
        return self.main_grad_bytes if precision in ("bf16", "fp8") else None

    def refusal(self, parallel) -> str | None:
        """Why the framework cannot run ``parallel`` (a :class:`planner.plan.ParallelConfig`),
        or None."""
        return self.refusal_of(parallel.sharding, parallel.pp, parallel.dp, parallel.schedule, parallel.cp,
                               parallel.ep)

    def refusal_of(self, sharding: str, pp: int, dp: int, schedule: str, cp: int, ep: int = 1) -> str | None:
        """:meth:`refusal` of a plan with these axes; ``fsdp`` and ``zero3`` are one sharding here."""
        allowed = {"zero3" if x == "fsdp" else x for x in (self.pipeline_shardings if pp > 1 else self.shardings)}
        if dp > 1 and ("zero3" if sharding == "fsdp" else sharding) not in allowed:
            if pp > 1 and not allowed:
                return f"the {self.name} runtime has no pipeline parallelism"
            with_pp = " with pipeline parallelism" if pp > 1 else ""
            return f"the {self.name} runtime does not run {sharding}{with_pp} (it runs: {', '.join(sorted(allowed))})"
        if pp > 1 and schedule not in self.schedules:
            if not self.schedules:
                return f"the {self.name} runtime has no pipeline parallelism"
            return f"the {self.name} runtime has no {schedule} schedule (it has: {', '.join(self.schedules)})"
        if cp > 1 and not self.context_parallel:
            return f"the {self.name} runtime has no context parallelism"
        if ep > 1 and not self.expert_parallel:
            return f"the {self.name} runtime has no expert parallelism"
        return None

    def __post_init__(self) -> None:
        require(0.0 <= self.shard_overlap_fraction <= 1.0, "runtime.shard_overlap_fraction",
                "must be in [0, 1]")
        require(self.attention in ATTENTION_KINDS, "runtime.attention",
                f"must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        require(self.prefetch_bucket_numel >= 0 and self.max_live_parameters >= 0
                and self.max_reuse_distance >= 0, "runtime.prefetch_bucket_numel",
                "prefetch bucket, live-parameter limit and reuse distance must be >= 0")
        require(self.gather_granularity in GATHER_GRANULARITY, "runtime.gather_granularity",
                f"must be one of {GATHER_GRANULARITY}")
        require(self.selective_recompute in SELECTIVE_RECOMPUTE, "runtime.selective_recompute",
                f"must be one of {SELECTIVE_RECOMPUTE}")

    def to_dict(self) -> dict:
        return {"name": self.name, "executor": self.executor, "attention": self.attention,
                "attention_kernel": self.attention_kernel, "overlap_grad_reduce": self.overlap_grad_reduce,
                "overlap_param_gather": self.overlap_param_gather,
                "tp_comm_overlap": self.tp_comm_overlap,
                "pipeline_grad_all_reduce": self.pipeline_grad_all_reduce,
                "shard_prefetch": self.shard_prefetch,
                "gather_granularity": self.gather_granularity,
                "recompute_gathers_again": self.recompute_gathers_again,
                "shard_overlap_fraction": self.shard_overlap_fraction,
                "multi_rail": self.multi_rail,
                "list_collective_copies": self.list_collective_copies,
                "param_persistence_threshold": self.param_persistence_threshold,
                "prefetch_bucket_numel": self.prefetch_bucket_numel,
                "max_live_parameters": self.max_live_parameters,
                "max_reuse_distance": self.max_reuse_distance,
                "selective_recompute": self.selective_recompute,
                "fp32_cross_entropy": self.fp32_cross_entropy,
                "fsdp_unsharded_with_pp": self.fsdp_unsharded_with_pp,
                "shardings": list(self.shardings), "pipeline_shardings": list(self.pipeline_shardings),
                "schedules": list(self.schedules), "context_parallel": self.context_parallel,
                "expert_parallel": self.expert_parallel}


DEFAULT_RUNTIME = Runtime()
EXECUTOR_RUNTIME = Runtime(name="executor", executor=True)

_MEGATRON_RULES = dict(shardings=("none", "zero1"), pipeline_shardings=("none", "zero1"),
                       schedules=("1f1b", "interleaved"))
# DeepSpeed: any ZeRO stage without pipelining; its PipelineEngine runs 1F1B (TrainSchedule) and
# asserts "ZeRO-2 and ZeRO-3 are incompatible with pipeline parallelism"; no context parallelism.
_DEEPSPEED_RULES = dict(pipeline_shardings=("none", "zero1"), schedules=("1f1b",), context_parallel=False,
                        expert_parallel=False)

_TORCHTITAN = Runtime(name="torchtitan", attention="flash", shard_prefetch=True, gather_granularity="per_layer",
                      shardings=("none", "zero2", "zero3", "fsdp"), pipeline_shardings=("none", "zero2", "zero3", "fsdp"),
                      selective_recompute="every_second_mm", fp32_cross_entropy=True, fsdp_unsharded_with_pp=True,
                      shard_grads_reduced_fp32=True)

RUNTIME_PRESETS: dict[str, Runtime] = {
    # current PyTorch / Megatron-Core / torchtitan stacks
    "default": DEFAULT_RUNTIME,
    # Megatron-LM 2021-2022 (Narayanan et al. SC'21; Korthikanti et al. 2022): no flash attention
    # (released May 2022), fused scale-mask-softmax; DDP all-reduce after the backward pass.
    # Megatron-LM's schedules are 1F1B and interleaved 1F1B (schedules.py), its data parallelism
    # DDP or, from 2022, the distributed optimizer (ZeRO-1); no context or expert parallelism
    # before Megatron-Core.
    "megatron-lm-2021": Runtime(name="megatron-lm-2021", attention="unfused", overlap_grad_reduce=False,
                                overlap_param_gather=False, main_grad_bytes=4.0, **_MEGATRON_RULES,
                                context_parallel=False, expert_parallel=False),
    # Megatron-Core as NVIDIA publishes it (r0.8+, NeMo / Megatron-Bridge): TE flash attention,
    # --overlap-grad-reduce --overlap-param-gather and --tp-comm-overlap (Megatron-LM README,
    # "Performance": "We perform fine-grained overlapping of data-parallel (--overlap-grad-reduce
    # --overlap-param-gather), tensor-parallel (--tp-comm-overlap) and pipeline-parallel
    # communication").
    # Attention: TE's DotProductAttention, which on Hopper picks cuDNN's fused kernel (NVTE_FUSED_ATTN).
    "megatron-core": Runtime(name="megatron-core", attention="flash", attention_kernel="cudnn", overlap_grad_reduce=True,
                             overlap_param_gather=True, tp_comm_overlap=True, main_grad_bytes=4.0,
                             **_MEGATRON_RULES),
    # DeepSpeed ZeRO-3 inside Megatron (2021, SC'21 Table 2): per-parameter gathers issued by
    # module hooks (DeepSpeed v0.3.13-v0.5 stage3.py): each sub-module's hook waits for its
    # tensor (torch.cuda.synchronize) and prefetches the next one, so compute overlaps one
    # tensor's gather at a time; defaults stage3_prefetch_bucket_size 5e7,
    # stage3_max_reuse_distance 1e9, stage3_param_persistence_threshold 1e5. Megatron's unfused
    # attention, gathers repeated for recomputation. stage3_max_live_parameters is not applied
    # (0): its 1e9 default is below one 530B MLP weight (1.68e9 elements) and would leave 3 of 4
    # gathers per block unhidden, which contradicts the published flat step time from 1120 to
    # 2240 GPUs (SC'21 Table 2: 98 -> 48 TFLOP/s at twice the GPUs) -- so those runs did not
    # run with that limit binding.
    "deepspeed-zero3-2021": Runtime(name="deepspeed-zero3-2021", attention="unfused", overlap_grad_reduce=False,
                                    overlap_param_gather=False, shard_prefetch=True,
                                    gather_granularity="per_tensor", recompute_gathers_again=True,
                                    param_persistence_threshold=100_000, multi_rail=False,
                                    prefetch_bucket_numel=50_000_000, max_live_parameters=0,
                                    max_reuse_distance=1_000_000_000, **_DEEPSPEED_RULES),
    # Megatron-DeepSpeed (BLOOM tr11, 2022): Megatron fused softmax (no flash), DeepSpeed pipeline
    # engine all-reduces the FP32 gradients after the last micro-batch, ZeRO-1 BF16 optimizer.
    "megatron-deepspeed": Runtime(name="megatron-deepspeed", attention="unfused", overlap_grad_reduce=False,
                                  overlap_param_gather=False, pipeline_grad_all_reduce=True,
                                  main_grad_bytes=4.0, **_DEEPSPEED_RULES),
    # MosaicML llm-foundry / Composer with PyTorch FSDP (2023): triton/flash attention, FSDP
    # prefetch, one flat parameter per block.
    # Composer's FSDP: NO_SHARD, SHARD_GRAD_OP (ZeRO-2), FULL_SHARD; no pipeline or context
    # parallelism (llm-foundry's configs).
    "composer-fsdp": Runtime(name="composer-fsdp", attention="flash", shard_prefetch=True, gather_granularity="per_layer",
                             shardings=("none", "zero2", "zero3", "fsdp"), pipeline_shardings=(),
                             schedules=(), context_parallel=False, expert_parallel=False),
    # torchtitan (2024-2025): FSDP2 fully_shard per transformer block (one flat gather per block,
    # prefetched forward and backward), SDPA / flash attention, gradients reduce-scattered inside
    # the backward (torchtitan docs/fsdp.md; PyTorch FSDP2 RFC #114299)
    # DDP or FSDP2 (reshard_after_forward False is ZeRO-2, True ZeRO-3), no ZeRO-1; schedules
    # GPipe, 1F1B, Interleaved1F1B, zero-bubble (torchtitan docs, torch.distributed.pipelining).
    # Selective AC is its "op" policy (every second matmul of a block recomputed). "torchtitan":
    # with torch.compile (each block compiled: its element-wise ops fused); "torchtitan-eager":
    # without (training.compile = false, the default of its train configs at 9dec370).
    "torchtitan": _TORCHTITAN,
    "torchtitan-eager": dataclasses.replace(_TORCHTITAN, name="torchtitan-eager", eager_elementwise=True),
    # this project's executor (executor/): torch SDPA, DDP buckets overlapped with backward, FSDP2
    # prefetch; on a CPU host whose ranks take every core nothing overlaps (effective_runtime)
    "executor": EXECUTOR_RUNTIME,
}


def get_runtime(name: str | None) -> Runtime | None:
    """The preset ``name``; None stays None (each cluster's default, :func:`bind_runtime`)."""
    if name is None:
        return None
    if name not in RUNTIME_PRESETS:
        raise InputError("runtime", f"unknown runtime {name!r} (known: {', '.join(sorted(RUNTIME_PRESETS))})")
    return RUNTIME_PRESETS[name]


def collectives_share_cores(device, ranks_per_node: int) -> bool:
    """True on a CPU host whose ranks occupy every core (``ranks >= host_cores``).

    gloo runs a collective's copies and reductions on CPU threads of the calling process
    (Gloo ``allreduce_ring_chunked``, PyTorch ``ProcessGroupGloo`` work threads), so on CPU a
    collective "overlapped" with backward (DDP buckets, Li et al. VLDB 2020; FSDP prefetch,
    Zhao et al. VLDB 2023) competes with the compute thread for the same core instead of
    running on a separate engine as NCCL does on a GPU: with no idle core the communication
    time adds to the step. (A rank *waiting* for its peers uses no CPU; DESIGN.md.)"""
    return device.host_cores > 0 and ranks_per_node >= device.host_cores


def effective_runtime(runtime: Runtime, device, ranks_per_node: int) -> Runtime:
    """``runtime`` as it can behave on this device: no comm/compute overlap where the
    collectives share the cores with compute (:func:`collectives_share_cores`)."""
    if not collectives_share_cores(device, ranks_per_node):
        return runtime
    return dataclasses.replace(runtime, overlap_grad_reduce=False, overlap_param_gather=False,
                               shard_prefetch=False, shard_overlap_fraction=0.0)


def default_runtime(node: NodeSpec) -> Runtime:
    """The runtime a profile is priced with when none is named: the executor for a profile that
    ``clusterplan calibrate`` measured it on (it carries the executor's costs), else the default
    current stack."""
    return EXECUTOR_RUNTIME if node.framework is not None else DEFAULT_RUNTIME


def bind_runtime(cluster: ClusterSpec, runtime: Runtime | None) -> tuple[ClusterSpec, Runtime]:
    """``cluster`` as ``runtime`` sees it, and the runtime (None: :func:`default_runtime` of the
    first node type). Only the executor runtime reads a profile's ``framework:`` section (and
    needs one); any other runtime gets the nodes without it, so the stack a node is priced with
    (:func:`planner.cost.stacks.stack_of`: the executor's or a fused one) is the runtime's."""
    if runtime is None:
        runtime = default_runtime(cluster.groups[0].node)
    if runtime.executor:
        for g in cluster.groups:
            require(g.node.framework is not None, "runtime",
                    f"the executor runtime needs a profile measured by clusterplan calibrate (a framework: "
                    f"section); {g.node.name} has none")
        return cluster, runtime
    if all(g.node.framework is None for g in cluster.groups):
        return cluster, runtime
    groups = tuple(dataclasses.replace(g, node=dataclasses.replace(g.node, framework=None)) for g in cluster.groups)
    return dataclasses.replace(cluster, groups=groups), runtime
