"""Optimal 8-bit quantizer of a 3-piece model vs brute-force MSE search over 10^6 samples.

    python benchmarks/bench_intervals.py [--candidates 24] [--repeats 30]

Both produce affine 8-bit codes with an integer zero point (0 representable):

- ``optimal_quantizer(dist, 8)``: the closed-form expected error of the piecewise Gaussian, minimised
  over every zero point and the step (targets: under 10 ms);
- ``mse_search_quantizer(samples, 8)``: the empirical error of 10^6 samples for every interval of a
  (C+1) x (C+1) grid over the sample range (the brute force users compare with).

Printed: both times and their ratio (target >= 100x), and both quantizers' empirical error on the
same 10^6 samples (target: the optimum within 0.5 % of the brute force, i.e. ratio <= 1.005).
"""
import argparse
import time

import numpy as np
from _machine import machine_line

from refquant.density.pgm import PiecewiseGaussian
from refquant.quantizers.baselines import mse_search_quantizer
from refquant.quantizers.error import empirical_mse, expected_mse
from refquant.quantizers.optimal import optimal_quantizer

# A weight-like model: a centre piece and two heavier tails.
MODEL = PiecewiseGaussian([-1.0, 1.0], [0.2, 0.6, 0.2], [-0.5, 0.0, 0.5], [1.5, 0.7, 1.5])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=24, help="brute force grid: C (default 24)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs of the optimiser")
    args = parser.parse_args()
    print(machine_line())

    optimal_quantizer(MODEL, 8)  # warm-up (imports, caches)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        optimum = optimal_quantizer(MODEL, 8)
        times.append(time.perf_counter() - start)
    optimal_time = float(np.median(times))

    samples = MODEL.sample(10**6, rng=0)
    start = time.perf_counter()
    searched = mse_search_quantizer(samples, 8, num_candidates=args.candidates, progress=True)
    search_time = time.perf_counter() - start

    optimum_error, search_error = empirical_mse(samples, optimum), empirical_mse(samples, searched)
    print(f"model: {MODEL!r}")
    print(f"optimal_quantizer(model, 8): {optimum}")
    print(f"  time  median {optimal_time * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms over {args.repeats} runs"
          f"  (target < 10 ms)")
    print(f"  expected error {expected_mse(MODEL, optimum):.6g}, empirical on 10^6 samples {optimum_error:.6g}")
    print(f"mse_search_quantizer(10^6 samples, 8, C={args.candidates}): {searched}")
    print(f"  time  {search_time:.2f} s, empirical error {search_error:.6g}")
    print(f"speed ratio (brute force / optimal, median): {search_time / optimal_time:.0f}x  (target >= 100x)")
    print(f"error ratio (optimal / brute force, same samples): {optimum_error / search_error:.5f}"
          f"  (target <= 1.005)")


if __name__ == "__main__":
    main()
