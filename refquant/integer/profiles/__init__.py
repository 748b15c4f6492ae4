"""Arithmetic profiles of the integer network: what an engine does after the int32 accumulator
(docs/SPECIFICATION.md, section 11.8).

Every profile shares the weight codes, the int32 bias and the exact int32 accumulator (the fast
VNNI kernel, ``refquant.integer.conv.accumulator_chunks``); they differ in how the accumulator
becomes the next layer's codes, how a leaky ReLU is computed and how a route moves its inputs to
its grid:

- ``exact`` (:mod:`.exact`): refquant's own rule, the default: a 22-bit multiplier, a rounding right
  shift half to even, leaky ReLU fused (two multipliers), routes rescaled by the same rule;
- ``gemmlowp`` and ``gemmlowp-single`` (:mod:`.gemmlowp`): TFLite's ``MultiplyByQuantizedMultiplier``,
  a Q31 multiplier with gemmlowp's two roundings, or TFLite's single rounding; leaky ReLU a separate
  ``LEAKY_RELU`` op; routes by ``ConcatenationWithScaling``;
- ``float-scale`` (:mod:`.float_scale`): onnxruntime's ``QLinearConv`` and fbgemm's requantization, a
  float32 scale and round half to even; leaky ReLU a separate ``QLinearLeakyRelu`` lookup table;
  routes by ``QLinearConcat``'s tables.

Each :class:`Profile` lowers a plan (``lower``) and runs a convolution and a route on the integer
network's codes and on the simulation's float64 codes; the two are equal code for code under every
profile (tests/test_profiles.py).
"""
import dataclasses
import typing

from refquant.integer.profiles import exact, float_scale, gemmlowp


@dataclasses.dataclass(frozen=True)
class Profile:
    """An arithmetic profile: its name, its rules in one paragraph (the golden manifest states them),
    the sources it follows, and its functions:

    ``lower(folded, plan)`` -> per layer its parameters (``refquant.integer.lowering.lower_layers``);
    ``integer_convolution(conv, codes, packed_weights)`` -> codes (N, M, OH, OW) integers;
    ``simulated_convolution(conv, codes, gemm_weight_codes)`` -> float64 codes, equal;
    ``integer_route(route, inputs)``, ``simulated_route(route, inputs)`` -> the route's codes.
    """

    name: str
    rules: str
    sources: tuple
    lower: typing.Callable
    integer_convolution: typing.Callable
    simulated_convolution: typing.Callable
    integer_route: typing.Callable
    simulated_route: typing.Callable


def _profile(name, module, **options):
    """The Profile of ``module`` (which defines RULES, SOURCES and the five functions); ``options``
    (e.g. ``single_rounding``) are passed to ``module.lower``."""
    def lower(folded, plan):
        return module.lower(folded, plan, **options)
    rules = module.RULES[name] if isinstance(module.RULES, dict) else module.RULES
    return Profile(name, rules, module.SOURCES, lower, module.integer_convolution, module.simulated_convolution,
                   module.integer_route, module.simulated_route)


PROFILES = {
    "exact": _profile("exact", exact),
    "gemmlowp": _profile("gemmlowp", gemmlowp, single_rounding=False),
    "gemmlowp-single": _profile("gemmlowp-single", gemmlowp, single_rounding=True),
    "float-scale": _profile("float-scale", float_scale),
}
"""The arithmetic profiles by name; ``exact`` is the default everywhere."""


def get_profile(profile):
    """The :class:`Profile` called ``profile`` (a name of :data:`PROFILES`, or a Profile, returned as is)."""
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return PROFILES[profile]
