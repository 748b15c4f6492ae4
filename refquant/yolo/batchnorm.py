"""Darknet's batch normalisation: the formula, the batch statistics, the rolling update.

Everything here acts per channel on a convolution's output ``z`` of shape
(N, C, S) with S = H*W; the statistics run over the m = N*S values of a channel
(Darknet's ``batch*spatial``). The sources, in pjreddie/darknet:

- normalisation: ``xhat = (z - mean) / sqrt(variance + .00001)``. This is
  ``normalize_kernel`` in ``src/blas_kernels.cu`` (the GPU path every published
  Darknet model was trained with) and the formula that Darknet's backward pass
  (``mean_delta_cpu``, ``variance_delta_cpu``, ``normalize_delta_cpu`` in
  ``src/batchnorm_layer.c``) differentiates. (Darknet's CPU forward,
  ``normalize_cpu`` in ``src/blas.c``, divides by ``sqrt(variance) + .000001``
  instead, and OpenCV's Darknet importer uses ``sqrt(variance + 1e-6)``; for
  variances of order one the three differ by a relative 5e-6 or less.)
- batch statistics in training: the mean, and the *unbiased* variance
  ``sum((z - mean)**2) / (m - 1)`` (``variance_cpu`` in ``src/blas.c``,
  ``variance_kernel`` and ``fast_variance_kernel`` in ``src/blas_kernels.cu``).
- rolling averages, updated at every training forward pass
  (``forward_batchnorm_layer``): ``rolling = .99 * rolling + .01 * batch``, for
  the mean and the (unbiased) variance alike; inference normalises with them.
- scale and shift after normalising: ``y = scales * xhat + biases``
  (``scale_bias``, ``add_bias``), then the layer's activation.

The backward pass is the exact derivative of that forward pass. Darknet's own
backward differentiates the *biased* variance (it divides by m where its
forward divides by m - 1), and in inference mode it reuses the batch formula
with the rolling statistics; both approximate the forward it runs. Here,
training mode differentiates the unbiased-variance forward exactly, and
inference mode treats the rolling statistics as the constants they are.
"""
import numba
import numpy as np

from refquant.yolo.activations import activate_value, gradient_value

EPSILON = 1e-5
"""The ``.00001`` under the square root in Darknet's normalisation (``src/blas_kernels.cu``)."""

ROLLING_MOMENTUM = 0.99
"""``rolling = .99 * rolling + .01 * batch`` (``forward_batchnorm_layer``, ``src/batchnorm_layer.c``)."""


def normalizer(variance):
    """1 / sqrt(variance + .00001): the per-channel factor of Darknet's normalisation.

    ``variance`` (C,) float array. ``xhat = (z - mean) * normalizer(variance)``.
    """
    variance = np.asarray(variance)
    return 1 / np.sqrt(variance + variance.dtype.type(EPSILON))


def normalize(z, mean, variance):
    """xhat = (z - mean) / sqrt(variance + .00001) per channel (Darknet's formula, see the module).

    ``z`` (N, C, ...); ``mean``, ``variance`` (C,). Returns xhat with z's shape.
    """
    shape = (1, -1) + (1,) * (z.ndim - 2)
    return (z - mean.reshape(shape)) * normalizer(variance).reshape(shape)


def rolling_update(rolling, batch):
    """In place: rolling = .99 * rolling + .01 * batch (Darknet's ``scal_cpu`` then ``axpy_cpu``)."""
    rolling *= rolling.dtype.type(ROLLING_MOMENTUM)
    rolling += rolling.dtype.type(1 - ROLLING_MOMENTUM) * batch
    return rolling


def batch_statistics(z):
    """Per-channel mean and unbiased variance of ``z`` (N, C, S), accumulated in float64.

    mean = sum(z) / m, variance = sum((z - mean)**2) / (m - 1), m = N*S
    (``mean_cpu``, ``variance_cpu`` in Darknet's ``src/blas.c``). ValueError unless m > 1.
    Returns two (C,) arrays of z's dtype.
    """
    if z.shape[0] * z.shape[2] < 2:
        raise ValueError(f"batch normalisation in training mode needs at least 2 values per channel "
                         f"(batch x height x width), got {z.shape[0] * z.shape[2]}")
    return _batch_statistics(z)


@numba.njit(cache=True, parallel=True)
def _batch_statistics(z):
    n_batch, channels, spatial = z.shape
    m = n_batch * spatial
    mean = np.empty(channels, dtype=z.dtype)
    variance = np.empty(channels, dtype=z.dtype)
    for c in numba.prange(channels):
        total = 0.0
        for n in range(n_batch):
            for s in range(spatial):
                total += z[n, c, s]
        mu = total / m
        squares = 0.0
        for n in range(n_batch):
            for s in range(spatial):
                d = z[n, c, s] - mu
                squares += d * d
        mean[c] = mu
        variance[c] = squares / (m - 1)
    return mean, variance


