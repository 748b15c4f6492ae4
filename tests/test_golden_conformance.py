"""The golden vectors against computations that share no code with refquant.

A golden reference is worth something only if its vectors are right, not merely reproducible.
Each test here recomputes a vector's outputs the way an outside implementation would, from the
specification and the manifest's inputs, with independent tools, and compares under the
manifest's own stated tolerances (``refquant.golden.format.compare``, the README's rule):

- ``expected_error``: pdf, cdf, mean, variance and partial moments of every density, and the
  granular and clipping errors of every quantizer, in 50-digit mpmath from the closed forms;
- ``optimal_quantizers``: brute force over every zero point and a grid of steps (each zero point's
  best step refined by scipy's bounded scalar minimiser), on an error written with scipy.special;
  the result is never worse, and among tied zero points it is the smallest (the stated tie rule);
- ``pgm_fits`` and the ``network`` vector's densities: the likelihood (scipy.stats) maximised
  directly by scipy.optimize under the specification's bound on the std, or, for a histogram of
  the network, tested for optimality by perturbation;
- ``fake_quantization``: PyTorch's ``fake_quantize_per_tensor_affine`` where its zero point is an
  integer.

These are the checks that would have caught the defects an outside implementation found in an
earlier export (moments of narrow intervals, an unstated tie, a fit stopped short of a maximum
that did not exist).
"""
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from refquant.golden import format


@pytest.fixture(autouse=True)
def _precision():
    """50-digit mpmath for every test here, restored after (mpmath's precision is process-wide)."""
    with mpmath.workdps(50):
        yield


@pytest.fixture(scope="module")
def exported(golden_export):
    """The session's golden export (tests/conftest.py)."""
    return golden_export


def stored(exported, name):
    """(arrays, tolerances) of one exported vector, as the manifest states them."""
    inputs, outputs, tolerances = format.load(exported, name)
    return {**inputs, **outputs}, tolerances


def assert_conforms(name, expected, independent, tolerance):
    """The vector's ``expected`` equals the independent computation under the stated tolerance."""
    independent = np.asarray(independent, dtype=np.asarray(expected).dtype).reshape(np.shape(expected))
    mismatch = format.compare(expected, independent, tolerance)
    assert mismatch is None, f"{name}: {mismatch}"


# ------------------------------------------------------------------------------------------------
# A piecewise Gaussian in mpmath (specification, section 2), nothing taken from refquant
# ------------------------------------------------------------------------------------------------

