"""Quantization-aware training (docs/SPECIFICATION.md, section 11.7): the float32 fake-quantized network
(:class:`FakeQuantNetwork`, straight-through gradients) and the training loop that refits the
plan's densities and intervals as the weights move (:func:`quantization_aware_training`).
"""
import contextlib
import dataclasses
import math
import time

import numba
import numpy as np
from tqdm import tqdm

from refquant import train
from refquant.folding import fold_batchnorm, is_folded
from refquant.integer.requantize import quantize_bias
from refquant.plan import QuantizationPlan, output_grids, quantized_outputs
from refquant.ptq import (
    ACTIVATION_MAX_PIECES,
    DEFAULT_ACTIVATION_BREAKPOINTS,
    DEFAULT_BINS,
    CalibrationStatistics,
    calibration_values,
    collect_histograms,
    image_batches,
    quantization_plan,
)
from refquant.quantizers.uniform import _nan_error, fake_value, masked_gradient, straight_through_value
from refquant.yolo.activations import activate_value, gradient_value
from refquant.yolo.network import NETWORK_INPUT, Network


class FakeQuantConvolution:
    """A folded convolution in training: ``Q_a(f(conv(x, Q_w(W)) + Q_b(b)))`` (docs/SPECIFICATION.md, section 11.7).

    Shares ``params`` and ``grads`` with the wrapped layer, so an optimiser updating the wrapper's
    parameters updates the folded network's. Other attributes are the wrapped layer's.
    """

    def __init__(self, layer):
        self.layer = layer
        self.weight_grid = self.output_grid = None
        self.bias_step = None
        self._unquantized = None  # the last forward pass's output before Q_a, and its straight-through masks
        self._output_mask = None
        self._weight_mask = None
        self._weights_used = None

    def __getattr__(self, name):
        # "build" stays hidden: Network.__init__ would re-initialise the shared weights.
        if name in ("layer", "build"):
            raise AttributeError(name)
        return getattr(self.layer, name)

    @property
    def params(self):
        return self.layer.params

    @property
    def grads(self):
        return self.layer.grads

    def zero_grads(self):
        self.layer.zero_grads()

    def output_shape(self, input_shape):
        return self.layer.output_shape(input_shape)

    def set_grids(self, input_grid, weight_grid, output_grid):
        self.weight_grid, self.output_grid = weight_grid, output_grid
        self.bias_step = input_grid.step * weight_grid.step

    @contextlib.contextmanager
    def _swapped(self, weights, biases=None):
        """The layer's weights (and biases) replaced by the given arrays inside the ``with``."""
        params = self.layer.params
        saved = params["weights"], params["biases"]
        params["weights"] = weights
        if biases is not None:
            params["biases"] = biases
        try:
            yield
        finally:
            params["weights"], params["biases"] = saved

    def forward(self, x, training=False):
        """x (N, C, H, W) on the input grid -> fake-quantized output on the output grid.

        The products ``Q_w(W) * x`` by the layer's own GEMM (``ConvolutionalLayer.products``), then
        bias, activation, ``Q_a`` and its straight-through mask in one pass (:func:`_bias_activate_fake`):
        equal bit for bit to the layer's ``forward`` followed by ``output_grid.fake_with_mask``, in
        one read of the products instead of three full-size passes. ``training`` changes nothing
        in a folded layer (no batch statistics). The returned array (and the output before ``Q_a``,
        kept for backward) lives in the layer's workspace: the next forward overwrites it.
        """
        params = self.layer.params
        dtype = params["weights"].dtype
        weights, self._weight_mask = self.weight_grid.fake_with_mask(params["weights"])
        self._weights_used = weights.astype(dtype, copy=False)
        biases = (quantize_bias(params["biases"], self.bias_step, 1.0) * self.bias_step).astype(dtype)
        with self._swapped(self._weights_used):
            z = self.layer.products(x)
        # in the layer's workspace, as z is: fresh arrays of this size cost more in page faults than
        # the pass itself (a training step reuses them; the next forward overwrites them)
        y, out = self.layer._buffer("unquantized", z.shape, z.dtype), self.layer._buffer("fake", z.shape, z.dtype)
        mask = self.layer._buffer("output_mask", z.shape, np.bool_)
        nan_at = _bias_activate_fake(z, biases, self.layer._code, *self.output_grid.kernel_arguments(), y, out, mask)
        if nan_at >= 0:
            raise _nan_error(nan_at)
        shape = (x.shape[0],) + self.layer.output_shape(x.shape[1:])
        self._unquantized, self._output_mask = y.reshape(shape), mask
        return out.reshape(shape)

    def backward(self, dout, input_gradient=True):
        """Straight-through rule on the output and the weights; identity through the bias rounding.

        ``dz = dout * mask * f'(y)`` and the bias gradient in one pass (:func:`_masked_activation_backward`,
        equal bit for bit to ``masked_gradient`` then the layer's activation backward), then the
        layer's ``backward_products`` with the fake-quantized weights. Sets the wrapped layer's grads;
        returns dL/dx (None with ``input_gradient=False``)."""
        y = self._unquantized
        dout = np.ascontiguousarray(dout, dtype=y.dtype).reshape(self._output_mask.shape)
        dz = self.layer._buffer("dz", self._output_mask.shape, y.dtype)
        dbiases = np.zeros(self.layer.filters, y.dtype)
        _masked_activation_backward(dout, self._output_mask, y.reshape(self._output_mask.shape), self.layer._code,
                                    y.dtype.type(0), dz, dbiases)
        with self._swapped(self._weights_used):
            dweights, dx = self.layer.backward_products(dz, input_gradient=input_gradient)
        self.layer.grads = {"biases": dbiases, "weights": masked_gradient(self._weight_mask, dweights)}
        return dx


