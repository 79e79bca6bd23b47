"""One training step of a plan on one rank: the model (or this rank's pipeline stages), the
parallel wrappers the plan asks for, the optimizer, and the step itself.

Composition (all on the mesh from :mod:`executor.mesh`):

* tp > 1: DTensor TP (+SP) on the ``tp`` dim, vocabulary-parallel loss (:mod:`executor.parallel.tp`).
* dp > 1: DDP (``none``), DDP + ZeroRedundancyOptimizer (``zero1``), FSDP2 (``zero2``: no
  reshard after forward, ``zero3``/``fsdp``: reshard) on the ``dp`` dim; with tp > 1 always FSDP2.
* pp > 1: pipeline stages + schedule over the ``pp`` dim, each stage wrapped as above.
* recompute and precision (bf16 = autocast, fp32 master weights) everywhere.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel

from planner.errors import InputError
from planner.executor_rules import dp_kind, reshards_after_forward, ties_embeddings, unsupported
from planner.plan import Plan

from executor import data, measure
from executor.mesh import coord_of
from executor.model import Transformer, build_model, lm_loss
from executor.parallel import dp as dp_mod
from executor.parallel import ep as ep_mod
from executor.parallel import fsdp as fsdp_mod
from executor.parallel import pp as pp_mod
from executor.parallel import tp as tp_mod
from executor.parallel import zero as zero_mod
from executor.recompute import apply_recompute



@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings (Loshchilov & Hutter, 2019). lr: step size; eps: Adam epsilon;
    weight_decay: decoupled decay; beta1/beta2: moment decay rates."""

    lr: float = 1e-3
    eps: float = 1e-8
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95


def tie_embeddings(plan: Plan) -> bool:
    """Tied only without PP and TP (:func:`planner.executor_rules.ties_embeddings`)."""
    return ties_embeddings(plan.model, plan.parallel.tp, plan.parallel.pp)


def check_supported(plan: Plan) -> None:
    p = plan.parallel
    why = unsupported(p, plan.model)
    if why:
        field, reason = why.split(": ", 1)
        raise InputError(field, reason)
    if p.tp > 1:
        tp_mod.check_tp(plan.model.n_heads, plan.model.n_kv_heads, p.tp)
    if p.seq_len > plan.model.seq_len and plan.model.position in ("learned", "rope"):
        raise InputError("seq_len", f"{p.seq_len} exceeds the model's {plan.model.seq_len} positions")


