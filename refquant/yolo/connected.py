"""Darknet's ``[connected]`` layer: a fully connected layer, optional batch norm, activation.

Source: pjreddie/darknet ``src/connected_layer.c`` (``make_connected_layer``,
``forward_connected_layer``, ``backward_connected_layer``) and ``parse_connected``.
The input (N, C, H, W) is read as Darknet's flat per-image buffer x (N, K), K = C*H*W
in C, H, W order; weights (outputs, K); output (N, outputs, 1, 1):

    z = x @ weights.T,   y = f(scales * normalize(z) + biases)  or  y = f(z + biases)

Batch norm runs per output over the batch (Darknet's spatial size 1), with the formulas
of ``refquant.yolo.batchnorm``. The layer is tied to its input size K: it accepts only
inputs of the shape it was built for.
"""
import numpy as np

from refquant.yolo import batchnorm
from refquant.yolo.activations import activation_code


class ConnectedLayer:
    """``[connected]``: cfg keys output (required here; Darknet defaults to 1), activation=logistic,
    batch_normalize=0. params: biases (outputs,), weights (outputs, K), and with batch norm
    scales, rolling_mean, rolling_variance (outputs,)."""

    type = "connected"
    cfg_keys = {"output": ("int", None), "activation": ("str", "logistic"), "batch_normalize": ("int", 0)}

    def __init__(self, output, activation="logistic", batch_normalize=0):
        if output < 1:
            raise ValueError(f"connected: output must be >= 1, got {output}")
        if batch_normalize not in (0, 1):
            raise ValueError(f"connected: batch_normalize must be 0 or 1, got {batch_normalize}")
        self.outputs = output
        self.activation = activation
        self._code = activation_code(activation)
        self.batch_normalize = bool(batch_normalize)
        self.input_shape = None
        self.params = {}
        self.grads = {}
        self._cache = None

    def build(self, input_shape, dtype=np.float32, rng=None):
        """Darknet's initialisation: weights ~ sqrt(2/K) * U(-1, 1), biases 0, scales 1,
        rolling mean 0, rolling variance 1 (Darknet's 0, see ConvolutionalLayer.build)."""
        rng = np.random.default_rng(0) if rng is None else rng
        self.input_shape = tuple(input_shape)
        inputs = int(np.prod(input_shape))
        m = self.outputs
        self.params = {"biases": np.zeros(m, dtype)}
        scale = np.float32(np.sqrt(2.0 / inputs))
        self.params["weights"] = (scale * rng.uniform(-1, 1, (m, inputs)).astype(np.float32)).astype(dtype)
        if self.batch_normalize:
            self.params.update(scales=np.ones(m, dtype), rolling_mean=np.zeros(m, dtype),
                               rolling_variance=np.ones(m, dtype))
        self.zero_grads()

    def stored_values(self, input_shape):
        """Number of values :meth:`build` allocates for ``input_shape`` (before allocating them)."""
        inputs = 1
        for size in input_shape:
            inputs *= int(size)
        return self.outputs * (inputs + (4 if self.batch_normalize else 1))

    def zero_grads(self):
        """Set every trainable gradient to zero."""
        trainable = ("biases", "weights", "scales") if self.batch_normalize else ("biases", "weights")
        self.grads = {k: np.zeros_like(self.params[k]) for k in trainable}

    def output_shape(self, input_shape):
        """(C, H, W) -> (outputs, 1, 1); ValueError unless C*H*W is the K it was built for."""
        if self.input_shape is not None and tuple(input_shape) != self.input_shape:
            raise ValueError(f"connected: built for inputs {self.input_shape} (K = "
                             f"{int(np.prod(self.input_shape))}), got {tuple(input_shape)}; a connected "
                             f"layer fixes the input size")
        return (self.outputs, 1, 1)

    def forward(self, x, training=False):
        """x (N, C, H, W) -> y (N, outputs, 1, 1)."""
        self.output_shape(x.shape[1:])
        n_batch = x.shape[0]
        flat = np.ascontiguousarray(x).reshape(n_batch, -1)
        z = (flat @ self.params["weights"].T).reshape(n_batch, self.outputs, 1)
        p = self.params
        if self.batch_normalize:
            if training:
                mean, variance = batchnorm.batch_statistics(z)
                batchnorm.rolling_update(p["rolling_mean"], mean)
                batchnorm.rolling_update(p["rolling_variance"], variance)
            else:
                mean, variance = p["rolling_mean"], p["rolling_variance"]
            inv_std, scales = batchnorm.normalizer(variance).astype(z.dtype), p["scales"]
        else:
            mean = np.zeros(self.outputs, z.dtype)
            inv_std = scales = np.ones(self.outputs, z.dtype)
        y = np.empty_like(z)
        batchnorm.normalize_scale_activate(z, mean, inv_std, scales, p["biases"], self._code, y)
        self._cache = (x.shape, flat, z, inv_std, y, training and self.batch_normalize)
        return y.reshape(n_batch, self.outputs, 1, 1)

    def backward(self, dout):
        """dL/dy (N, outputs, 1, 1) -> dL/dx (N, C, H, W); sets self.grads."""
        input_shape, flat, xhat, inv_std, y, batch_mode = self._cache
        self.zero_grads()
        dy = np.ascontiguousarray(dout, dtype=y.dtype).reshape(y.shape)
        dz = np.empty_like(y)
        scales = self.params["scales"] if self.batch_normalize else np.ones(self.outputs, y.dtype)
        dscales = self.grads["scales"] if self.batch_normalize else np.zeros(self.outputs, y.dtype)
        batchnorm.backward_scale_normalize(dy, y, xhat, self._code, scales, inv_std, batch_mode,
                                           dz, dscales, self.grads["biases"])
        dz = dz.reshape(input_shape[0], self.outputs)
        self.grads["weights"][...] = dz.T @ flat
        return (dz @ self.params["weights"]).reshape(input_shape)
