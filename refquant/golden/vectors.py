"""The list of golden vectors (:data:`VECTORS`): name, description, defining functions, seeds,
parameters, input and output functions, tolerances and meanings of each.

A meaning is one line saying what an array is (units, order, conventions), found for an array as its
tolerance is (:func:`refquant.golden.format.stated_for`): by its full name, a trailing part of it, or
its first component. Sections are those of docs/SPECIFICATION.md.
"""
import dataclasses
import functools

from refquant.golden.format import DRAWN, EXACT, Vector
from refquant.golden.network_vectors import (
    _FOLD_CFG,
    DETECTION_NAMES,
    DETECTION_TOLERANCES,
    INTEGER_TOLERANCES,
    LAYERS_TOLERANCES,
    MAXPOOL_CASES,
    NETWORK_SEED,
    NETWORK_TOLERANCES,
    PLANS,
    REGION_CASES,
    REGION_SEEN,
    REGION_TOLERANCES,
    _detection_inputs,
    _detection_outputs,
    _integer_inputs,
    _integer_outputs,
    _layers_inputs,
    _layers_outputs,
    _network_inputs,
    _network_outputs,
    _region_inputs,
    _region_outputs,
)
from refquant.golden.numeric_vectors import (
    CONV_TOLERANCES,
    DENSITIES,
    ERROR_DENSITIES,
    ERROR_TOLERANCES,
    FAKE_TOLERANCES,
    OPTIMAL_MODES,
    OPTIMAL_TOLERANCES,
    PGM_CASES,
    PGM_MAX_PIECES,
    PGM_TOLERANCES,
    _conv_inputs,
    _conv_outputs,
    _error_inputs,
    _error_outputs,
    _fake_inputs,
    _fake_outputs,
    _optimal_inputs,
    _optimal_outputs,
    _pgm_inputs,
    _pgm_outputs,
    _rounding_inputs,
    _rounding_outputs,
)
from refquant.integer.profiles import get_profile


def _density(whose, bounded=True):
    """Meanings of a density's arrays (:func:`refquant.golden.numeric_vectors._density_arrays`), ``whose`` it is."""
    meanings = {
        "breakpoints": f"breakpoints b_1 < ... < b_(K-1) of {whose} (float64, empty for one piece; piece k is "
                       "[b_(k-1), b_k), a breakpoint belonging to the piece on its right; section 2)",
        "weights": f"masses pi_k of {whose}, one per piece in breakpoint order, summing to 1 (section 2)",
        "means": f"means mu_k of {whose}, one per piece: of the untruncated N(mu_k, sigma_k^2) restricted to piece k, "
                 "not the piece's own mean (section 2)",
        "stds": f"standard deviations sigma_k > 0 of {whose}, one per piece: of the untruncated N(mu_k, sigma_k^2) "
                "(section 2)",
    }
    if bounded:
        meanings["bounded"] = (f"indices (0-based, increasing) of the pieces of {whose} fitted on the std's bound, 10 "
                               "times the std of all the data fitted (section 3.3, fit_info.bounded); empty if none")
    return meanings


ROUNDING_MEANINGS = {
    "round_half_even/x": "float64 values to round: the ties -4.5..4.5, signed zeros, neighbours of 0.5 and 1.5, "
                         "+-(2**52 - 0.5), 2**52, +-1e300, +-inf, then 32 normals (seed 1, std 10)",
    "round_half_even/y": "round_half_even(x): x rounded to the nearest integer, ties to even, as float64 "
                         "(-0.5 -> -0.0; "
                         "+-inf kept; section 1)",
    "rounding_right_shift/value": "int64 values to shift: ties, odd and even neighbours, extremes (-2**63, +-2**62), "
                                  "then 64 random values in [-2**53, 2**53)",
    "rounding_right_shift/shift": "int64 right shift of the value at the same index, 0..62",
    "rounding_right_shift/result": "rounding_right_shift(value, shift) = value / 2**shift rounded to the nearest "
                                   "integer, ties to even, exactly (int64; section 1)",
}


