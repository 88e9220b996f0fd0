"""Ray: join a cluster (or start one embedded) for compile matrices and the parallel study."""

from __future__ import annotations

import logging
import os
from typing import Any


def connect(address: str | None, workers: int | None):
    """Join the cluster at address (or $RAY_ADDRESS); with neither, start Ray embedded in this process."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return ray
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kw)
    else:
        # "local": always a new embedded instance. Without it ray.init joins whatever /tmp/ray/ray_current_cluster
        # names (a `ray start` left running, or a killed run's leftover) and refuses num_cpus there.
        ray.init(address="local", num_cpus=workers or os.cpu_count(), **kw)
    return ray
