"""How the benchmarks that compare refquant with a peer time them, written once."""
import time

import numpy as np


def best_times(functions, repeats, runs_per_turn=3, pause=0.05):
    """Minimum wall time and minimum process CPU time (s) of each function, as two arrays.

    Each of ``repeats`` rounds gives every function a turn of ``runs_per_turn`` consecutive
    runs, the functions in turn; the minimum is over all runs. Rounds alternate so that a slow
    spell of a shared machine falls on every function alike. Each turn starts after a ``pause``
    (s): torch's OpenMP threads keep spinning for a while after a call and would take a core from
    whatever ran next. The later runs of a turn see a function in its steady state, as a network
    sees it from layer to layer. CPU time counts all threads of this process.
    """
    for function in functions:
        function()  # warm-up: Numba compilation, fbgemm packing, first-touch allocations
    wall, cpu = np.full(len(functions), np.inf), np.full(len(functions), np.inf)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            time.sleep(pause)
            for _ in range(runs_per_turn):
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                function()
                wall[index] = min(wall[index], time.perf_counter() - wall_start)
                cpu[index] = min(cpu[index], time.process_time() - cpu_start)
    return wall, cpu