class MpPGM:
    def __init__(self, breakpoints, weights, means, stds):
        self.edges = [-mpmath.inf] + [mpmath.mpf(float(b)) for b in breakpoints] + [mpmath.inf]
        self.weights = [mpmath.mpf(float(w)) for w in weights]
        self.weights = [w / sum(self.weights) for w in self.weights]
        self.means = [mpmath.mpf(float(m)) for m in means]
        self.stds = [mpmath.mpf(float(s)) for s in stds]
        self.z = [self._mass(k, self.edges[k], self.edges[k + 1]) for k in range(len(self.weights))]

    def _standard(self, k, x):
        return (x - self.means[k]) / self.stds[k]

    def _mass(self, k, lo, hi):
        a, b = self._standard(k, lo), self._standard(k, hi)
        return mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)

    def piece(self, x):
        return max(k for k in range(len(self.weights)) if self.edges[k] <= x)

    def pdf(self, x):
        x = mpmath.mpf(float(x))
        k = self.piece(x)
        return self.weights[k] * mpmath.npdf(self._standard(k, x)) / (self.stds[k] * self.z[k])

    def cdf(self, x):
        x = mpmath.mpf(float(x))
        k = self.piece(x)
        return sum(self.weights[:k]) + self.weights[k] * self._mass(k, self.edges[k], x) / self.z[k]

    def partial_moments(self, lo, hi):
        """(m0, m1, m2): integral_lo^hi x^j p(x) dx for float ends (infinite allowed)."""
        def ends(value):
            return mpmath.mpf(float(value)) if math.isfinite(value) else (mpmath.inf if value > 0 else -mpmath.inf)
        return self._moments_mp(ends(lo), ends(hi))

    def quantizer_errors(self, step, zero_point, qmin, qmax):
        """(granular, clipping) of the uniform quantizer, cell by cell (specification, section 5)."""
        step, zero_point = mpmath.mpf(float(step)), mpmath.mpf(float(zero_point))
        levels = [step * (q - zero_point) for q in range(int(qmin), int(qmax) + 1)]
        half = step / 2
        cells = [(levels[0], levels[0] + half, levels[0])]
        cells += [(c - half, c + half, c) for c in levels[1:-1]]
        cells += [(levels[-1] - half, levels[-1], levels[-1])]
        granular = sum(self._cell_error(lo, hi, c) for lo, hi, c in cells)
        clipping = (self._cell_error(-mpmath.inf, levels[0], levels[0])
                    + self._cell_error(levels[-1], mpmath.inf, levels[-1]))
        return granular, clipping

    def _cell_error(self, lo, hi, c):
        m0, m1, m2 = self._moments_mp(lo, hi)
        return m2 - 2 * c * m1 + c * c * m0

    def _moments_mp(self, lo, hi):
        """(m0, m1, m2) for mpf ends, from the closed forms of a truncated normal per piece."""
        total = [mpmath.mpf(0)] * 3
        for k in range(len(self.weights)):
            a_x, b_x = max(lo, self.edges[k]), min(hi, self.edges[k + 1])
            if not a_x < b_x or self.weights[k] == 0:
                continue
            a, b = self._standard(k, a_x), self._standard(k, b_x)
            phi_a = mpmath.npdf(a) if mpmath.isfinite(a) else 0
            phi_b = mpmath.npdf(b) if mpmath.isfinite(b) else 0
            i0 = self._mass(k, a_x, b_x)
            i1 = phi_a - phi_b
            i2 = i0 + (a * phi_a if mpmath.isfinite(a) else 0) - (b * phi_b if mpmath.isfinite(b) else 0)
            mu, sigma, scale = self.means[k], self.stds[k], self.weights[k] / self.z[k]
            total[0] += scale * i0
            total[1] += scale * (mu * i0 + sigma * i1)
            total[2] += scale * (mu * mu * i0 + 2 * mu * sigma * i1 + sigma * sigma * i2)
        return total


def mp_density(arrays, prefix):
    return MpPGM(*(arrays[f"{prefix}/{part}"] for part in ("breakpoints", "weights", "means", "stds")))


# ------------------------------------------------------------------------------------------------
# expected_error
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("density", ["normal", "leaky", "weights", "far"])
def test_expected_error_against_mpmath(exported, density):
    v, tolerances = stored(exported, "expected_error")
    model = mp_density(v, density)
    points = v[f"{density}/x"]
    assert_conforms("pdf", v[f"{density}/pdf"], [float(model.pdf(x)) for x in points], tolerances[f"{density}/pdf"])
    assert_conforms("cdf", v[f"{density}/cdf"], [float(model.cdf(x)) for x in points], tolerances[f"{density}/cdf"])
    moments = [model.partial_moments(lo, hi) for lo, hi in zip(v[f"{density}/lo"], v[f"{density}/hi"])]
    for j in range(3):
        assert_conforms(f"m{j}", v[f"{density}/m{j}"], [float(m[j]) for m in moments],
                        tolerances[f"{density}/m{j}"])
    whole = model.partial_moments(-np.inf, np.inf)
    assert_conforms("mean", v[f"{density}/mean"], float(whole[1] / whole[0]), tolerances[f"{density}/mean"])
    assert_conforms("var", v[f"{density}/var"], float(whole[2] / whole[0] - (whole[1] / whole[0]) ** 2),
                    tolerances[f"{density}/var"])
    columns = [v[f"{density}/quantizer_{key}"] for key in ("step", "zero_point", "qmin", "qmax")]
    errors = [model.quantizer_errors(*row) for row in zip(*columns)]
    assert_conforms("granular", v[f"{density}/granular"], [float(e[0]) for e in errors],
                    tolerances[f"{density}/granular"])
    assert_conforms("clipping", v[f"{density}/clipping"], [float(e[1]) for e in errors],
                    tolerances[f"{density}/clipping"])


# ------------------------------------------------------------------------------------------------
# optimal_quantizers: brute force on an error written with scipy.special
# ------------------------------------------------------------------------------------------------

