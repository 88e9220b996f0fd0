"""Quantization: the quantizers (ModelOpt, NNCF), the calibration statistics and scales, the candidate search
and the accuracy study. Never imports a stage.
"""
