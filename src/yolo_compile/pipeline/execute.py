"""One stage notebook executed by papermill (in a kernel started ahead where there is one), and how a run that
stops before its end is recorded (Ctrl-C, SIGTERM, an error): the stage and the run marked, every kernel killed."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from yolo_compile import fileio, runs

log = logging.getLogger(__name__)

# The kernel's own warnings (plain-TCP notice, debugger...) go to our stderr; the notebook keeps cell output.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


def import_before_threads() -> None:
    """Import, in the main thread, what the report thread and the kernel starts import.

    Two threads importing one package circle at once can hand one of them a partially initialised module
    (seen: `cannot import name 'AsyncKernelManager' from partially initialized module 'jupyter_client.manager'`
    when the report thread imported nbconvert while the main thread started a kernel). Imported once here, before
    the report thread exists, no thread imports them again.
    """
    import jinja2  # noqa: F401
    import jupyter_client.manager  # noqa: F401
    import nbconvert  # noqa: F401
    import nbconvert.preprocessors  # noqa: F401
    import nbformat  # noqa: F401
    import papermill  # noqa: F401
    from jupyter_core.utils import run_sync  # noqa: F401

    from yolo_compile.pipeline import notebook  # noqa: F401
    from yolo_compile.report import html, notebooks  # noqa: F401


class Interrupted(KeyboardInterrupt):
    """SIGTERM, or Ctrl-C (SIGINT): the compile stops, its current stage is marked `interrupted`."""


@contextlib.contextmanager
def recorded(run_dir: Path, current: dict, pool):
    """Record how a run that did not reach its end ended: `interrupted` (Ctrl-C, SIGTERM) or `failed` (any error).

    The stage in flight and the run are marked in the manifest with the error, every kernel this process started is
    killed (their process groups: kernels run in sessions of their own), and the exception goes on to the CLI.
    """
    try:
        yield
    except BaseException as e:
        from yolo_compile.pipeline import kernels

        interrupted = isinstance(e, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        error = "interrupted (Ctrl-C or SIGTERM)" if interrupted else f"{type(e).__name__}: {e}"
        for km in list(getattr(pool, "ahead", {}).values()) + list(RUNNING):
            kernels.kill(km)
        try:
            stage = current.get("stage")
            if stage and runs.read_manifest(run_dir)["stages"].get(stage, {}).get("status") in ("running", None):
                runs.record_stage(run_dir, stage, status=status, error=error)
            manifest = runs.read_manifest(run_dir)
            manifest.update(status=status, error=error, finished_utc=runs.utc_now())
            fileio.write_json(run_dir / runs.MANIFEST, manifest)
            from ..ci import junit  # an interrupted or crashed run still leaves junit.xml

            junit.write(run_dir, manifest)
        except Exception as e2:  # noqa: BLE001  the original exception matters more
            log.error("could not record the run's end: %s", e2)
        log.error("run %s: %s", status, error)
        e.run_dir = run_dir  # the CLI names it with the resume command
        raise


RUNNING: list = []  # the kernel of the stage in flight, killed on Ctrl-C


def execute_notebook(nb: Path, out_nb: Path, parameters: dict, run_dir: Path, timeout: int,
                      verbose: bool, km=None) -> tuple[str | None, int | None]:
    """Run one notebook with papermill; return (error or None, failing cell). A kernel that fails to start is retried once."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    for attempt in (1, 2):
        try:
            extra = {"km": km} if km is not None and attempt == 1 else {}  # a kernel started ahead (kernels.py)
            pm.execute_notebook(str(nb), str(out_nb), parameters=parameters, cwd=str(run_dir), progress_bar=False,
                                log_output=verbose, kernel_name="python3", execution_timeout=timeout,
                                start_timeout=120, extra_arguments=KERNEL_ARGS, **extra)
            return None, None
        except PapermillExecutionError as e:
            return f"{e.ename}: {e.evalue}", e.exec_count
        except Exception as e:  # DeadKernelError, CellTimeoutError, a kernel that never started...
            if attempt == 1 and not any_cell_ran(out_nb):
                log.warning("kernel for %s failed to start (%s: %s): retrying once", nb.name, type(e).__name__, e)
                continue
            kind = "timed out" if "Timeout" in type(e).__name__ else "died"
            return f"kernel {kind} ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})", None
    return "unreachable", None


def any_cell_ran(out_nb: Path) -> bool:
    try:
        cells = json.loads(out_nb.read_text()).get("cells", [])
    except (OSError, ValueError):
        return False
    return any(c.get("execution_count") for c in cells if c.get("cell_type") == "code")