def scipy_errors(arrays, prefix, steps, zero_points, qmin, qmax):
    """E[(X - Q(X))^2] for every (step, zero point) of the broadcast arrays, float64, from the
    truncated-normal closed forms with scipy.special.ndtr (specification, sections 2 and 5)."""
    breakpoints = arrays[f"{prefix}/breakpoints"]
    weights, means, stds = (arrays[f"{prefix}/{p}"] for p in ("weights", "means", "stds"))
    edges = np.concatenate([[-np.inf], breakpoints, [np.inf]])
    steps, zero_points = np.broadcast_arrays(np.asarray(steps, float), np.asarray(zero_points, float))
    codes = np.arange(qmin, qmax + 1)
    levels = steps[..., None] * (codes - zero_points[..., None])                 # (..., L)
    lower = np.concatenate([np.full(steps.shape + (1,), -np.inf), (levels[..., 1:] + levels[..., :-1]) / 2], -1)
    upper = np.concatenate([(levels[..., 1:] + levels[..., :-1]) / 2, np.full(steps.shape + (1,), np.inf)], -1)
    total = np.zeros(steps.shape)
    for k in range(weights.size):
        a_x, b_x = np.maximum(lower, edges[k]), np.minimum(upper, edges[k + 1])
        a, b = (a_x - means[k]) / stds[k], (b_x - means[k]) / stds[k]
        with np.errstate(invalid="ignore"):
            i0 = np.where(a_x < b_x, special.ndtr(b) - special.ndtr(a), 0.0)
            phi_a, phi_b = np.where(np.isfinite(a), stats.norm.pdf(a), 0.0), np.where(np.isfinite(b), stats.norm.pdf(b), 0.0)
            i1 = np.where(a_x < b_x, phi_a - phi_b, 0.0)
            i2 = np.where(a_x < b_x, i0 + np.where(np.isfinite(a), a * phi_a, 0.0) - np.where(np.isfinite(b), b * phi_b, 0.0), 0.0)
        z = special.ndtr((edges[k + 1] - means[k]) / stds[k]) - special.ndtr((edges[k] - means[k]) / stds[k])
        # about the level: (x - c) = (mu - c) + sigma z
        d = means[k] - levels
        total += weights[k] / z * np.sum(d * d * i0 + 2 * d * stds[k] * i1 + stds[k] ** 2 * i2, axis=-1)
    return total


def best_step(arrays, prefix, zero_point, qmin, qmax, around):
    """The least error over the step for one zero point: a grid over [around / 2, 2 around], then
    scipy's bounded scalar minimiser in the best grid interval. Returns (step, error)."""
    steps = around * np.geomspace(0.5, 2.0, 161)
    errors = scipy_errors(arrays, prefix, steps, zero_point, qmin, qmax)
    i = int(np.clip(np.argmin(errors), 1, steps.size - 2))
    result = optimize.minimize_scalar(lambda t: float(scipy_errors(arrays, prefix, math.exp(t), zero_point, qmin, qmax)),
                                      bounds=(math.log(steps[i - 1]), math.log(steps[i + 1])), method="bounded",
                                      options={"xatol": 1e-11})
    return math.exp(result.x), float(result.fun)


def test_optimal_quantizers_against_brute_force_and_the_tie_rule(exported):
    v, tolerances = stored(exported, "optimal_quantizers")
    for i, (density, mode, bits) in enumerate(zip(v["cases/density"], v["cases/mode"], v["cases/bits"])):
        prefix, bits = f"densities/{density}", int(bits)
        step, zero_point = float(v["cases/step"][i]), float(v["cases/zero_point"][i])
        qmin, qmax = int(v["cases/qmin"][i]), int(v["cases/qmax"][i])
        own = float(scipy_errors(v, prefix, step, zero_point, qmin, qmax))
        assert float(v["cases/mse"][i]) == pytest.approx(own, rel=1e-9), (density, mode, bits)
        if mode in ("symmetric", "unsigned"):
            candidates = [0] if mode == "symmetric" else range(qmin, qmax + 1)
            coarse = scipy_errors(v, prefix, step * np.geomspace(0.5, 2.0, 41)[:, None],
                                  np.array(list(candidates), float)[None, :], qmin, qmax).min(axis=0)
            near = [z for z, e in zip(candidates, coarse) if e <= coarse.min() * 1.01]
            best = {z: best_step(v, prefix, z, qmin, qmax, step)[1] for z in near}
            least = min(best.values())
            assert own <= least * (1 + 1e-9), (density, mode, bits, own, least)
            tied = [z for z, e in best.items() if e <= least * (1 + 1e-10)]
            assert zero_point == min(tied), (density, mode, bits, zero_point, tied)
        elif mode.startswith("pow2"):
            exponents = np.arange(-20, 11, dtype=float)[:, None]
            zeros = np.array([0.0] if mode == "pow2_symmetric" else np.arange(qmin, qmax + 1), float)[None, :]
            grid = scipy_errors(v, prefix, np.exp2(exponents), zeros, qmin, qmax)
            least = grid.min()
            assert own <= least * (1 + 1e-12)
            rows, columns = np.nonzero(grid <= least * (1 + 1e-10))
            expected = min(zip(zeros[0, columns], np.exp2(exponents[rows, 0])))
            assert (zero_point, step) == expected, (density, mode, bits)
        else:  # free: never worse than a fine grid of (step, offset) around it
            steps = step * np.linspace(0.98, 1.02, 41)[:, None]
            offsets = zero_point + np.linspace(-0.3, 0.3, 41)[None, :]
            assert own <= scipy_errors(v, prefix, steps, offsets, qmin, qmax).min() * (1 + 1e-10)


