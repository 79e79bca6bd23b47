"""clusterplan planner: cost model, search and plans. Pure Python; never imports torch.

The names a notebook needs, loaded on first use (``import planner`` stays fast)::

    import planner
    model = planner.load_model("llama3-70b")
    node = planner.load_hardware("dgx-h100-80gb")  # a hardware profile (also planner.load_profile)
    cluster = planner.cluster_for("dgx-h100-80gb", 8)
    pred = planner.predict(model, cluster, planner.ParallelConfig(tp=8, pp=2, dp=4, global_batch=512, seq_len=8192))
    from planner import search             # the search package, callable as planner.search.search
    best = search(model, cluster, global_batch=512, seq_len=8192).table
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "load_model": "planner.catalog", "ModelSpec": "planner.model",
    "load_profile": "planner.profile_yaml", "load_cluster": "planner.cluster",
    "ParallelConfig": "planner.plan", "Plan": "planner.plan",
    "predict": "planner.cost.step", "predict_plan": "planner.cost.step", "cluster_for": "planner.cost.step",
    "get_runtime": "planner.cost.runtime",
    "validate": "planner.validation", "InputError": "planner.errors",
    "load_hardware": "planner.profile_yaml",
}
_ALIASES = {"load_hardware": "load_profile"}
"""Names the API also answers to: a hardware profile is what ``load_profile`` reads."""
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), _ALIASES.get(name, name))
    raise AttributeError(f"module 'planner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