PGM_FITS_MEANINGS = {
    **{f"generating/{key}": text for key, text in _density("the case's generating PGM", bounded=False).items()},
    "samples": "float64 samples drawn from the case's generating PGM by PiecewiseGaussian.sample(n, rng=the case's "
               "seed), in draw order; the data the fit is given",
    "counts": "int64 counts of the drawn samples in the bins [bin_edges[j], bin_edges[j+1]); the data the histogram "
              "fit is given",
    "bin_edges": "float64 bin edges of counts: -inf, -0.3, -0.25, ..., 3.0 (step 0.05), +inf",
    "given_breakpoints": "the breakpoints the fit is given (float64; empty: one piece)",
    "max_pieces": "the most pieces the automatic choice of K and the breakpoints may take (section 3.6)",
    "piece_count": "number of samples in each fitted piece [b_(k-1), b_k) (int64)",
    "piece_mean": "sample mean of the samples in each fitted piece",
    "piece_variance": "variance of the samples in each fitted piece, divided by the piece's count (not count - 1)",
    **_density("the PGM fitted to the case's data"),
    "log_likelihood": "natural log-likelihood of the data under the fitted PGM: sum_i log p(x_i) for samples, "
                      "sum_j c_j log P(bin j) for a histogram (sections 3.5, 3.6)",
    "bic": "BIC of the fit: -2 log_likelihood + n_parameters * log(n), n the number of samples (sum of counts)",
    "n_parameters": "parameters counted by the BIC: 3 K - 1 for K occupied pieces, plus the breakpoints chosen from "
                    "the "
                    "data (section 3.6)",
    "selection_pieces": "K of each row of the automatic choice: 1, 2, ..., max_pieces (section 3.6)",
    "selection_log_likelihood": "log-likelihood of the best breakpoints for K pieces (row order of selection_pieces), "
                                "fitted with the search budget of 150 EM steps (section 3.6, step 4)",
    "selection_bic": "BIC of those fits, -2 log L + (4 K - 2) log n; the least wins (section 3.6, step 4)",
}


EXPECTED_ERROR_MEANINGS = {
    **_density("the density named by the prefix (the parameters' densities)", bounded=False),
    "x": "float64 points where pdf and cdf are evaluated: 25 evenly from mean - 6 std to mean + 6 std, the breakpoints "
         "and the breakpoints +-1e-9, sorted",
    "lo": "float64 lower ends of the intervals of m0, m1, m2 (-inf allowed); interval k is [lo[k], hi[k]]",
    "hi": "float64 upper ends of the intervals of m0, m1, m2 (+inf allowed), paired with lo by index",
    "quantizer_step": "step of quantizer row k (float64), the rows' columns being quantizer_step, _zero_point, _qmin, "
                      "_qmax (section 4)",
    "quantizer_zero_point": "zero point of quantizer row k (float64; a real offset in the 'free' rows 4 and 5, "
                            "0-based)",
    "quantizer_qmin": "smallest code of quantizer row k (int64)",
    "quantizer_qmax": "largest code of quantizer row k (int64)",
    "pdf": "the density p(x) at each x (section 2)",
    "cdf": "P(X <= x) at each x (section 2)",
    "mean": "the density's mean, sum_k pi_k E_k (scalar; section 2)",
    "var": "the density's variance by the law of total variance (scalar; section 2)",
    "m0": "partial moment m0 = integral_lo^hi p(x) dx of each interval [lo, hi] (0 when hi <= lo; section 2)",
    "m1": "partial moment m1 = integral_lo^hi x p(x) dx of each interval [lo, hi] (raw, not centred; section 2)",
    "m2": "partial moment m2 = integral_lo^hi x^2 p(x) dx of each interval [lo, hi] (raw, not centred; section 2)",
    "granular": "granular part of E[(X - Q(X))^2] for quantizer row k: the cells inside its interval [step (qmin - "
                "zero_point), step (qmax - zero_point)] (section 5)",
    "clipping": "clipping part of E[(X - Q(X))^2] for quantizer row k: the values below and above its interval, mapped "
                "to its ends (section 5)",
}


OPTIMAL_MEANINGS = {
    **_density("the density named after densities/", bounded=False),
    "cases/density": "row k's density: the name under densities/ (normal, leaky or weights)",
    "cases/mode": "row k's constraint, a key of the parameters' modes (the optimal_quantizer keywords; section 6)",
    "cases/bits": "row k's code width in bits (int64)",
    "cases/step": "step of row k's optimal quantizer (float64; section 6)",
    "cases/zero_point": "zero point of row k's optimal quantizer (float64: an integer but in 'free' mode; ties to the "
                        "smallest zero point, then the smallest step; section 6)",
    "cases/qmin": "smallest code of row k's quantizer: 0 unsigned, -2**(bits-1) symmetric (int64)",
    "cases/qmax": "largest code of row k's quantizer: 2**bits - 1 unsigned, 2**(bits-1) - 1 symmetric (int64)",
    "cases/mse": "E[(X - Q(X))^2] of row k's quantizer, granular + clipping (section 5)",
    "cases/granular": "granular part of row k's expected error (section 5)",
    "cases/clipping": "clipping part of row k's expected error (section 5)",
    "cases/step_is_power_of_two": "True where row k's mode is pow2_* and its step is exactly 2**e; False otherwise",
}


FAKE_MEANINGS = {
    "quantizers/step": "step of quantizer i (float64), the rows' columns being step, zero_point, qmin, qmax "
                       "(section 4)",
    "quantizers/zero_point": "zero point of quantizer i (float64; row 3's is the real 2.5)",
    "quantizers/qmin": "smallest code of quantizer i (int64)",
    "quantizers/qmax": "largest code of quantizer i (int64)",
    "x": "float64 inputs of quantizer i (the q<i> prefix): its levels, the midpoints between them (exact ties when "
         "representable), lo - step, hi + step, lo, hi, -inf, +inf, then 32 uniform in [lo - 2 step, hi + 2 step]",
    "x32": "x rounded to float32: the float32 inputs of fake32",
    "codes": "int32 codes of x: clip(rint(x / step + f) + floor(zero_point), qmin, qmax), f the zero point's fraction "
             "(section 4)",
    "fake": "float64 fake-quantized x: step * (code - zero_point) (section 4)",
    "fake32": "fake-quantized x32: the float64 level of its code rounded to float32 (section 4)",
    "straight_through": "straight-through mask of x: True where lo <= x <= hi in float64 (closed interval; section 4)",
}


