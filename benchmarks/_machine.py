"""The machine a benchmark ran on, printed with its figures: a speed figure means nothing without it.

``python benchmarks/_machine.py`` prints the line alone. Every ``bench_*.py`` prints
:func:`machine_line` first.
"""
import datetime
import os
import platform

# The vector extensions that decide the kernels' speed (x86 flags as /proc/cpuinfo spells them,
# then Arm's), in the order printed.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "sve2")


def cpu_model_and_flags():
    """(CPU model name, set of its feature flags) from /proc/cpuinfo; ``platform.processor()``
    and no flags where there is no such file (macOS, Windows)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def usable_cores():
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_line():
    """One line: date (UTC), CPU model, its vector extensions, usable cores and the load average
    when the benchmark starts (other work on a shared machine makes figures noisy)."""
    model, flags = cpu_model_and_flags()
    vectors = " ".join(flag for flag in VECTOR_FLAGS if flag in flags) or "unknown"
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except (AttributeError, OSError):
        load = "load average unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"machine: {date}; {model}; vector extensions: {vectors}; {usable_cores()} cores usable; {load}"


def subprocess_environment(**overrides):
    """``os.environ`` for a benchmark's subprocess, less what refquant's import put there itself
    (``refquant.ENVIRONMENT_SET``: its libgomp spin count, which a peer's own OpenMP would read too),
    plus ``overrides``. A refquant subprocess sets its defaults again when it imports refquant."""
    import refquant

    env = {name: value for name, value in os.environ.items() if name not in refquant.ENVIRONMENT_SET}
    env.update(overrides)
    return env


if __name__ == "__main__":
    print(machine_line())
