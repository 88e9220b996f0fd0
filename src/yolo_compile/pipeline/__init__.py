"""Runs a workflow: the stage registry, validation, papermill execution, kernels started ahead, the stage
cache, the per-notebook setup, CPU shares, and compile matrices on Ray.
"""