INTEGER_CONVOLUTION_MEANINGS = {
    "x": "input values (N, C, H, W), uint8, int8 or int16, with the input's zero point already subtracted (codes - "
         "z_in): the padding is 0 (section 11.5)",
    "w": "int8 weight codes (O, C, kh, kw), zero point 0",
    "bias": "int32 bias per output channel, added to each accumulator of its channel (zeros in int16_1x1)",
    "stride": "stride in rows and columns",
    "pad": "zeros added on each side of x (rows and columns)",
    "real_multiplier": "M, the float64 real multiplier requantization approximates",
    "zero_point": "z_out, the OUTPUT grid's zero point added after the shift; the input's zero point is already "
                  "removed from x (x = codes - z_in)",
    "qmin": "smallest output code (the output codes clip to [qmin, qmax])",
    "qmax": "largest output code",
    "acc": "int32 accumulators (N, O, OH, OW): bias[o] + sum_{c,i,j} x[n, c, y*stride + i - pad, x*stride + j - pad] "
           "w[o, c, i, j], exact (section 11.5)",
    "requantization": "int64 (multiplier, shift, negative_multiplier, negative_shift) = leaky_multipliers(M): "
                      "quantize_multiplier(M) then quantize_multiplier(0.1 * M), 22 bits (section 11.4)",
    "codes_linear": "clip(rounding_right_shift(acc * multiplier, shift) + zero_point, qmin, qmax) with the positive "
                    "pair "
                    "everywhere (section 11.5)",
    "codes_leaky": "as codes_linear where acc >= 0, with (negative_multiplier, negative_shift) where acc < 0",
    "codes_relu": "as codes_linear where acc >= 0, and clip(zero_point, qmin, qmax) where acc < 0 (the pair (0, 0))",
    "multipliers/real": "float64 real multipliers M > 0 to quantize",
    "multipliers/multiplier": "quantize_multiplier(M)'s multiplier: 2**21 <= m < 2**22 unless the shift is capped "
                              "at 62 "
                              "(section 11.4)",
    "multipliers/shift": "quantize_multiplier(M)'s shift in [0, 62]: M ~ multiplier * 2**-shift (section 11.4)",
    "ties/acc": "int32 accumulators -24..24: every residue of a shift by 2, exact ties included",
    "ties/shift": "the shift, 2, with multiplier 1 (requantize_shift): the real multiplier 2**-2",
    "ties/zero_point": "output zero point added after the shift",
    "ties/qmin": "smallest output code",
    "ties/qmax": "largest output code",
    "ties/codes": "clip(rounding_right_shift(acc * 1, shift) + zero_point, qmin, qmax): multiplier 1, ties to even "
                  "(uint8)",
    "bias/values": "float64 real biases to quantize",
    "bias/step_x": "the input grid's step s_x",
    "bias/step_w": "per-channel weight steps s_w, one per value",
    "bias/quantized": "int32 rint(values / (step_x * step_w)), step_x * step_w multiplied first (section 11.4)",
    "rescale/codes": "uint8 codes on the input grid (step_in, zero_point)",
    "rescale/zero_point": "the input grid's zero point z_in, subtracted from codes",
    "rescale/step_in": "the input grid's step",
    "rescale/step_out": "the output grid's step",
    "rescale/out_zero_point": "the output grid's zero point z_out",
    "rescale/requantization": "int64 (multiplier, shift) = quantize_multiplier(step_in / step_out), the float64 "
                              "quotient, 22 bits (section 11.4)",
    "rescale/rescaled": "uint8 clip(rounding_right_shift((codes - zero_point) * multiplier, shift) + out_zero_point, "
                        "0, "
                        "255): codes 0..255 (section 11.5, route)",
}


