"""The bandwidth model: links, per-layer traffic, the measured feature delta, the GPU cross-check and plots.
"""
