"""Golden vectors of the layers and networks: Darknet layers and folding, the region head and loss,
a small network's calibration and plans, its integer network, decoding and VOC AP
(docs/SPECIFICATION.md, sections 8 to 13).
"""
import math
import warnings

import numpy as np

from refquant import darknet, folding, ptq
from refquant import plan as plan_module
from refquant.density.em import ConvergenceWarning
from refquant.detection import decode, metrics
from refquant.golden.format import DRAWN, Tolerance, _memoised_outputs
from refquant.golden.numeric_vectors import _density_arrays, _scalar
from refquant.integer import lowering
from refquant.integer.network import IntegerNetwork
from refquant.integer.profiles.lowered import ProfileConvolution
from refquant.quantizers import uniform
from refquant.testing import cfg_section, cfg_text, convolutional, load_cfg, maxpool, net_section, randomize_batchnorm
from refquant.train import sgd_update, trainable
from refquant.yolo import batchnorm
from refquant.yolo.maxpool import maxpool_forward
from refquant.yolo.region import RegionLayer
from refquant.yolo.reorg import reorg_forward
from refquant.yolo.upsample import upsample_forward

MAXPOOL_CASES = {"size2_stride2": (2, 2), "size2_stride1": (2, 1), "size3_stride2": (3, 2), "size3_stride1": (3, 1)}
"""(size, stride) with Darknet's default padding size - 1, on a 7 x 9 input (odd sizes: the
implicit padding decides the last window)."""


