"""Fitting 10^6 samples: refquant's piecewise Gaussian EM vs scikit-learn's GaussianMixture (3 components).

    python benchmarks/bench_pgm.py [--samples 1000000] [--repeats 5] [--data leaky|weights]

Data: leaky-ReLU activations (slope 0.1) of N(0.5, 1) pre-activations, or (``--data weights``) a
weight-like three-piece model. Timed in the same run, on the same samples:

- ``PiecewiseGaussian.fit(x, [0.0])`` (given breakpoint; for weights ``[-1, 1]``): one pass over
  the samples for each piece's (count, mean, variance), then EM on those statistics;
- ``PiecewiseGaussian.fit(x)`` (``breakpoints="auto"``: K in 1..4 and the breakpoints by
  likelihood and BIC);
- ``PiecewiseGaussian.fit_histogram`` on a 1025-bin histogram of the same samples (the
  bounded-memory path for a calibration set; the histogram's construction is not timed);
- ``sklearn.mixture.GaussianMixture(n_components=3).fit(x)`` with its defaults (k-means start,
  tol 1e-3), the usual peer; and, for reference, refquant's own ``GaussianMixture``.

The refquant times are medians over ``--repeats`` runs after a warm-up (Numba compilation is
excluded); scikit-learn is timed once per repeat too. Printed: times, each fit's mean
log-likelihood per sample, and the ratios sklearn / PGM (target >= 100x).
"""
import argparse
import time
import warnings

import numpy as np
from _machine import machine_line
from scipy import stats

from refquant.density.mixture import GaussianMixture
from refquant.density.pgm import PiecewiseGaussian


def leaky_relu_activations(n, rng):
    y = rng.normal(0.5, 1.0, n)
    return np.where(y >= 0.0, y, 0.1 * y)


def weight_like(n, rng):
    # Centre N(0, 0.5^2) on [-1, 1) with mass 0.7, tails N(0, 2^2) outside with mass 0.15 each.
    counts = rng.multinomial(n, [0.15, 0.7, 0.15])
    parts = [stats.truncnorm.rvs(-np.inf, -0.5, scale=2.0, size=counts[0], random_state=rng),
             stats.truncnorm.rvs(-2.0, 2.0, scale=0.5, size=counts[1], random_state=rng),
             stats.truncnorm.rvs(0.5, np.inf, scale=2.0, size=counts[2], random_state=rng)]
    return rng.permutation(np.concatenate(parts))


def timed(function, repeats):
    """(median seconds, last result) of ``repeats`` calls."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10**6)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each fit (median)")
    parser.add_argument("--data", choices=["leaky", "weights"], default="leaky")
    args = parser.parse_args()
    print(machine_line())
    from sklearn.mixture import GaussianMixture as SklearnMixture  # benchmark-only peer

    rng = np.random.default_rng(0)
    x = leaky_relu_activations(args.samples, rng) if args.data == "leaky" else weight_like(args.samples, rng)
    breakpoints = [0.0] if args.data == "leaky" else [-1.0, 1.0]
    PiecewiseGaussian.fit(x[:10_000], breakpoints)  # warm-up: Numba compilation and caches
    PiecewiseGaussian.fit(x[:10_000])
    GaussianMixture.fit(x[:10_000], 3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a non-converged piece is reported in fit_info below
        given_time, given = timed(lambda: PiecewiseGaussian.fit(x, breakpoints), args.repeats)
        auto_time, auto = timed(lambda: PiecewiseGaussian.fit(x), args.repeats)
        inner = np.union1d(np.linspace(np.quantile(x, 0.001), np.quantile(x, 0.999), 1023), breakpoints)
        counts = np.bincount(np.searchsorted(inner, x, side="right"), minlength=inner.size + 1)
        edges = np.concatenate([[-np.inf], inner, [np.inf]])
        histogram_time, from_histogram = timed(
            lambda: PiecewiseGaussian.fit_histogram(counts, edges, breakpoints), args.repeats)
        ours_time, ours = timed(lambda: GaussianMixture.fit(x, 3, tol=1e-3), 1)
    sklearn_time, theirs = timed(lambda: SklearnMixture(n_components=3, random_state=0).fit(x[:, None]),
                                 args.repeats)
    sklearn_log_likelihood = theirs.score(x[:, None])

    n = x.size
    print(f"data: {args.data}, {n} samples")
    rows = [
        (f"PiecewiseGaussian.fit(x, {breakpoints})", given_time, given.fit_info.log_likelihood / n,
         f"K={given.n_pieces}, EM steps {given.fit_info.iterations}, converged {given.fit_info.converged}"),
        ("PiecewiseGaussian.fit(x)  [auto]", auto_time, auto.fit_info.log_likelihood / n,
         f"K={auto.n_pieces}, breakpoints {np.round(auto.breakpoints, 4).tolist()}, "
         f"converged {auto.fit_info.converged}"),
        (f"PiecewiseGaussian.fit_histogram({counts.size} bins)", histogram_time, np.nan,
         f"binned log-likelihood {from_histogram.fit_info.log_likelihood:.6g}, "
         f"EM steps {from_histogram.fit_info.iterations}"),
        ("sklearn GaussianMixture(3).fit", sklearn_time, sklearn_log_likelihood,
         f"{theirs.n_iter_} EM steps, converged {theirs.converged_}"),
        ("refquant GaussianMixture.fit(x, 3, tol=1e-3)", ours_time, ours.fit_info.log_likelihood / n,
         f"{ours.fit_info.iterations} EM steps (one timed run)"),
    ]
    for name, seconds, log_likelihood, note in rows:
        quality = f"mean log-likelihood {log_likelihood:.5f}" if np.isfinite(log_likelihood) else " " * 26
        print(f"  {name:46s} {seconds * 1e3:10.1f} ms   {quality}   {note}")
    print(f"ratio sklearn GaussianMixture(3) / PGM fit, given breakpoints: {sklearn_time / given_time:.0f}x"
          f"  (target >= 100x)")
    print(f"ratio sklearn GaussianMixture(3) / PGM fit, auto breakpoints:  {sklearn_time / auto_time:.0f}x")


if __name__ == "__main__":
    main()
