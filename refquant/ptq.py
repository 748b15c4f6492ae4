"""Post-training calibration (docs/SPECIFICATION.md, section 11.3): the folded float network runs over calibration
images, every quantized layer's outputs are accumulated into histograms with power-of-two bins,
and a plan is made from those statistics by the PGM method or a baseline
(:func:`calibration_statistics`, :func:`quantization_plan`, :func:`calibrate`).
"""
import math
import warnings

import numpy as np
from tqdm import tqdm

from refquant.density import histogram as density_histogram
from refquant.density.em import ConvergenceWarning
from refquant.density.pgm import PiecewiseGaussian
from refquant.folding import fold_batchnorm
from refquant.plan import (
    CODE_LAYERS,
    DEFAULT_BITS_FIRST_LAST,
    QuantizationPlan,
    check_supported,
    layer_bits,
    quantized_outputs,
)
from refquant.quantizers import optimal
from refquant.quantizers.baselines import DENSITY_METHODS, METHODS
from refquant.yolo.network import NETWORK_INPUT

DEFAULT_BINS = 2048
"""Histogram bins per layer (TensorRT's calibration histograms use 2048 too)."""


ACTIVATION_BREAKPOINTS = ("kink", "auto")
"""Policies for the activations' PGM breakpoints (docs/SPECIFICATION.md, section 11.3): ``"kink"`` (0 alone
for leaky-ReLU outputs) or ``"auto"`` (chosen by BIC for every layer)."""


DEFAULT_ACTIVATION_BREAKPOINTS = "auto"
"""The policy used when none is given (and for plans saved without one). Chosen on shapes trees of
seeds 9001-9003 (never the shipped test split): with ``"kink"`` the single Gaussian of a leaky
ReLU's positive side has a tail far lighter than trained activations', its optimal intervals clip
them, and 6-bit PTQ lost 2.2 mAP points against 0.8 with ``"auto"`` (docs/method-study.md)."""

ACTIVATION_MAX_PIECES = 6
"""Most pieces of an activation PGM (chosen by BIC among 1..6). With calibration's millions of
values BIC takes every piece it is offered; at 4 pieces the densities' tails were so light that
the squared error they predicted at 8 bits was 2 to 19 times the error measured on the same
histogram (``refquant diagnose``), and the head input's interval clipped its class logits
(8-bit PTQ 0.53 points below float on fresh trees); at 6 pieces, 0.17 (docs/method-study.md)."""


PAPER_FITS = {"activation_breakpoints": "kink", "max_pieces_activations": 4}
"""The activation fits of the ``"pgm-paper"`` method: a leaky ReLU's output as the paper models it,
two pieces split at 0, and at most 4 pieces elsewhere (refquant's defaults until they were measured
on fresh data: :data:`DEFAULT_ACTIVATION_BREAKPOINTS`, :data:`ACTIVATION_MAX_PIECES`)."""

PGM_FIT_OPTIONS = {}
"""Keyword arguments of the calibration's PGM fits (``max_iter``, ``tol``, ...): none, i.e.
``refquant.density.pgm``'s defaults. A tail piece (the negative side of a leaky ReLU, a weight tail) can
reach ``max_iter`` with a flat likelihood; such fits are listed in
``CalibrationStatistics.fit_warnings`` and reported by one warning per plan."""


