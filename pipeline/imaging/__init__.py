"""Pixels in and out: image codecs with their metadata, Lab conversion, the CPU kernels
(numba: Lab, resizing, annealed-mean decoding), quality metrics and old-print damage.
Pure functions over arrays; imports nothing else of `pipeline`."""