LAYERS_MEANINGS = {
    "maxpool/x": "int16 input (N, C, H, W) = (2, 3, 7, 9), values 0..3 (many ties)",
    **{f"maxpool/{case}": f"max over {s}x{s} windows, stride {t}, Darknet's implicit padding {s - 1} (total; "
                          f"{(s - 1) // 2} before), (N, C, OH, OW) (section 8.5)"
       for case, (s, t) in MAXPOOL_CASES.items()},
    **{f"maxpool/{case}_argmax": f"int64 flat index row * W + col (W = 9) of each maximum of maxpool/{case} within its "
                                 f"own (n, c) plane of x, the first in row-major window order on ties (section 8.5)"
       for case in MAXPOOL_CASES},
    "reorg/x": "int16 input (N, C, H, W) = (2, 8, 6, 4)",
    "reorg/stride2": "Darknet's reorg of x with stride 2, (N, 4 C, H/2, W/2) in Darknet's index order (section 8.6)",
    "upsample/x": "uint8 input (N, C, H, W) = (1, 2, 3, 4)",
    "upsample/stride2": "nearest-neighbour upsampling of upsample/x by 2, scale 1: out[n, c, i, j] = in[n, c, i // 2, "
                        "j // 2] (section 8.7)",
    "batchnorm/z": "float64 convolution outputs (N, C, S) = (3, 4, 10): batch, channel, spatial positions",
    "batchnorm/rolling_mean": "rolling mean per channel before the update",
    "batchnorm/rolling_variance": "rolling variance per channel before the update",
    "batchnorm/mean": "per-channel mean of z over its m = N S values (section 8.4)",
    "batchnorm/variance": "per-channel unbiased variance of z, sum (z - mean)^2 / (m - 1) (section 8.4)",
    "batchnorm/xhat": "(z - mean) * (1 / sqrt(variance + 1e-5)) with the batch mean and variance (section 8.4)",
    "batchnorm/rolling_mean_next": "rolling_mean * 0.99, then + (1 - 0.99) * mean, in place (section 8.4)",
    "batchnorm/rolling_variance_next": "rolling_variance * 0.99, then + (1 - 0.99) * variance (unbiased), in place "
                                       "(section 8.4)",
    "parameters/biases": "float64 biases (4,) of the layers vector's one-layer network (its fold_cfg: 3x3, 3 -> 4 "
                         "channels, batch-normalised, leaky)",
    "parameters/scales": "float64 batch-norm scales (4,) of the one-layer network",
    "parameters/rolling_mean": "float64 rolling means (4,) of the one-layer network",
    "parameters/rolling_variance": "float64 rolling variances (4,) of the one-layer network",
    "parameters/weights": "float64 weights (M, C, k, k) = (4, 3, 3, 3) of the one-layer network",
    "fold/weights": "folded weights: weights * scales_m / sqrt(rolling_variance_m + 1e-5) per output channel m "
                    "(section 11.1)",
    "fold/biases": "folded biases: biases_m - rolling_mean_m * scales_m / sqrt(rolling_variance_m + 1e-5) "
                   "(section 11.1)",
    **{f"sgd/gradient/{name}": f"dL/d{name} of the loss summed over the batch's images (the gradient g; section 10)"
       for name in ("biases", "scales", "weights")},
    **{f"sgd/update/{name}": f"momentum buffer of {name} before the update (refquant's: Darknet's divided by momentum; "
                             f"section 10)" for name in ("biases", "scales", "weights")},
    "sgd/hyperparameters": "(learning_rate, momentum, decay), in that order",
    "sgd/batch": "the batch size: decay is multiplied by it and the learning rate divided by it (section 10)",
    **{f"sgd/parameter_next/{name}": f"{name} after one update: p + (learning_rate / batch) * update_next (section 10)"
       for name in ("biases", "scales", "weights")},
    **{f"sgd/update_next/{name}": f"momentum buffer of {name} after the update: momentum * update - g"
                                  + (" - (decay * batch) * p" if name == "weights" else "") + " (section 10)"
       for name in ("biases", "scales", "weights")},
}


REGION_MEANINGS = {
    "x": "raw input of the region head (N, num K, H, W) = (2, 16, 5, 5): 2 anchors of K = 8 channels (x, y, w, h, "
         "objectness, 3 class scores; section 8.8)",
    "truths": "image i's truths (the truths/<i> suffix), one row (x_centre, y_centre, w, h, class) relative to the "
              "image, the class id as a float (section 8.9)",
    "y": "the head's output for x with the case's options (the name's first part, a key of the parameters' cases): "
         "logistic x, y, objectness, raw w, h, softmax or logistic classes (section 8.8)",
    "loss": "L, the region loss of y for the truths with seen images as the seen<n> part of the name says "
            "(section 8.9)",
    "delta": "Darknet's l.delta = S (T - y) in output space, shaped like y (section 8.9)",
    "dout": "dL/dy, the gradient of L with respect to the output y (not -delta: on the class entries it is the "
            "cross-entropy's derivative in p; section 8.9)",
    "dx": "dL/dx, the gradient of L with respect to the raw input x (backward of dout; section 8.9)",
}


NETWORK_LAYERS = (
    "convolution 3x3, 3 -> 8 channels, batch norm, leaky", "maxpool 2x2 stride 2", "convolution 3x3, 8 -> 16, leaky",
    "maxpool 2x2 stride 2", "convolution 3x3, 16 -> 32, leaky", "maxpool 2x2 stride 1",
    "convolution 1x1, 32 -> 16, leaky", "route of layer 2", "convolution 1x1, 16 -> 8, leaky", "reorg stride 2",
    "route of layers 9 and 6", "convolution 3x3, 48 -> 32, leaky", "convolution 1x1, 32 -> 16, linear, no batch norm",
    "region head, 2 anchors, 3 classes, softmax")
