"""The list of golden vectors (:data:`VECTORS`): name, description, defining functions, seeds,
parameters, input and output functions and tolerances of each.
"""
from refquant.golden.format import DRAWN, EXACT, Vector
from refquant.golden.network_vectors import DETECTION_NAMES, DETECTION_TOLERANCES, INTEGER_TOLERANCES, LAYERS_TOLERANCES, MAXPOOL_CASES, NETWORK_SEED, NETWORK_TOLERANCES, PLANS, REGION_CASES, REGION_SEEN, REGION_TOLERANCES, _FOLD_CFG, _detection_inputs, _detection_outputs, _integer_inputs, _integer_outputs, _layers_inputs, _layers_outputs, _network_inputs, _network_outputs, _region_inputs, _region_outputs
from refquant.golden.numeric_vectors import CONV_TOLERANCES, DENSITIES, ERROR_DENSITIES, ERROR_TOLERANCES, FAKE_TOLERANCES, OPTIMAL_MODES, OPTIMAL_TOLERANCES, PGM_CASES, PGM_MAX_PIECES, PGM_TOLERANCES, _conv_inputs, _conv_outputs, _error_inputs, _error_outputs, _fake_inputs, _fake_outputs, _optimal_inputs, _optimal_outputs, _pgm_inputs, _pgm_outputs, _rounding_inputs, _rounding_outputs


VECTORS = {vector.name: vector for vector in [
    Vector("rounding", "Round half to even on floats and the integer rounding right shift, ties and extremes.",
           ("refquant.rounding.round_half_even", "refquant.rounding.rounding_right_shift"),
           {"random": 1}, {}, _rounding_inputs, _rounding_outputs, {"x": DRAWN, "y": EXACT}),
    Vector("pgm_fits", "Samples (and a histogram) drawn from known piecewise Gaussians and the PGMs fitted "
           "to them by EM: given breakpoints, and automatic selection (K and breakpoints by BIC).",
           ("refquant.density.pgm.PiecewiseGaussian.fit", "refquant.density.pgm.PiecewiseGaussian.fit_histogram"),
           {case: spec[2] for case, spec in PGM_CASES.items()},
           {"max_pieces": PGM_MAX_PIECES, "max_iter": 20000, "tol": 1e-9, "min_piece_samples": 5,
            "cases": {case: {"generating_density": spec[0], "n": spec[1], "breakpoints": spec[3], "source": spec[4]}
                      for case, spec in PGM_CASES.items()}},
           _pgm_inputs, _pgm_outputs, PGM_TOLERANCES),
    Vector("expected_error", "Piecewise Gaussian densities: pdf, cdf, mean, variance, partial moments, and the "
           "closed-form expected squared error (granular, clipping) of given uniform quantizers.",
           ("refquant.density.pgm.PiecewiseGaussian.pdf", "refquant.density.pgm.PiecewiseGaussian.cdf",
            "refquant.density.pgm.PiecewiseGaussian.partial_moments", "refquant.quantizers.error.expected_mse"),
           {}, {"densities": {name: DENSITIES[name] for name in ERROR_DENSITIES}},
           _error_inputs, _error_outputs, ERROR_TOLERANCES),
    Vector("optimal_quantizers", "The quantizer minimising the expected error, per density, constraint and width "
           "(the 'free' N(0,1) rows are Max's 1960 table).",
           ("refquant.quantizers.optimal.optimal_quantizer",), {},
           {"modes": OPTIMAL_MODES}, _optimal_inputs, _optimal_outputs, OPTIMAL_TOLERANCES),
    Vector("fake_quantization", "Codes, fake-quantized values (float64 and float32) and the straight-through mask "
           "of given quantizers, on levels, exact ties, the interval ends, beyond them and +-inf.",
           ("refquant.quantizers.uniform.UniformQuantizer.quantize", "refquant.quantizers.uniform.UniformQuantizer.fake",
            "refquant.quantizers.uniform.UniformQuantizer.straight_through_mask"),
           {"random": 3}, {}, _fake_inputs, _fake_outputs, FAKE_TOLERANCES),
    Vector("integer_convolution", "Integer correlations with int32 bias, requantization (linear, leaky, relu), "
           "22-bit multipliers, ties of the rounding shift, bias quantization and route rescaling.",
           ("refquant.integer.conv.conv2d_reference", "refquant.integer.requantize.quantize_multiplier",
            "refquant.integer.requantize.leaky_multipliers", "refquant.integer.requantize.requantize",
            "refquant.integer.requantize.requantize_leaky", "refquant.integer.requantize.quantize_bias", "refquant.integer.requantize.rescale_codes"),
           {"random": 4}, {}, _conv_inputs, _conv_outputs, CONV_TOLERANCES),
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
           _layers_inputs, _layers_outputs, LAYERS_TOLERANCES),
    Vector("region", "The YOLOv2 region head: forward, Darknet's region loss and its gradient (before and after "
           "12800 images seen), backward.",
           ("refquant.yolo.region.RegionLayer.forward", "refquant.yolo.region.RegionLayer.loss",
            "refquant.yolo.region.RegionLayer.backward"),
           {"random": 6}, {"cases": REGION_CASES, "seen": list(REGION_SEEN)},
           _region_inputs, _region_outputs, REGION_TOLERANCES),
    Vector("network", "A small network (network.cfg, network.weights): float64 forward at every layer, batch norm "
           "folded, calibration histograms, PGM fits and the quantization plans.",
           ("refquant.yolo.network.Network.forward", "refquant.folding.fold_batchnorm",
            "refquant.ptq.calibration_statistics", "refquant.ptq.quantization_plan"),
           {"network": NETWORK_SEED, "images": NETWORK_SEED + 1},
           {"plans": {name: {"weight_bits": w, "activation_bits": a, "pow2_step": p, "method": "pgm",
                             "first_bits": 8, "last_bits": 8} for name, (w, a, p) in PLANS.items()}},
           _network_inputs, _network_outputs, NETWORK_TOLERANCES),
    Vector("integer_network", "The integer network of each plan: int8 weight codes, int32 biases, requantization "
           "pairs, route rescalings, the codes of every layer for two images, the head's output.",
           ("refquant.integer.network.IntegerNetwork.run", "refquant.integer.lowering.fixed_point_layers"),
           {"network": NETWORK_SEED, "images": NETWORK_SEED + 1}, {"plans": list(PLANS)},
           _integer_inputs, _integer_outputs, INTEGER_TOLERANCES),
    Vector("detection_ap", "Region-head decoding, thresholds, NMS and VOC pixel boxes (letterboxed images), then "
           "VOC AP (area and 11-point rules) on them and on a hand-worked case.",
           ("refquant.detection.decode.detections", "refquant.detection.decode.region_boxes", "refquant.detection.metrics.average_precision",
            "refquant.detection.metrics.precision_recall"),
           {"random": 8}, {"names": list(DETECTION_NAMES), "letterbox": True, "iou_threshold": 0.5},
           _detection_inputs, _detection_outputs, DETECTION_TOLERANCES),
]}