@numba.njit(cache=True, inline="always")
def _fake_plane(z, biases, n, c, code, step, fraction, whole, qmin, qmax, zero_point, lo, hi, y, out, mask):
    """Plane (n, c) of :func:`_bias_activate_fake`; returns the first NaN's position in it or -1."""
    bias = biases[c]
    zp, yp, outp, maskp = z[n, c], y[n, c], out[n, c], mask[n, c]
    seen_nan = False
    # one branch-free loop that LLVM vectorises; a NaN's out and mask are put right after it (rare)
    for s in range(np.uint64(zp.size)):  # unsigned: no wrap-around test, which blocks vectorising
        yp[s] = activate_value(zp[s] + bias, code)
        stored = np.float64(yp[s])  # Q_a reads y as stored (the layer's dtype), as fake_with_mask does
        seen_nan |= stored != stored
        outp[s] = fake_value(stored, step, fraction, whole, qmin, qmax, zero_point)
        maskp[s] = straight_through_value(stored, lo, hi)
    if not seen_nan:
        return -1
    first_nan = -1
    for s in range(zp.size):
        if yp[s] != yp[s]:
            first_nan = s if first_nan < 0 else first_nan
            outp[s] = 0
            maskp[s] = False
    return first_nan


@numba.njit(cache=True)
def _fake_plane_of_code(z, biases, n, c, code, step, fraction, whole, qmin, qmax, zero_point, lo, hi, y, out, mask):
    """:func:`_fake_plane` with the activation code as a literal in each call, which keeps the inner
    loop branch-free (as the engine's kernels do)."""
    if code == 1:
        return _fake_plane(z, biases, n, c, 1, step, fraction, whole, qmin, qmax, zero_point, lo, hi, y, out, mask)
    if code == 0:
        return _fake_plane(z, biases, n, c, 0, step, fraction, whole, qmin, qmax, zero_point, lo, hi, y, out, mask)
    return _fake_plane(z, biases, n, c, code, step, fraction, whole, qmin, qmax, zero_point, lo, hi, y, out, mask)


@numba.njit(cache=True, parallel=True)
def _bias_activate_fake(z, biases, code, step, fraction, whole, qmin, qmax, zero_point, lo, hi, y, out, mask):
    """A folded convolution's epilogue in training, one pass over its products z (N, M, S):

    ``y = f(z + biases[m])`` (as ``batchnorm.normalize_scale_activate`` computes it without batch
    norm: scale 1, mean 0), ``out = Q_a(y)`` and ``mask = lo <= y <= hi`` (as
    ``UniformQuantizer.fake_with_mask`` of y; grid arguments from its ``kernel_arguments``).
    Returns the flat index of the first NaN in y, or -1.
    """
    n_batch, channels, spatial = z.shape
    nan_at = z.size
    for t in numba.prange(n_batch * channels):
        first = _fake_plane_of_code(z, biases, t // channels, t % channels, code, step, fraction, whole, qmin, qmax,
                                    zero_point, lo, hi, y, out, mask)
        nan_at = min(nan_at, t * spatial + first if first >= 0 else z.size)  # a prange reduction: the smallest wins
    return nan_at if nan_at < z.size else -1


