"""Darknet's ``[convolutional]`` layer: im2col + GEMM, optional batch norm, activation.

Source: pjreddie/darknet ``src/convolutional_layer.c`` (``forward_convolutional_layer``,
``backward_convolutional_layer``), ``src/im2col.c``, ``src/col2im.c``, and
``parse_convolutional`` in ``src/parser.c`` for the cfg keys.

Shapes: input x (N, C, H, W); weights (M, C, size, size) (Darknet's storage order,
so ``weights.reshape(M, K)`` with K = C*size*size is its GEMM matrix A);
im2col columns (N, K, OH*OW); output (N, M, OH, OW) with

    OH = (H + 2*pad - size) // stride + 1      (convolutional_out_height)

Forward, per image n:  z = weights(M, K) @ cols(K, OH*OW), then either
``y = f(scales * normalize(z) + biases)`` (batch_normalize=1, see
``refquant.yolo.batchnorm``) or ``y = f(z + biases)``.
"""
import math
import threading

import numba
import numpy as np

from refquant import threads
from refquant.yolo import batchnorm, direct
from refquant.yolo.activations import activation_code
from refquant.yolo.workspace import reuse


def convolution_padding(size, pad, padding):
    """Zero padding on each side of a convolution, Darknet's rule (``parse_convolutional``).

    ``pad=1`` means "same" padding ``size // 2`` and overrides ``padding``;
    otherwise the explicit ``padding`` (default 0) is used:
    ``int padding = option_find_int_quiet(options, "padding",0); if(pad) padding = size/2;``
    """
    return size // 2 if pad else padding


def convolution_output_size(size_in, size, stride, padding):
    """(size_in + 2*padding - size) // stride + 1 (``convolutional_out_height`` in Darknet)."""
    return (size_in + 2 * padding - size) // stride + 1


PRODUCTS_BYTES = 64 * 2**20
"""The most scratch memory (per thread running a backward pass) that holds the images' products of
a weight gradient at once, before they are added in image order; a batch needing more is done in
groups of images (at least one per thread)."""

_scratch = threading.local()


def _scratch_buffer(name, shape, dtype):
    """A ``shape`` array of this thread's scratch called ``name`` (reused from layer to layer and step to
    step, never shrunk: a fresh array of tens of MB each time costs its page faults on first touch)."""
    size = math.prod(shape)
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = np.empty(size, dtype)
        setattr(_scratch, name, buffer)
    return buffer[:size].reshape(tuple(shape))