"""What layer i of network.cfg (:data:`refquant.golden.network_vectors.NETWORK_CFG`) is; convolutions but the
last are batch-normalised."""


_CONVOLUTIONS = [i for i, text in enumerate(NETWORK_LAYERS) if text.startswith("convolution")]


GRID_LAYERS = sorted(_CONVOLUTIONS + [10])
"""The layers of network.cfg with an output grid of their own (convolutions, the two-input route 10): the
plans' activation layers, the calibration histograms and activation densities."""


POOLED = {0: 1, 4: 5}
"""{convolution: the maxpool that alone reads it}: calibration takes the maxpool's outputs (section 11.3)."""


def _layer(i):
    return f"layer {i} ({NETWORK_LAYERS[i]})"


def _plan_meanings(prefix):
    return {
        f"{prefix}/input_grid": "(step,) of the input grid: 1/255 in float64 (section 11.2)",
        f"{prefix}/input_codes": "(zero_point, qmin, qmax) of the input grid: (0, 0, 255)",
        f"{prefix}/weight_layers": "indices of the layers with quantized weights (the convolutions), increasing; row r "
                                   "of weight_step and weight_codes is layer weight_layers[r]",
        f"{prefix}/weight_step": "weight step of each layer of weight_layers (zero point 0; section 11.3)",
        f"{prefix}/weight_codes": "(qmin, qmax) of each layer of weight_layers (signed codes)",
        f"{prefix}/activation_layers": "indices of the layers whose outputs have their own grid (convolutions and "
                                       "multi-input routes), increasing; row r of activation_step and activation_codes",
        f"{prefix}/activation_step": "output step of each layer of activation_layers (section 11.3)",
        f"{prefix}/activation_codes": "(zero_point, qmin, qmax) of the output grid of each layer of activation_layers",
    }


NETWORK_MEANINGS = {
    "calibration_images": "float32 calibration images (8, 3, 32, 32) on the 8-bit grid k/255, seeded",
    "images": "float32 test images (2, 3, 32, 32): image 0 on the 8-bit grid k/255, image 1 uniform in [-0.1, 1.1] "
              "(off the grid, outside [0, 1])",
    **{f"params/{i}/{name}": f"float32 {text} of {_layer(i)}, as in network.weights (section 9)"
       for i in _CONVOLUTIONS for name, text in (("biases", "biases (M,)"), ("scales", "batch-norm scales (M,)"),
                                                 ("rolling_mean", "rolling means (M,)"),
                                                 ("rolling_variance", "rolling variances (M,)"),
                                                 ("weights", "weights (M, C, k, k)"))},
    **{f"float/{i}": f"float64 output of {_layer(i)} for images (float64 network, inference mode, not folded; "
                     f"section 8.10)" for i in range(len(NETWORK_LAYERS))},
    **{f"folded/{i}/{name}": f"float32 folded {name} of {_layer(i)} (section 11.1)"
       for i in _CONVOLUTIONS for name in ("weights", "biases")},
    **{f"histograms/{i}/counts": f"int64 counts of {_layer(i)}'s outputs"
                                 + (f" as maxpool {POOLED[i]} passes them on" if i in POOLED else "")
                                 + " over calibration_images (float32 folded network) in the bins "
                                 "[edges[j], edges[j+1])"
                                 " (section 11.3)" for i in GRID_LAYERS},
    **{f"histograms/{i}/edges": f"float64 edges (floor(min / w) + k) w, k = 0..B, w a power of two, of layer {i}'s "
                                "histogram: from the start of the bin holding the least value to the end of the bin "
                                "holding the largest (section 11.3)" for i in GRID_LAYERS},
    **{f"densities/activations/{i}/{key}": text for i in GRID_LAYERS
       for key, text in _density(f"the PGM fitted to histogram {i} (section 11.3)").items()},
    **{f"densities/weights/{i}/{key}": text for i in _CONVOLUTIONS
       for key, text in _density(f"the PGM fitted to layer {i}'s folded weights (section 11.3)").items()},
    **{key: text for plan in PLANS for key, text in _plan_meanings(f"plans/{plan}").items()},
}


INTEGER_NETWORK_MEANINGS = {
    key: text for key, text in NETWORK_MEANINGS.items()
    if key.startswith(("params/", "plans/")) or key == "images"}