@numba.njit(cache=True, inline="always")
def _masked_delta(dout, mask, y, dz, c, code, zero):
    """dz[:, c] = (dout if mask else zero) * f'(y) over one channel; returns its sum (float64)."""
    total = 0.0
    for n in range(dout.shape[0]):
        for s in range(dout.shape[2]):
            delta = dout[n, c, s] if mask[n, c, s] else zero
            da = delta * gradient_value(y[n, c, s], code)
            dz[n, c, s] = da
            total += da
    return total


@numba.njit(cache=True, parallel=True)
def _masked_activation_backward(dout, mask, y, code, zero, dz, dbiases):
    """The backward of :func:`_bias_activate_fake` to its products, one pass over (N, M, S):
    ``dz = masked_gradient(mask, dout) * f'(y)``, ``dbiases[m] += sum over n, s of dz`` (in float64, in
    the order and types of ``batchnorm.backward_scale_normalize`` without batch norm). ``zero``: 0 in
    dout's dtype (what ``masked_gradient`` puts where the mask is off)."""
    for c in numba.prange(dout.shape[1]):
        if code == 1:
            total = _masked_delta(dout, mask, y, dz, c, 1, zero)
        elif code == 0:
            total = _masked_delta(dout, mask, y, dz, c, 0, zero)
        else:
            total = _masked_delta(dout, mask, y, dz, c, code, zero)
        dbiases[c] += total


class FakeQuantRoute:
    """A multi-input route in training: ``Q(concat(inputs))``, straight-through backward."""

    multi_input = True

    def __init__(self, layer):
        self.layer = layer
        self.output_grid = None
        self._unquantized = self._output_mask = None

    def __getattr__(self, name):
        if name in ("layer", "build"):
            raise AttributeError(name)
        return getattr(self.layer, name)

    def resolve(self, own_index):
        return self.layer.resolve(own_index)

    def output_shape(self, input_shapes):
        return self.layer.output_shape(input_shapes)

    def forward(self, inputs, training=False):
        y = self.layer.forward(inputs, training=training)
        self._unquantized = y
        out, self._output_mask = self.output_grid.fake_with_mask(y)
        return out.astype(y.dtype, copy=False)

    def backward(self, dout):
        return self.layer.backward(masked_gradient(self._output_mask, dout))