@numba.njit(cache=True, inline="always")
def _im2col_row(x, n, r, size, stride, padding, out_h, out_w, pad_value, cols):
    """Row r of image n's columns (the body of :func:`_im2col` and :func:`_im2col_image`)."""
    width = x.shape[3]
    height = x.shape[2]
    c = r // (size * size)
    ky = (r // size) % size
    kx = r % size
    # output columns whose input column ox*stride + kx - padding lies inside the image
    first = max(0, (padding - kx + stride - 1) // stride)
    last = min(out_w, (width - 1 + padding - kx) // stride + 1)
    last = max(last, first)
    for oy in range(out_h):
        iy = oy * stride + ky - padding
        base = oy * out_w
        if iy < 0 or iy >= height:
            for ox in range(out_w):
                cols[n, r, base + ox] = pad_value
            continue
        for ox in range(first):
            cols[n, r, base + ox] = pad_value
        start = first * stride + kx - padding
        if stride == 1:  # contiguous copy, vectorised
            for ox in range(first, last):
                cols[n, r, base + ox] = x[n, c, iy, start + ox - first]
        else:
            for ox in range(first, last):
                cols[n, r, base + ox] = x[n, c, iy, start + (ox - first) * stride]
        for ox in range(last, out_w):
            cols[n, r, base + ox] = pad_value


@numba.njit(cache=True, parallel=True)
def _im2col(x, size, stride, padding, out_h, out_w, pad_value, cols):
    rows = x.shape[1] * size * size
    for t in numba.prange(x.shape[0] * rows):
        _im2col_row(x, t // rows, t % rows, size, stride, padding, out_h, out_w, pad_value, cols)


@numba.njit(cache=True, nogil=True)
def _im2col_image(x, n, size, stride, padding, out_h, out_w, pad_value, cols):
    """Image n's columns on the calling thread, without the GIL (one task of ``threads.for_each``)."""
    for r in range(x.shape[1] * size * size):
        _im2col_row(x, n, r, size, stride, padding, out_h, out_w, pad_value, cols)


def im2col(x, size, stride, padding, pad_value=0, out=None):
    """Darknet's im2col (``src/im2col.c``, from Caffe) for a batch; dtype-generic.

    x (N, C, H, W) -> cols (N, C*size*size, OH*OW) with
    ``cols[n, (c*size + ky)*size + kx, oy*OW + ox] = x[n, c, oy*stride + ky - padding, ox*stride + kx - padding]``
    and ``pad_value`` outside the image (0 for floats; an integer network passes its zero point).
    A 1x1, stride-1, unpadded convolution needs no copy: its columns are ``x.reshape(N, C, H*W)``.
    ``out``: an array of the right shape and dtype to fill instead of allocating one.
    """
    n_batch, channels, height, width = x.shape
    out_h = convolution_output_size(height, size, stride, padding)
    out_w = convolution_output_size(width, size, stride, padding)
    if size == 1 and stride == 1 and padding == 0:
        return np.ascontiguousarray(x).reshape(n_batch, channels, height * width)
    shape = (n_batch, channels * size * size, out_h * out_w)
    cols = reuse(out, shape, x.dtype)
    _im2col(np.ascontiguousarray(x), size, stride, padding, out_h, out_w, x.dtype.type(pad_value), cols)
    return cols


@numba.njit(cache=True, inline="always")
def _col2im_plane(cols, n, c, size, stride, padding, out_h, out_w, dx):
    """Plane (n, c) of :func:`col2im` (the body of :func:`_col2im` and :func:`_col2im_image`)."""
    height, width = dx.shape[2], dx.shape[3]
    for i in range(height):
        for j in range(width):
            dx[n, c, i, j] = 0
    for ky in range(size):
        for kx in range(size):
            r = (c * size + ky) * size + kx
            first = max(0, (padding - kx + stride - 1) // stride)
            last = max(first, min(out_w, (width - 1 + padding - kx) // stride + 1))
            start = first * stride + kx - padding
            for oy in range(out_h):
                iy = oy * stride + ky - padding
                if iy < 0 or iy >= height:
                    continue
                base = oy * out_w
                if stride == 1:  # contiguous, vectorised
                    for ox in range(first, last):
                        dx[n, c, iy, start + ox - first] += cols[n, r, base + ox]
                else:
                    for ox in range(first, last):
                        dx[n, c, iy, start + (ox - first) * stride] += cols[n, r, base + ox]


@numba.njit(cache=True, parallel=True)
def _col2im(cols, size, stride, padding, out_h, out_w, dx):
    channels = dx.shape[1]
    for t in numba.prange(dx.shape[0] * channels):
        _col2im_plane(cols, t // channels, t % channels, size, stride, padding, out_h, out_w, dx)


@numba.njit(cache=True, nogil=True)
def _col2im_image(cols, n, size, stride, padding, out_h, out_w, dx):
    """Image n of :func:`col2im` on the calling thread, without the GIL (one task of ``threads.for_each``)."""
    for c in range(dx.shape[1]):
        _col2im_plane(cols, n, c, size, stride, padding, out_h, out_w, dx)


def col2im(cols, input_shape, size, stride, padding):
    """Adjoint of :func:`im2col` (Darknet's ``col2im_cpu``): sums each column entry back
    into the pixel it was copied from. cols (N, C*size*size, OH*OW) -> (N, C, H, W)."""
    n_batch, channels, height, width = input_shape
    if size == 1 and stride == 1 and padding == 0:
        return cols.reshape(input_shape)
    out_h = convolution_output_size(height, size, stride, padding)
    out_w = convolution_output_size(width, size, stride, padding)
    dx = np.empty(input_shape, dtype=cols.dtype)
    _col2im(np.ascontiguousarray(cols), size, stride, padding, out_h, out_w, dx)
    return dx


class ConvolutionalLayer:
    """``[convolutional]``: y = f(BN(weights * x) ) or f(weights * x + biases).

    cfg keys (``parse_convolutional``): filters, size (both required here, where
    Darknet would silently default them to 1), stride=1, pad=0, padding=0,
    batch_normalize=0, activation=logistic (Darknet's default).
    params: biases (M,), weights (M, C, size, size), and with batch_normalize=1
    scales (M,), rolling_mean (M,), rolling_variance (M,). grads: biases, weights, scales.
    """

    type = "convolutional"
    cfg_keys = {
        "filters": ("int", None),
        "size": ("int", None),
        "stride": ("int", 1),
        "pad": ("int", 0),
        "padding": ("int", 0),
        "batch_normalize": ("int", 0),
        "activation": ("str", "logistic"),
    }

    def __init__(self, filters, size, stride=1, pad=0, padding=0, batch_normalize=0, activation="logistic"):
        if filters < 1 or size < 1 or stride < 1 or padding < 0:
            raise ValueError(f"convolutional: filters, size, stride must be >= 1 and padding >= 0, "
                             f"got filters={filters} size={size} stride={stride} padding={padding}")
        if batch_normalize not in (0, 1):
            raise ValueError(f"convolutional: batch_normalize must be 0 or 1, got {batch_normalize}")
        self.filters = filters
        self.size = size
        self.stride = stride
        self.padding = convolution_padding(size, pad, padding)
        self.batch_normalize = bool(batch_normalize)
        self.activation = activation
        self._code = activation_code(activation)
        self.params = {}
        self.grads = {}
        self._cache = None  # what the last forward keeps for the backward of its bias, normalisation and activation
        self._columns = None  # (input shape, im2col columns) of the last products(), for backward_products
        self._workspace = {}  # im2col columns, xhat and dz, reused while the input shape is unchanged

    def _buffer(self, name, shape, dtype):
        buffer = self._workspace[name] = reuse(self._workspace.get(name), shape, dtype)
        return buffer

    def build(self, input_shape, dtype=np.float32, rng=None):
        """Allocate the parameters for inputs with ``input_shape[0]`` channels (seeded init).

        Darknet's initialisation (``make_convolutional_layer``): weights ~ N(0, 2/(size*size*C)),
        biases 0, scales 1, rolling mean 0. The rolling variance starts at 1 here (Darknet's is
        0, which makes an untrained network's inference mode divide by sqrt(.00001)).
        """
        rng = np.random.default_rng(0) if rng is None else rng
        channels = input_shape[0]
        m = self.filters
        scale = np.sqrt(2.0 / (self.size * self.size * channels))
        self.params = {"biases": np.zeros(m, dtype)}
        if self.batch_normalize:
            self.params.update(scales=np.ones(m, dtype), rolling_mean=np.zeros(m, dtype),
                               rolling_variance=np.ones(m, dtype))
        shape = (m, channels, self.size, self.size)
        # drawn in float32 whatever the dtype, so a seed gives the same network in float32 and float64
        self.params["weights"] = (np.float32(scale) * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
        self.zero_grads()

    def zero_grads(self):
        """Set every trainable gradient to zero."""
        trainable = ("biases", "weights", "scales") if self.batch_normalize else ("biases", "weights")
        self.grads = {k: np.zeros_like(self.params[k]) for k in trainable}

    def output_shape(self, input_shape):
        """(C, H, W) -> (filters, OH, OW); ValueError if C differs from the weights' or OH, OW < 1."""
        channels, height, width = input_shape
        if "weights" in self.params and channels != self.params["weights"].shape[1]:
            raise ValueError(f"convolutional: input has {channels} channels, weights expect "
                             f"{self.params['weights'].shape[1]}")
        out_h = convolution_output_size(height, self.size, self.stride, self.padding)
        out_w = convolution_output_size(width, self.size, self.stride, self.padding)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"convolutional: input {height}x{width} is smaller than the "
                             f"{self.size}x{self.size} kernel with padding {self.padding}")
        return (self.filters, out_h, out_w)

    def stored_values(self, input_shape):
        """Number of values :meth:`build` allocates for ``input_shape`` (before allocating them)."""
        return self.filters * (input_shape[0] * self.size * self.size + (4 if self.batch_normalize else 1))

    def parameter_count(self):
        """Number of stored values (weights, biases, and the four batch-norm vectors)."""
        return int(sum(p.size for p in self.params.values()))

    def flops(self, input_shape):
        """Darknet's count: 2 * filters * size*size*C * OH*OW multiply-adds per image."""
        _, out_h, out_w = self.output_shape(input_shape)
        return 2 * self.filters * self.size * self.size * input_shape[0] * out_h * out_w

    def _affine(self, z, training):
        """(mean, inv_std, scales, biases) that map z to the activation's input, per channel."""
        p = self.params
        dtype = z.dtype
        if not self.batch_normalize:
            m = self.filters
            return np.zeros(m, dtype), np.ones(m, dtype), np.ones(m, dtype), p["biases"]
        if training:
            mean, variance = batchnorm.batch_statistics(z)
            batchnorm.rolling_update(p["rolling_mean"], mean)
            batchnorm.rolling_update(p["rolling_variance"], variance)
        else:
            mean, variance = p["rolling_mean"], p["rolling_variance"]
        return mean, batchnorm.normalizer(variance).astype(dtype), p["scales"], p["biases"]

    def products(self, x):
        """z = weights (M, K) @ im2col(x)[n] (K, OH*OW) for every image n: (N, M, OH*OW).

        The convolution without its bias, normalisation or activation; z lives in the layer's
        workspace (the next call overwrites it). The columns are kept for :meth:`backward_products`.
        """
        n_batch = x.shape[0]
        _, out_h, out_w = self.output_shape(x.shape[1:])
        weights = self.params["weights"]
        matrix = weights.reshape(self.filters, -1)
        z = self._buffer("xhat", (n_batch, self.filters, out_h * out_w), weights.dtype)
        x = np.ascontiguousarray(x)
        if direct.applies(self.size, self.stride, self.padding, x.dtype, out_h, out_w):  # no columns: the padded input in place
            _, saved = direct.forward(x, weights, self.padding, out=z, buffer=self._buffer)
            self._columns = (x.shape, saved)
            return z
        if self.size == 1 and self.stride == 1 and self.padding == 0:  # im2col's columns without a copy
            cols = im2col(x, 1, 1, 0)
            lower = None
        else:
            shape = (n_batch, x.shape[1] * self.size * self.size, out_h * out_w)
            cols = self._buffer("cols", shape, x.dtype)
            pad_value = x.dtype.type(0)

            def lower(n):
                _im2col_image(x, n, self.size, self.stride, self.padding, out_h, out_w, pad_value, cols)
        self._workspace["cols"] = cols

        def image(n):
            # im2col (as :func:`im2col`) and one GEMM per image, as Darknet (a loop over images, not
            # pixels), shared out over the threads; the image's columns are still in cache for the GEMM
            if lower is not None:
                lower(n)
            np.matmul(matrix, cols[n], out=z[n])

        threads.for_each(image, n_batch)
        self._columns = (x.shape, cols)
        return z

    def forward(self, x, training=False):
        """x (N, C, H, W) -> y (N, filters, OH, OW); training=True uses and updates batch statistics."""
        z = self.products(x)
        mean, inv_std, scales, biases = self._affine(z, training)
        y = np.empty_like(z)
        batchnorm.normalize_scale_activate(z, mean, inv_std, scales, biases, self._code, y)
        # z now holds xhat (or z itself without batch norm); backward needs it, cols and y.
        self._cache = (z, inv_std, y, training and self.batch_normalize)
        _, out_h, out_w = self.output_shape(x.shape[1:])
        return y.reshape(x.shape[0], self.filters, out_h, out_w)

    def backward(self, dout, input_gradient=True):
        """dL/dy (N, filters, OH, OW) -> dL/dx (N, C, H, W); sets self.grads to dL/dparams.

        input_gradient=False skips dL/dx (returns None), as Darknet does for the first layer
        (``if(net.delta)`` in ``backward_convolutional_layer``): training never needs it.
        """
        xhat, inv_std, y, batch_mode = self._cache
        dtype = y.dtype
        dy = np.ascontiguousarray(dout, dtype=dtype).reshape(y.shape)
        dz = self._buffer("dz", y.shape, dtype)
        scales = self.params["scales"] if self.batch_normalize else np.ones(self.filters, dtype)
        dscales = np.zeros(self.filters, dtype)
        dbiases = np.zeros(self.filters, dtype)
        batchnorm.backward_scale_normalize(dy, y, xhat, self._code, scales, inv_std, batch_mode,
                                           dz, dscales, dbiases)
        dweights, dx = self.backward_products(dz, input_gradient)
        self.grads = {"biases": dbiases, "weights": dweights}
        if self.batch_normalize:
            self.grads["scales"] = dscales
        return dx

    def backward_products(self, dz, input_gradient=True):
        """The adjoints of :meth:`products`: dL/dz (N, M, OH*OW) -> ``(dL/dweights, dL/dx)``.

        dL/dweights (M, C, size, size) = sum over images n of dz[n] (M, S) @ cols[n]^T (S, K),
        added in image order; dL/dx (N, C, H, W) = col2im(weights^T (K, M) @ dz[n]), or None with
        ``input_gradient=False``. Uses the columns of the last :meth:`products`.
        """
        input_shape, cols = self._columns
        n_batch = input_shape[0]
        dtype = dz.dtype
        weights = self.params["weights"]
        if isinstance(cols, tuple):  # the padded planes of a direct products()
            return direct.backward(dz, weights, self.padding, input_shape, cols, input_gradient, self._buffer)
        # dL/dweights = sum over images of dz (M, S) @ cols^T (S, K): the images' products in
        # parallel, then added in image order (the sums of a loop over images, bit for bit)
        product_shape = (self.filters, cols.shape[1])
        group = min(n_batch, max(threads.current(), PRODUCTS_BYTES // (math.prod(product_shape) * dtype.itemsize)))
        dweights = None
        for start in range(0, n_batch, group):
            products = _scratch_buffer("products", (min(group, n_batch - start),) + product_shape, dtype)
            threads.for_each(lambda i: np.matmul(dz[start + i], cols[start + i].T, out=products[i]), len(products))
            for product in products:
                if dweights is None:
                    dweights = product.copy()
                else:
                    dweights += product
        dweights = dweights.reshape(weights.shape)
        if not input_gradient:
            return dweights, None
        matrix_t = weights.reshape(self.filters, -1).T
        if self.size == 1 and self.stride == 1 and self.padding == 0:
            dcols = np.empty_like(cols)
            threads.for_each(lambda n: np.matmul(matrix_t, dz[n], out=dcols[n]), n_batch)
            return dweights, col2im(dcols, input_shape, 1, 1, 0)
        out_h = convolution_output_size(input_shape[2], self.size, self.stride, self.padding)
        out_w = convolution_output_size(input_shape[3], self.size, self.stride, self.padding)
        dx = np.empty(input_shape, dtype=cols.dtype)

        def image(n):
            # the image's columns' gradient in this thread's scratch, then summed back into its
            # pixels (as :func:`col2im`) while they are still in cache
            dcols = _scratch_buffer("dcols", (1,) + cols.shape[1:], cols.dtype)
            np.matmul(matrix_t, dz[n], out=dcols[0])
            _col2im_image(dcols, 0, self.size, self.stride, self.padding, out_h, out_w, dx[n:n + 1])

        threads.for_each(image, n_batch)
        return dweights, dx
