"""Parameters after a few steps of each parallel layout equal a single-process reference on the
same global batch (fp32, to 1e-6). One spawned gloo job per world size runs all its cases."""
import dataclasses

import pytest

from executor.testing import make_plan, spawn, tiny_spec

pytestmark = pytest.mark.distributed
TOL = 1e-6
STEPS = 2
# Adam turns round-off noise in mathematically-zero gradients (the key bias: softmax is
# invariant to it) into full-size steps; a larger epsilon keeps the comparison about the layout.
OPTIM = {"eps": 1e-5}

GPT = tiny_spec("gpt")
LLAMA = tiny_spec("llama", kv_heads=2)
MOE = tiny_spec("llama", experts=4, top_k=2)
MOE_DENSE_FIRST = dataclasses.replace(MOE, dense_layers=1)  # DeepSeek-style: the first block dense

CASES_2 = {
    "dp": (GPT, dict(dp=2, global_batch=4)),
    "zero1": (GPT, dict(dp=2, global_batch=4, sharding="zero1")),
    "zero2": (LLAMA, dict(dp=2, global_batch=4, sharding="zero2")),
    "fsdp": (GPT, dict(dp=2, global_batch=4, sharding="fsdp", recompute="selective")),
    "tp": (LLAMA, dict(tp=2, global_batch=2)),
    "tp_sp": (GPT, dict(tp=2, global_batch=2, sequence_parallel=True)),
    "pp_gpipe": (GPT, dict(pp=2, global_batch=4, schedule="gpipe")),
    "pp_1f1b": (LLAMA, dict(pp=2, global_batch=4, schedule="1f1b", recompute="full")),
    "pp_interleaved": (GPT, dict(pp=2, vpp=2, global_batch=4, schedule="interleaved")),
    "pp_zb": (LLAMA, dict(pp=2, global_batch=4, schedule="zb")),
    "pp_uneven_cut": (GPT, dict(pp=2, global_batch=4, schedule="1f1b", stage_layers=(3, 1))),
    "moe_tp_sp": (MOE, dict(tp=2, global_batch=2, sequence_parallel=True)),
    "moe_ep": (MOE, dict(dp=2, ep=2, global_batch=4)),
    "moe_dense_first_ep": (MOE_DENSE_FIRST, dict(dp=2, ep=2, global_batch=4)),
}
CASES_4 = {
    "dp4_zero1": (GPT, dict(dp=4, global_batch=8, sharding="zero1")),
    "dp_pp": (GPT, dict(dp=2, pp=2, global_batch=8, schedule="1f1b")),
    "dp_pp_fsdp": (LLAMA, dict(dp=2, pp=2, global_batch=8, schedule="gpipe", sharding="fsdp")),
    "dp_tp": (LLAMA, dict(dp=2, tp=2, global_batch=4)),
    "dp_tp_sp_zero3": (GPT, dict(dp=2, tp=2, global_batch=4, sequence_parallel=True, sharding="zero3")),
    "pp_tp": (LLAMA, dict(pp=2, tp=2, global_batch=4, schedule="1f1b")),
    "pp_tp_sp": (GPT, dict(pp=2, tp=2, global_batch=4, schedule="interleaved", vpp=2, sequence_parallel=True)),
    "pp4_zb": (GPT, dict(pp=4, global_batch=4, schedule="zb")),
    "moe_dp4_ep2": (MOE, dict(dp=4, ep=2, global_batch=8)),
    "moe_ep4": (MOE, dict(dp=4, ep=4, global_batch=8)),
    "moe_pp_ep": (MOE, dict(dp=2, pp=2, ep=2, global_batch=8, schedule="1f1b")),
    "moe_pp_ep_interleaved": (MOE, dict(dp=2, pp=2, vpp=2, ep=2, global_batch=8, schedule="interleaved")),
    "moe_pp_ep_zb": (MOE, dict(dp=2, pp=2, ep=2, global_batch=8, schedule="zb")),
}


def _cases(table):
    return [{"name": n, "plan": make_plan(s, **p).to_dict(), "steps": STEPS} for n, (s, p) in table.items()]


def _run(tmp_path, world, table):
    results = spawn("executor.testing.equivalence_job", world, tmp_path, {"cases": _cases(table), "optim": OPTIM},
                    timeout_s=240)
    from executor.train import reference_params
    from planner.plan import Plan

    for case in _cases(table):
        name = case["name"]
        per_rank = [next(c for c in r if c["name"] == name) for r in results]
        covered = set()
        for rank, c in enumerate(per_rank):
            assert not c["missing"], (name, rank, c["missing"])
            assert c["max_abs_diff"] <= TOL, f"{name} rank {rank}: {c['worst']} differs by {c['max_abs_diff']:.2e}"
            assert c["moved"] > 100 * TOL, f"{name}: parameters did not move"
            covered |= set(c["names"])
        ref = reference_params(Plan.from_dict(case["plan"]), 0)
        assert covered == set(ref), (name, sorted(set(ref) ^ covered))


def test_two_ranks(tmp_path):
    _run(tmp_path, 2, CASES_2)


def test_four_ranks(tmp_path):
    _run(tmp_path, 4, CASES_4)
