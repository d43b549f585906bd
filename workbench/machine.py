"""Facts about this machine a measurement is meaningless without: processor, memory, load."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from typing import Any, NamedTuple


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a latency figure is meaningless without."""
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (kB there) in MB, or None where there is no such file."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (VmRSS), in MB; None off Linux."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (VmHWM), in MB; None off Linux."""
    return _proc_status_mb("VmHWM")


def run_queue_wait_ns() -> int | None:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU, summed over its threads.

    The second field of each /proc/self/task/<tid>/schedstat (the scheduler's run_delay). It grows only when
    a thread could run and no core was free: the direct sign that other processes (or more threads than
    cores) competed, which steady contention shows even when every timed run slows alike. Threads that ended
    take their share with them, so read it before and after a stretch in which the threads stay the same.
    None off Linux or where the kernel keeps no schedstat.
    """
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    total, read = 0, 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as stat:
                total += int(stat.read().split()[1])
            read += 1
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile, or no such field
            continue
    return total if read else None


class CpuTimes(NamedTuple):
    """CPU seconds so far, from the kernel's counters (see cpu_times)."""

    busy: float  #: every process, every CPU: user, nice, system, irq, softirq (not idle, iowait or steal)
    steal: float  #: time the hypervisor gave this virtual machine's CPUs to something else
    own: float  #: this process, all its threads: utime + stime


def cpu_times() -> CpuTimes | None:
    """CPU seconds every process has used, the hypervisor has stolen, and this process has used; None off Linux.

    From /proc/stat's all-CPU line and /proc/self/stat. Over a stretch, busy - own is the CPU time other
    processes took meanwhile. The two count time a little differently (the process's own time is its precise
    run time, which on a virtual machine includes some stolen time that /proc/stat files as steal), so on a
    quiet virtual machine busy - own comes out slightly low, never high: a difference that says other processes
    ran is real. Steal is kept apart: it is the machine's neighbours, not this machine's processes.
    """
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
        with open("/proc/self/stat", encoding="ascii") as own:
            # the command name in parentheses may hold spaces: count fields after its closing parenthesis
            mine = own.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        if not fields or fields[0] != "cpu" or len(fields) < 9:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
        # after ")": the state is stat(5)'s field 3, so utime and stime (fields 14 and 15) are indexes 11 and 12
        own_ticks = int(mine[11]) + int(mine[12])
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return CpuTimes((user + nice + system + irq + softirq) / tick, steal / tick, own_ticks / tick)


_MALLOC_TRIM: Any = None


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Done before each RSS reading of an activation, so that a session does not appear to cost nothing just
    because it reused pages that earlier work (an export, a quantization) freed but the allocator kept.
    """
    global _MALLOC_TRIM
    gc.collect()
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim with
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_VERSIONED = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "nncf",
    "polygraphy",
    "tritonclient",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (those installed)."""
    from workbench._lazy import installed_distribution

    versions = {name: installed_distribution(name) for name in _VERSIONED}
    return {name: version for name, version in versions.items() if version}
