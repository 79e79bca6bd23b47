"""A single-node run's ranks in a network namespace of their own, with only loopback up.

torch's TCPStore server (torchrun's rendezvous store) listens on the wildcard address whatever
host it is given (torch/csrc/distributed/c10d/TCPStoreLibUvBackend.cpp, ``tryListen`` binds
``::`` or ``0.0.0.0``), so on a shared host other machines could reach it during a run. In a new
network namespace (``unshare --net --map-root-user``: an unprivileged user namespace, no root
needed where the kernel allows them) the only interface is loopback: nothing outside the host
can connect to the store, gloo or NCCL sockets. Where user namespaces are not allowed the run
goes ahead on the host's network and the summary says so.

``python -m planner.loopback_only CMD ...`` brings ``lo`` up and execs CMD (run under unshare).
"""
from __future__ import annotations

import fcntl
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1  # <linux/sockios.h>, <net/if.h>


def bring_loopback_up() -> None:
    """Set ``lo`` up in this process's network namespace (a new namespace starts with it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _prefix() -> list[str]:
    return ["unshare", "--net", "--map-root-user", sys.executable, "-m", "planner.loopback_only"]


@functools.lru_cache(maxsize=1)
def isolation_prefix() -> tuple[str, ...]:
    """The command prefix that runs a command loopback-only, or () where this host does not
    allow it (no ``unshare``, user namespaces disabled, a seccomp profile that forbids them)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return ()
    try:
        done = subprocess.run([*_prefix(), sys.executable, "-c", "pass"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(_prefix()) if done.returncode == 0 else ()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m planner.loopback_only CMD [ARGS...]", file=sys.stderr)
        return 2
    bring_loopback_up()
    os.execvp(argv[0], argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