# ------------------------------------------------------------------------------------------------
# fitted densities: the likelihood maximised by scipy under the specification's bound
# ------------------------------------------------------------------------------------------------

SIGMA_BOUND = 10.0  # specification, section 3.3


def piece_log_likelihood(x, lo, hi, mu, sigma):
    """sum log of the truncated normal density (scipy.stats.truncnorm) of samples in [lo, hi)."""
    return stats.truncnorm.logpdf(x, (lo - mu) / sigma, (hi - mu) / sigma, loc=mu, scale=sigma).sum()


def binned_log_likelihood(counts, lo, hi, piece_lo, piece_hi, mu, sigma):
    """sum_j c_j log(P(bin j) / Z) with scipy.stats.norm's logcdf and logsf (log space: a bounded
    piece's Gaussian may sit 40 sigmas from its data)."""
    def log_mass(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        right = a > mu  # the whole interval right of mu: survival functions do not cancel
        upper = np.where(right, stats.norm.logsf(a, mu, sigma), stats.norm.logcdf(b, mu, sigma))
        lower = np.where(right, stats.norm.logsf(b, mu, sigma), stats.norm.logcdf(a, mu, sigma))
        with np.errstate(divide="ignore"):
            return upper + np.log1p(-np.exp(lower - upper))
    occupied = counts > 0
    return float(np.sum(counts[occupied] * (log_mass(lo[occupied], hi[occupied]) - log_mass(piece_lo, piece_hi))))


def assert_local_maximum(log_likelihood, mu, sigma, bounded, label):
    """No move of mu or sigma by 1e-4 of sigma raises the likelihood by more than rounding; on the
    bound, sigma may only move down. (A maximum that exists is unique: concavity.)"""
    at = log_likelihood(mu, sigma)
    moves = [(d_mu, d_sigma) for d_mu in (-1e-4, 0, 1e-4) for d_sigma in (-1e-4, 0, 1e-4)
             if (d_mu, d_sigma) != (0, 0) and not (bounded and d_sigma > 0)]
    for d_mu, d_sigma in moves:
        assert log_likelihood(mu + d_mu * sigma, sigma * (1 + d_sigma)) <= at + 1e-9 * abs(at), (label, d_mu, d_sigma)


def test_sample_fits_are_the_bounded_maximum_likelihood(exported):
    v, _ = stored(exported, "pgm_fits")
    for case in ("gaussian", "leaky", "weights_auto"):
        x = v[f"{case}/samples"]
        edges = np.concatenate([[-np.inf], v[f"{case}/breakpoints"], [np.inf]])
        sigma_max = SIGMA_BOUND * x.std()
        piece = np.searchsorted(v[f"{case}/breakpoints"], x, side="right")
        total = 0.0
        for k in range(edges.size - 1):
            xk = x[piece == k]
            mu, sigma = v[f"{case}/means"][k], v[f"{case}/stds"][k]
            bounded = k in v[f"{case}/bounded"]
            assert (sigma == pytest.approx(sigma_max, rel=1e-12)) == bounded and sigma <= sigma_max * (1 + 1e-12)
            assert_local_maximum(lambda m, s: piece_log_likelihood(xk, edges[k], edges[k + 1], m, s), mu, sigma,
                                 bounded, f"{case} piece {k}")
            assert v[f"{case}/weights"][k] == pytest.approx(xk.size / x.size, rel=1e-12)
            total += piece_log_likelihood(xk, edges[k], edges[k + 1], mu, sigma) + xk.size * math.log(xk.size / x.size)
        assert float(v[f"{case}/log_likelihood"]) == pytest.approx(total, rel=1e-11)


def histogram_fit_cases(exported):
    """(label, counts, bin edges, breakpoints, weights, means, stds, bounded) of every histogram fit
    in the vectors: the pgm_fits histogram case and every activation density of the network."""
    v, _ = stored(exported, "pgm_fits")
    case = "leaky_histogram"
    yield (case, v[f"{case}/counts"], v[f"{case}/bin_edges"],
           *(v[f"{case}/{p}"] for p in ("breakpoints", "weights", "means", "stds", "bounded")))
    n, _ = stored(exported, "network")
    for key in sorted(n):
        if key.startswith("densities/activations/") and key.endswith("/means"):
            index = key.split("/")[2]
            prefix = f"densities/activations/{index}"
            yield (f"network activations {index}", n[f"histograms/{index}/counts"], n[f"histograms/{index}/edges"],
                   *(n[f"{prefix}/{p}"] for p in ("breakpoints", "weights", "means", "stds", "bounded")))


def test_histogram_fits_are_the_bounded_maximum_of_the_binned_likelihood(exported):
    """Every histogram fit (the pgm_fits case and the network's calibration densities, whose fits
    once stopped short of a maximum that did not exist): each piece is a local maximum of scipy's
    binned likelihood, on the bound sigma = 10 s exactly when the vector says so (s the std of the
    counts at their bin centres, the finite edge for an infinite outer bin)."""
    checked = 0
    for label, counts, bin_edges, breakpoints, weights, means, stds, bounded in histogram_fit_cases(exported):
        counts = counts.astype(np.float64)
        lo, hi = bin_edges[:-1], bin_edges[1:]
        centre = np.where(np.isinf(lo), hi, np.where(np.isinf(hi), lo, (lo + hi) / 2))
        average = np.sum(counts * centre) / counts.sum()
        sigma_max = SIGMA_BOUND * math.sqrt(np.sum(counts * (centre - average) ** 2) / counts.sum())
        edges = np.concatenate([[-np.inf], breakpoints, [np.inf]])
        piece = np.searchsorted(breakpoints, lo, side="right")
        for k in range(edges.size - 1):
            inside = piece == k
            if counts[inside].sum() == 0:
                continue
            assert weights[k] == pytest.approx(counts[inside].sum() / counts.sum(), rel=1e-12)
            assert (stds[k] == pytest.approx(sigma_max, rel=1e-9)) == (k in bounded), (label, k)
            assert_local_maximum(lambda m, s: binned_log_likelihood(counts[inside], lo[inside], hi[inside], edges[k],
                                                                    edges[k + 1], m, s),
                                 means[k], stds[k], k in bounded, f"{label} piece {k}")
            checked += 1
    assert checked >= 20


# ------------------------------------------------------------------------------------------------
# fake_quantization: PyTorch
# ------------------------------------------------------------------------------------------------

def test_fake_quantization_against_pytorch(exported):
    """torch.fake_quantize_per_tensor_affine (float32 in, float32 out) for the quantizers with an
    integer zero point; its codes are round(x / step) + zero_point with ties to even, as refquant's."""
    v, tolerances = stored(exported, "fake_quantization")
    checked = 0
    for q, (step, zero_point, qmin, qmax) in enumerate(zip(v["quantizers/step"], v["quantizers/zero_point"],
                                                           v["quantizers/qmin"], v["quantizers/qmax"])):
        if zero_point != int(zero_point) or float(np.float32(step)) != step:
            continue  # torch takes an integer zero point, and a float32 scale
        x32 = torch.from_numpy(v[f"q{q}/x32"])
        fake = torch.fake_quantize_per_tensor_affine(x32, float(step), int(zero_point), int(qmin), int(qmax))
        assert_conforms(f"q{q}/fake32", v[f"q{q}/fake32"], fake.numpy(), tolerances[f"q{q}/fake32"])
        checked += 1
    assert checked >= 3