class ActivationHistogram:
    """Counts of a layer's values over a calibration set, in bounded memory (docs/SPECIFICATION.md, section 11.3).

    Bin ``j`` is ``[j * bin_width, (j + 1) * bin_width)`` for ``j = first .. first + len(counts) - 1``;
    ``bin_width`` is a power of two, doubled (pairs of bins merged) whenever the range would need
    more than ``max_bins`` bins. Also kept exactly: ``count``, ``min``, ``max``; ``sum`` and
    ``sum_squares`` (float64) add up the batches' own sums in batch order.

    The calibration set's batches are numbered from 0: ``first_batch`` is the number of the first
    batch this histogram counts, and each :meth:`add` counts the next one. The histogram that starts
    at batch 0 starts at the width :func:`_initial_bin_width` gives that batch; one that starts later
    cannot know that width and keeps the finest width that fits its own values
    (:func:`_finest_bin_width`), never coarser than the whole set's. So histograms of parts of the
    set :meth:`merge` into the histogram of the whole, bit for bit (:mod:`refquant.distributed`
    counts the parts on several machines).
    """

    def __init__(self, max_bins=DEFAULT_BINS, first_batch=0):
        if isinstance(max_bins, bool) or not isinstance(max_bins, (int, np.integer)) or max_bins < 16:
            raise ValueError(f"ActivationHistogram: max_bins must be an int >= 16, got {max_bins!r}")
        if isinstance(first_batch, bool) or not isinstance(first_batch, (int, np.integer)) or first_batch < 0:
            raise ValueError(f"ActivationHistogram: first_batch must be an int >= 0, got {first_batch!r}")
        self.max_bins = int(max_bins)
        self.first_batch = int(first_batch)
        self.bin_width = None
        self.first = 0
        self.counts = np.zeros(0, np.int64)
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.batch_sums = {}  # {batch number: (sum, sum of squares) of that batch's values}

    @property
    def sum(self):
        """The sum of every value counted: the batches' sums added in batch order."""
        return _sum_in_batch_order(self.batch_sums, 0)

    @property
    def sum_squares(self):
        """The sum of the squares of every value counted, the batches' added in batch order."""
        return _sum_in_batch_order(self.batch_sums, 1)

    @property
    def edges(self):
        """(B+1,) float64 bin edges ``(first + k) * bin_width``."""
        return (self.first + np.arange(self.counts.size + 1, dtype=np.float64)) * self.bin_width

    def _bins_needed(self, width):
        return _bins_needed(self.min, self.max, width)

    def add(self, values):
        """Count the values of an array of any shape as the next batch (floats; NaN or inf is a ValueError)."""
        x = np.asarray(values, dtype=np.float64).ravel()
        if x.size == 0:
            return self
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise ValueError(f"ActivationHistogram.add: {bad} values are NaN or infinite")
        held = self.min if self.count and self.min == self.max else None  # the one value counted so far
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        batch = max(self.batch_sums, default=self.first_batch - 1) + 1
        # NumPy's pairwise sums, not np.dot: the BLAS's dot product adds in an order that depends on
        # its thread count, which refquant.threads sets from the machine's load
        self.batch_sums[batch] = (float(np.sum(x)), float(np.sum(np.square(x))))
        if self.bin_width is None:
            self.bin_width = (_initial_bin_width(lo, hi, self.max_bins) if self.first_batch == 0
                              else _finest_bin_width(lo, hi, self.max_bins))
            self.first = math.floor(lo / self.bin_width)
        elif held is not None and self.first_batch > 0:
            # a later part that held a single value: any width serves it, so the finest of the new range
            self.bin_width = _finest_bin_width(self.min, self.max, self.max_bins)
            self.first = math.floor(held / self.bin_width)
            self.counts = np.array([self.count], np.int64)
        self.count += x.size
        while self._bins_needed(self.bin_width) > self.max_bins:
            self._coarsen()
        first = math.floor(self.min / self.bin_width)
        last = math.floor(self.max / self.bin_width)
        if first < self.first or last >= self.first + self.counts.size:
            grown = np.zeros(last - first + 1, np.int64)
            grown[self.first - first:self.first - first + self.counts.size] = self.counts
            self.counts, self.first = grown, first
        # x / bin_width is exact (a power of two), so floor puts each value in its bin exactly.
        bins = np.floor(x / self.bin_width).astype(np.int64) - self.first
        self.counts += np.bincount(bins, minlength=self.counts.size)
        return self

    def _coarsen(self):
        """Double the bin width: bins 2k and 2k+1 become bin k."""
        counts, first = self.counts, self.first
        if first % 2:
            counts, first = np.concatenate([[0], counts]), first - 1
        if counts.size % 2:
            counts = np.concatenate([counts, [0]])
        self.counts = counts.reshape(-1, 2).sum(axis=1)
        self.first = first // 2
        self.bin_width *= 2.0

    def merge(self, *others):
        """The histogram of the batches of this histogram and of ``others`` together: equal, bit for
        bit, to the histogram that :meth:`add` makes of those batches in batch order, whatever the
        order and grouping of the parts.

        The merged width is the smallest power of two, at least the width of the part that starts at
        batch 0 (the set's initial width) and of every part holding more than one value, that fits
        the merged range in ``max_bins`` bins (a part holding a single value fits any width). Bins of
        power-of-two widths from 0 nest, so each part's counts move into the merged bins exactly; the
        batches' sums are kept per batch and added in batch order. ValueError if the parts differ in
        ``max_bins`` or count a batch twice.
        """
        parts = (self, *others)
        for part in parts:
            if not isinstance(part, ActivationHistogram) or part.max_bins != self.max_bins:
                raise ValueError(f"ActivationHistogram.merge: expected histograms of max_bins={self.max_bins}, "
                                 f"got {getattr(part, 'max_bins', type(part).__name__)!r}")
        batches = [batch for part in parts for batch in part.batch_sums]
        if len(set(batches)) != len(batches):
            twice = sorted({batch for batch in batches if batches.count(batch) > 1})
            raise ValueError(f"ActivationHistogram.merge: batches {twice} are counted by more than one part")
        merged = ActivationHistogram(self.max_bins, min(part.first_batch for part in parts))
        for part in parts:
            merged.batch_sums.update(part.batch_sums)
        counted = [part for part in parts if part.count]
        if not counted:
            return merged
        merged.count = sum(part.count for part in counted)
        merged.min, merged.max = min(part.min for part in counted), max(part.max for part in counted)
        bounds = [part.bin_width for part in counted if part.first_batch == 0 or part.min < part.max]
        width = max(bounds) if bounds else _finest_bin_width(merged.min, merged.max, self.max_bins)
        while merged._bins_needed(width) > self.max_bins:
            width *= 2.0
        merged.bin_width, merged.first = width, math.floor(merged.min / width)
        merged.counts = np.zeros(math.floor(merged.max / width) - merged.first + 1, np.int64)
        for part in counted:
            if part.min == part.max:
                merged.counts[math.floor(part.min / width) - merged.first] += part.count
            else:  # bin j of width w lies in bin floor(j / r) of width r w (r a power of two)
                ratio = int(width / part.bin_width)
                np.add.at(merged.counts, (part.first + np.arange(part.counts.size)) // ratio - merged.first,
                          part.counts)
        return merged

    def mean(self):
        """The exact mean of every value added."""
        return self.sum / self.count

    def std(self):
        """The exact (population) standard deviation of every value added, from the sums."""
        mean = self.mean()
        return math.sqrt(max(self.sum_squares / self.count - mean * mean, 0.0))

    def density(self):
        """The histogram as a :class:`refquant.density.histogram.HistogramDensity` (uniform inside each bin).

        The first bin's left edge becomes the exact minimum and the last bin's right edge the
        exact maximum, unless that would empty the bin (a maximum lying exactly on the last
        bin's left edge), where the bin keeps its width: the density never reaches past the
        data by more than that one bin.
        """
        if self.count == 0:
            raise ValueError("ActivationHistogram.density: the histogram is empty")
        edges = self.edges
        edges[0] = self.min
        if self.max > edges[-2]:
            edges[-1] = self.max
        return density_histogram.HistogramDensity(self.counts, edges)

    def sample(self, n, rng=0):
        """``n`` values drawn from the histogram (bins by count, uniform inside, clipped to the
        exact extremes), followed by the exact minimum and maximum: (n + 2,) float64."""
        if self.count == 0:
            raise ValueError("ActivationHistogram.sample: the histogram is empty")
        rng = np.random.default_rng(rng)
        bins = rng.choice(self.counts.size, size=int(n), p=self.counts / self.counts.sum())
        values = (self.first + bins + rng.random(int(n))) * self.bin_width
        return np.concatenate([np.clip(values, self.min, self.max), [self.min, self.max]])

    def to_dict(self):
        """Plain data (counts, edges, the exact statistics and the batches' sums), e.g. for JSON;
        :meth:`from_dict` rebuilds the histogram bit for bit."""
        return {"max_bins": self.max_bins, "first_batch": self.first_batch, "bin_width": self.bin_width,
                "first": self.first, "counts": self.counts.tolist(), "count": self.count, "min": self.min,
                "max": self.max, "sum": self.sum, "sum_squares": self.sum_squares,
                "batch_sums": [[batch, *sums] for batch, sums in sorted(self.batch_sums.items())]}

    @classmethod
    def from_dict(cls, data):
        """The histogram :meth:`to_dict` described (its float fields are copied, never recomputed)."""
        histogram = cls(data["max_bins"], data["first_batch"])
        histogram.bin_width, histogram.first = data["bin_width"], int(data["first"])
        histogram.counts = np.array(data["counts"], np.int64)
        histogram.count, histogram.min, histogram.max = int(data["count"]), data["min"], data["max"]
        histogram.batch_sums = {int(batch): (total, squares) for batch, total, squares in data["batch_sums"]}
        return histogram


