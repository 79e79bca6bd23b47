"""Is a CPU profile measured on this host? A profile ``clusterplan calibrate`` wrote records the
host's CPU model and core count in ``measured_on`` (``cpu=...; cores=N``); used on another host
its rates describe that one, and the commands that price with it say so in one warning line."""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable

from planner.hardware import NodeSpec, host_cpu_model


def other_host(node: NodeSpec, model: str | None = None, cores: int | None = None) -> str | None:
    """Why ``node``'s measurements are of another host (CPU model or core count differ), or None
    (a GPU profile, a profile without a recorded host, or this host)."""
    if node.device.host_cores <= 0:
        return None
    found = re.search(r"cpu=(?P<cpu>[^;]+?); cores=(?P<cores>\d+)", node.measured_on)
    if not found:
        return None
    model = host_cpu_model() if model is None else model
    cores = (os.cpu_count() or 1) if cores is None else cores
    was = (found["cpu"].strip(), int(found["cores"]))
    if was == (model, cores):
        return None
    return (f"{node.name} was measured on {was[0]} ({was[1]} cores), this host is {model} ({cores} cores): "
            "its rates may not hold here (clusterplan calibrate measures this one)")


def warn_if_other_host(nodes: Iterable[NodeSpec], verb: str) -> None:
    """One warning line on stderr for the first of ``nodes`` measured on another host."""
    for node in nodes:
        why = other_host(node)
        if why:
            print(f"clusterplan {verb}: warning: {why}", file=sys.stderr)
            return


def warn_if_profile_of_other_host(hardware: str, verb: str) -> None:
    """:func:`warn_if_other_host` for the profile ``hardware`` names (nothing if it does not load)."""
    from planner.errors import InputError
    from planner.profile_yaml import load_profile

    try:
        node = load_profile(hardware)
    except InputError:
        return
    warn_if_other_host([node], verb)