for _plan in PLANS:
    for _i in _CONVOLUTIONS:
        _prefix = f"{_plan}/fixed/{_i}"
        INTEGER_NETWORK_MEANINGS.update({
            f"{_prefix}/weight_codes": f"int8 codes (M, C, k, k) of {_layer(_i)}'s folded weights on its weight grid "
                                       f"(zero point 0; section 11.4)",
            f"{_prefix}/bias": f"int32 bias of layer {_i}: rint(folded biases / (s_in * s_w)), s_in * s_w first "
                               f"(section 11.4)",
            f"{_prefix}/real_multiplier": f"M = s_in * s_w / s_out of layer {_i} in float64, in that order: s_in its "
                                          f"input's step, s_w its weight step, s_out its output step (section 11.4)",
            f"{_prefix}/requantization": "int64 (multiplier, shift, negative_multiplier, negative_shift) of layer "
                                         f"{_i} "
                                         f"(section 11.4); z_out, qmin, qmax: its row of the plan's activation_codes; "
                                         f"z_in: its input's grid's",
        })
    INTEGER_NETWORK_MEANINGS.update({
        f"{_plan}/fixed/10/rescalings": "int64 one row per input of route 10, in its layers= order (9, then 6): "
                                        "(1, z_in, "
                                        "multiplier, shift) of the rescaling to the route's grid, or (0, 0, 0, 0) for "
                                        "an input already on it (copied; section 11.5)",
        f"{_plan}/input_codes": "uint8 codes of images on the input grid: clip(rint(x / (1.0/255.0)), 0, 255) "
                                "(section 11.5)",
        f"{_plan}/head": "float64 output of the region head (layer 13) computed from step * (codes - zero_point) of "
                         "layer 12's codes (section 11.5)",
        **{f"{_plan}/codes/{i}": f"codes of {_layer(i)}'s output for images, on "
                                 + ("its own grid" if i in GRID_LAYERS else "its input's grid")
                                 + " (section 11.5)" for i in range(len(NETWORK_LAYERS) - 1)},
    })


INTEGER_NETWORK_MEANINGS.update({
    "linear_grid": "float64 (step, zero_point, qmin, qmax) of the grid the layer's accumulators are requantized to: "
                   "its output grid, or for a leaky layer its pre-activation grid (section 11.8)",
    "float32_scales": "float32 (M,) requantization scale per output channel, f32(f32(s_in) * f32(s_w)) / f32(s_lin) "
                      "(float-scale profile, section 11.8)",
    "q31_multipliers": "int64 (M, 2) rows (multiplier, shift) of TFLite's QuantizeMultiplier per output channel, shift "
                       "> 0 a left shift (gemmlowp profiles, section 11.8)",
    "channel_requantization": "int64 (M, 4) rows (multiplier, shift, negative_multiplier, negative_shift) per output "
                              "channel (exact profile, per-channel weights, section 11.8)",
    "clamp": "int64 (lo, hi): the codes the requantized accumulators are clamped to (lo the zero point's code for "
             "relu; section 11.8)",
    "leaky_relu": "int64 (z_in, identity, identity_shift, alpha, alpha_shift, z_out, qmin, qmax) of TFLite's "
                  "LEAKY_RELU from the pre-activation grid to the output grid (section 11.8)",
    "leaky_table": "int64 output code of QLinearLeakyRelu for every pre-activation code qmin..qmax, in order "
                   "(float-scale profile, section 11.8)",
    "concatenation_scaling": "float32 one row per route input: (1, scale, bias) of ConcatenationWithScaling, or "
                             "(0, 0, 0) for an input copied (gemmlowp profiles, section 11.8)",
})
for _j in range(2):  # route 10's inputs
    INTEGER_NETWORK_MEANINGS[f"concat_table_{_j}"] = (
        f"int64 route code for every code qmin..qmax of the route's input {_j}, in order: QLinearConcat's table "
        f"(float-scale profile, section 11.8)")


_AREA = "AP per label index by the area rule (VOC2010 and later), NaN for a label without non-difficult objects"
_ELEVEN = "AP per label index by the 11-point rule (VOC2007), NaN for a label without non-difficult objects"


def _ap_meanings(prefix, of):
    return {
        f"{prefix}/ap_area": f"{_AREA}, of {of} (section 13)",
        f"{prefix}/ap_eleven_point": f"{_ELEVEN}, of {of} (section 13)",
        f"{prefix}/map_area": f"mean of ap_area over the labels that have an AP (NaN left out), of {of}",
        f"{prefix}/map_eleven_point": f"mean of ap_eleven_point over the labels that have an AP, of {of}",
        **{f"{prefix}/recall/{label}": f"recall after each detection of label {label}, of {of}, in the devkit's order "
                                       "(descending score, stable; section 13)"
           for label in range(len(DETECTION_NAMES))},
        **{f"{prefix}/precision/{label}": f"precision after each detection of label {label}, of {of}, in the devkit's "
                                          "order; NaN where only difficult matches have counted (section 13)"
           for label in range(len(DETECTION_NAMES))},
    }