class FakeQuantNetwork(Network):
    """The folded network with fake quantization in the loop, for quantization-aware training.

    ``FakeQuantNetwork(folded, plan)``: ``folded`` from :func:`fold_batchnorm` (float32 for
    training). It is a :class:`~refquant.yolo.network.Network` whose convolutions and multi-input
    routes are wrapped (:class:`FakeQuantConvolution`, :class:`FakeQuantRoute`); the wrappers share
    ``params`` and ``grads`` with ``folded``'s layers (and ``seen`` with ``folded``), so
    ``forward(x, training)``, the head's ``loss``, ``backward(dout)`` and an optimiser over
    ``refquant.train.trainable(self)`` -- e.g. ``refquant.train.train_iteration(self, ...)`` as it
    is -- train ``folded`` in place (save ``folded``). The input passes through ``plan.input``.
    :meth:`refit` re-optimises the plan; :meth:`set_plan` installs another.
    """

    def __init__(self, folded, plan):
        if not is_folded(folded):
            raise ValueError(f"{folded.name}: FakeQuantNetwork trains a folded network; call fold_batchnorm first")
        wrapped = []
        for index, layer in enumerate(folded.layers):
            if layer.type == "convolutional":
                wrapped.append(FakeQuantConvolution(layer))
            elif layer.type == "route" and len(folded.inputs[index]) > 1:
                wrapped.append(FakeQuantRoute(layer))
            else:
                wrapped.append(layer)
        self.folded = folded
        seen = folded.seen
        super().__init__(wrapped, folded.input_shape, dtype=folded.dtype,
                         hyperparameters=folded.hyperparameters, name=f"{folded.name} (fake-quantized)")
        self.seen = seen  # Network.__init__ set it to 0 (through the property, i.e. in folded)
        self.weights_header = folded.weights_header
        self.plan = None
        self.set_plan(plan)

    @property
    def seen(self):
        """Images seen in training: the folded network's count (saved with its weights)."""
        return self.folded.seen

    @seen.setter
    def seen(self, value):
        self.folded.seen = value

    def set_plan(self, plan):
        """Install ``plan``'s grids in every wrapper (checked against the network). Weights quantized per
        channel (``plan.channel_steps``) are refused: fake quantization here has one weight step per layer."""
        if plan.channel_steps:
            raise ValueError(f"QAT: the plan quantizes the weights of layers {sorted(plan.channel_steps)} per channel; "
                             f"quantization-aware training takes one weight step per layer (a per-tensor plan)")
        grids = output_grids(self.folded, plan)
        for index, layer in enumerate(self.layers):
            if isinstance(layer, FakeQuantConvolution):
                j = self.inputs[index][0]
                layer.set_grids(plan.input if j == NETWORK_INPUT else grids[j], plan.weights[index], grids[index])
            elif isinstance(layer, FakeQuantRoute):
                layer.output_grid = grids[index]
        self.plan = plan
        return plan

    def forward(self, x, training=False, return_all=False):
        """``Q_in(x)`` through the fake-quantized layers; the head's output (every layer's with return_all).

        The outputs of the fake-quantized convolutions live in their workspaces (the next forward
        overwrites them): the head's output is returned as a copy when it is one of them; with
        ``return_all``, use the list before the next forward."""
        x = self._check_input(x)
        quantized, self._input_mask = self.plan.input.fake_with_mask(x)
        outputs = super().forward(quantized.astype(self.dtype, copy=False), training, return_all)
        if not return_all and isinstance(self.layers[-1], FakeQuantConvolution):
            return outputs.copy()
        return outputs

    def backward(self, dout, return_all=False, input_gradient=True):
        """dL/d(output) -> dL/dx (straight-through rule of the input grid too); fills the grads.

        As ``Network.backward``: ``return_all`` gives (dx, every layer's dL/d output);
        ``input_gradient=False`` skips dL/dx at the first convolution (training does not need it).
        """
        result = super().backward(dout, return_all, input_gradient)
        dx = result[0] if return_all else result
        if dx is not None:
            dx = masked_gradient(self._input_mask, dx)
        return (dx, result[1]) if return_all else dx

    def unquantized_outputs(self, x):
        """Every layer's output with the quantized layers' values taken BEFORE their output quantizer."""
        outputs = self.forward(x, training=False, return_all=True)
        return [layer._unquantized if isinstance(layer, (FakeQuantConvolution, FakeQuantRoute)) else out
                for layer, out in zip(self.layers, outputs)]

    def statistics(self, images, batch_size=4, max_bins=DEFAULT_BINS, baseline_samples=2**17, seed=0,
                   progress=True, activation_breakpoints=DEFAULT_ACTIVATION_BREAKPOINTS,
                   activation_max_pieces=ACTIVATION_MAX_PIECES):
        """CalibrationStatistics of the current weights and pre-quantization activations."""
        histograms = collect_histograms(image_batches(images, batch_size),
                                        lambda x: calibration_values(self.folded, self.unquantized_outputs(x)),
                                        quantized_outputs(self.folded), max_bins, progress, "refit")
        return CalibrationStatistics(self.folded, histograms, baseline_samples=baseline_samples, seed=seed,
                                     activation_breakpoints=activation_breakpoints,
                                     max_pieces_activations=activation_max_pieces)

    def refit(self, images, method=None, batch_size=4, progress=True, **overrides):
        """Refit the PGMs (or rerun the plan's method) on the current weights and the activations of
        ``images``, with the plan's widths (``overrides`` replace its options); installs and returns
        the new plan."""
        method = self.plan.method if method is None else method
        options = {key: self.plan.options[key] for key in
                   ("weight_bits", "activation_bits", "first_bits", "last_bits", "pow2_step")
                   if key in self.plan.options}
        options.update(overrides)
        if "weight_bits" not in options or "activation_bits" not in options:
            raise ValueError("refit: the plan has no weight_bits/activation_bits options; pass them")
        statistics = self.statistics(images, batch_size=batch_size, progress=progress,
                                     activation_breakpoints=self.plan.options.get("activation_breakpoints",
                                                                                  DEFAULT_ACTIVATION_BREAKPOINTS),
                                     activation_max_pieces=self.plan.options.get("activation_max_pieces",
                                                                                 ACTIVATION_MAX_PIECES))
        return self.set_plan(quantization_plan(statistics, method=method, **options))


