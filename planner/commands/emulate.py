"""``clusterplan emulate up --nodes N --inter-node-mbit X [--base local-cpu --gpus-per-node G --out
PROFILE]`` | ``down`` | ``status``: an emulated multi-node cluster on this machine (network
namespaces joined by a bridge, each node's link shaped with tc tbf; :mod:`planner.emulate`)."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("emulate", help="bring an emulated multi-node cluster up or down (root)",
                              description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--nodes", type=int, default=2, help="emulated nodes (2-16, default 2)")
    p.add_argument("--inter-node-mbit", type=float, default=None, help="each node's link rate, Mbit/s (up)")
    p.add_argument("--base", default="local-cpu", help="profile of one node's CPU (default local-cpu)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="ranks per emulated node (default 1)")
    p.add_argument("--out", default=None,
                   help="write the emulated cluster's profile here (the base profile, its inter-node link the "
                        "shaped rate); predict and plan take it as --hardware")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from planner import emulate
    from planner.errors import require

    if args.action == "down":
        removed = emulate.down()
        print("removed: " + (", ".join(removed) if removed else "nothing (no emulated cluster)"))
        return 0
    if args.action == "status":
        c = emulate.current()
        print(json.dumps(c.to_dict(), indent=2))
        return 0
    require(args.inter_node_mbit is not None, "inter-node-mbit", "missing (the link rate of each node, Mbit/s)")
    require(args.gpus_per_node >= 1, "gpus-per-node", "must be >= 1")
    c = emulate.up(args.nodes, args.inter_node_mbit)
    print(f"up: {c.nodes} nodes ({', '.join(f'{c.namespace(i)} {c.address(i)}' for i in range(c.nodes))}), "
          f"each link {c.mbit:g} Mbit/s both ways; clusterplan run PLAN --emulated runs a plan across them")
    if args.out:
        from planner.profile_yaml import load_profile
        from planner.profile_write import write_profile

        node = emulate.node_profile(load_profile(args.base), c, args.gpus_per_node)
        write_profile(node, args.out, header=[f"clusterplan emulate up --nodes {c.nodes} --inter-node-mbit {c.mbit:g}: "
                                              f"{args.base} with its inter-node link at the shaped rate"])
        print(f"profile: {args.out} ({args.gpus_per_node} ranks per node)")
    return 0