@numba.njit(cache=True, inline="always")
def _normalize_plane(z, y, n, c, mu, factor, gain, shift, code):
    for s in range(z.shape[2]):
        xhat = (z[n, c, s] - mu) * factor
        z[n, c, s] = xhat
        y[n, c, s] = activate_value(gain * xhat + shift, code)


@numba.njit(cache=True, parallel=True)
def normalize_scale_activate(z, mean, inv_std, scales, biases, code, y):
    """The forward pass after the convolution, fused: z becomes xhat, y gets the activation.

    ``z`` (N, C, S) is overwritten with xhat = (z - mean) * inv_std (kept for backward);
    ``y`` (N, C, S) receives activate(scales * xhat + biases). ``mean``, ``inv_std``,
    ``scales``, ``biases`` are (C,); a convolution without batch norm passes
    mean = 0, inv_std = 1, scales = 1 and gets y = activate(z + biases).
    """
    n_batch, channels, spatial = z.shape
    for t in numba.prange(n_batch * channels):
        n = t // channels
        c = t % channels
        mu, factor, gain, shift = mean[c], inv_std[c], scales[c], biases[c]
        # one call per activation code with a literal, so that the inner loop is branch-free
        if code == 1:
            _normalize_plane(z, y, n, c, mu, factor, gain, shift, 1)
        elif code == 0:
            _normalize_plane(z, y, n, c, mu, factor, gain, shift, 0)
        elif code == 2:
            _normalize_plane(z, y, n, c, mu, factor, gain, shift, 2)
        elif code == 3:
            _normalize_plane(z, y, n, c, mu, factor, gain, shift, 3)
        else:
            _normalize_plane(z, y, n, c, mu, factor, gain, shift, 4)


@numba.njit(cache=True, inline="always")
def _activation_delta(dy, y, xhat, dz, c, code):
    """dz[:, c] = dy * f'(y) over one channel; returns (sum of it, sum of it times xhat)."""
    sum_da = 0.0
    sum_da_xhat = 0.0
    for n in range(dy.shape[0]):
        for s in range(dy.shape[2]):
            da = dy[n, c, s] * gradient_value(y[n, c, s], code)
            dz[n, c, s] = da
            sum_da += da
            sum_da_xhat += da * xhat[n, c, s]
    return sum_da, sum_da_xhat


@numba.njit(cache=True, parallel=True)
def backward_scale_normalize(dy, y, xhat, code, scales, inv_std, batch_mode, dz, dscales, dbiases):
    """Backward of :func:`normalize_scale_activate`; fills ``dz`` (N, C, S) and adds to the grads.

    da = dy * f'(y)  (the activation's derivative from its output)
    dbiases += sum(da), dscales += sum(da * xhat), dxhat = scales * da
    batch_mode (training, batch statistics; exact for the unbiased variance):
        dz = (dxhat - mean(dxhat) - xhat * sum(dxhat * xhat) / (m - 1)) * inv_std
    otherwise (rolling statistics are constants):
        dz = dxhat * inv_std
    """
    n_batch, channels, spatial = dy.shape
    m = n_batch * spatial
    for c in numba.prange(channels):
        # a literal code per call keeps the inner loop branch-free
        if code == 1:
            sum_da, sum_da_xhat = _activation_delta(dy, y, xhat, dz, c, 1)
        elif code == 0:
            sum_da, sum_da_xhat = _activation_delta(dy, y, xhat, dz, c, 0)
        elif code == 2:
            sum_da, sum_da_xhat = _activation_delta(dy, y, xhat, dz, c, 2)
        elif code == 3:
            sum_da, sum_da_xhat = _activation_delta(dy, y, xhat, dz, c, 3)
        else:
            sum_da, sum_da_xhat = _activation_delta(dy, y, xhat, dz, c, 4)
        dbiases[c] += sum_da
        dscales[c] += sum_da_xhat
        gain = scales[c]
        factor = inv_std[c]
        if batch_mode:
            mean_dxhat = gain * sum_da / m
            projection = gain * sum_da_xhat / (m - 1)
            for n in range(n_batch):
                for s in range(spatial):
                    dz[n, c, s] = (gain * dz[n, c, s] - mean_dxhat - xhat[n, c, s] * projection) * factor
        else:
            for n in range(n_batch):
                for s in range(spatial):
                    dz[n, c, s] = gain * dz[n, c, s] * factor