QAT_OPTIONS = {"learning_rate": 0.001, "burn_in": 0, "policy": "constant"}
"""Training options of :func:`quantization_aware_training` over the cfg's ``[net]`` ones (batch,
momentum, decay, augmentation are the cfg's): fine-tuning from a trained network, so a constant
rate without burn-in, a tenth of Darknet's usual 0.01 ``learning_rate`` (the caller's options win)."""


@dataclasses.dataclass
class TrainingResult:
    """What :func:`quantization_aware_training` returns.

    ``folded``: the trained folded network; ``plan``: the plan in force at the end, the one the
    last iterations trained with; ``losses``: per iteration, the summed region loss divided by
    the batch (on that iteration's augmented images, before its update); ``refits``: the
    iterations after which the plan was refitted; ``plans``: the plan in force from the start
    and after each refit; ``options``: the training options used; ``seconds``: wall time.
    """

    folded: Network
    plan: QuantizationPlan
    losses: list
    refits: list
    plans: list
    options: dict
    seconds: float


def quantization_aware_training(net, plan, records, iterations, refit_every=100, refit_images=None, options=None,
                                seed=0, refit_batch_size=16, progress=True):
    """Train ``net`` with ``plan``'s quantizers in the loop (docs/SPECIFICATION.md, section 11.7).

    ``net``: the float network (batch norm or not; it is folded into a copy, ``net`` is left
    unchanged); ``plan``: the starting plan, e.g. the post-training PGM plan; ``records``: VOC
    records of the training split (:func:`refquant.data.voc.load_voc`); ``iterations``: number of
    SGD updates. Each update is :func:`refquant.train.train_iteration` on the
    :class:`FakeQuantNetwork` as it is (Darknet's batching, augmentation, region loss and SGD with
    momentum and decay), with the options of the cfg, then :data:`QAT_OPTIONS`, then ``options``
    (keys of ``refquant.train.TRAINING_KEYS``); update k draws from ``numpy.random.default_rng([seed, k])``.

    Every ``refit_every`` updates (None or 0: never) the PGMs are refitted and the intervals
    re-optimised on the current weights and the activations of ``refit_images`` ((N, C, H, W)
    float in [0, 1], required then), by :meth:`FakeQuantNetwork.refit`, with the plan's method
    and widths. No refit follows the last update, so the returned plan is the one the final
    weights were trained with. Returns a :class:`TrainingResult`.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"quantization_aware_training: iterations must be an int >= 1, got {iterations!r}")
    if refit_every and refit_images is None:
        raise ValueError("quantization_aware_training: refit_every needs refit_images (the images the "
                         "activations are histogrammed on)")
    if refit_every and (isinstance(refit_every, bool) or not isinstance(refit_every, (int, np.integer))
                        or refit_every < 1):
        raise ValueError(f"quantization_aware_training: refit_every must be an int >= 1 or None, got {refit_every!r}")
    if not records:
        raise ValueError("quantization_aware_training: no training records")
    start = time.perf_counter()
    network = FakeQuantNetwork(fold_batchnorm(net), plan)
    options = train.training_options(network, {**QAT_OPTIONS, "max_batches": int(iterations), **(options or {})})
    updates = train.zero_updates(network)
    losses, refits, plans = [], [], [plan]
    batches = train.prefetched_batches(network, records, options, seed, range(1, int(iterations) + 1))
    with contextlib.closing(batches), tqdm(batches, total=int(iterations), desc=f"QAT ({plan.method})",
                                           unit="iteration", disable=not progress, leave=False) as bar:
        for iteration, loaded in bar:
            loss = train.train_iteration(network, records, options, updates, iteration, seed, loaded) / options["batch"]
            if not math.isfinite(loss):
                raise FloatingPointError(f"quantization_aware_training: the loss is {loss} at iteration {iteration}; "
                                         f"lower the learning rate (now {options['learning_rate']})")
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}")
            if refit_every and iteration % refit_every == 0 and iteration < iterations:
                plans.append(network.refit(refit_images, batch_size=refit_batch_size, progress=False))
                refits.append(iteration)
    return TrainingResult(network.folded, network.plan, losses, refits, plans, options,
                          time.perf_counter() - start)