DETECTION_MEANINGS = {
    "head": "float64 activated region-head output (N, num K, H, W) = (2, 16, 6, 6): 2 anchors, 3 softmax classes "
            "(section 8.8)",
    "anchors": "anchor sizes (w_0, h_0, w_1, h_1) in grid cells",
    "image_sizes": "int64 (width, height) in pixels of each original image, one row per image (before letterboxing)",
    "network_size": "int64 (width, height) of the network input in pixels",
    "names": "class names: label index l is names[l]",
    "thresh": "detection threshold on objectness and on objectness * class probability (section 12)",
    "nms": "NMS threshold on Darknet IoU (section 12)",
    "truth/image": "image index of each ground-truth object",
    "truth/label": "label index (into names) of each ground-truth object",
    "truth/box": "ground-truth boxes (xmin, ymin, xmax, ymax) in VOC pixels (1-based, inclusive)",
    "truth/difficult": "True for a ground-truth object marked difficult",
    "hand/detection_image": "image index of each hand-case detection",
    "hand/detection_label": "label index of each hand-case detection",
    "hand/detection_score": "score of each hand-case detection",
    "hand/detection_box": "hand-case detection boxes (xmin, ymin, xmax, ymax) in VOC pixels",
    "hand/truth_image": "image index of each hand-case ground-truth object",
    "hand/truth_label": "label index of each hand-case ground-truth object",
    "hand/truth_box": "hand-case ground-truth boxes (xmin, ymin, xmax, ymax) in VOC pixels",
    "hand/truth_difficult": "True for a hand-case ground-truth object marked difficult",
    "detections/image": "image index of each detection; detections run by image, then candidate, then class "
                        "(section 12)",
    "detections/label": "label index (into names) of each detection",
    "detections/score": "probability of each detection: objectness * class probability after the thresholds and NMS "
                        "(section 12)",
    "detections/box": "detection boxes (xmin, ymin, xmax, ymax) in VOC pixels of the original image, letterbox "
                      "corrected "
                      "(section 12)",
    "region/boxes": "(N, num H W, 4) boxes (x, y, w, h) relative to the network input (before the letterbox "
                    "correction), candidate index n H W + row W + col (section 12)",
    "region/objectness": "(N, num H W) objectness of each candidate, same candidate order",
    "region/class_prob": "(N, num H W, classes) class probabilities of each candidate, same candidate order",
    **_ap_meanings("ap", "detections against the truth arrays"),
    **_ap_meanings("hand", "the hand-worked case (section 13's worked example)"),
}