def _sum_in_batch_order(batch_sums, which):
    total = 0.0
    for batch in sorted(batch_sums):
        total += batch_sums[batch][which]
    return total


def _bins_needed(lo, hi, width):
    """Bins of ``width`` (a power of two) from the one holding ``lo`` to the one holding ``hi``."""
    return math.floor(hi / width) - math.floor(lo / width) + 1


def _finest_bin_width(lo, hi, max_bins):
    """Smallest power of two giving at most ``max_bins`` bins over [lo, hi] (for lo == hi, where any
    width serves, :func:`_initial_bin_width`'s)."""
    if hi == lo:
        return _initial_bin_width(lo, hi, max_bins)
    # A width below (hi - lo) / max_bins needs more than max_bins bins; start a power of two lower
    # than that bound (its rounding) and double: the bins needed never grow as the width doubles.
    width = 2.0 ** (math.floor(math.log2((hi - lo) / max_bins)) - 1)
    while _bins_needed(lo, hi, width) > max_bins:
        width *= 2.0
    return width


def _initial_bin_width(lo, hi, max_bins):
    """A power of two giving at most ``max_bins`` bins over [lo, hi]: ``(hi - lo) / (max_bins - 1)``
    rounded up to one, doubled while too fine (so at most twice :func:`_finest_bin_width`; for
    lo == hi, the power of two at or below ``|lo|``)."""
    span = hi - lo
    if span == 0.0:
        return 2.0 ** math.floor(math.log2(abs(lo))) if lo != 0.0 else 1.0
    width = 2.0 ** math.ceil(math.log2(span / (max_bins - 1)))
    while math.floor(hi / width) - math.floor(lo / width) + 1 > max_bins:
        width *= 2.0
    return width


