"""Shared by the benchmarks: peak-memory meters (host RSS on Linux, torch's CUDA allocator) and machine info."""

from __future__ import annotations

import os
import platform
from pathlib import Path


class HostMemory:
    """Resident memory of this process (``/proc/self/status``); the peak (VmHWM) is reset through
    ``/proc/self/clear_refs`` (Linux >= 4.0) so that each call or phase gets its own peak."""

    counter = "VmHWM (peak RSS), reset per call and phase via /proc/self/clear_refs"

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def current(self) -> int:
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")

    def reset(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True


class CudaMemory:
    """Bytes of live tensors in torch's CUDA caching allocator; peak reset per call and phase."""

    counter = "torch.cuda.max_memory_allocated, reset per call and phase (reset_peak_memory_stats)"

    def current(self) -> int:
        import torch

        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    def peak(self) -> int:
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    def reserved_peak(self) -> int:
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_reserved()

    def reset(self) -> bool:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True


def machine() -> dict:
    """CPU model, core counts, RAM and platform of this machine (every benchmark JSON records it)."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    mem = next((int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal:")), None) if Path("/proc/meminfo").exists() else None
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "ram_gib": mem / 2**30 if mem else None, "platform": platform.platform()}