VECTORS = {vector.name: vector for vector in [
    Vector("rounding", "Round half to even on floats and the integer rounding right shift, ties and extremes.",
           ("refquant.rounding.round_half_even", "refquant.rounding.rounding_right_shift"),
           {"random": 1}, {}, _rounding_inputs, _rounding_outputs, {"x": DRAWN, "y": EXACT},
           ROUNDING_MEANINGS),
    Vector("pgm_fits", "Samples (and a histogram) drawn from known piecewise Gaussians and the PGMs fitted "
           "to them by EM: given breakpoints, and automatic selection (K and breakpoints by BIC).",
           ("refquant.density.pgm.PiecewiseGaussian.fit", "refquant.density.pgm.PiecewiseGaussian.fit_histogram"),
           {case: spec[2] for case, spec in PGM_CASES.items()},
           {"max_pieces": PGM_MAX_PIECES, "max_iter": 1000, "tol": 1e-9, "min_piece_samples": 5,
            "cases": {case: {"generating_density": spec[0], "n": spec[1], "breakpoints": spec[3], "source": spec[4]}
                      for case, spec in PGM_CASES.items()}},
           _pgm_inputs, _pgm_outputs, PGM_TOLERANCES, PGM_FITS_MEANINGS),
    Vector("expected_error", "Piecewise Gaussian densities: pdf, cdf, mean, variance, partial moments, and the "
           "closed-form expected squared error (granular, clipping) of given uniform quantizers.",
           ("refquant.density.pgm.PiecewiseGaussian.pdf", "refquant.density.pgm.PiecewiseGaussian.cdf",
            "refquant.density.pgm.PiecewiseGaussian.partial_moments", "refquant.quantizers.error.expected_mse"),
           {}, {"densities": {name: DENSITIES[name] for name in ERROR_DENSITIES}},
           _error_inputs, _error_outputs, ERROR_TOLERANCES, EXPECTED_ERROR_MEANINGS),
    Vector("optimal_quantizers", "The quantizer minimising the expected error, per density, constraint and width "
           "(the 'free' N(0,1) rows are Max's 1960 table).",
           ("refquant.quantizers.optimal.optimal_quantizer",), {},
           {"modes": OPTIMAL_MODES}, _optimal_inputs, _optimal_outputs, OPTIMAL_TOLERANCES,
           OPTIMAL_MEANINGS),
    Vector("fake_quantization", "Codes, fake-quantized values (float64 and float32) and the straight-through mask "
           "of given quantizers, on levels, exact ties, the interval ends, beyond them and +-inf.",
           ("refquant.quantizers.uniform.UniformQuantizer.quantize", "refquant.quantizers.uniform.UniformQuantizer.fake",
            "refquant.quantizers.uniform.UniformQuantizer.straight_through_mask"),
           {"random": 3}, {}, _fake_inputs, _fake_outputs, FAKE_TOLERANCES, FAKE_MEANINGS),
    Vector("integer_convolution", "Integer correlations with int32 bias, requantization (linear, leaky, relu), "
           "22-bit multipliers, ties of the rounding shift, bias quantization and route rescaling.",
           ("refquant.integer.conv.conv2d_reference", "refquant.integer.requantize.quantize_multiplier",
            "refquant.integer.requantize.leaky_multipliers", "refquant.integer.requantize.requantize",
            "refquant.integer.requantize.requantize_leaky", "refquant.integer.requantize.quantize_bias", "refquant.integer.requantize.rescale_codes"),
           {"random": 4}, {}, _conv_inputs, _conv_outputs, CONV_TOLERANCES,
           INTEGER_CONVOLUTION_MEANINGS),
    Vector("layers", "Darknet layer semantics: maxpool with implicit padding (and its argmax on ties), reorg, "
           "upsample, batch statistics (unbiased variance), normalisation, rolling update, batch-norm folding, "
           "the SGD update.",
           ("refquant.yolo.maxpool.maxpool_forward", "refquant.yolo.reorg.reorg_forward",
            "refquant.yolo.upsample.upsample_forward", "refquant.yolo.batchnorm.batch_statistics",
            "refquant.yolo.batchnorm.normalize", "refquant.yolo.batchnorm.rolling_update",
            "refquant.folding.fold_batchnorm", "refquant.train.sgd_update"),
           {"random": 5},
           {"maxpool": {k: {"size": s, "stride": t, "padding": s - 1} for k, (s, t) in MAXPOOL_CASES.items()},
            "fold_cfg": _FOLD_CFG, "sgd_hyperparameters": ["learning_rate", "momentum", "decay"]},
           _layers_inputs, _layers_outputs, LAYERS_TOLERANCES, LAYERS_MEANINGS),
    Vector("region", "The YOLOv2 region head: forward, Darknet's region loss and its gradient (before and after "
           "12800 images seen), backward.",
           ("refquant.yolo.region.RegionLayer.forward", "refquant.yolo.region.RegionLayer.loss",
            "refquant.yolo.region.RegionLayer.backward"),
           {"random": 6}, {"cases": REGION_CASES, "seen": list(REGION_SEEN)},
           _region_inputs, _region_outputs, REGION_TOLERANCES, REGION_MEANINGS),
    Vector("network", "A small network (network.cfg, network.weights): float64 forward at every layer, batch norm "
           "folded, calibration histograms, PGM fits and the quantization plans.",
           ("refquant.yolo.network.Network.forward", "refquant.folding.fold_batchnorm",
            "refquant.ptq.calibration_statistics", "refquant.ptq.quantization_plan"),
           {"network": NETWORK_SEED, "images": NETWORK_SEED + 1},
           {"plans": {name: {"weight_bits": w, "activation_bits": a, "pow2_step": p, "method": "pgm",
                             "first_bits": 8, "last_bits": 8} for name, (w, a, p) in PLANS.items()}},
           _network_inputs, _network_outputs, NETWORK_TOLERANCES, NETWORK_MEANINGS),
    Vector("integer_network", "The integer network of each plan: int8 weight codes, int32 biases, requantization "
           "pairs, route rescalings, the codes of every layer for two images, the head's output.",
           ("refquant.integer.network.IntegerNetwork.run", "refquant.integer.lowering.fixed_point_layers"),
           {"network": NETWORK_SEED, "images": NETWORK_SEED + 1}, {"plans": list(PLANS)},
           _integer_inputs, _integer_outputs, INTEGER_TOLERANCES,
           INTEGER_NETWORK_MEANINGS),
    Vector("detection_ap", "Region-head decoding, thresholds, NMS and VOC pixel boxes (letterboxed images), then "
           "VOC AP (area and 11-point rules) on them and on a hand-worked case.",
           ("refquant.detection.decode.detections", "refquant.detection.decode.region_boxes", "refquant.detection.metrics.average_precision",
            "refquant.detection.metrics.precision_recall"),
           {"random": 8}, {"names": list(DETECTION_NAMES), "letterbox": True, "iou_threshold": 0.5},
           _detection_inputs, _detection_outputs, DETECTION_TOLERANCES,
           DETECTION_MEANINGS),
]}




def vectors_for(profile="exact"):
    """:data:`VECTORS` with the ``integer_network`` vector computed under the arithmetic ``profile``
    (``refquant.integer.profiles``); ``exact`` gives :data:`VECTORS` itself, so its export is today's."""
    chosen = get_profile(profile)
    if chosen.name == "exact":
        return VECTORS
    vector = VECTORS["integer_network"]
    return {**VECTORS, "integer_network": dataclasses.replace(
        vector, description=f"{vector.description} Under the {chosen.name} arithmetic profile.",
        definitions=vector.definitions + ("refquant.integer.profiles.PROFILES",),
        parameters={**vector.parameters, "profile": chosen.name},
        outputs=functools.partial(_integer_outputs, profile=chosen.name))}