class CalibrationStatistics:
    """What calibration learns from the data, independent of the widths and the method.

    ``net``: the folded network (weights are read from it when a plan is made: a snapshot valid
    while its weights do not change); ``histograms``: {layer index: ActivationHistogram} of every
    quantized output. PGM fits and histogram samples are cached, so plans at several widths and
    methods cost one calibration pass (:func:`quantization_plan`).
    """

    def __init__(self, net, histograms, max_pieces_weights=3, max_pieces_activations=ACTIVATION_MAX_PIECES,
                 baseline_samples=2**17, seed=0, fit_options=None,
                 activation_breakpoints=DEFAULT_ACTIVATION_BREAKPOINTS):
        if activation_breakpoints not in ACTIVATION_BREAKPOINTS:
            raise ValueError(f"activation_breakpoints must be one of {', '.join(ACTIVATION_BREAKPOINTS)}, "
                             f"got {activation_breakpoints!r}")
        self.activation_breakpoints = activation_breakpoints
        self.net = net
        self.fit_options = dict(PGM_FIT_OPTIONS if fit_options is None else fit_options)
        self.histograms = histograms
        self.max_pieces_weights = max_pieces_weights
        self.max_pieces_activations = max_pieces_activations
        self.baseline_samples = int(baseline_samples)
        self.seed = seed
        self.densities = {}
        self._samples = {}
        self._variants = {}
        self.fit_warnings = {}

    def variant(self, activation_breakpoints, max_pieces_activations):
        """These statistics with other activation fits (the same histograms and weights; its own
        density cache), made once per setting."""
        key = (activation_breakpoints, max_pieces_activations)
        if key == (self.activation_breakpoints, self.max_pieces_activations):
            return self
        if key not in self._variants:
            self._variants[key] = CalibrationStatistics(self.net, self.histograms, self.max_pieces_weights,
                                                        max_pieces_activations, self.baseline_samples, self.seed,
                                                        self.fit_options, activation_breakpoints)
        return self._variants[key]

    def weights(self, index):
        """The folded weights of convolution ``index`` as float64 (M, C, k, k)."""
        return self.net.layers[index].params["weights"].astype(np.float64)

    def sample(self, index):
        """The baselines' sample of layer ``index``'s outputs (:meth:`ActivationHistogram.sample`)."""
        if index not in self._samples:
            self._samples[index] = self.histograms[index].sample(self.baseline_samples, rng=[self.seed, index])
        return self._samples[index]

    def density(self, kind, index):
        """The PGM of layer ``index``'s ``kind`` (``"weights"`` or ``"activations"``), fitted once."""
        key = (kind, index)
        if key not in self.densities:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                if kind == "weights":
                    density = PiecewiseGaussian.fit(self.weights(index), "auto",
                                                    max_pieces=self.max_pieces_weights, **self.fit_options)
                else:
                    histogram = self.histograms[index]
                    breakpoints = ([0.0] if self.activation_breakpoints == "kink" and _leaky_output(self.net, index)
                                   and histogram.first < 0 < histogram.first + histogram.counts.size else "auto")
                    density = PiecewiseGaussian.fit_histogram(histogram.counts, histogram.edges, breakpoints,
                                                              max_pieces=self.max_pieces_activations,
                                                              **self.fit_options)
            for warning in caught:
                if issubclass(warning.category, ConvergenceWarning):
                    self.fit_warnings[key] = str(warning.message)
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            self.densities[key] = density
        return self.densities[key]


