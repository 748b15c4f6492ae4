"""The gemmlowp profiles against TensorFlow Lite's own kernels (LiteRT's interpreter, ``ai-edge-litert``).

Truth: LiteRT 2.3.0 running TFLite models built here with the flatbuffer schema LiteRT ships
(``ai_edge_litert.schema_py_generated``): an int8 ``CONV_2D`` (per channel and per tensor, with no
activation or a fused RELU), ``CONV_2D`` then ``LEAKY_RELU``, and a uint8 ``CONCATENATION`` of inputs
on other grids. refquant's codes are uint8 with zero point z; the int8 model holds ``c - 128`` with
zero point ``z - 128``, the same ``c - z``. TFLite has three integer paths on x86, and each is
compared: the reference kernels (``OpResolverType.BUILTIN_REF``, the kernels of
``kernels/internal/reference``), the optimized kernels without delegates (ruy's GEMM and its own
requantization) and the default, XNNPACK delegate.
"""
import types

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from refquant.integer.conv import conv2d, pack_weights
from refquant.integer.profiles import PROFILES, gemmlowp
from refquant.quantizers.uniform import UniformQuantizer

INT8, UINT8, INT32 = schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT32
REFERENCE = OpResolverType.BUILTIN_REF
OPTIMIZED = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
XNNPACK = OpResolverType.BUILTIN


def _tensor(shape, kind, buffer, scale, zero_point):
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.buffer, tensor.name = list(shape), kind, buffer, f"t{buffer}-{id(tensor)}"
    quantization = schema.QuantizationParametersT()
    quantization.scale = [float(v) for v in np.atleast_1d(scale)]
    quantization.zeroPoint = [int(v) for v in np.atleast_1d(zero_point)]
    quantization.quantizedDimension = 0
    tensor.quantization = quantization
    return tensor


def _operator(code_index, inputs, outputs, options_type, options):
    operator = schema.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = code_index, inputs, outputs
    operator.builtinOptionsType, operator.builtinOptions = options_type, options
    return operator


