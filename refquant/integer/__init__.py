"""The network in fixed point: integer convolution, requantization, lowering a plan to fixed-point
parameters, the exact float64 simulation, the integer network, its costs and plots.
docs/SPECIFICATION.md, sections 11.4 to 11.6.
"""
