"""`yolo-compile review`: a run folder's executed notebooks served in JupyterLab, until Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from yolo_compile import runs
from yolo_compile.errors import CompileError


def serve(run_dir: Path, *, ip: str, port: int = 0, verbose: bool = False, no_browser: bool = False) -> int:
    """Serve run_dir in JupyterLab, print the URL of its first (or failed) notebook, wait until Ctrl-C; return its exit."""
    port_given = port
    import importlib.util
    import secrets
    import socket

    if importlib.util.find_spec("jupyterlab") is None:
        raise CompileError("JupyterLab is not installed: pip install 'yolo-compile[review]'")
    stages = runs.read_manifest(run_dir).get("stages") or {}
    nbs = [v["notebook"] for v in stages.values() if v.get("notebook") and (run_dir / v["notebook"]).is_file()]
    first = next((v["notebook"] for v in stages.values() if v.get("status") == "failed" and v.get("notebook") in nbs),
                 nbs[0] if nbs else "")
    port = port_given
    if not port:
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
    token = secrets.token_urlsafe(18)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.root_dir={run_dir}", f"--ServerApp.ip={ip}",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses without this
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, cwd=run_dir, stdout=subprocess.DEVNULL if not verbose else None,
                            stderr=subprocess.DEVNULL if not verbose else None, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://{ip}:{port}/lab/tree/{first}?token={token}"
    print(f"reviewing {run_dir} ({len(nbs)} notebooks)\n{url}\nCtrl-C stops the server", flush=True)
    if not no_browser:
        import webbrowser

        time.sleep(2)
        webbrowser.open(url)
    import signal

    def _stop(*_):  # a SIGTERM (a supervisor, a test) ends the server too, not only this process
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