def _model(tensors, constants, operators, codes, inputs, outputs):
    """A TFLite flatbuffer: ``constants`` {tensor index: array} become buffers (buffer 0 empty)."""
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = []
    for code, version in codes:
        operator_code = schema.OperatorCodeT()
        operator_code.builtinCode, operator_code.deprecatedBuiltinCode = code, min(code, 127)
        operator_code.version = version
        model.operatorCodes.append(operator_code)
    model.buffers = [schema.BufferT()]
    for index, tensor in enumerate(tensors):
        if index in constants:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(constants[index]).tobytes(), np.uint8)
            tensor.buffer = len(model.buffers)
            model.buffers.append(buffer)
        else:
            tensor.buffer = 0
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, inputs, outputs, operators
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _run(content, arrays, resolver):
    interpreter = Interpreter(model_content=content, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    for detail, array in zip(interpreter.get_input_details(), arrays):
        interpreter.set_tensor(detail["index"], array)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _to_int8(codes):
    """uint8 codes (N, C, H, W) -> TFLite's int8 NHWC tensor of ``c - 128``."""
    return (codes.astype(np.int16) - 128).astype(np.int8).transpose(0, 2, 3, 1)


def _from_int8(values):
    return (values.astype(np.int16) + 128).transpose(0, 3, 1, 2)


def _conv_options(activation):
    options = schema.Conv2DOptionsT()
    options.padding, options.strideW, options.strideH = schema.Padding.SAME, 1, 1
    options.dilationWFactor = options.dilationHFactor = 1
    options.fusedActivationFunction = (schema.ActivationFunctionType.RELU if activation == "relu"
                                       else schema.ActivationFunctionType.NONE)
    return options


def _layer_case(seed, activation, per_channel, out_channels=16, in_channels=8, size=32):
    """A random 3x3 layer (pad 1, stride 1: TFLite's SAME) lowered by both gemmlowp profiles, its uint8
    input codes and the TFLite model of it (CONV_2D, and LEAKY_RELU for a leaky layer)."""
    rng = np.random.default_rng(seed)
    input_grid = UniformQuantizer(float(rng.uniform(0.01, 0.05)), int(rng.integers(10, 80)), 0, 255)
    output_grid = UniformQuantizer(float(rng.uniform(0.01, 0.04)), int(rng.integers(20, 100)), 0, 255)
    weights = rng.normal(0, 0.1, (out_channels, in_channels, 3, 3)) * rng.uniform(0.3, 1.5, (out_channels, 1, 1, 1))
    weight_grid = UniformQuantizer(float(np.abs(weights).max() / 127), 0, -127, 127)
    steps = np.abs(weights).reshape(out_channels, -1).max(1) / 127 if per_channel else None
    layer = types.SimpleNamespace(params={"weights": weights, "biases": rng.normal(0, 0.3, out_channels)},
                                  activation=activation, size=3, stride=1, padding=1)
    lowered = {single: gemmlowp.lower_convolution(0, layer, input_grid, weight_grid, steps, output_grid, "layer",
                                                  single) for single in (False, True)}
    conv = lowered[False]
    codes = rng.integers(0, 256, (1, in_channels, size, size)).astype(np.uint8)
    linear = conv.linear_grid
    weight_steps = conv.weight_steps if per_channel else conv.weight_steps[:1]
    zeros = np.zeros(len(weight_steps), int)
    tensors = [_tensor((1, size, size, in_channels), INT8, 0, input_grid.step, input_grid.zero_point - 128),
               _tensor((out_channels, 3, 3, in_channels), INT8, 0, weight_steps, zeros),
               _tensor((out_channels,), INT32, 0, np.float32(input_grid.step) * weight_steps.astype(np.float32), zeros),
               _tensor((1, size, size, out_channels), INT8, 0, linear.step, linear.zero_point - 128)]
    constants = {1: conv.weight_codes.transpose(0, 2, 3, 1).astype(np.int8), 2: conv.bias.astype(np.int32)}
    operators = [_operator(0, [0, 1, 2], [3], schema.BuiltinOptions.Conv2DOptions, _conv_options(activation))]
    opcodes = [(schema.BuiltinOperator.CONV_2D, 3)]
    if activation == "leaky":
        tensors.append(_tensor((1, size, size, out_channels), INT8, 0, output_grid.step, output_grid.zero_point - 128))
        options = schema.LeakyReluOptionsT()
        options.alpha = 0.1
        operators.append(_operator(1, [3], [4], schema.BuiltinOptions.LeakyReluOptions, options))
        opcodes.append((schema.BuiltinOperator.LEAKY_RELU, 2))
    content = _model(tensors, constants, operators, opcodes, [0], [len(tensors) - 1])
    ours = {single: PROFILES["gemmlowp-single" if single else "gemmlowp"].integer_convolution(
        conv, codes, pack_weights(conv.weight_codes, (-127, 127))).astype(np.int16) for single, conv in lowered.items()}
    return conv, codes, content, ours


@pytest.mark.parametrize("activation", ["linear", "relu"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_conv2d_equals_tflite_reference_and_xnnpack(activation, per_channel):
    """Truth: TFLite's reference CONV_2D equals the ``gemmlowp`` profile code for code (the two-rounding
    MultiplyByQuantizedMultiplier of common.h), and the XNNPACK delegate the ``gemmlowp-single`` profile
    (XNNPACK requantizes with one rounding, half up). The two profiles themselves differ on some codes
    of these layers, so each comparison discriminates."""
    for seed in range(3):
        conv, codes, content, ours = _layer_case(seed, activation, per_channel)
        reference = _from_int8(_run(content, [_to_int8(codes)], REFERENCE))
        xnnpack = _from_int8(_run(content, [_to_int8(codes)], XNNPACK))
        assert np.count_nonzero(reference != ours[False]) == 0
        assert np.count_nonzero(xnnpack != ours[True]) == 0
        assert len(np.unique(reference)) > 50
    # the comparison can fail: on the last layer the two roundings differ
    assert np.count_nonzero(ours[False] != ours[True]) > 0


def test_conv2d_tflite_optimized_kernel_rounds_its_second_rounding_half_up():
    """Truth: TFLite's optimized CONV_2D on x86 (ruy's GEMM, no delegate). It is neither profile: it
    computes SaturatingRoundingDoublingHighMul (half up) and then a rounding right shift half *up*,
    where gemmlowp's RoundingDivideByPOT rounds half away from zero. That rule, written here from the
    exact accumulators, gives TFLite's optimized codes everywhere; the codes that differ from the
    ``gemmlowp`` profile (TFLite's reference kernel) are negative second-rounding ties, their count
    stated: 22 of 16,384 on this layer."""
    conv, codes, content, ours = _layer_case(1, "linear", True)
    optimized = _from_int8(_run(content, [_to_int8(codes)], OPTIMIZED))
    acc = conv2d(codes, conv.weight_codes, 1, 1, conv.bias, x_zero_point=conv.input_grid.zero_point).astype(np.int64)
    multiplier, shift = conv.requantization[0][:, None, None], conv.requantization[1][:, None, None]
    assert np.all(shift < 0)  # right shifts only on this layer
    high = (acc * multiplier + (1 << 30)) >> 31  # SaturatingRoundingDoublingHighMul: half up
    half_up = (high + (np.int64(1) << (-shift - 1))) >> -shift
    expected = np.clip(half_up + conv.linear_grid.zero_point, 0, 255)
    np.testing.assert_array_equal(optimized, expected)
    differing = optimized != ours[False]
    assert np.count_nonzero(differing) == 22
    remainder = high & ((np.int64(1) << -shift) - 1)
    assert np.all((high < 0)[differing]) and np.all((remainder == (np.int64(1) << (-shift - 1)))[differing])


def test_leaky_layer_equals_tflite_conv_then_leaky_relu():
    """Truth: TFLite's reference kernels running CONV_2D onto the pre-activation grid then LEAKY_RELU
    (alpha 0.1) equal the ``gemmlowp`` profile's leaky layer code for code, per channel and per tensor;
    its LEAKY_RELU multipliers are the ones TFLite's Prepare computes from the float32 scales."""
    for per_channel in (True, False):
        for seed in range(3):
            conv, codes, content, ours = _layer_case(10 + seed, "leaky", per_channel)
            reference = _from_int8(_run(content, [_to_int8(codes)], REFERENCE))
            assert np.count_nonzero(reference != ours[False]) == 0
            assert np.count_nonzero(reference < conv.output_grid.zero_point) > 100  # the negative side is exercised


def test_concatenation_with_scaling_equals_tflite():
    """Truth: TFLite's uint8 CONCATENATION of inputs on grids other than its own (ConcatenationWithScaling)
    and of one on its own grid (copied), every code 0..255 of each input, reference and optimized
    kernels: the ``gemmlowp`` profiles' route code for code."""
    grid = UniformQuantizer(0.05, 20, 0, 255)
    sources = [UniformQuantizer(0.11, 7, 0, 255), UniformQuantizer(0.0213, 100, 0, 255), grid]
    route = gemmlowp.lower_route(5, sources, grid)
    inputs = [np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)] * 3
    ours = PROFILES["gemmlowp"].integer_route(route, inputs)
    tensors = [_tensor((1, 16, 16, 1), UINT8, 0, source.step, source.zero_point) for source in sources]
    tensors.append(_tensor((1, 16, 16, 3), UINT8, 0, grid.step, grid.zero_point))
    options = schema.ConcatenationOptionsT()
    options.axis = 3
    content = _model(tensors, {}, [_operator(0, [0, 1, 2], [3], schema.BuiltinOptions.ConcatenationOptions, options)],
                     [(schema.BuiltinOperator.CONCATENATION, 1)], [0, 1, 2], [3])
    arrays = [codes.transpose(0, 2, 3, 1) for codes in inputs]
    for resolver in (REFERENCE, OPTIMIZED):
        theirs = _run(content, arrays, resolver).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(theirs, ours)
    # the rescaled inputs are not copies: the test compares a rounding rule
    assert not np.array_equal(ours[:, 0], inputs[0][:, 0])
