"""Shared by the benchmarks: peak-memory meters (host RSS on Linux, torch's CUDA allocator), machine info, and
the provenance and writing of every result JSON (git revision, exact command, the script's own sanity checks).

Run on its own it checks the meters themselves: ``python benchmarks/memory_meters.py --smoke`` allocates a
known buffer and asserts that each meter sees it (the CUDA meter only where torch sees a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

MIB = 2**20
RESULTS = Path(__file__).resolve().parent / "results"
# settings of the environment that change what a benchmark measures; recorded with (and prefixed to) the command
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "VLLM_ENABLE_V1_MULTIPROCESSING", "CUDA_VISIBLE_DEVICES",
            "PYTORCH_CUDA_ALLOC_CONF", "MALLOC_MMAP_THRESHOLD_")


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


# ------------------------------------------------------------------------------------ provenance, writing


def _rel(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (what one types), else as given."""
    try:  # absolute(), not resolve(): a venv's python is a symlink out of the tree
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return path


def provenance(script: str, argv: list[str]) -> dict:
    """Where a result came from: the source revision (``-dirty`` when the tree had changes) and the exact
    command, run from ``cwd``: the environment settings that matter, the interpreter, the script and the
    arguments its ``main`` parsed (not ``sys.argv``, which is pytest's when a test calls ``main(argv)``)."""
    from dasd.utils.run import git_revision

    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    cmd = [_rel(sys.executable), _rel(script), *map(str, argv)]
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return {"git": git_revision(Path(script).resolve().parent),
            "command": (prefix + " " if prefix else "") + shlex.join(cmd), "argv": cmd, "env": env,
            "cwd": os.getcwd()}


def parse_with_smoke(parser: argparse.ArgumentParser, argv: list[str], smoke: dict) -> argparse.Namespace:
    """Parse ``argv``; with ``--smoke`` the values of ``smoke`` become the defaults (flags given explicitly
    still win), so that a smoke run is the full run's code at a size that takes seconds on 2 cores."""
    parser.add_argument("--smoke", action="store_true",
                        help="seconds on 2 cores: " + ", ".join(f"{k}={v}" for k, v in smoke.items()))
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)


def smoke_out(name: str) -> str:
    """Where ``--smoke`` writes when no ``--out`` is given: under the git-ignored ``outputs/``."""
    return f"outputs/benchmarks/{name}_smoke.json"


def write_report(report: dict, out: str | Path) -> Path:
    """Write a result JSON at once (temporary file + rename). A ``--smoke`` result never goes to
    ``benchmarks/results``, which holds only the committed full-size runs that the README quotes."""
    out = Path(out)
    if report.get("smoke") and out.resolve().parent == RESULTS:
        raise ValueError(f"--smoke result refused in {RESULTS}: give --out elsewhere (it holds full-size runs)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    return out


def failed_checks(report: dict) -> list[str]:
    """Names of the report's own sanity checks that do not hold (a missing ``checks`` is a failure)."""
    checks = report.get("checks")
    if not isinstance(checks, dict) or not checks:
        return ["checks (missing)"]
    return [name for name, ok in checks.items() if ok is not True]


def exit_code(report: dict) -> int:
    """0 when every sanity check of the report holds; else print them and return 1 (the JSON is written).
    An internal worker call (a child process of the benchmark) returns an empty report: 0."""
    bad = failed_checks(report) if report else []
    if bad:
        print(f"SANITY CHECKS FAILED: {', '.join(bad)} (the arms or meters disagree: the figures mean nothing)",
              file=sys.stderr)
    return 1 if bad else 0


# ---------------------------------------------------------------------------------- the meters' own check


def _probe(meter, allocate, nbytes: int) -> dict:
    """Reset the peak, hold ``nbytes`` from ``allocate`` and free it: the peak above the baseline must see it."""
    split = meter.reset()
    baseline = meter.current()
    buf = allocate(nbytes)
    held = meter.current() - baseline
    del buf
    peak = meter.peak() - baseline
    return {"phase_split": split, "baseline_mb": baseline / MIB, "allocated_mb": nbytes / MIB,
            "held_mb": held / MIB, "peak_above_baseline_mb": peak / MIB, "counter": meter.counter}


def _touched_bytes(n: int) -> bytearray:
    buf = bytearray(n)  # zero pages are not resident until written: write one byte per page
    for i in range(0, n, 4096):
        buf[i] = 1
    return buf


def check_meters(mb: int) -> tuple[dict, dict]:
    """Both meters against a known allocation of ``mb`` MiB (touched, so that it is resident)."""
    nbytes = mb * MIB
    results = {"host": _probe(HostMemory(), _touched_bytes, nbytes)}
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        results["cuda"] = _probe(CudaMemory(), lambda n: torch.ones(n // 4, device="cuda"), nbytes)
    else:
        results["cuda"] = {"skipped": "torch sees no CUDA device"}
    checks = {"host_peak_sees_allocation": results["host"]["peak_above_baseline_mb"] >= 0.9 * mb,
              "host_current_sees_allocation": results["host"]["held_mb"] >= 0.9 * mb,
              "host_peak_reset_works": results["host"]["phase_split"]}
    if cuda:
        checks["cuda_peak_sees_allocation"] = results["cuda"]["peak_above_baseline_mb"] >= 0.9 * mb
    return results, checks


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description="The memory meters against a known allocation.")
    p.add_argument("--mb", type=int, default=256, help="MiB to allocate (--smoke: 64)")
    p.add_argument("--smoke", action="store_true", help="a 64 MiB allocation")
    p.add_argument("--out", default=None, help="default: outputs/benchmarks/memory_meters[_smoke].json")
    args = p.parse_args(argv)
    mb = 64 if args.smoke else args.mb
    out = args.out or (smoke_out("memory_meters") if args.smoke else "outputs/benchmarks/memory_meters.json")
    t0, load_before = time.perf_counter(), os.getloadavg()
    results, checks = check_meters(mb)
    report = {"benchmark": "memory_meters", "smoke": args.smoke, "config": vars(args), "meters": results,
              "checks": checks, "machine": machine(), **provenance(__file__, argv),
              "loadavg_1_5_15": {"before": load_before, "after": os.getloadavg()},
              "wall_seconds": time.perf_counter() - t0, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_report(report, out)
    h = results["host"]
    print(f"memory_meters: host peak +{h['peak_above_baseline_mb']:.1f} MiB for {mb} MiB allocated; cuda "
          f"{results['cuda'].get('skipped') or format(results['cuda']['peak_above_baseline_mb'], '.1f') + ' MiB'}"
          f" -> {out}")
    return report


if __name__ == "__main__":
    sys.exit(exit_code(main()))
