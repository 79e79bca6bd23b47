"""``clusterplan list presets|profiles|runtimes|clusters``: what the names on the command line can be."""
from __future__ import annotations

import argparse

KINDS = ("presets", "profiles", "runtimes", "clusters")


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="list model presets, hardware profiles, runtimes or cluster files",
                              description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=KINDS)
    p.set_defaults(func=handler)


def names(kind: str) -> list[tuple[str, str]]:
    """(name, one-line description) of every ``kind``."""
    if kind == "presets":
        from planner.presets import PRESETS

        return [(n, f"{m.n_layers} layers, hidden {m.hidden_size}, {m.total_params() / 1e9:.3g}B parameters")
                for n, m in sorted(PRESETS.items())]
    if kind == "profiles":
        from planner.profile_yaml import available_profiles, load_profile

        out = []
        for n in available_profiles():
            node = load_profile(n)
            out.append((n, f"{node.gpus_per_node} x {node.device.name}"
                           + ("; measured by clusterplan calibrate: the executor runtime" if node.framework else "")))
        return out
    if kind == "runtimes":
        from planner.cost.runtime import RUNTIME_PRESETS

        return [(n, f"attention {r.attention}, overlap grad reduce {r.overlap_grad_reduce}, ZeRO-3 gathers "
                    f"{r.gather_granularity}" + ("; element-wise ops eager, one kernel each" if r.eager_elementwise else "")
                    + ("; this project's executor" if r.executor else ""))
                for n, r in sorted(RUNTIME_PRESETS.items())]
    from planner.cluster import CLUSTERS_DIR

    return [(p.stem, str(p)) for p in sorted(CLUSTERS_DIR.glob("*.yaml"))]


def handler(args: argparse.Namespace) -> int:
    for name, text in names(args.kind):
        print(f"{name:<28} {text}")
    return 0
