"""How many threads refquant's parallel work uses: the cores actually free, or ``REFQUANT_THREADS``.

Numba's parallel kernels and the BLAS under NumPy's matrix products each start one thread per core
by default. Beside another CPU-bound process that is the worst choice: each parallel loop splits its
work evenly and then waits for its slowest share, the one on the core the other process holds, so
every loop runs at the pace of half a core plus the wait for the scheduler to come back to it (the
QAT update of a demo sharing 2 cores with two other jobs took 3 to 13 s against 0.53 s alone).
With one thread per free core the loops never wait on a contended core, and a job beside one other
CPU-bound process runs at most about as much slower as it loses cores (benchmarks/bench_sharing.py).

:func:`fit` sizes both pools: ``REFQUANT_THREADS`` (a positive integer) if set, else the usable
cores (the process's affinity) minus the other tasks running right now (``/proc/loadavg``'s
count of runnable tasks, the median of a few reads, less this one). The network entry points
(``Network.forward``, ``IntegerNetwork.run``, ``SimulatedNetwork.run``) call it, at most once a
second, so a job follows the machine as other work starts and stops.

:func:`for_each` runs independent matrix products (one per image of a batch) on that many threads
of its own, the BLAS at one thread inside each: the same products as a loop, bit for bit (the same
calls, each on one thread; the BLAS's result does not depend on its thread count), but shared out
one at a time, so a thread that another process delays takes fewer of them, and a waiting thread
sleeps, leaving its core free (the BLAS's own threads split each product evenly and spin while they
wait for the slowest share).
"""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numba

ENVIRONMENT_VARIABLE = "REFQUANT_THREADS"

REFIT_SECONDS = 1.0
"""Least time between two looks at the machine (a look reads /proc three times, about 1 ms)."""

_fitted = {"at": -float("inf"), "threads": None}


def usable_cores():
    """Cores this process may run on: its affinity mask where the OS has one, else the CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def others_running(samples=3, interval=0.0005):
    """Tasks of other processes running or ready to run: ``/proc/loadavg``'s runnable count less this
    process's running threads (the reader, and a BLAS thread still spinning after its last product),
    the median of ``samples`` reads ``interval`` seconds apart (one read can catch a short-lived
    task). 0 where there is no /proc (macOS, Windows)."""
    counts = []
    for index in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as loadavg:
                runnable = int(loadavg.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0
        counts.append(runnable - _own_running_threads())
        if index + 1 < samples:
            time.sleep(interval)
    return max(0, sorted(counts)[len(counts) // 2])


def _own_running_threads():
    """Threads of this process in state R (running or runnable), at least 1 (the caller)."""
    running = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii", errors="replace") as stat:
                # the state follows the command name, which is in parentheses and may hold spaces
                running += stat.read().rpartition(")")[2].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(1, running)


def requested_threads():
    """``REFQUANT_THREADS`` as a positive int, or None when unset or empty."""
    text = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be a positive integer (threads), got {text!r}")
    return int(text)


def free_cores():
    """Usable cores not taken by other running tasks, at least 1."""
    return max(1, usable_cores() - others_running())


def fit(force=False):
    """Size Numba's and the BLAS's thread pools to :func:`requested_threads` or :func:`free_cores`
    (at most Numba's pool, ``NUMBA_NUM_THREADS``); returns the count.

    Looks at the machine at most once every :data:`REFIT_SECONDS` unless ``force``. Numba's count
    is the calling thread's own (``numba.set_num_threads``), so a thread that runs networks calls
    this itself; the BLAS count is process-wide.
    """
    now = time.monotonic()
    if not force and now - _fitted["at"] < REFIT_SECONDS and _fitted["threads"] is not None:
        threads = _fitted["threads"]
    else:
        threads = min(requested_threads() or free_cores(), numba.config.NUMBA_NUM_THREADS)
        if threads != _fitted["threads"]:
            _set_blas_threads(threads)
        _fitted["at"], _fitted["threads"] = now, threads
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def _set_blas_threads(threads):
    """The BLAS's (OpenBLAS's, MKL's, ...) thread count, through threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # without it the BLAS keeps its own count
        return
    threadpool_limits(threads, user_api="blas")


_executor = {"pool": None, "workers": 0}
_blas = {"libraries": None}


def _blas_libraries():
    """threadpoolctl's controllers of the loaded BLAS libraries ([] without threadpoolctl)."""
    if _blas["libraries"] is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas["libraries"] = []
        else:
            _blas["libraries"] = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas["libraries"]


def current():
    """The thread count :func:`fit` last chose (1 before any fit)."""
    return _fitted["threads"] or 1


def for_each(function, count):
    """``function(i)`` for every i in ``range(count)``, on the threads :func:`fit` last chose.

    The calls must be independent (each writes its own output) and release the GIL where they
    work (NumPy's matrix products do). The BLAS runs one thread per call meanwhile, its count
    restored after; the calling thread takes part, and each thread takes the next index when it
    is done with one. A plain loop with one thread, before any :func:`fit`, or without threadpoolctl.
    The first exception raised is re-raised after every started call has returned.
    """
    workers = min(current(), count)
    libraries = _blas_libraries() if workers > 1 else []
    if not libraries:
        for index in range(count):
            function(index)
        return
    if _executor["workers"] != workers - 1:
        if _executor["pool"] is not None:
            _executor["pool"].shutdown(wait=False)
        _executor["pool"] = ThreadPoolExecutor(workers - 1, thread_name_prefix="refquant")
        _executor["workers"] = workers - 1
    lock = threading.Lock()
    position = [0]

    def drain():
        while True:
            with lock:
                index = position[0]
                position[0] = count if index >= count else index + 1
            if index >= count:
                return
            try:
                function(index)
            except BaseException:
                with lock:
                    position[0] = count  # the others stop at their next index
                raise

    saved = [library.get_num_threads() for library in libraries]
    for library in libraries:
        library.set_num_threads(1)
    try:
        futures = [_executor["pool"].submit(drain) for _ in range(workers - 1)]
        try:
            drain()
        finally:
            for future in futures:
                future.exception()  # wait for every helper before anything is restored or raised
        for future in futures:
            future.result()
    finally:
        for library, threads in zip(libraries, saved):
            library.set_num_threads(threads)