_FOLD_CFG = """[net]
width=6
height=5
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


def _one_layer_network():
    """A float64 network of one batch-normalised convolution (for folding and the SGD update)."""
    return load_cfg(_FOLD_CFG, "one_layer.cfg", dtype=np.float64)


def _layers_inputs():
    rng = np.random.default_rng(5)
    arrays = {"maxpool/x": rng.integers(0, 4, (2, 3, 7, 9)).astype(np.int16),
              "reorg/x": rng.integers(-100, 100, (2, 8, 6, 4)).astype(np.int16),
              "upsample/x": rng.integers(0, 256, (1, 2, 3, 4)).astype(np.uint8),
              "batchnorm/z": rng.normal(0.5, 2.0, (3, 4, 10)),
              "batchnorm/rolling_mean": rng.normal(0.0, 1.0, 4),
              "batchnorm/rolling_variance": rng.uniform(0.5, 2.0, 4)}
    net = _one_layer_network()
    for name, param in net.layers[0].params.items():
        shape = param.shape
        value = rng.uniform(0.5, 2.0, shape) if name in ("rolling_variance", "scales") else rng.normal(0, 0.5, shape)
        arrays[f"parameters/{name}"] = value
    for name in ("biases", "scales", "weights"):
        arrays[f"sgd/gradient/{name}"] = rng.normal(0.0, 1.0, arrays[f"parameters/{name}"].shape)
        arrays[f"sgd/update/{name}"] = rng.normal(0.0, 0.1, arrays[f"parameters/{name}"].shape)
    arrays["sgd/hyperparameters"] = np.array([0.001, 0.9, 0.0005])  # learning rate, momentum, decay
    arrays["sgd/batch"] = np.array(64, dtype=np.int64)
    return arrays


def _layers_outputs(inputs):
    out = {}
    for case, (size, stride) in MAXPOOL_CASES.items():
        out[f"maxpool/{case}"], out[f"maxpool/{case}_argmax"] = maxpool_forward(inputs["maxpool/x"], size, stride,
                                                                                 size - 1)
    out["reorg/stride2"] = reorg_forward(inputs["reorg/x"], 2)
    out["upsample/stride2"] = upsample_forward(inputs["upsample/x"], 2)
    z = inputs["batchnorm/z"]
    mean, variance = batchnorm.batch_statistics(z)
    out["batchnorm/mean"], out["batchnorm/variance"] = mean, variance
    out["batchnorm/xhat"] = batchnorm.normalize(z, mean, variance)
    out["batchnorm/rolling_mean_next"] = batchnorm.rolling_update(inputs["batchnorm/rolling_mean"].copy(), mean)
    out["batchnorm/rolling_variance_next"] = batchnorm.rolling_update(inputs["batchnorm/rolling_variance"].copy(),
                                                                      variance)
    net = _one_layer_network()
    for name in net.layers[0].params:
        net.layers[0].params[name][...] = inputs[f"parameters/{name}"]
    folded = folding.fold_batchnorm(net).layers[0].params
    out["fold/weights"], out["fold/biases"] = folded["weights"], folded["biases"]
    gradients = {(0, name): inputs[f"sgd/gradient/{name}"] for _, name, _ in trainable(net)}
    updates = {(0, name): inputs[f"sgd/update/{name}"].copy() for _, name, _ in trainable(net)}
    rate, momentum, decay = inputs["sgd/hyperparameters"]
    sgd_update(net, gradients, updates, float(rate), float(momentum), float(decay), _scalar(inputs["sgd/batch"]))
    for _, name, param in trainable(net):
        out[f"sgd/parameter_next/{name}"] = param.copy()
        out[f"sgd/update_next/{name}"] = updates[(0, name)]
    return out


_LAYERS_FLOAT = Tolerance(1e-13, 1e-15, "float64 arithmetic of a few operations per value")


LAYERS_TOLERANCES = {
    "z": DRAWN, "rolling_mean": DRAWN, "rolling_variance": DRAWN, "hyperparameters": DRAWN,
    "parameters/biases": DRAWN, "parameters/scales": DRAWN, "parameters/weights": DRAWN,
    "parameters/rolling_mean": DRAWN, "parameters/rolling_variance": DRAWN,
    "sgd/gradient/biases": DRAWN, "sgd/gradient/scales": DRAWN, "sgd/gradient/weights": DRAWN,
    "sgd/update/biases": DRAWN, "sgd/update/scales": DRAWN, "sgd/update/weights": DRAWN,
    "mean": Tolerance(1e-13, 1e-15, "a sum of 30 values: summation order only"),
    "variance": Tolerance(1e-13, 1e-15, "as mean"),
    "xhat": _LAYERS_FLOAT, "rolling_mean_next": _LAYERS_FLOAT, "rolling_variance_next": _LAYERS_FLOAT,
    "fold/weights": _LAYERS_FLOAT, "fold/biases": _LAYERS_FLOAT,
    "sgd/parameter_next/biases": _LAYERS_FLOAT, "sgd/parameter_next/scales": _LAYERS_FLOAT,
    "sgd/parameter_next/weights": _LAYERS_FLOAT, "sgd/update_next/biases": _LAYERS_FLOAT,
    "sgd/update_next/scales": _LAYERS_FLOAT, "sgd/update_next/weights": _LAYERS_FLOAT,
}


REGION_CASES = {
    # yolov2-tiny-voc.cfg's [region] options (3 classes, 2 anchors), and the logistic-class variant
    "softmax": dict(anchors=(1.08, 1.19, 3.42, 4.41), bias_match=1, classes=3, num=2, softmax=1, rescore=1,
                    object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6),
    "logistic": dict(anchors=(1.08, 1.19, 3.42, 4.41), bias_match=0, classes=3, num=2, softmax=0, rescore=0,
                     object_scale=5.0, noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, thresh=0.6),
}


REGION_SEEN = (0, 20000)  # below and above Darknet's 12800: with and without the pull towards the anchors


def _region_inputs():
    rng = np.random.default_rng(6)
    arrays = {"x": rng.normal(0.0, 1.5, (2, 2 * 8, 5, 5))}
    # image 0: two boxes; image 1: three, two of them in the same cell
    arrays["truths/0"] = np.array([[0.31, 0.42, 0.2, 0.3, 0], [0.71, 0.23, 0.55, 0.4, 2]])
    arrays["truths/1"] = np.array([[0.5, 0.5, 0.9, 0.8, 1], [0.52, 0.47, 0.1, 0.12, 0], [0.13, 0.88, 0.2, 0.15, 2]])
    return arrays


def _region_outputs(inputs):
    out = {}
    truths = [inputs["truths/0"], inputs["truths/1"]]
    for case, options in REGION_CASES.items():
        layer = RegionLayer(**options)
        out[f"{case}/y"] = layer.forward(inputs["x"])
        for seen in REGION_SEEN:
            loss, dout = layer.loss(truths, seen=seen)
            out[f"{case}/seen{seen}/loss"] = np.array(loss)
            out[f"{case}/seen{seen}/delta"] = layer.delta
            out[f"{case}/seen{seen}/dout"] = dout
            out[f"{case}/seen{seen}/dx"] = layer.backward(dout)
    return out


_REGION_FLOAT = Tolerance(1e-10, 1e-12, "float64 logistic, softmax, exp and log of O(1) values")


REGION_TOLERANCES = {"x": DRAWN, "truths/0": DRAWN, "truths/1": DRAWN, "y": _REGION_FLOAT, "loss": _REGION_FLOAT,
                     "delta": _REGION_FLOAT, "dout": _REGION_FLOAT, "dx": _REGION_FLOAT}


NETWORK_CFG = cfg_text(
    net_section(32), convolutional(8), maxpool(), convolutional(16), maxpool(), convolutional(32),
    maxpool(stride=1), convolutional(16, size=1), cfg_section("route", layers=-5), convolutional(8, size=1),
    cfg_section("reorg", stride=2), cfg_section("route", layers="-1,-4"), convolutional(32),
    convolutional(16, size=1, activation="linear", batch_normalize=False),
    cfg_section("region", anchors="1.08,1.19,3.42,4.41", bias_match=1, classes=3, coords=4, num=2, softmax=1,
                rescore=1, object_scale=5, noobject_scale=1, class_scale=1, coord_scale=1, thresh=".6"),
    comment="refquant golden vectors: a small YOLOv2-style network with every layer type of the integer network")


NETWORK_SEED = 7


CALIBRATION_IMAGES = 8


PLANS = {
    # plan name: (weight bits, activation bits, pow2_step) of refquant.ptq.quantization_plan, method "pgm"
    "pgm_w4a4": (4, 4, False),
    "pgm_pow2_w8a8": (8, 8, True),
}


def network_from(params, cfg_text=NETWORK_CFG, dtype=np.float32):
    """The network of :data:`NETWORK_CFG` with the parameters ``{"params/<layer>/<name>": array}``."""
    net = load_cfg(cfg_text, "network.cfg", dtype=dtype)
    for index, name, _ in darknet.weights_layout(net):
        net.layers[index].params[name][...] = params[f"params/{index}/{name}"]
    net.name = "network.cfg"
    return net


def _network_parameters():
    """Darknet's seeded initialisation, then random batch-norm statistics, scales and biases
    (:func:`refquant.testing.randomize_batchnorm`, seeded by :data:`NETWORK_SEED`)."""
    net = randomize_batchnorm(load_cfg(NETWORK_CFG, "network.cfg", seed=NETWORK_SEED), NETWORK_SEED)
    return {f"params/{index}/{name}": net.layers[index].params[name].copy()
            for index, name, _ in darknet.weights_layout(net)}


def _network_images():
    """Calibration images (on the 8-bit grid k/255) and two test images: one on the grid, one
    off it with values outside [0, 1] (input rounding and saturation)."""
    rng = np.random.default_rng(NETWORK_SEED + 1)
    calibration = (rng.integers(0, 256, (CALIBRATION_IMAGES, 3, 32, 32)) / 255.0).astype(np.float32)
    on_grid = (rng.integers(0, 256, (1, 3, 32, 32)) / 255.0).astype(np.float32)
    off_grid = rng.uniform(-0.1, 1.1, (1, 3, 32, 32)).astype(np.float32)
    return calibration, np.concatenate([on_grid, off_grid])


def _network_inputs():
    calibration, images = _network_images()
    return dict(_network_parameters(), calibration_images=calibration, images=images)


def plan_arrays(prefix, plan):
    """A quantization plan as arrays ``<prefix>/...`` (input grid, weight and activation grids)."""
    weights, activations = sorted(plan.weights), sorted(plan.activations)
    arrays = {f"{prefix}/input_grid": np.array([plan.input.step]),
              f"{prefix}/input_codes": np.array([plan.input.zero_point, plan.input.qmin, plan.input.qmax], np.int64),
              f"{prefix}/weight_layers": np.array(weights, dtype=np.int64),
              f"{prefix}/weight_step": np.array([plan.weights[i].step for i in weights]),
              f"{prefix}/weight_codes": np.array([[plan.weights[i].qmin, plan.weights[i].qmax] for i in weights],
                                                 dtype=np.int64),
              f"{prefix}/activation_layers": np.array(activations, dtype=np.int64),
              f"{prefix}/activation_step": np.array([plan.activations[i].step for i in activations]),
              f"{prefix}/activation_codes": np.array(
                  [[plan.activations[i].zero_point, plan.activations[i].qmin, plan.activations[i].qmax]
                   for i in activations], dtype=np.int64)}
    return arrays


def plan_from(prefix, arrays, net, name):
    """The :class:`refquant.plan.QuantizationPlan` of :func:`plan_arrays`' arrays, for ``net``."""
    zero_point, qmin, qmax = (int(v) for v in arrays[f"{prefix}/input_codes"])
    grid = uniform.UniformQuantizer(float(arrays[f"{prefix}/input_grid"][0]), zero_point, qmin, qmax)
    weights = {int(i): uniform.UniformQuantizer(float(s), 0, int(c[0]), int(c[1])) for i, s, c in zip(
        arrays[f"{prefix}/weight_layers"], arrays[f"{prefix}/weight_step"], arrays[f"{prefix}/weight_codes"])}
    activations = {int(i): uniform.UniformQuantizer(float(s), int(c[0]), int(c[1]), int(c[2])) for i, s, c in zip(
        arrays[f"{prefix}/activation_layers"], arrays[f"{prefix}/activation_step"],
        arrays[f"{prefix}/activation_codes"])}
    return plan_module.QuantizationPlan.for_network(net, weights, activations, input=grid, method=name)


