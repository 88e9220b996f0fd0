"""The GPU frame path (decode, letterbox, upload, infer, NMS) and CUDA device facts.
"""
