"""Failing fast and saying why.

* A short default process-group timeout (``--timeout-s``, default 30 s) for the world group *and*
  every sub-group ``init_device_mesh`` creates (those take c10d's module default, 30 min for gloo,
  so that default is lowered before the mesh is built).
* :func:`describe` turns an exception into (one-line error, type name, is-OOM).
* SIGTERM (torchrun stopping the survivors after one rank died) becomes :class:`Terminated`, so a
  rank records why it stopped without claiming to be the root cause.
* Fault injection for tests: ``--inject-fault raise:RANK:STEP`` or ``kill:RANK:STEP``
  (SIGKILL itself at the start of that step).
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed.distributed_c10d as c10d

from planner.errors import InputError

DEFAULT_TIMEOUT_S = 30.0


class Terminated(Exception):
    """This rank was told to stop (SIGTERM/SIGINT)."""

    def __init__(self, signum: int):
        self.signal = signal.Signals(signum).name
        super().__init__(f"received {self.signal}")


class InjectedFault(RuntimeError):
    """Raised by ``--inject-fault raise:RANK:STEP``."""


def set_default_timeouts(timeout_s: float) -> timedelta:
    timeout = timedelta(seconds=timeout_s)
    c10d.default_pg_timeout = timeout
    if hasattr(c10d, "default_pg_nccl_timeout"):
        c10d.default_pg_nccl_timeout = timeout
    return timeout


def install_signal_handlers() -> None:
    """SIGTERM ends the rank through :class:`Terminated` (recorded, then exit); on Linux the
    kernel sends it SIGTERM when its launcher (torchrun's agent) dies, even by SIGKILL: torch
    elastic starts each rank in a session of its own, out of reach of a signal to the
    launcher's process group (``prctl(PR_SET_PDEATHSIG)``, prctl(2))."""
    def handler(signum, _frame):
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


PEER_SIGNS = ("connection closed by peer", "connection reset by peer", "broken pipe", "timed out",
              "timeout", "connection refused", "socket closed", "econnreset")


def is_peer_failure(exc: BaseException) -> bool:
    """The error of a rank whose peer died or hung (a consequence, not the root cause)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(sign in text for sign in PEER_SIGNS)


def describe(exc: BaseException) -> tuple[str, str, bool]:
    """(one-line message, exception type, out-of-memory?)."""
    oom = is_oom(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    line = f"{type(exc).__name__}: {first}"
    if oom:
        line = f"out of memory: {line}"
    return line, type(exc).__name__, oom


@dataclass(frozen=True)
class Fault:
    action: str  # raise | kill
    rank: int
    step: int

    @classmethod
    def parse(cls, text: str | None) -> "Fault | None":
        if not text:
            return None
        parts = text.split(":")
        if len(parts) != 3 or parts[0] not in ("raise", "kill", "oom"):
            raise InputError("inject-fault", f"expected raise|kill|oom:RANK:STEP, got {text!r}")
        try:
            return cls(parts[0], int(parts[1]), int(parts[2]))
        except ValueError:
            raise InputError("inject-fault", f"RANK and STEP must be integers, got {text!r}") from None

    def maybe_fire(self, rank: int, step: int) -> None:
        if rank != self.rank or step != self.step:
            return
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.action == "oom":
            raise torch.OutOfMemoryError(f"injected out of memory at step {step}")
        raise InjectedFault(f"injected fault on rank {rank} at step {step}")
