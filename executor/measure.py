"""What a rank measures: step wall time (CUDA events on GPU), CPU time ratio, RSS high-water
mark, accounted bytes of parameters / gradients / optimizer state / saved activations, and a
per-phase timeline of one traced step."""
from __future__ import annotations

import contextlib
import resource
import time

import torch
from torch.distributed.tensor import DTensor


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    """Resident set size now (VmRSS)."""
    return _status_kib("VmRSS")


def rss_peak_bytes() -> int | None:
    """Resident set high-water mark (VmHWM) of this process."""
    return _status_kib("VmHWM")


def ru_maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def tensor_bytes(t: torch.Tensor) -> int:
    t = local_tensor(t)
    return t.numel() * t.element_size()


def _unique(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        t = local_tensor(t)
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.numel() else id(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def params_bytes(params) -> int:
    return sum(tensor_bytes(p) for p in _unique(params))


def grads_bytes(params) -> int:
    return sum(tensor_bytes(p.grad) for p in params if p.grad is not None)


def optimizer_bytes(optimizer) -> int:
    """Bytes of tensors in the optimizer state (this rank's shard for ZeRO/FSDP/DTensor)."""
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps the local one
    total = 0
    for state in inner.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                total += tensor_bytes(value)
    return total


class SavedActivationMeter:
    """Peak bytes of tensors autograd saves for backward (unique storages, parameters excluded)
    while the context is active, via ``torch.autograd.graph.saved_tensors_hooks``. A saved tensor
    counts until autograd frees it (after its backward)."""

    def __init__(self, params=()):
        self._param_ptrs = {local_tensor(p).untyped_storage().data_ptr() for p in params}
        self._live: dict[int, list[int]] = {}  # storage ptr -> [refcount, bytes]
        self.current = 0
        self.peak = 0

    class _Holder:
        __slots__ = ("tensor", "key", "meter")

        def __del__(self):
            if self.key is not None:
                self.meter._release(self.key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._live[key]

    def _pack(self, tensor: torch.Tensor):
        holder = SavedActivationMeter._Holder()
        holder.tensor, holder.meter, holder.key = tensor, self, None
        try:
            local = local_tensor(tensor)
            storage = local.untyped_storage()
            key = storage.data_ptr()
            if key and key not in self._param_ptrs:
                entry = self._live.get(key)
                if entry is None:
                    self._live[key] = [1, storage.nbytes()]
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                else:
                    entry[0] += 1
                holder.key = key
        except (RuntimeError, NotImplementedError):  # tensors without storage (meta, fakes)
            pass
        return holder

    @staticmethod
    def _unpack(holder):
        return holder.tensor

    @contextlib.contextmanager
    def active(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield self


def run_queue_wait_s() -> float | None:
    """Seconds this (main) thread has spent runnable but waiting for a CPU, from
    /proc/thread-self/schedstat (field 2): the direct sign of a contended machine."""
    try:
        with open("/proc/thread-self/schedstat") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class StepTimer:
    """Wall time of one step (CUDA events on GPU, perf_counter on CPU), process CPU time and
    run-queue wait."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        self._q0 = run_queue_wait_s()
        self._p0 = time.process_time()
        if self.cuda:
            self._e0 = torch.cuda.Event(enable_timing=True)
            self._e1 = torch.cuda.Event(enable_timing=True)
            self._e0.record()
        self._t0 = time.perf_counter()

    def stop(self) -> tuple[float, float]:
        """(wall_s, process_s)."""
        if self.cuda:
            self._e1.record()
            self._e1.synchronize()
            wall = self._e0.elapsed_time(self._e1) / 1000.0
        else:
            wall = time.perf_counter() - self._t0
        self.last_wait_s = None
        q1 = run_queue_wait_s()
        if q1 is not None and self._q0 is not None:
            self.last_wait_s = q1 - self._q0
        return wall, time.process_time() - self._p0


class PhaseTracer:
    """Start/end of each phase of one step, seconds from the step start (device synchronised
    at each boundary on GPU, so only used on the traced step)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list[dict] = []
        self.t0 = time.perf_counter()
        self.t0_unix = time.time()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self.t0

    @contextlib.contextmanager
    def span(self, phase: str, micro_batch: int | None = None, stage: int | None = None):
        start = self._now()
        try:
            yield
        finally:
            self.events.append({"phase": phase, "micro_batch": micro_batch, "stage": stage,
                                "start_s": start, "end_s": self._now()})


class AllocatorPeak:
    """Peak bytes live in the CPU tensor allocator while the context is active: the CPU
    counterpart of ``torch.cuda.max_memory_allocated``, which is what the cost model predicts
    (tensors, not the process's RSS with its interpreter, libraries and heap fragmentation).

    It runs ``torch.profiler`` with ``profile_memory=True``: every allocation and free of the
    c10 CPU allocator is reported with the running total of bytes allocated since profiling
    began (``ProfiledCPUMemoryReporter``). Start it before the model is built, so that every
    tensor a rank owns is allocated inside it; the peak of that running total is the rank's
    peak live tensor bytes. Memory the allocator does not serve (gloo's buffers) is not seen,
    as NCCL's buffers are not in ``max_memory_allocated``. Profiler overhead makes the steps
    it covers slower, so only warm-up steps are run under it."""

    def __init__(self) -> None:
        self.peak_bytes: int | None = None
        self._prof = None

    def __enter__(self) -> "AllocatorPeak":
        from torch.profiler import ProfilerActivity, profile

        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        prof, self._prof = self._prof, None
        prof.__exit__(*exc)
        if exc[0] is None:
            self.peak_bytes = allocation_peak_bytes(prof)


def allocation_peak_bytes(prof) -> int:
    """Largest running total of CPU bytes allocated during a ``profile_memory`` profile."""
    from torch._C._profiler import _EventType

    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if fields.device.type == "cpu":
                peak = max(peak, int(fields.total_allocated))
        stack.extend(node.children)
    return peak


def cuda_memory(device: torch.device) -> tuple[int | None, int | None]:
    if device.type != "cuda":
        return None, None
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