def _leaky_output(net, index):
    """True when layer ``index`` outputs leaky-ReLU values (a leaky conv, or pools/routes of them)."""
    layer = net.layers[index]
    if layer.type == "convolutional":
        return layer.activation == "leaky"
    if layer.type in CODE_LAYERS or layer.type == "route":
        return all(j != NETWORK_INPUT and _leaky_output(net, j) for j in net.inputs[index])
    return False


def pooled_readers(net):
    """{convolution index: maxpool index} for every convolution whose output only a maxpool reads."""
    readers = {}
    for index, sources in enumerate(net.inputs):
        for source in sources:
            readers.setdefault(source, []).append(index)
    return {index: found[0] for index, found in readers.items()
            if index != NETWORK_INPUT and net.layers[index].type == "convolutional" and len(found) == 1
            and net.layers[found[0]].type == "maxpool"}


def calibration_values(net, outputs):
    """Every layer's values as calibration histograms them (docs/SPECIFICATION.md, section 11.3).

    ``outputs``: every layer's float output before quantization. A convolution whose output only a
    maxpool reads is calibrated on that maxpool applied to it: max commutes with a monotone
    quantizer (``maxpool(Q(x)) = Q(maxpool(x))``), so the pooled values are exactly the codes that
    travel on, and their distribution (the largest of each window) has a heavier upper tail than
    the convolution's output; the grid is still the convolution's own.
    """
    values = list(outputs)
    for conv, pool in pooled_readers(net).items():
        values[conv] = net.layers[pool].forward(outputs[conv], training=False)
    return values