def _calibrated_plans(net, calibration_images):
    """(statistics, {plan name: plan}) of refquant's post-training calibration (method "pgm")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        statistics = ptq.calibration_statistics(net, calibration_images, progress=False)
        plans = {name: ptq.quantization_plan(statistics, w, a, pow2_step=pow2)
                 for name, (w, a, pow2) in PLANS.items()}
    return statistics, plans


def _network_outputs(inputs):
    net = network_from(inputs)
    out = {}
    float64_net = network_from(inputs, dtype=np.float64)
    for index, value in enumerate(float64_net.forward(inputs["images"].astype(np.float64), return_all=True)):
        out[f"float/{index}"] = value
    folded = folding.fold_batchnorm(net)
    for index in plan_module.conv_indices(folded):
        out[f"folded/{index}/weights"] = folded.layers[index].params["weights"]
        out[f"folded/{index}/biases"] = folded.layers[index].params["biases"]
    statistics, plans = _calibrated_plans(net, inputs["calibration_images"])
    for index, histogram in statistics.histograms.items():
        out[f"histograms/{index}/counts"] = histogram.counts
        out[f"histograms/{index}/edges"] = histogram.edges
    for (kind, index), model in sorted(statistics.densities.items()):
        out.update(_density_arrays(f"densities/{kind}/{index}", model))
    for name, plan in plans.items():
        out.update(plan_arrays(f"plans/{name}", plan))
    return out


_CALIBRATED = ("the calibration's float32 forward (BLAS summation order) moves histogram counts at bin edges; "
               "the PGM fits then move by ~1e-7 (EM tolerance 1e-9) and the optimal steps by ~1e-7")


NETWORK_TOLERANCES = {
    "images": DRAWN, "calibration_images": DRAWN,
    "float": Tolerance(1e-9, 1e-9, "float64 forward of float32 parameters: summation order only"),
    "folded/*": Tolerance(2.4e-7, 1e-38, "folded in float64, stored in float32: at most one float32 rounding apart"),
    "edges": Tolerance(0.0, 0.0, "exact: integer multiples of a power-of-two bin width"),
    "counts": Tolerance(0.0, 4.0, "the float32 forward's summation order (BLAS) can move a value lying within "
                                  "float32 rounding of a bin edge into the next bin"),
    "breakpoints": Tolerance(1e-12, 1e-12, "0 (leaky outputs), quantiles of the weights or bin edges"),
    "weights": Tolerance(1e-6, 1e-9, "fractions of counts; " + _CALIBRATED),
    "means": Tolerance(1e-5, 1e-6, _CALIBRATED),
    "stds": Tolerance(1e-5, 0.0, _CALIBRATED),
    "input_grid": Tolerance(0.0, 0.0, "exact: 1/255"),
    "weight_step": Tolerance(1e-5, 0.0, _CALIBRATED),
    "activation_step": Tolerance(1e-5, 0.0, _CALIBRATED),
}

for _index in range(13):
    for _name in ("biases", "scales", "rolling_mean", "rolling_variance", "weights"):
        NETWORK_TOLERANCES[f"params/{_index}/{_name}"] = Tolerance(0.0, 0.0, "exact: float32 parameters, seeded")
        NETWORK_TOLERANCES[f"folded/{_index}/{_name}"] = NETWORK_TOLERANCES["folded/*"]


def _integer_inputs():
    arrays = _network_inputs()
    del arrays["calibration_images"]
    network_outputs = _memoised_outputs("network", _network_outputs, _network_inputs())
    arrays.update({key: value for key, value in network_outputs.items() if key.startswith("plans/")})
    return arrays


def _integer_outputs(inputs, profile="exact"):
    net = network_from(inputs)
    out = {}
    for name in PLANS:
        plan = plan_from(f"plans/{name}", inputs, net, name)
        integer = IntegerNetwork.build(net, plan, profile)
        for index, fixed in enumerate(integer.fixed):
            prefix = f"{name}/fixed/{index}"
            if isinstance(fixed, ProfileConvolution) or (isinstance(fixed, lowering.FixedPointRoute)
                                                         and integer.profile.name != "exact"):
                out.update(_profile_arrays(prefix, fixed, integer.profile.name))
            elif isinstance(fixed, lowering.FixedPointConvolution):
                out[f"{prefix}/weight_codes"] = fixed.weight_codes
                out[f"{prefix}/bias"] = fixed.bias
                out[f"{prefix}/real_multiplier"] = np.array(fixed.real_multiplier)
                out[f"{prefix}/requantization"] = np.array(
                    [fixed.multiplier, fixed.shift, fixed.negative_multiplier, fixed.negative_shift], dtype=np.int64)
            elif isinstance(fixed, lowering.FixedPointRoute):
                out[f"{prefix}/rescalings"] = np.array([[0, 0, 0, 0] if r is None else [1, *r]
                                                        for r in fixed.rescalings], dtype=np.int64)
        outputs = integer.run(inputs["images"])
        out[f"{name}/input_codes"] = lowering.quantize_input(integer.net, plan, inputs["images"]).astype(np.uint8)
        for index, codes in enumerate(outputs[:-1]):
            out[f"{name}/codes/{index}"] = codes
        out[f"{name}/head"] = outputs[-1]
        simulated = integer.simulation().run(inputs["images"])
        for index, (codes, sim) in enumerate(zip(outputs[:-1], simulated[:-1])):
            if not np.array_equal(codes.astype(np.float64), sim):  # refquant's own invariant
                raise AssertionError(f"golden {name}: integer network and simulation differ at layer {index}")
    return out


def _profile_arrays(prefix, fixed, profile):
    """The parameters of a convolution or route lowered by an arithmetic profile other than ``exact``'s
    per-tensor form (``refquant.integer.profiles``), as golden arrays named under ``prefix``."""
    if isinstance(fixed, lowering.FixedPointRoute):
        if profile == "float-scale":  # QLinearConcat: a table per rescaled input
            return {f"{prefix}/concat_table_{j}": table[1] for j, table in enumerate(fixed.rescalings)
                    if table is not None}
        return {f"{prefix}/concatenation_scaling": np.array(  # ConcatenationWithScaling: (1, scale, bias) or zeros
            [[0, 0, 0] if r is None else [1, r[0], r[1]] for r in fixed.rescalings], dtype=np.float32)}
    grid = fixed.linear_grid
    arrays = {f"{prefix}/weight_codes": fixed.weight_codes, f"{prefix}/bias": fixed.bias,
              f"{prefix}/linear_grid": np.array([grid.step, grid.zero_point, grid.qmin, grid.qmax], np.float64)}
    if profile == "float-scale":
        scale, lo, hi = fixed.requantization
        arrays[f"{prefix}/float32_scales"] = scale
    elif profile.startswith("gemmlowp"):
        multiplier, shift, _, lo, hi = fixed.requantization
        arrays[f"{prefix}/q31_multipliers"] = np.stack([multiplier, shift], axis=1)
    else:  # exact, per channel
        arrays[f"{prefix}/channel_requantization"] = np.stack(fixed.requantization, axis=1)
        lo, hi = fixed.output_grid.qmin, fixed.output_grid.qmax
    arrays[f"{prefix}/clamp"] = np.array([lo, hi], np.int64)
    if fixed.activation_stage is not None:
        key = "leaky_table" if profile == "float-scale" else "leaky_relu"
        arrays[f"{prefix}/{key}"] = np.asarray(fixed.activation_stage, np.int64)
    return arrays


INTEGER_TOLERANCES = dict(NETWORK_TOLERANCES)

INTEGER_TOLERANCES.update({
    "real_multiplier": Tolerance(0.0, 0.0, "exact: step_in * step_w / step_out in float64, in that order"),
    "linear_grid": Tolerance(0.0, 0.0, "exact: the plan's grid, or preactivation_grid of it (float64 rule)"),
    "float32_scales": Tolerance(0.0, 0.0, "exact: float32 product then float32 quotient of float32 steps"),
    "concatenation_scaling": Tolerance(0.0, 0.0, "exact: float32 operations on float32 steps"),
    "head": Tolerance(1e-12, 1e-12, "float64 logistic and softmax of step * (codes - zero_point)"),
})


DETECTION_NAMES = ("a", "b", "c")


DETECTION_ANCHORS = (1.08, 1.19, 3.42, 4.41)


DETECTION_THRESHOLD = 0.2


DETECTION_NMS = 0.45


def _region_head(rng, grid=6):
    layer = RegionLayer(anchors=DETECTION_ANCHORS, classes=len(DETECTION_NAMES), num=2, softmax=1)
    x = rng.normal(0.0, 1.0, (2, 2 * 8, grid, grid))
    x[:, [4, 12]] += rng.normal(-1.0, 1.5, (2, 2, grid, grid))  # spread the objectness
    return layer.forward(x)


def _detection_inputs():
    rng = np.random.default_rng(8)
    head = _region_head(rng)
    sizes = np.array([[120, 80], [64, 96]], dtype=np.int64)
    arrays = {"head": head, "anchors": np.array(DETECTION_ANCHORS), "image_sizes": sizes,
              "network_size": np.array([96, 96], dtype=np.int64), "names": np.array(DETECTION_NAMES),
              "thresh": np.array(DETECTION_THRESHOLD), "nms": np.array(DETECTION_NMS)}
    # Ground truth: jittered copies of some of the detections (a few difficult), plus missed objects.
    found = _detections(arrays)
    chosen = rng.choice(len(found["score"]), size=min(12, len(found["score"])), replace=False)
    boxes = np.round(found["box"][chosen] + rng.normal(0.0, 2.0, (chosen.size, 4)))
    images = found["image"][chosen]
    labels = found["label"][chosen]
    missed = np.array([[5, 5, 30, 40], [40, 10, 60, 70]], dtype=np.float64)
    arrays["truth/image"] = np.concatenate([images, [0, 1]]).astype(np.int64)
    arrays["truth/label"] = np.concatenate([labels, [0, 1]]).astype(np.int64)
    arrays["truth/box"] = np.concatenate([boxes, missed])
    arrays["truth/difficult"] = np.arange(arrays["truth/image"].size) % 5 == 4
    arrays.update(HAND_CASE)
    return arrays


HAND_CASE = {
    # VOC pixel boxes. Label 0: TP (0.9), a match of a difficult object (0.8, ignored), FP on an empty
    # image region (0.7), a duplicate of the first object (0.7, after it: stable order), TP with IoU
    # 0.81 (0.6). Label 1: a match at IoU exactly 0.5 (the devkit's >=). Label 2: only a difficult object.
    "hand/detection_image": np.array([0, 0, 1, 0, 1, 0], dtype=np.int64),
    "hand/detection_label": np.array([0, 0, 0, 0, 0, 1], dtype=np.int64),
    "hand/detection_score": np.array([0.9, 0.8, 0.7, 0.7, 0.6, 0.5]),
    "hand/detection_box": np.array([[1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [1, 1, 10, 10],
                                    [2, 2, 10, 10], [1, 1, 10, 20]], dtype=np.float64),
    "hand/truth_image": np.array([0, 0, 1, 0, 1], dtype=np.int64),
    "hand/truth_label": np.array([0, 0, 0, 1, 2], dtype=np.int64),
    "hand/truth_box": np.array([[1, 1, 10, 10], [20, 20, 30, 30], [1, 1, 10, 10], [1, 1, 10, 10],
                                [5, 5, 9, 9]], dtype=np.float64),
    "hand/truth_difficult": np.array([False, True, False, False, True]),
}


def _detections(inputs):
    names = [str(n) for n in inputs["names"]]
    sizes = [tuple(int(v) for v in size) for size in inputs["image_sizes"]]
    width, height = (int(v) for v in inputs["network_size"])
    found = decode.detections(inputs["head"], inputs["anchors"], names, [0, 1], sizes, width, height,
                              thresh=float(inputs["thresh"]), nms=float(inputs["nms"]), letterbox=True)
    return {"image": np.array([d["image"] for d in found], dtype=np.int64),
            "label": np.array([names.index(d["label"]) for d in found], dtype=np.int64),
            "score": np.array([d["score"] for d in found], dtype=np.float64).reshape(-1),
            "box": np.array([d["box"] for d in found], dtype=np.float64).reshape(-1, 4)}


def _as_dicts(images, labels, boxes, scores=None, difficult=None):
    rows = []
    for k in range(len(images)):
        row = {"image": int(images[k]), "label": int(labels[k]), "box": tuple(float(v) for v in boxes[k])}
        if scores is not None:
            row["score"] = float(scores[k])
        if difficult is not None:
            row["difficult"] = bool(difficult[k])
        rows.append(row)
    return rows


def _ap_arrays(prefix, found, truth, labels):
    out = {}
    for use_07, rule in ((False, "area"), (True, "eleven_point")):
        result = metrics.average_precision(found, truth, use_07_metric=use_07)
        out[f"{prefix}/ap_{rule}"] = np.array([result.get(label, math.nan) for label in labels])
        out[f"{prefix}/map_{rule}"] = np.array(result["mAP"])
    for label in labels:
        recall, precision, _ = metrics.precision_recall([d for d in found if d["label"] == label],
                                                        [t for t in truth if t["label"] == label])
        out[f"{prefix}/recall/{label}"], out[f"{prefix}/precision/{label}"] = recall, precision
    return out


def _detection_outputs(inputs):
    found = _detections(inputs)
    out = {f"detections/{key}": value for key, value in found.items()}
    boxes, objectness, class_prob = decode.region_boxes(inputs["head"], inputs["anchors"], len(inputs["names"]))
    out["region/boxes"], out["region/objectness"], out["region/class_prob"] = boxes, objectness, class_prob
    labels = list(range(len(inputs["names"])))
    detections = _as_dicts(found["image"], found["label"], found["box"], scores=found["score"])
    truth = _as_dicts(inputs["truth/image"], inputs["truth/label"], inputs["truth/box"],
                      difficult=inputs["truth/difficult"])
    out.update(_ap_arrays("ap", detections, truth, labels))
    hand_found = _as_dicts(inputs["hand/detection_image"], inputs["hand/detection_label"],
                           inputs["hand/detection_box"], scores=inputs["hand/detection_score"])
    hand_truth = _as_dicts(inputs["hand/truth_image"], inputs["hand/truth_label"], inputs["hand/truth_box"],
                           difficult=inputs["hand/truth_difficult"])
    out.update(_ap_arrays("hand", hand_found, hand_truth, labels))
    return out


_DECODED = Tolerance(1e-12, 1e-9, "float64 exp and divisions (boxes in pixels: atol 1e-9 pixel)")


_AP = Tolerance(1e-12, 1e-15, "ratios of counts, summed: float rounding only")


DETECTION_TOLERANCES = {
    "head": Tolerance(1e-12, 1e-15, "logistic and softmax of seeded normals"),
    "anchors": DRAWN, "thresh": DRAWN, "nms": DRAWN,
    "truth/box": Tolerance(0.0, 1e-6, "rounded pixel coordinates of jittered detections"),
    "hand/detection_score": DRAWN, "hand/detection_box": DRAWN, "hand/truth_box": DRAWN,
    "score": _DECODED, "box": _DECODED, "boxes": _DECODED, "objectness": _DECODED, "class_prob": _DECODED,
    "ap_area": _AP, "ap_eleven_point": _AP, "map_area": _AP, "map_eleven_point": _AP,
    "recall/0": _AP, "recall/1": _AP, "recall/2": _AP, "precision/0": _AP, "precision/1": _AP, "precision/2": _AP,
}
