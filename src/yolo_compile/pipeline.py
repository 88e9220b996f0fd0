"""Old name of `frames` (the GPU frame path), kept only so code written before the rename still imports.

Import `yolo_compile.frames` instead; this alias goes once nothing imports it (bench/gpu_input.py did).
"""

from .frames import *  # noqa: F401,F403
from .frames import cpu_letterboxed, letterbox_geometry, nms, read_jpegs  # noqa: F401
