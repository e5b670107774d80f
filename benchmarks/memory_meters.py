"""Peak-memory meters shared by the benchmarks: host RSS (Linux) and torch's CUDA allocator."""

from __future__ import annotations

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