def image_batches(images, batch_size):
    """Batches from an (N, C, H, W) array (cut into ``batch_size`` images) or an iterable of arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be (N, C, H, W) with N >= 1, got shape {images.shape}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        return [images[i:i + batch_size] for i in range(0, images.shape[0], batch_size)]
    return images


def collect_histograms(batches, layer_outputs, indices, max_bins=DEFAULT_BINS, progress=True,
                       description="calibration"):
    """{index: ActivationHistogram} of ``layer_outputs(batch)[index]`` over every batch.

    ``layer_outputs``: batch -> list of every layer's float output (before quantization).
    """
    histograms = {index: ActivationHistogram(max_bins) for index in indices}
    total = None
    if isinstance(batches, list):
        total = sum(int(b.shape[0]) for b in batches)
    seen = 0
    with tqdm(total=total, desc=description, unit="image", disable=not progress, leave=False) as bar:
        for batch in batches:
            outputs = layer_outputs(batch)
            for index in indices:
                histograms[index].add(outputs[index])
            seen += int(batch.shape[0])
            bar.update(int(batch.shape[0]))
    if seen == 0:
        raise ValueError("calibration: no images")
    return histograms


def calibration_statistics(net, images, batch_size=4, max_bins=DEFAULT_BINS, baseline_samples=2**17,
                           seed=0, progress=True, activation_breakpoints=DEFAULT_ACTIVATION_BREAKPOINTS,
                           activation_max_pieces=ACTIVATION_MAX_PIECES):
    """Fold ``net`` and histogram every quantized output over ``images`` (docs/SPECIFICATION.md, section 11.3).

    ``images``: (N, C, H, W) float array in [0, 1], or an iterable of such batches. The folded
    float network runs in inference mode. ``activation_breakpoints``: the PGM policy of the
    activations (:data:`ACTIVATION_BREAKPOINTS`), ``activation_max_pieces`` their most pieces.
    Returns :class:`CalibrationStatistics`.
    """
    folded = fold_batchnorm(net)
    check_supported(folded)  # before the long pass
    histograms = collect_histograms(image_batches(images, batch_size),
                                    lambda x: calibration_values(folded, folded.forward(x, training=False,
                                                                                         return_all=True)),
                                    quantized_outputs(folded), max_bins, progress)
    return CalibrationStatistics(folded, histograms, baseline_samples=baseline_samples, seed=seed,
                                 activation_breakpoints=activation_breakpoints,
                                 max_pieces_activations=activation_max_pieces)


def quantization_plan(statistics, weight_bits, activation_bits, method="pgm",
                      first_bits=DEFAULT_BITS_FIRST_LAST, last_bits=DEFAULT_BITS_FIRST_LAST,
                      pow2_step=False, progress=False, quantizers=None):
    """The plan of one method and set of widths from :class:`CalibrationStatistics` (docs/SPECIFICATION.md, section 11.3).

    ``quantizers``: {layer index: (weight quantizer or None, output quantizer)} already made by
    :func:`layer_quantizers` elsewhere (:func:`refquant.distributed.quantization_plan`, whose fits
    are then in ``statistics``' cache); None makes them here, one layer after the other.
    """
    check_plan_method(method, pow2_step)
    statistics = plan_statistics(statistics, method)
    net = statistics.net
    widths = layer_bits(net, weight_bits, activation_bits, first_bits, last_bits)
    weights, activations, densities = {}, {}, {}
    for index in tqdm(sorted(widths), desc=f"plan ({method})", disable=not progress, leave=False):
        weight, activations[index] = (quantizers[index] if quantizers is not None else
                                      layer_quantizers(statistics, index, widths[index], method, pow2_step))
        if weight is not None:
            weights[index] = weight
        if method in DENSITY_METHODS:
            for kind in ("weights", "activations"):
                if (kind, index) in statistics.densities:
                    densities[(kind, index)] = statistics.densities[(kind, index)]
    short = sorted(key for key in statistics.fit_warnings if key in densities)
    if short:
        warnings.warn(f"PGM fits short of EM convergence (usable estimates) for {short}; "
                      f"details in statistics.fit_warnings", ConvergenceWarning, stacklevel=2)
    options = {"weight_bits": int(weight_bits), "activation_bits": int(activation_bits),
               "first_bits": first_bits, "last_bits": last_bits, "pow2_step": bool(pow2_step),
               "activation_breakpoints": statistics.activation_breakpoints,
               "activation_max_pieces": statistics.max_pieces_activations}
    return QuantizationPlan.for_network(net, weights, activations, method=method, options=options,
                                        densities=densities)


def check_plan_method(method, pow2_step):
    """ValueError unless ``method`` is one of :data:`refquant.quantizers.baselines.METHODS` and
    ``pow2_step`` is False or the method fits a density."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if pow2_step and method not in DENSITY_METHODS:
        raise ValueError(f"pow2_step=True is supported by the density methods {DENSITY_METHODS} "
                         f"(optimal_quantizer), not {method!r}")


def plan_statistics(statistics, method):
    """The statistics a plan of ``method`` is made from: for ``"pgm-paper"`` their variant with the
    paper's fits (:data:`PAPER_FITS`), else ``statistics`` themselves."""
    return statistics.variant(**PAPER_FITS) if method == "pgm-paper" else statistics


def layer_quantizers(statistics, index, bits, method, pow2_step=False):
    """``(weight quantizer or None, output quantizer)`` of layer ``index`` at ``bits`` = (weight bits
    or None, output bits), from the statistics of :func:`plan_statistics`; the PGM fits it needs
    are made once and cached in ``statistics``. ValueError naming the layer and the method."""
    weight_bits, output_bits = bits
    try:
        weight = (None if weight_bits is None else
                  _weight_quantizer(statistics, index, weight_bits, method, pow2_step))
        return weight, _activation_quantizer(statistics, index, output_bits, method, pow2_step)
    except ValueError as error:
        raise ValueError(f"layer {index} [{statistics.net.layers[index].type}], method {method!r}: {error}") from error


def _weight_quantizer(statistics, index, bits, method, pow2_step):
    if method in DENSITY_METHODS:
        return optimal.optimal_quantizer(statistics.density("weights", index), bits, symmetric=True,
                                           pow2_step=pow2_step)
    return METHODS[method].from_samples(statistics.weights(index), bits, True, 24)


def _activation_quantizer(statistics, index, bits, method, pow2_step):
    if method in DENSITY_METHODS:
        return optimal.optimal_quantizer(statistics.density("activations", index), bits,
                                           zero_representable=True, pow2_step=pow2_step)
    return METHODS[method].from_histogram(statistics.histograms[index], bits)


def calibrate(net, images, weight_bits, activation_bits, method="pgm", first_bits=DEFAULT_BITS_FIRST_LAST,
              last_bits=DEFAULT_BITS_FIRST_LAST, pow2_step=False, batch_size=4, max_bins=DEFAULT_BINS,
              baseline_samples=2**17, seed=0, progress=True):
    """Post-training calibration: :func:`calibration_statistics` then :func:`quantization_plan`.

    For several methods or widths on the same images, call those two directly (one pass).
    """
    statistics = calibration_statistics(net, images, batch_size, max_bins, baseline_samples, seed, progress)
    return quantization_plan(statistics, weight_bits, activation_bits, method, first_bits, last_bits,
                             pow2_step, progress)
