"""The calibration rules the method is compared with (docs/SPECIFICATION.md, section 7), on samples and on
histograms, and the one registry of calibration methods (:data:`METHODS`).

min-max and percentile (PyTorch's observer rule), ACIQ (Banner et al. 2019, analytical clipping
for a Laplace or Gaussian prior), brute-force MSE search, and TensorRT's KL-divergence calibration.
"""
import dataclasses
import math

import numpy as np
from scipy import optimize, special
from tqdm import tqdm

from refquant.density.histogram import HistogramDensity
from refquant.quantizers.error import empirical_mse, expected_mse
from refquant.quantizers.optimal import optimal_quantizer
from refquant.quantizers.uniform import UniformQuantizer, _check_bits, code_range, signed_quantizer
from refquant.rounding import round_half_even
from refquant.validate import check_scale, finite_samples

PERCENTILE = 99.99
"""The percentile method's clipping percentile, everywhere (NVIDIA pytorch-quantization's default)."""


def quantizer_from_interval(lo, hi, bits, symmetric=False):
    """The calibration rule of PyTorch's observers (``torch.ao.quantization.observer``,
    ``UniformQuantizationObserverBase._calculate_qparams``) turning a clipping interval into codes.

    The interval is first stretched to hold 0 (``lo <= 0 <= hi``). Then, with
    ``eps = float32 machine epsilon``:

    - affine (unsigned codes ``[0, 2**bits - 1]``): ``step = max((hi - lo) / (qmax - qmin), eps)``,
      ``zero_point = clip(qmin - round(lo / step), qmin, qmax)``;
    - symmetric (signed codes ``[-2**(bits-1), 2**(bits-1) - 1]``, zero point 0):
      ``step = max(max(-lo, hi) / ((qmax - qmin) / 2), eps)``.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"quantizer_from_interval: interval must be finite, got [{lo}, {hi}]")
    eps = float(np.finfo(np.float32).eps)
    qmin, qmax = code_range(bits, signed=symmetric)
    if symmetric:
        return UniformQuantizer(max(max(-lo, hi) / ((qmax - qmin) / 2.0), eps), 0, qmin, qmax)
    step = max((hi - lo) / (qmax - qmin), eps)
    zero_point = int(np.clip(qmin - round_half_even(lo / step), qmin, qmax))
    return UniformQuantizer(step, zero_point, qmin, qmax)


def minmax_quantizer(samples, bits, symmetric=False):
    """Min-max calibration: the interval ``[min x, max x]`` (PyTorch's ``MinMaxObserver``)."""
    x = finite_samples(samples, "minmax_quantizer")
    return quantizer_from_interval(x.min(), x.max(), bits, symmetric)


def percentile_quantizer(samples, bits, percentile=PERCENTILE, symmetric=False):
    """Percentile calibration: the interval between the ``100 - p`` and ``p`` percentiles of x
    (symmetric: ``[-a, a]`` with ``a`` the ``p`` percentile of ``|x|``), as in NVIDIA's
    pytorch-quantization ``HistogramCalibrator(method="percentile")``; numpy's linear percentile."""
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile_quantizer: percentile must be in (50, 100], got {percentile}")
    x = finite_samples(samples, "percentile_quantizer")
    if symmetric:
        a = np.percentile(np.abs(x), percentile)
        return quantizer_from_interval(-a, a, bits, symmetric=True)
    lo, hi = np.percentile(x, [100.0 - percentile, percentile])
    return quantizer_from_interval(lo, hi, bits)


def aciq_clipping(bits, prior="gaussian"):
    """ACIQ's optimal clipping value, in units of sigma (Gaussian) or of the Laplace scale b.

    Banner, Nahshan & Soudry, "Post training 4-bit quantization of convolutional networks for
    rapid-deployment", NeurIPS 2019 (arXiv:1810.05723), section 3: for a density symmetric about
    its mean clipped to ``[-alpha, alpha]`` and ``2**M`` levels, the error is modelled as the exact
    clipping error plus the granular noise ``Delta^2 / 12`` of the step ``Delta = 2 alpha / 2**M``:

        Laplace(b):     2 b^2 exp(-alpha/b) + alpha^2 / (3 * 4**M)
        N(0, sigma^2):  (alpha^2 + sigma^2) (1 - erf(alpha / (sqrt2 sigma)))
                        - sqrt(2/pi) alpha sigma exp(-alpha^2 / (2 sigma^2)) + alpha^2 / (3 * 4**M)

    and ``alpha`` minimises it (here numerically, to 1e-10). The paper quotes, truncated to two
    decimals, 2.83b, 3.89b, 5.03b (Laplace) and 1.71, 2.15, 2.55 sigma (Gaussian) at M = 2, 3, 4.
    """
    _check_bits(bits)
    granular = 1.0 / (3.0 * 4.0**bits)
    if prior == "gaussian":
        def model(alpha):
            return ((alpha * alpha + 1.0) * special.erfc(alpha / math.sqrt(2.0))
                    - math.sqrt(2.0 / math.pi) * alpha * math.exp(-0.5 * alpha * alpha)
                    + alpha * alpha * granular)
    elif prior == "laplace":
        def model(alpha):
            return 2.0 * math.exp(-alpha) + alpha * alpha * granular
    else:
        raise ValueError(f"aciq_clipping: prior must be 'gaussian' or 'laplace', got {prior!r}")
    return float(optimize.minimize_scalar(model, bounds=(1e-3, 40.0), method="bounded",
                                          options={"xatol": 1e-10}).x)


def aciq_quantizer(samples, bits, prior="gaussian", symmetric=False):
    """ACIQ calibration: clip to ``mean +- alpha`` with ``alpha`` from :func:`aciq_clipping` times the
    sample's sigma (Gaussian) or ``b = mean |x - mean|`` (Laplace), as Banner et al. estimate them;
    ``symmetric`` centres the interval on 0 instead (weights)."""
    x = finite_samples(samples, "aciq_quantizer")
    spread = float(np.std(x)) if prior == "gaussian" else float(np.mean(np.abs(x - np.mean(x))))
    return aciq_quantizer_from_spread(float(np.mean(x)), spread, bits, prior, symmetric)


def aciq_quantizer_from_spread(mean, spread, bits, prior="gaussian", symmetric=False):
    """ACIQ's rule given the estimates: the interval ``center +- aciq_clipping(bits, prior) * spread``
    (``center`` = ``mean``, or 0 when ``symmetric``; ``spread`` = sigma for the Gaussian prior, the
    Laplace scale b for the Laplace prior), turned into codes by :func:`quantizer_from_interval`."""
    if not (math.isfinite(mean) and math.isfinite(spread) and spread >= 0.0):
        raise ValueError(f"aciq_quantizer_from_spread: need a finite mean and spread >= 0, got mean={mean!r}, "
                         f"spread={spread!r}")
    center = 0.0 if symmetric else float(mean)
    alpha = aciq_clipping(bits, prior) * float(spread)
    return quantizer_from_interval(center - alpha, center + alpha, bits, symmetric)


def mse_search_quantizer(samples, bits, symmetric=False, num_candidates=24, progress=None):
    """Brute-force MSE search over the samples: every candidate interval, its empirical error.

    Candidates: ``[f_i min, f_j max]`` for the fractions ``f = 0, 1/C, ..., 1`` of the extremes
    (``C = num_candidates``, the extremes stretched to hold 0), all pairs of nonzero width, each
    turned into codes by :func:`quantizer_from_interval` and scored by :func:`empirical_mse`;
    symmetric: ``[-f a, f a]`` with ``a = max |x|``. Costs ``(C+1)^2`` passes over the samples,
    shown by a tqdm bar (``progress=None``: on a terminal only; True/False force it).
    """
    x = finite_samples(samples, "mse_search_quantizer")
    return _mse_search(lambda quantizer: empirical_mse(x, quantizer), float(x.min()), float(x.max()), bits,
                       symmetric, num_candidates, progress, "mse_search_quantizer")


def mse_search_intervals(minimum, maximum, symmetric=False, num_candidates=24):
    """The candidate intervals of the MSE search, in the order they are tried.

    Affine: ``[f_i low, f_j high]`` for the fractions ``f = 0, 1/C, ..., 1`` with
    ``low = min(minimum, 0)``, ``high = max(maximum, 0)``, every pair of nonzero width;
    symmetric: ``[-f a, f a]``, ``f = 1/C, ..., 1``, ``a = max(|minimum|, |maximum|)``.
    """
    fractions = np.arange(1, num_candidates + 1) / num_candidates
    if symmetric:
        a = max(abs(minimum), abs(maximum))
        return [(-f * a, f * a) for f in fractions]
    low, high = min(minimum, 0.0), max(maximum, 0.0)
    fractions = np.concatenate([[0.0], fractions])
    return [(fl * low, fh * high) for fl in fractions for fh in fractions if fl * low < fh * high]


def _mse_search(error_of, minimum, maximum, bits, symmetric, num_candidates, progress, caller):
    """The candidate of :func:`mse_search_intervals` with the least ``error_of(quantizer)``
    (the first of equals)."""
    intervals = mse_search_intervals(minimum, maximum, symmetric, num_candidates)
    if not intervals:
        raise ValueError(f"{caller}: all values are 0")
    best, best_error = None, np.inf
    for lo, hi in tqdm(intervals, desc="MSE search", disable=None if progress is None else not progress,
                       leave=False):
        quantizer = quantizer_from_interval(lo, hi, bits, symmetric)
        error = error_of(quantizer)
        if error < best_error:
            best, best_error = quantizer, error
    return best


def expanded_quantized_distribution(bins, num_quantized_bins, nonzero=None):
    """Quantize ``bins`` (i,) into ``num_quantized_bins`` levels and expand back to i bins.

    Level j merges bins ``[j m, (j+1) m)`` with ``m = i // num_quantized_bins`` (the last level
    also takes the remaining bins); its total is spread evenly over the bins of the level where
    ``nonzero`` (default ``bins != 0``) holds, zero elsewhere. The slides' example:
    ``[1,0,2,3,5,3,1,7]`` into 2 levels -> ``[2,0,2,2,4,4,4,4]``.
    """
    bins = np.asarray(bins, dtype=np.float64)
    nonzero = bins != 0 if nonzero is None else np.asarray(nonzero, dtype=bool)
    if bins.size < num_quantized_bins:
        raise ValueError(f"expanded_quantized_distribution: {bins.size} bins < {num_quantized_bins} levels")
    merged = bins.size // num_quantized_bins
    starts = np.arange(num_quantized_bins) * merged
    totals = np.add.reduceat(bins, starts)
    counts = np.add.reduceat(nonzero.astype(np.float64), starts)
    level_of_bin = np.minimum(np.arange(bins.size) // merged, num_quantized_bins - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(counts > 0, totals / counts, 0.0)
    return np.where(nonzero, share[level_of_bin], 0.0)


def kl_divergence(p, q):
    """``KL(P || Q) = sum_{P > 0} P log(P / Q)`` of two histograms, each normalised to sum 1;
    ``inf`` when Q is 0 where P is not."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if q.sum() <= 0:
        return math.inf
    p, q = p / p.sum(), q / q.sum()
    support = p > 0
    if np.any(q[support] == 0):
        return math.inf
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


def kl_threshold(histogram, bin_width, num_quantized_bins=128):
    """TensorRT's threshold search on a histogram of |x|: ``(threshold, divergences)``.

    ``divergences[i - num_quantized_bins]`` is ``KL(P_i || Q_i)`` for the candidate with i bins,
    ``i = num_quantized_bins .. len(histogram) - 1`` (the talk's ``range(128, 2048)``);
    ``threshold = (m + 0.5) * bin_width`` for the minimising m.
    """
    histogram = np.asarray(histogram, dtype=np.float64)
    if histogram.ndim != 1 or histogram.size <= num_quantized_bins:
        raise ValueError(f"kl_threshold: need a 1-D histogram with more than {num_quantized_bins} bins, "
                         f"got shape {histogram.shape}")
    if np.any(histogram < 0) or histogram.sum() <= 0:
        raise ValueError("kl_threshold: histogram counts must be >= 0 and not all 0")
    outliers = np.concatenate([np.cumsum(histogram[::-1])[::-1], [0.0]])   # outliers[i] = sum bins[i:]
    divergences = np.empty(histogram.size - num_quantized_bins)
    for i in range(num_quantized_bins, histogram.size):
        reference = histogram[:i].copy()
        reference[i - 1] += outliers[i]
        candidate = expanded_quantized_distribution(histogram[:i], num_quantized_bins, reference != 0)
        divergences[i - num_quantized_bins] = kl_divergence(reference, candidate)
    m = num_quantized_bins + int(np.argmin(divergences))
    return (m + 0.5) * bin_width, divergences


def kl_quantizer(samples, bits=8, num_bins=2048):
    """TensorRT's entropy calibration: threshold T by :func:`kl_threshold` on a ``num_bins``-bin
    histogram of |x| over ``[0, max |x|]`` with ``2**(bits-1)`` quantized levels, then the
    symmetric narrow-range codes of TensorRT: ``step = T / (2**(bits-1) - 1)``, codes
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``."""
    x = np.abs(finite_samples(samples, "kl_quantizer"))
    _check_bits(bits, "kl_quantizer (narrow signed codes)", low=2)
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins <= 2**(bits - 1):
        raise ValueError(f"kl_quantizer: num_bins must be an int above 2**(bits-1) = {2**(bits - 1)}, got {num_bins!r}")
    amax = float(x.max())
    if amax == 0.0:
        raise ValueError("kl_quantizer: all samples are 0")
    check_scale(amax / num_bins, "kl_quantizer", "the bin width max |samples| / num_bins", spread=True)
    histogram, _ = np.histogram(x, bins=num_bins, range=(0.0, amax))
    threshold, _ = kl_threshold(histogram, amax / num_bins, 2**(bits - 1))
    return signed_quantizer(bits, threshold / (2**(bits - 1) - 1), narrow_range=True)


def baseline_quantizers(samples, bits, symmetric=False, num_candidates=24):
    """Every baseline of :data:`METHODS` on the same samples: dict label -> UniformQuantizer.

    KL calibration is always symmetric narrow-range (as in TensorRT) and is left out below 2 bits.
    """
    return {method.label: method.from_samples(samples, bits, symmetric, num_candidates)
            for method in METHODS.values() if method.from_samples is not None and (method.name != "kl" or bits >= 2)}


def method_errors(samples, bits, dist=None, symmetric=False, num_candidates=24):
    """Empirical error on ``samples`` of every baseline and, given a fitted ``dist``, of
    ``optimal_quantizer(dist, bits, symmetric=symmetric)``: dict method name -> MSE."""
    quantizers = baseline_quantizers(samples, bits, symmetric, num_candidates)
    if dist is not None:
        quantizers["optimal (density)"] = optimal_quantizer(dist, bits, symmetric=symmetric)
    return {name: empirical_mse(samples, quantizer) for name, quantizer in quantizers.items()}


def _histogram_density(density, caller):
    if not isinstance(density, HistogramDensity):
        raise TypeError(f"{caller}: expected a HistogramDensity, got {type(density).__name__}")
    return density


def _extremes(density, extremes, caller):
    """``(minimum, maximum)``: the given exact extremes, else the density's support."""
    if extremes is None:
        return density.support
    minimum, maximum = (float(v) for v in extremes)
    if not (math.isfinite(minimum) and math.isfinite(maximum) and minimum <= maximum):
        raise ValueError(f"{caller}: extremes must be finite with minimum <= maximum, got {extremes!r}")
    return minimum, maximum


def minmax_quantizer_histogram(density, bits, symmetric=False, extremes=None):
    """Min-max on a histogram: the interval ``extremes`` (the data's exact minimum and maximum,
    which a calibration histogram keeps beside its counts), else the support of the non-empty bins."""
    density = _histogram_density(density, "minmax_quantizer_histogram")
    return minmax_quantizer(np.array(_extremes(density, extremes, "minmax_quantizer_histogram")), bits, symmetric)


def percentile_quantizer_histogram(density, bits, percentile=PERCENTILE, symmetric=False):
    """:func:`percentile_quantizer` on a histogram: the percentiles read from its CDF (linear inside
    a bin); symmetric: ``a`` = the ``p`` percentile of ``|x|`` (:meth:`HistogramDensity.folded`)."""
    density = _histogram_density(density, "percentile_quantizer_histogram")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile_quantizer_histogram: percentile must be in (50, 100], got {percentile}")
    if symmetric:
        a = float(density.folded().ppf(percentile / 100.0))
        return quantizer_from_interval(-a, a, bits, symmetric=True)
    lo, hi = density.ppf([1.0 - percentile / 100.0, percentile / 100.0])
    return quantizer_from_interval(lo, hi, bits)


def aciq_quantizer_histogram(density, bits, prior="gaussian", symmetric=False, mean=None, std=None):
    """:func:`aciq_quantizer` on a histogram: ACIQ's spread from the histogram's moments.

    ``mean``, ``std``: the data's exact mean and standard deviation when known (a calibration
    histogram keeps the exact sum and sum of squares), else the density's (its variance includes
    the ``w^2 / 12`` of each bin). Laplace: ``b = E|X - mean|`` under the density
    (:meth:`HistogramDensity.absolute_deviation`).
    """
    density = _histogram_density(density, "aciq_quantizer_histogram")
    mean = density.mean() if mean is None else float(mean)
    if prior == "gaussian":
        spread = density.std() if std is None else float(std)
    elif prior == "laplace":
        spread = density.absolute_deviation(mean)
    else:
        raise ValueError(f"aciq_quantizer_histogram: prior must be 'gaussian' or 'laplace', got {prior!r}")
    return aciq_quantizer_from_spread(mean, spread, bits, prior, symmetric)


def mse_search_quantizer_histogram(density, bits, symmetric=False, num_candidates=24, extremes=None,
                                   progress=None):
    """:func:`mse_search_quantizer` on a histogram: the same candidate intervals
    (:func:`mse_search_intervals`, from ``extremes`` or the support), each scored by
    :func:`expected_mse` under the histogram's density (the mean squared error of the binned data,
    values spread uniformly inside their bin) instead of the samples' empirical error."""
    density = _histogram_density(density, "mse_search_quantizer_histogram")
    minimum, maximum = _extremes(density, extremes, "mse_search_quantizer_histogram")
    return _mse_search(lambda quantizer: expected_mse(density, quantizer), minimum, maximum, bits, symmetric,
                       num_candidates, progress, "mse_search_quantizer_histogram")


def kl_quantizer_histogram(density, bits=8, num_bins=2048, extremes=None):
    """:func:`kl_quantizer` on a histogram: the histogram of ``|x|`` (:meth:`HistogramDensity.folded`)
    re-binned into ``num_bins`` equal bins over ``[0, max |x|]`` (``max |x|`` from ``extremes`` or
    the support), then TensorRT's threshold search :func:`kl_threshold` and its symmetric
    narrow-range codes. A histogram whose bins already are those ``num_bins`` bins gives exactly
    :func:`kl_quantizer`'s counts."""
    density = _histogram_density(density, "kl_quantizer_histogram")
    _check_bits(bits, "kl_quantizer_histogram (narrow signed codes)", low=2)
    minimum, maximum = _extremes(density, extremes, "kl_quantizer_histogram")
    amax = max(abs(minimum), abs(maximum))
    if amax == 0.0:
        raise ValueError("kl_quantizer_histogram: all values are 0")
    counts = density.folded().counts_between(np.linspace(0.0, amax, num_bins + 1))  # np.histogram's edges
    threshold, _ = kl_threshold(np.maximum(counts, 0.0), amax / num_bins, 2**(bits - 1))
    return signed_quantizer(bits, threshold / (2**(bits - 1) - 1), narrow_range=True)


@dataclasses.dataclass(frozen=True)
class Method:
    """A calibration method: its name (in plans, results and on the command line), its label (in
    tables and plots) and how it makes a quantizer from samples (weights) and from an activation
    histogram. The PGM method has neither rule here: it is a density fit followed by
    :func:`refquant.quantizers.optimal.optimal_quantizer` (:func:`refquant.ptq.quantization_plan`).

    ``from_samples(samples, bits, symmetric, num_candidates)``; ``from_histogram(histogram, bits)``
    with ``histogram`` an :class:`refquant.ptq.ActivationHistogram` (its density, exact extremes,
    mean and standard deviation).
    """
    name: str
    label: str
    from_samples: object = None
    from_histogram: object = None


def _histogram_extremes(histogram):
    return histogram.min, histogram.max


METHODS = {method.name: method for method in [
    Method("pgm", "PGM"),
    Method("pgm-paper", "PGM, paper's fits"),
    Method("minmax", "min-max",
           lambda x, bits, symmetric, _: minmax_quantizer(x, bits, symmetric),
           lambda h, bits: minmax_quantizer_histogram(h.density(), bits, extremes=_histogram_extremes(h))),
    Method("percentile", "percentile",
           lambda x, bits, symmetric, _: percentile_quantizer(x, bits, PERCENTILE, symmetric),
           lambda h, bits: percentile_quantizer_histogram(h.density(), bits, PERCENTILE)),
    Method("aciq", "ACIQ",
           lambda x, bits, symmetric, _: aciq_quantizer(x, bits, "laplace", symmetric),
           lambda h, bits: aciq_quantizer_histogram(h.density(), bits, "laplace", mean=h.mean(), std=h.std())),
    Method("aciq-gauss", "ACIQ (Gauss)",
           lambda x, bits, symmetric, _: aciq_quantizer(x, bits, "gaussian", symmetric),
           lambda h, bits: aciq_quantizer_histogram(h.density(), bits, "gaussian", mean=h.mean(), std=h.std())),
    Method("mse", "MSE search",
           lambda x, bits, symmetric, candidates: mse_search_quantizer(x, bits, symmetric, candidates, progress=False),
           lambda h, bits: mse_search_quantizer_histogram(h.density(), bits, extremes=_histogram_extremes(h),
                                                          progress=False)),
    Method("kl", "KL (TensorRT)",
           lambda x, bits, symmetric, _: kl_quantizer(x, bits),
           lambda h, bits: kl_quantizer_histogram(h.density(), bits, extremes=_histogram_extremes(h))),
]}
"""The one registry of calibration methods: name -> :class:`Method`. The ACIQ method without a
suffix uses the Laplace prior (Banner et al.'s choice for activations). ``"pgm-paper"`` is the PGM
method with the paper's density fits (:data:`refquant.ptq.PAPER_FITS`), kept beside the default
``"pgm"`` so that both are measured."""

DENSITY_METHODS = ("pgm", "pgm-paper")
"""The methods whose intervals come from a fitted density and :func:`~refquant.quantizers.optimal.optimal_quantizer`."""