class Trainer:
    """Everything one rank needs to run steps of ``plan``."""

    def __init__(self, plan: Plan, mesh: DeviceMesh, rank: int, device: torch.device,
                 optim: OptimConfig = OptimConfig(), seed: int = 0):
        check_supported(plan)
        self.plan, self.mesh, self.device = plan, mesh, device
        p = self.parallel = plan.parallel
        self.coord = coord_of(p, rank)
        self.autocast = p.precision == "bf16"
        full = build_model(plan.model, tie_embeddings=tie_embeddings(plan), seed=seed).to(device)
        self.tied = full.tied
        self.expert_params: list = []
        if p.ep > 1:
            ep_group, ep_rank, self.edp_group = ep_mod.ep_groups(p, rank)
        if p.pp > 1:
            self.stage_ids = pp_mod.stage_ids(p, self.coord.pp)
            self.modules = [pp_mod.stage_module(full, p, s) for s in self.stage_ids]
            del full
        else:
            self.stage_ids = []
            self.modules = [full]
        if p.ep > 1:  # this rank's share of its stages' experts; their gradients are not DDP's
            self.expert_params = [q for m in self.modules for q in ep_mod.shard_experts(m, ep_rank, p.ep, ep_group)]
        self.wrapped = [self._wrap(m) for m in self.modules]
        self.params = [q for m in self.modules for q in m.parameters()]
        self.optimizer = self._optimizer(optim)
        self.schedule = None
        if p.pp > 1:
            pp_group = mesh.get_group("pp")
            self.stages = [pp_mod.make_stage(w, s, p, device, pp_group) for w, s in zip(self.wrapped, self.stage_ids)]
            self.schedule = pp_mod.make_schedule(self.stages, p, lm_loss)
            n_stages = p.pp * p.vpp
            self.has_first = 0 in self.stage_ids
            self.has_last = n_stages - 1 in self.stage_ids

    # ----- setup ------------------------------------------------------------------------------
    @property
    def dp_kind(self) -> str:
        """How gradients are synchronised over dp (:func:`planner.executor_rules.dp_kind`)."""
        p = self.parallel
        return dp_kind(p.sharding, p.tp, p.dp)

    def _wrap(self, module: Transformer):
        p = self.parallel
        apply_recompute(module, p.recompute)
        if p.tp > 1:
            tp_mod.apply_tp(module, self.mesh["tp"], p.sequence_parallel)
        kind = self.dp_kind
        if kind == "fsdp":
            return fsdp_mod.apply_fsdp(module, self.mesh["dp"],
                                       reshard_after_forward=reshards_after_forward(p.sharding))
        if kind in ("ddp", "zero1") and p.pp == 1:
            if self.expert_params:
                expert = {id(q) for q in self.expert_params}
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    module, [n for n, q in module.named_parameters() if id(q) in expert])
            return dp_mod.apply_ddp(module, self.mesh["dp"], self.device)
        return module

    def _optimizer(self, cfg: OptimConfig):
        betas = (cfg.beta1, cfg.beta2)
        if self.dp_kind == "zero1":
            return zero_mod.zero1_optimizer(self.params, self.mesh["dp"], cfg.lr, cfg.eps, cfg.weight_decay, betas)
        return torch.optim.AdamW(self.params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 betas=betas, foreach=False)

    # ----- one step ---------------------------------------------------------------------------
    def _autocast(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def local_batch(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = data.local_rows(tokens, self.coord.dp, self.parallel.dp)
        x, y = data.split_inputs(rows)
        return x.to(self.device), y.to(self.device)

    def step(self, tokens: torch.Tensor, tracer: measure.PhaseTracer | None = None) -> float | None:
        """One optimizer step on the global batch ``tokens`` (global_batch, seq+1); returns this
        rank's mean loss (None on pipeline ranks without the last stage)."""
        x, y = self.local_batch(tokens)
        span = tracer.span if tracer is not None else (lambda *a, **k: contextlib.nullcontext())
        if self.schedule is not None:
            loss = self._pipeline_step(x, y, tracer)
            if self.dp_kind in ("ddp", "zero1"):
                with span("comm"):
                    experts = {id(q) for q in self.expert_params}  # reduced over their holders below
                    dp_mod.allreduce_grads([q for q in self.params if id(q) not in experts], self.mesh["dp"])
        else:
            loss = self._plain_step(x, y, span)
        if self.expert_params:
            with span("comm"):
                ep_mod.reduce_expert_grads(self.expert_params, self.edp_group, self.parallel.dp)
        if tracer is not None:  # gradients are freed by zero_grad: count them now
            self.last_grads_bytes = measure.grads_bytes(self.params)
        with span("optimizer"):
            if self.parallel.sequence_parallel and self.parallel.tp > 1:
                tp_mod.reduce_partial_grads(self.params)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _plain_step(self, x, y, span) -> float:
        p = self.parallel
        model = self.wrapped[0]
        n_micro = p.num_micro_batches
        total = 0.0
        for m in range(n_micro):
            xm = x[m * p.micro_batch:(m + 1) * p.micro_batch]
            ym = y[m * p.micro_batch:(m + 1) * p.micro_batch]
            last = m == n_micro - 1
            sync = model.no_sync() if (self.dp_kind in ("ddp", "zero1") and not last) else contextlib.nullcontext()
            with sync, tp_mod.loss_context(p.tp):
                with span("forward", m, 0):
                    with self._autocast():
                        loss = lm_loss(model(xm), ym) / n_micro
                with span("backward", m, 0):
                    loss.backward()
            total += float(loss.detach())
        return total

    def _pipeline_step(self, x, y, tracer) -> float | None:
        kwargs = {}
        losses: list[torch.Tensor] = []
        if self.has_last:
            kwargs["target"], kwargs["losses"] = y, losses
        args = (x,) if self.has_first else ()
        restore = _instrument(self, tracer) if tracer is not None else None
        try:
            with self._autocast(), tp_mod.loss_context(self.parallel.tp):
                # return_outputs=False: the last stage does not keep every micro-batch's logits
                # to merge them after the step (only the losses are used)
                self.schedule.step(*args, return_outputs=False, **kwargs)
        finally:
            if restore is not None:
                restore()
        if not losses:
            return None
        return float(torch.stack([l.detach().float() for l in losses]).mean())

    # ----- inspection -------------------------------------------------------------------------
    def named_full_params(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) value of every parameter this rank's stages hold, by model name.
        Collective over the tp/dp groups of this rank's stages: call it on every rank."""
        out = {}
        for module in self.modules:
            for name, param in module.named_parameters():
                value = param.full_tensor() if isinstance(param, torch.distributed.tensor.DTensor) else param
                out[name] = value.detach().float().cpu().clone()
        return out

    def memory_breakdown(self) -> dict[str, int]:
        return {"params_bytes": measure.params_bytes(self.params),
                "grads_bytes": getattr(self, "last_grads_bytes", measure.grads_bytes(self.params)),
                "optimizer_bytes": measure.optimizer_bytes(self.optimizer)}


def _instrument(trainer: Trainer, tracer: measure.PhaseTracer):
    """Wrap this rank's pipeline stages (and the schedule's p2p waits) to record phase spans;
    returns a function that undoes it."""
    from torch.distributed.pipelining import schedules

    undo = []
    for stage in trainer.stages:
        sid = stage.stage_index

        def wrap(name, phase, stage=stage, sid=sid):
            original = getattr(stage, name)

            def traced(chunk_id, *args, **kwargs):
                ph = phase
                if name == "backward_one_chunk" and kwargs.get("full_backward", True) is False:
                    ph = "backward_input"
                with tracer.span(ph, chunk_id, sid):
                    return original(chunk_id, *args, **kwargs)

            setattr(stage, name, traced)
            undo.append(lambda: delattr(stage, name))

        wrap("forward_one_chunk", "forward")
        wrap("backward_one_chunk", "backward")
        wrap("backward_weight_one_chunk", "backward_weight")
    original_wait = getattr(schedules, "_wait_batch_p2p", None)
    if original_wait is not None:
        def traced_wait(work, *args, **kwargs):
            with tracer.span("comm"):
                return original_wait(work, *args, **kwargs)

        schedules._wait_batch_p2p = traced_wait
        undo.append(lambda: setattr(schedules, "_wait_batch_p2p", original_wait))

    def restore():
        for fn in reversed(undo):
            fn()

    return restore


def reference_params(plan: Plan, steps: int, optim: OptimConfig = OptimConfig(), seed: int = 0,
                     data_seed: int = 1234) -> dict[str, torch.Tensor]:
    """Single-process fp32 reference: the same model (same tie rule), the whole global batch in
    one pass, the same AdamW, ``steps`` steps."""
    p = plan.parallel
    model = build_model(plan.model, tie_embeddings=tie_embeddings(plan), seed=seed)
    apply_recompute(model, "none")
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, eps=optim.eps, weight_decay=optim.weight_decay,
                            betas=(optim.beta1, optim.beta2), foreach=False)
    batches = data.Batches(plan.model.vocab_size, p.global_batch, p.seq_len, seed=data_seed)
    for step in range(steps):
        x, y = data.split_inputs(batches.global_batch(step))
        lm_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {n: q.detach().clone() for n, q in model.named_parameters()}
